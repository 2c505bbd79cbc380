"""numba kernels of TFCE, cluster labelling and statistics from projections.

Voxels are the nodes of a graph given as a padded neighbour table
``neighbours[v, :]`` (-1 pads the rows of voxels with fewer neighbours), so one
kernel serves 2D and 3D grids of any connectivity and surface meshes. Every
TFCE and cluster kernel takes ``weights`` (a cluster's extent is the sum of
its nodes' weights; an empty array means 1 per node) and ``skip`` (nodes that
take no part, e.g. the volume border in FSL mode; empty: none). The plain
NumPy/SciPy twins used by the tests live in ``voxstats/_reference.py``.

The exact TFCE sweep
--------------------
Voxels are visited once, by decreasing ``|value|``, and joined to their already
visited neighbours of the same sign with a union-find. Between two visits the
clusters do not change, so each cluster's contribution over a height interval
``[h_lo, h_hi]`` is ``extent**E * (F(h_hi) - F(h_lo))``. Every visit that joins
a cluster (or starts one) opens a new interval for it, whose contribution is
recorded, once the interval closes, at the voxel that opened it (its
*accumulator*); the accumulators of the clusters a voxel joins point to it.
These links form a tree (Kruskal's reconstruction tree) in which a voxel's TFCE
is the sum of the contributions on its path to the root, computed for all
voxels in one pass in reverse visiting order. Every term is >= 0: nothing
cancels, so a voxel whose every interval adds nothing (below FSL's first step)
gets exactly 0, and tiny values keep their relative precision.

``F`` is ``h**(H+1)/(H+1)`` for the exact integral, or, for FSL's stepped
convention, the cumulative sum of ``h_k**H`` over the thresholds ``h_k < h``
(``h_k`` accumulated in single precision as FSL does, see ``voxstats.tfce``).

Visiting by value jumps around memory, so the per-voxel union-find data live in
one record per voxel (``node[v] = parent, extent, last F, accumulator``) and
the records of voxels a few steps ahead are prefetched.
"""

import numpy as np

from ._numba import JIT, njit, prange, prefetch

_AHEAD = 16  # visits between a prefetch and the use of the data
PARENT, SIZE, LAST, ACC = 0, 1, 2, 3


@njit(**JIT)
def _height_term(h, H, fsl, thresholds, cumulative):
    """F(h): the integral of h'**H from 0 to h (exact) or the stepped sum (FSL).

    FSL: ``cumulative[m]`` with m the number of ``thresholds`` (increasing,
    ``thresholds[0] = 0``) strictly below h.
    """
    if not fsl:
        if H == 2.0:
            return h * h * h / 3.0
        return h ** (H + 1.0) / (H + 1.0)
    n_thr = thresholds.shape[0]
    m = min(int(h / thresholds[1]), n_thr)  # thresholds[k] is about k * dh
    while m > 0 and thresholds[m - 1] >= h:
        m -= 1
    while m < n_thr and thresholds[m] < h:
        m += 1
    return cumulative[m]


@njit(**JIT)
def _find(x, node):
    """Root of ``x`` (path halving)."""
    while True:
        up = np.int64(node[x, PARENT])
        if up == x:
            return x
        grand = np.int64(node[up, PARENT])
        node[x, PARENT] = grand
        x = grand


@njit(**JIT)
def _radix_order_desc(keys, n, order, key_buf, key_tmp, idx_tmp, hist):
    """Stable LSD radix sort of ``keys[:n]`` (uint32) in decreasing order.

    ``order[:n]`` holds a payload per key (e.g. voxel indices) and is permuted
    with the keys; ``key_buf[:n]`` receives the complemented keys
    (``0xFFFFFFFF - key``) in the sorted order.
    """
    for i in range(n):
        key_buf[i] = np.uint32(0xFFFFFFFF) - keys[i]
    for shift in (0, 11, 22):
        hist[:] = 0
        for i in range(n):
            hist[((key_buf[i] >> shift) & 2047) + 1] += 1
        for b in range(2048):
            hist[b + 1] += hist[b]
        for i in range(n):
            b = (key_buf[i] >> shift) & 2047
            pos = hist[b]
            hist[b] = pos + 1
            key_tmp[pos] = key_buf[i]
            idx_tmp[pos] = order[i]
        for i in range(n):
            key_buf[i] = key_tmp[i]
            order[i] = idx_tmp[i]


