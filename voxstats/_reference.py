"""Slow, obviously correct twins of the compiled kernels, for the tests.

They use ``scipy.ndimage.label`` (grids) or ``scipy.sparse.csgraph`` (graphs)
at every threshold, and plain NumPy least squares.
"""

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

__all__ = ["cluster_sizes_reference", "tfce_fsl_reference", "tfce_reference", "permuted_t_reference",
           "weighted_cluster_reference", "weighted_tfce_reference"]

_STRUCTURES = {(2, 4): 1, (2, 8): 2, (3, 6): 1, (3, 18): 2, (3, 26): 3}


def _label(binary, connectivity):
    """Component labels of ``binary`` on a grid or on a sparse adjacency."""
    if sparse.issparse(connectivity):
        nodes = np.flatnonzero(binary)
        sub = connectivity.tocsr()[nodes][:, nodes]
        n, lab = csgraph.connected_components(sub, directed=False)
        labels = np.zeros(binary.shape, dtype=int)
        labels[nodes] = lab + 1
        return labels, n
    rank = _STRUCTURES[(binary.ndim, connectivity)]
    structure = ndimage.generate_binary_structure(binary.ndim, rank)
    return ndimage.label(binary, structure=structure)


def _sizes_map(binary, connectivity, weights=None):
    """Each voxel's cluster extent (count, or sum of ``weights``); 0 outside clusters."""
    labels, n = _label(binary, connectivity)
    w = None if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    sizes = np.bincount(labels.ravel(), weights=w, minlength=n + 1).astype(float)
    sizes[0] = 0
    return sizes[labels], labels > 0


def tfce_reference(stat, *, connectivity=6, E=0.5, H=2.0, mode="exact", dh=None, two_sided=True,
                   weights=None):
    """TFCE by labelling at every threshold.

    ``exact``: between consecutive distinct values the clusters are fixed, so the
    integral over each interval is extent**E * (h_hi**(H+1) - h_lo**(H+1))/(H+1).
    ``fsl``: :func:`tfce_fsl_reference` (FSL's loop) with the sums in double.
    ``weights`` (the shape of ``stat``): extent = sum of the weights in a cluster.
    """
    if mode == "fsl":
        return tfce_fsl_reference(stat, connectivity=connectivity, E=E, H=H, dh=dh, two_sided=two_sided,
                                  weights=weights, accumulate=np.float64)
    stat = np.asarray(stat, dtype=np.float64)
    out = np.zeros_like(stat)
    for sign in ((1, -1) if two_sided else (1,)):
        x = sign * stat
        levels = np.unique(x[x > 0])[::-1]
        for i, h_hi in enumerate(levels):
            h_lo = levels[i + 1] if i + 1 < len(levels) else 0.0
            sizes, inside = _sizes_map(x >= h_hi, connectivity, weights)
            out += np.where(inside, sign * sizes ** E * (h_hi ** (H + 1) - h_lo ** (H + 1)) / (H + 1), 0.0)
    return out


def tfce_fsl_reference(stat, *, connectivity=6, E=0.5, H=2.0, dh=None, two_sided=False, weights=None,
                       accumulate=np.float32):
    """FSL randomise's stepped TFCE, written out as its loop (newimage ``tfce()``, FSL 6 / randomise 2.9).

    The map is single precision; on a grid, voxels with an index 0 or dim-1 on
    any axis are left out (FSL visits indices 1..dim-2). ``dh`` defaults to
    ``float(max / 100)``; E and H are floats. The threshold starts at 0 and
    ``thr += dh`` in float while ``thr < float(max + dh)``; at each threshold
    the voxels ``> thr`` are labelled (``scipy.ndimage.label``, or connected
    components of a sparse adjacency, which has no border) and each voxel of a
    cluster of extent e gets ``e**E * float(thr**H)`` (double) added to its sum,
    kept in ``accumulate`` precision (float32 as FSL's ``volume<float>``).
    ``two_sided`` repeats the loop on the negated map (same dh) and subtracts.
    """
    data = np.asarray(stat, dtype=np.float32)
    E, H = np.float64(np.float32(E)), np.float64(np.float32(H))
    inside = np.ones(data.shape, dtype=bool)
    if not sparse.issparse(connectivity):
        inside[...] = False
        inside[tuple(slice(1, max(n - 1, 1)) for n in data.shape)] = True
    signs = (1, -1) if two_sided else (1,)
    top = max(np.float32(np.max(s * data)) for s in signs) if data.size else np.float32(0)
    if dh is None:
        dh = np.float64(top) / 100.0 if top > 0 else 1.0
    step = np.float32(dh)
    out = np.zeros(data.shape, dtype=accumulate)
    for sign in signs:
        x = np.where(inside, sign * data, np.float32(0))
        bound = np.float32(np.float32(x.max()) + step)
        thr = np.float32(0)
        while thr < bound:
            sizes, member = _sizes_map(x > thr, connectivity, weights)
            height = np.float32(np.float64(thr) ** H)
            add = sizes ** E * np.float64(height)
            total = out.astype(np.float64) + sign * add
            out = np.where(member, total.astype(accumulate), out)
            thr = np.float32(thr + step)
    return out.astype(np.float64)


