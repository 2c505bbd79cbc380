"""numba kernels of the permutation engine: statistics from projections, exceedances.

The plain NumPy twins used by the tests are in ``voxstats/_reference.py``
(``stats_from_projection_reference``, ``exceedances_reference``).

Every value a kernel writes for a voxel depends only on that voxel's inputs,
computed in a fixed order, so that two rearrangements whose projections are
equal give bit-identical statistics wherever they sit in a batch. No kernel
here reassociates sums (``JIT_STRICT``).
"""

import numpy as np

from ._numba import JIT_STRICT, njit, prange
from ._tfce_numba import _label_root  # union-find root with path halving



@njit(nogil=True, **JIT_STRICT)
def stats_from_projection(proj, sum_sq, df, p, q, f_test, out):
    """t or F statistics of a group of rearrangements from their projections.

    ``proj`` is (n_maps * p, n_voxels) (float64 or float32): for map b, rows b*p .. b*p+p-1
    hold the data's coordinates g on the basis [tested (q vectors), nuisance];
    ``sum_sq`` is each voxel's sum of squares, so RSS = sum_sq - |g|^2. Then
    t = g0 / sqrt(RSS / df) (q = 1) or F = (|g[:q]|^2 / q) / (RSS / df), and 0
    where RSS is not positive (or the voxel's sum of squares is 0). Computed
    in float64, written as float32 into ``out`` (n_maps, n_voxels). Releases
    the GIL: callers run blocks of voxels on several threads.
    """
    n_maps, n_vox = out.shape
    fitted = np.empty(n_vox)
    effect = np.empty(n_vox)
    for b in range(n_maps):
        fitted[:] = 0.0
        effect[:] = 0.0
        for k in range(p):
            row = proj[b * p + k]
            for v in range(n_vox):
                g = np.float64(row[v])
                fitted[v] += g * g
            if k < q:
                for v in range(n_vox):
                    effect[v] = fitted[v]
        first = proj[b * p]
        for v in range(n_vox):
            ss = sum_sq[v]
            rss = ss - fitted[v]
            if not (rss > 1e-12 * ss and ss > 0):
                out[b, v] = 0.0
            elif f_test:
                out[b, v] = (effect[v] / q) / (rss / df)
            else:
                out[b, v] = np.float64(first[v]) / np.sqrt(rss / df)


@njit(nogil=True, **JIT_STRICT)
def t_components(proj, sum_sq, df, p, effect_out, var_out):
    """The effect g0 and the residual variance RSS / df of a group of t maps.

    Same layout as :func:`stats_from_projection`; ``t = g0 / sqrt(var)``. Used
    by variance smoothing, which smooths ``var`` before the ratio. Voxels whose
    RSS is not positive get effect 0 and variance 0.
    """
    n_maps, n_vox = effect_out.shape
    fitted = np.empty(n_vox)
    for b in range(n_maps):
        fitted[:] = 0.0
        for k in range(p):
            row = proj[b * p + k]
            for v in range(n_vox):
                g = np.float64(row[v])
                fitted[v] += g * g
        first = proj[b * p]
        for v in range(n_vox):
            ss = sum_sq[v]
            rss = ss - fitted[v]
            if not (rss > 1e-12 * ss and ss > 0):
                effect_out[b, v] = 0.0
                var_out[b, v] = 0.0
            else:
                effect_out[b, v] = first[v]
                var_out[b, v] = rss / df


@njit(nogil=True, **JIT_STRICT)
def exceedances(values, observed, absolute, active, lo, hi, counts, maxima):
    """For voxels ``lo`` to ``hi - 1``: add #{rows with values >= observed} to ``counts``.

    ``maxima[b]`` becomes the larger of itself and row b's maximum over the
    active voxels of the block (start from -inf; the maxima of blocks combine
    in any order, and a row with no active voxel anywhere keeps -inf, which
    the caller reads as 0, the value of inactive voxels). With ``absolute``
    both sides are compared in absolute value. Counts are added for every
    voxel. Releases the GIL: the engine deals blocks to its threads.
    """
    n_maps = values.shape[0]
    for v in range(lo, hi):
        ref = abs(observed[v]) if absolute else observed[v]
        c = 0
        for b in range(n_maps):
            x = abs(values[b, v]) if absolute else values[b, v]
            if x >= ref:
                c += 1
        counts[v] += c
    for b in range(n_maps):
        best = maxima[b]
        for v in range(lo, hi):
            if not active[v]:
                continue
            x = abs(values[b, v]) if absolute else values[b, v]
            if x > best:
                best = x
        maxima[b] = best


@njit(nogil=True, **JIT_STRICT)
def voxelwise_projection(basis, data, perm, signs, out):
    """Projections of one rearrangement on per-voxel bases (randomise ``--vxl``).

    ``out[k, v] = sum_j basis[j, k, v] * signs[j] * data[perm[j], v]``, summed
    over subjects ``j`` in order: the coordinates of the rearranged data
    ``Y*_j = signs_j * W[perm_j]`` on voxel ``v``'s own basis. ``basis`` is
    (n_subjects, p, n_voxels), ``data`` (n_subjects, n_voxels), ``out`` (p, n_voxels)
    float64.
    """
    n, p, n_vox = basis.shape
    for k in range(p):
        for v in range(n_vox):
            out[k, v] = 0.0
    for j in range(n):
        src = perm[j]
        sign = np.float64(signs[j])
        for k in range(p):
            for v in range(n_vox):
                out[k, v] += np.float64(basis[j, k, v]) * (sign * np.float64(data[src, v]))


@njit(parallel=True, **JIT_STRICT)
def cluster_label_maps(stats, threshold, two_sided, neighbours, labels, n_threads):
    """Cluster labels of every row of ``stats``: voxels > threshold (and < -threshold).

    ``labels[b, v]`` is 0 outside clusters and otherwise the smallest voxel
    index of its cluster plus 1 (so labels do not depend on the visiting
    order). Positive and negative voxels never share a cluster.
    """
    n_maps, n_vox = stats.shape
    degree = neighbours.shape[1]
    for t in prange(n_threads):
        parent = np.empty(n_vox, np.int64)
        for b in range(t, n_maps, n_threads):
            row = stats[b]
            for v in range(n_vox):
                x = row[v]
                parent[v] = v if (x > threshold or (two_sided and x < -threshold)) else -1
            for v in range(n_vox):
                if parent[v] < 0:
                    continue
                positive = row[v] > 0
                for k in range(degree):
                    nb = neighbours[v, k]
                    if nb < 0 or parent[nb] < 0 or (row[nb] > 0) != positive:
                        continue
                    a = _label_root(nb, parent)
                    c = _label_root(v, parent)
                    if a != c:
                        if a < c:
                            parent[c] = a
                        else:
                            parent[a] = c
            for v in range(n_vox):
                labels[b, v] = 0 if parent[v] < 0 else _label_root(v, parent) + 1