@njit(**JIT)
def _tfce_sweep(visit, visit_height, n_active, state, neighbours, weights, E, H, fsl, thresholds,
                cumulative, out, node, up, val, roots):
    """One TFCE pass over the voxels ``visit[:n_active]`` (by decreasing height).

    ``visit_height[j]`` is |value| of ``visit[j]``; ``state[v]`` is the sign of an
    active voxel (+1 or -1) and 0 for voxels that take no part. ``out`` receives
    sign * TFCE, 0 elsewhere. ``node``, ``up`` (accumulator links), ``val``
    (contributions) and ``roots`` are work space; ``state`` is restored on
    return. A visited voxel's state is doubled (+2/-2), so the test of a
    neighbour reads one byte (an array that stays in cache).
    """
    n_vox = out.shape[0]
    degree = neighbours.shape[1]
    weighted = weights.shape[0] > 0
    for i in range(n_vox):
        out[i] = 0.0
    for j in range(n_active):
        if j + 2 * _AHEAD < n_active:
            prefetch(neighbours, visit[j + 2 * _AHEAD] * degree)
        if j + _AHEAD < n_active:
            ahead = visit[j + _AHEAD]
            prefetch(node, ahead * 4)
            for k in range(degree):
                nb = neighbours[ahead, k]
                if nb >= 0:
                    prefetch(node, nb * 4)
                    prefetch(state, nb)
        v = visit[j]
        term = _height_term(np.float64(visit_height[j]), H, fsl, thresholds, cumulative)
        visited = 2 * state[v]
        # distinct roots of the visited neighbours of the same sign
        n_roots = 0
        for k in range(degree):
            nb = neighbours[v, k]
            if nb < 0 or state[nb] != visited:
                continue
            r = _find(nb, node)
            seen = False
            for m in range(n_roots):
                if roots[m] == r:
                    seen = True
                    break
            if not seen:
                roots[n_roots] = r
                n_roots += 1
        state[v] = visited
        w = weights[v] if weighted else 1.0
        if n_roots == 0:  # a new cluster is born at this height; v opens its first interval
            node[v, PARENT] = v
            node[v, SIZE] = w
            node[v, LAST] = term
            node[v, ACC] = v
            continue
        # close the clusters' intervals at this height; the largest absorbs the others and v
        big = roots[0]
        for m in range(n_roots):
            r = roots[m]
            a = np.int64(node[r, ACC])
            val[a] = _size_pow(node[r, SIZE], E) * (node[r, LAST] - term)
            up[a] = v
            if node[r, SIZE] > node[big, SIZE]:
                big = r
        for m in range(n_roots):
            r = roots[m]
            if r != big:
                node[r, PARENT] = big
                node[big, SIZE] += node[r, SIZE]
        node[v, PARENT] = big
        node[big, SIZE] += w
        node[big, LAST] = term
        node[big, ACC] = v
    base = _height_term(0.0, H, fsl, thresholds, cumulative)
    for j in range(n_active):
        r = visit[j]
        if node[r, PARENT] == r:  # the last interval of each cluster ends at height 0
            a = np.int64(node[r, ACC])
            val[a] = _size_pow(node[r, SIZE], E) * (node[r, LAST] - base)
            up[a] = -1
    # a voxel's TFCE: its own contribution plus its accumulator parent's total
    for j in range(n_active - 1, -1, -1):
        v = visit[j]
        p = up[v]
        total = val[v] if p < 0 else val[v] + val[p]
        val[v] = total
        if state[v] > 0:
            out[v] = total
            state[v] = 1
        else:
            out[v] = -total
            state[v] = -1


@njit(**JIT)
def _size_pow(size, E):
    """size**E, with the common exponents computed without pow()."""
    if E == 0.5:
        return np.sqrt(size)
    if E == 1.0:
        return size
    return size ** E


@njit(**JIT)
def tfce_graph(values, order, neighbours, weights, skip, two_sided, E, H, fsl, thresholds, cumulative):
    """TFCE of one float64 map; ``order`` sorts |values| decreasingly."""
    n_vox = values.shape[0]
    state = np.zeros(n_vox, dtype=np.int8)
    visit = np.empty(n_vox, dtype=np.int64)
    visit_height = np.empty(n_vox)
    skipping = skip.shape[0] > 0
    n_active = 0
    for j in range(n_vox):
        v = order[j]
        x = values[v]
        if skipping and skip[v]:
            continue
        if x > 0 or (two_sided and x < 0):
            state[v] = 1 if x > 0 else -1
            visit[n_active] = v
            visit_height[n_active] = abs(x)
            n_active += 1
    out = np.zeros(n_vox)
    _tfce_sweep(visit, visit_height, n_active, state, neighbours, weights, E, H, fsl, thresholds,
                cumulative, out, np.empty((n_vox, 4)), np.empty(n_vox, np.int64), np.empty(n_vox),
                np.empty(max(neighbours.shape[1], 1), np.int64))
    return out