def cluster_sizes_reference(stat, threshold, connectivity=6, two_sided=True, weights=None):
    """(largest extent, largest mass) of clusters above threshold, by labelling.

    Extent is the number of voxels and mass the sum of |stat|, or with
    ``weights`` the sums of the weights and of weight * |stat| over the cluster.
    """
    best_e, best_m = 0, 0.0
    w = np.ones(np.shape(stat)) if weights is None else np.asarray(weights, dtype=np.float64)
    for sign in ((1, -1) if two_sided else (1,)):
        x = sign * np.asarray(stat, dtype=np.float64)
        labels, n = _label(x > threshold, connectivity)
        for lab in range(1, n + 1):
            sel = labels == lab
            best_e = max(best_e, float(w[sel].sum()))
            best_m = max(best_m, float((w[sel] * np.abs(x[sel])).sum()))
    return best_e, best_m


def permuted_t_reference(data, design, contrast, permutation, signs=None):
    """Freedman-Lane t for one rearrangement by an explicit refit of P R_z Y + H_z Y."""
    from .glm import contrast_statistic, effect_basis

    basis = effect_basis(design, contrast)
    z = basis.nuisance
    y = np.asarray(data, dtype=np.float64)
    fitted_z = z @ (z.T @ y) if z.shape[1] else np.zeros_like(y)
    resid_z = y - fitted_z
    star = resid_z[permutation]
    if signs is not None:
        star = star * np.asarray(signs, dtype=float)[:, np.newaxis]
    star = star + fitted_z
    return contrast_statistic(star, design, contrast)[0]


def _weighted_cluster_sizes(binary, adjacency, weights):
    """Each node's cluster extent (sum of ``weights`` over its component), 0 off ``binary``."""
    nodes = np.flatnonzero(binary)
    out = np.zeros(binary.size)
    if nodes.size == 0:
        return out
    sub = sparse.csr_matrix(adjacency)[nodes][:, nodes]
    _, lab = csgraph.connected_components(sub, directed=False)
    out[nodes] = np.bincount(lab, weights=weights[nodes])[lab]
    return out


def weighted_tfce_reference(values, adjacency, weights, *, E=1.0, H=2.0, two_sided=True,
                            mode="exact", dh=None):
    """TFCE on a graph whose nodes carry extents (vertex areas), by labelling at every level.

    A cluster's extent is the sum of its nodes' ``weights``. ``exact``: the
    subgraph above every distinct value is labelled with
    ``scipy.sparse.csgraph.connected_components``; between two consecutive values
    the clusters are fixed and add extent**E * (h_hi**(H+1) - h_lo**(H+1))/(H+1).
    ``palm``: PALM's stepped sum (``palm_tfce.m``): thresholds h = dh, 2 dh, ...
    up to the map's maximum, nodes >= h, extent**E * h**H per step, the sum
    multiplied by dh; dh = max / 100 of the enhanced map unless given. ``fsl``:
    thresholds 0, dh, 2 dh, ..., nodes > h, no multiplication by dh.
    """
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    out = np.zeros_like(values)
    for sign in ((1, -1) if two_sided else (1,)):
        x = sign * values
        if not np.any(x > 0):
            continue
        if mode == "exact":
            levels = np.unique(x[x > 0])[::-1]
            for i, h_hi in enumerate(levels):
                h_lo = levels[i + 1] if i + 1 < len(levels) else 0.0
                extent = _weighted_cluster_sizes(x >= h_hi, adjacency, weights)
                out += sign * extent ** E * (h_hi ** (H + 1) - h_lo ** (H + 1)) / (H + 1) * (extent > 0)
            continue
        top = x.max()
        step = dh if dh is not None else top / 100.0
        acc = np.zeros_like(values)
        if mode == "palm":
            # Octave's range dh:dh:top: as many steps as fit (with a tolerance), the last one <= top
            thresholds = np.minimum(step * np.arange(1, int(np.floor(top / step + 1e-10)) + 1), top)
        else:
            thresholds = step * np.arange(int(np.ceil(top / step)) + 1)
            thresholds = thresholds[thresholds < top]
        for h in thresholds:
            extent = _weighted_cluster_sizes(x >= h if mode == "palm" else x > h, adjacency, weights)
            acc += np.where(extent > 0, extent ** E * h ** H, 0.0)
        out += sign * (acc * step if mode == "palm" else acc)
    return out


def weighted_cluster_reference(values, threshold, adjacency, weights, *, two_sided=True):
    """Clusters of nodes beyond ``threshold``: (largest extent, largest mass).

    Extent is the sum of ``weights``; mass the sum of ``weights * |value|`` (the
    integral of the statistic over the cluster's area).
    """
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    best_e, best_m = 0.0, 0.0
    for sign in ((1, -1) if two_sided else (1,)):
        nodes = np.flatnonzero(sign * values > threshold)
        if nodes.size == 0:
            continue
        sub = sparse.csr_matrix(adjacency)[nodes][:, nodes]
        _, lab = csgraph.connected_components(sub, directed=False)
        best_e = max(best_e, np.bincount(lab, weights=weights[nodes]).max())
        best_m = max(best_m, np.bincount(lab, weights=weights[nodes] * np.abs(values[nodes])).max())
    return best_e, best_m