@njit(parallel=True, **JIT)
def tfce_batch(stats, neighbours, weights, skip, two_sided, E, H, fsl, thresholds, cumulative, out,
               n_threads):
    """TFCE of every row of ``stats`` (float32, (n_maps, n_voxels)) into ``out``.

    Rows are dealt to threads in a fixed pattern and each thread owns its work
    space, so the result does not depend on the number of threads.
    """
    n_maps, n_vox = stats.shape
    skipping = skip.shape[0] > 0
    for t in prange(n_threads):
        state = np.empty(n_vox, np.int8)
        keys = np.empty(n_vox, np.uint32)
        visit = np.empty(n_vox, np.int64)
        key_buf = np.empty(n_vox, np.uint32)
        key_tmp = np.empty(n_vox, np.uint32)
        idx_tmp = np.empty(n_vox, np.int64)
        visit_height = np.empty(n_vox, np.float32)
        visit_bits = visit_height.view(np.uint32)
        node = np.empty((n_vox, 4))
        up = np.empty(n_vox, np.int64)
        val = np.empty(n_vox)
        roots = np.empty(max(neighbours.shape[1], 1), np.int64)
        hist = np.empty(2049, np.int64)
        for b in range(t, n_maps, n_threads):
            row = stats[b]
            row_bits = row.view(np.uint32)
            n_active = 0
            for v in range(n_vox):
                x = row[v]
                if skipping and skip[v]:
                    state[v] = 0
                elif x > 0:
                    state[v] = 1
                elif two_sided and x < 0:
                    state[v] = -1
                else:
                    state[v] = 0
                if state[v] == 0:
                    continue
                keys[n_active] = row_bits[v] & np.uint32(0x7FFFFFFF)  # |x| as ordered bits
                visit[n_active] = v
                n_active += 1
            _radix_order_desc(keys, n_active, visit, key_buf, key_tmp, idx_tmp, hist)
            for j in range(n_active):
                visit_bits[j] = np.uint32(0xFFFFFFFF) - key_buf[j]
            _tfce_sweep(visit, visit_height, n_active, state, neighbours, weights, E, H, fsl,
                        thresholds, cumulative, out[b], node, up, val, roots)


@njit(**JIT)
def _label_root(x, parent):
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving
        x = parent[x]
    return x


@njit(parallel=True, **JIT)
def cluster_maxima_batch(stats, threshold, two_sided, neighbours, weights, max_extent, max_mass, n_threads):
    """Largest cluster extent and mass of every row of ``stats`` beyond ``threshold``.

    Clusters hold voxels > threshold (and, when two-sided, voxels < -threshold,
    never mixed with positive ones). Extent is the number of voxels, or the sum
    of ``weights`` when given (non-empty); mass is the sum of |statistic|.
    """
    n_maps, n_vox = stats.shape
    degree = neighbours.shape[1]
    weighted = weights.shape[0] > 0
    for t in prange(n_threads):
        parent = np.empty(n_vox, np.int64)
        size = np.empty(n_vox, np.int64)
        extent = np.empty(n_vox)
        mass = np.empty(n_vox)
        for b in range(t, n_maps, n_threads):
            row = stats[b]
            for v in range(n_vox):
                x = row[v]
                if x > threshold or (two_sided and x < -threshold):
                    parent[v] = v
                    size[v] = 1
                    extent[v] = weights[v] if weighted else 1.0
                    mass[v] = abs(x)
                else:
                    parent[v] = -1
            for v in range(n_vox):
                if parent[v] < 0:
                    continue
                positive = row[v] > 0
                for k in range(degree):
                    nb = neighbours[v, k]
                    if nb < 0 or nb >= v or parent[nb] < 0 or (row[nb] > 0) != positive:
                        continue
                    r = _label_root(nb, parent)
                    rv = _label_root(v, parent)
                    if r == rv:
                        continue
                    if size[r] < size[rv]:
                        r, rv = rv, r
                    parent[rv] = r
                    size[r] += size[rv]
                    extent[r] += extent[rv]
                    mass[r] += mass[rv]
            best_e = 0.0
            best_m = 0.0
            for v in range(n_vox):
                if parent[v] == v:
                    best_e = max(best_e, extent[v])
                    best_m = max(best_m, mass[v])
            max_extent[b] = best_e
            max_mass[b] = best_m


@njit(nogil=True, **JIT)
def stats_from_projection(proj, sum_sq, df, p, q, f_test, out):
    """t or F statistics of a group of rearrangements from their projections.

    ``proj`` is (n_maps * p, n_voxels): for map b, rows b*p .. b*p+p-1 hold the
    data's coordinates g on the basis [tested (q vectors), nuisance]; ``sum_sq``
    is each voxel's sum of squares, so RSS = sum_sq - |g|^2. Then
    t = g0 / sqrt(RSS / df) (q = 1) or F = (|g[:q]|^2 / q) / (RSS / df), and 0
    where RSS is not positive. Releases the GIL: callers run blocks of voxels
    on several threads.
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
                out[b, v] = first[v] / np.sqrt(rss / df)


@njit(parallel=True, **JIT)
def exceedances(values, observed, absolute, counts, maxima):
    """Add #{rows with values >= observed} per voxel to ``counts``; row maxima.

    With ``absolute`` both sides are compared in absolute value.
    """
    n_maps, n_vox = values.shape
    n_blocks = (n_vox + 4095) // 4096
    for block in prange(n_blocks):
        lo = block * 4096
        hi = min(lo + 4096, n_vox)
        for v in range(lo, hi):
            ref = abs(observed[v]) if absolute else observed[v]
            c = 0
            for b in range(n_maps):
                x = abs(values[b, v]) if absolute else values[b, v]
                if x >= ref:
                    c += 1
            counts[v] += c
    for b in prange(n_maps):
        best = -np.inf
        for v in range(n_vox):
            x = abs(values[b, v]) if absolute else values[b, v]
            if x > best:
                best = x
        maxima[b] = best
