"""Threshold-free cluster enhancement (TFCE) of statistic maps.

The public function :func:`tfce` validates its input and calls the compiled
kernels of ``voxstats._tfce_numba``.
"""

import queue

import numpy as np
from scipy import sparse

from . import _tfce_numba
from .graph import grid_graph, graph_from_adjacency
from .image import check_img, read_data

__all__ = ["tfce"]

_MODES = ("exact", "fsl")
_TASK_VOXELS = 2 ** 18  # voxels per task of batch_tfce (rows of small maps go together)


def _check_option(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"Invalid value for the '{name}' parameter. Allowed values are "
                         f"{', '.join(repr(a) for a in allowed)}, but got {value!r} instead.")


#: Most thresholds a stepped (FSL) TFCE may take up to the map's maximum (FSL's default makes 100).
MAX_STEPS = 100_000
# TFCE values are stored in float32 (max 3.4e38); a bound above 1e37 leaves room for permuted maps.
_MAX_LOG10 = 37.0


def _check_params(E, H, mode, dh, *, max_height=None, n_elements=None):
    """Validate TFCE options; with the map's ``max_height``, also the step count and overflow.

    Raises
    ------
    ValueError
        A bad option; a fixed step ``dh`` making more than :data:`MAX_STEPS`
        steps up to ``max_height``; or ``E`` and ``H`` for which TFCE values of
        a map up to ``max_height`` on ``n_elements`` elements could exceed
        float32 (the bound n**E * h**(H+1) / (H+1), or n**E * h**H * h/dh
        stepped).
    """
    _check_option("mode", mode, _MODES)
    for name, value in (("E", E), ("H", H)):
        if np.ndim(value) == 1 and name == "E":  # one E per node (CIFTI: 1 on surfaces, 0.5 in volumes)
            value = np.asarray(value, dtype=np.float64)
            if value.size and np.all(np.isfinite(value)) and np.all(value >= 0):
                continue
            raise ValueError("Invalid value for the 'E' parameter: expected finite numbers >= 0")
        if np.ndim(value) != 0 or not np.isfinite(value) or value < 0:
            raise ValueError(f"Invalid value for the '{name}' parameter: expected a finite number >= 0, "
                             f"got {value!r}")
    if dh is not None:
        if mode != "fsl":
            raise ValueError("The 'dh' parameter (fixed step) only applies to mode='fsl'")
        if not np.isfinite(dh) or dh <= 0:
            raise ValueError(f"Invalid value for the 'dh' parameter: expected a step > 0, got {dh!r}")
    if max_height is None or not np.isfinite(max_height) or max_height <= 0:
        return
    steps = max_height / dh if (mode == "fsl" and dh is not None) else 100.0
    if mode == "fsl" and steps > MAX_STEPS:
        raise ValueError(f"Invalid value for the 'dh' parameter: a step of {dh:g} makes {steps:.3g} steps "
                         f"up to the map's maximum {max_height:.4g}; at most {MAX_STEPS:,} are allowed "
                         "(FSL's default step, the maximum / 100, makes 100)")
    n = max(float(n_elements or 1), 1.0)  # the largest extent: elements, or their total weight
    E = float(np.max(E))
    log_h = np.log10(max_height)
    if mode == "fsl":
        bound = E * np.log10(n) + H * log_h + np.log10(max(steps, 1.0))
    else:
        bound = E * np.log10(n) + (H + 1) * log_h - np.log10(H + 1)
    if bound > _MAX_LOG10:
        raise ValueError(f"Invalid value for the 'H' parameter: with H={H:g} and E={E:g}, TFCE values of a "
                         f"map up to {max_height:.4g} could reach 1e{bound:.0f}, beyond float32 (3.4e38); "
                         "use a smaller H")


def fsl_step(top):
    """FSL's default TFCE step, ``max / 100`` rounded to single precision (randomise's float ``tfceDelta``).

    ``top`` is the maximum of the unpermuted (enhanced) map; 1 when it is not positive.
    """
    return float(np.float32(top / 100.0)) if top > 0 else 1.0


def stepped_table(dh, H, max_height):
    """Thresholds and cumulative height terms of FSL's stepped TFCE.

    As FSL's ``tfce()`` (newimage, randomise 2.9): the threshold starts at 0 and
    grows by ``h += dh`` in single precision (``dh`` itself rounded to float);
    each threshold ``h_k`` adds ``float(h_k**H)`` (a float, as FSL's ``pow`` of
    two floats), and a voxel of value ``s`` receives the steps ``h_k < s``.

    Parameters
    ----------
    dh : float
        The step (> 0).
    H : float
    max_height : float
        The largest value the table must serve.

    Returns
    -------
    thresholds : (n,) ndarray of float64
        ``h_0 = 0 < h_1 < ...``, float32 values, the last one >= ``max_height``.
    cumulative : (n + 1,) ndarray of float64
        ``cumulative[m] = sum_{k < m} float32(h_k**H)``.

    Raises
    ------
    ValueError
        If ``dh`` is so small against ``max_height`` that the single-precision
        threshold stops growing (FSL would loop forever).
    """
    step = np.float32(dh)
    if not step > 0:
        raise ValueError(f"Invalid value for the 'dh' parameter: expected a step > 0 in single precision, "
                         f"got {dh!r}")
    if not max_height / float(step) <= 100 * MAX_STEPS:  # an allocation guard; users hit MAX_STEPS first
        raise ValueError(f"Invalid value for the 'dh' parameter: a step of {dh:g} makes "
                         f"{max_height / float(step):.3g} steps up to {max_height:.4g}")
    n_steps = int(np.ceil(max_height / float(step))) + 3 if max_height > 0 else 3
    while True:
        increments = np.full(n_steps, step, dtype=np.float32)
        increments[0] = 0.0
        thresholds = np.cumsum(increments, dtype=np.float32)  # sequential float32 sums: FSL's h += dh
        if np.any(thresholds[1:] <= thresholds[:-1]):
            raise ValueError(f"Invalid value for the 'dh' parameter: a step of {dh!r} is too small for "
                             f"single-precision thresholds up to {max_height!r}")
        if thresholds[-1] >= max_height:
            break
        n_steps *= 2
    terms = np.power(thresholds.astype(np.float64), H).astype(np.float32)
    cumulative = np.zeros(n_steps + 1)
    cumulative[1:] = np.cumsum(terms.astype(np.float64))
    return thresholds.astype(np.float64), cumulative


def fsl_exponents(E, H):
    """E and H as FSL holds them (single precision)."""
    return float(np.float32(E)), float(np.float32(H))


def _no_table():
    return np.zeros(2), np.zeros(1)


def _graph_for(values, mask, connectivity, weights):
    """Voxel values (1D) and the graph that links them."""
    if sparse.issparse(connectivity):
        flat = np.asarray(values, dtype=np.float64).ravel()
        if mask is not None:
            raise ValueError("mask: not used with a sparse adjacency; pass the values of the graph's nodes")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64).ravel()
        return flat, graph_from_adjacency(connectivity, n_voxels=flat.size, weights=weights)
    if values.ndim not in (2, 3):
        raise ValueError(f"stat: expected a 2D or 3D map (or 1D values with a sparse adjacency), "
                         f"got shape {values.shape}")
    if mask is None:
        mask = np.ones(values.shape, dtype=bool)
    else:
        mask = np.asarray(mask.get_fdata() if hasattr(mask, "get_fdata") else mask) != 0
        if mask.shape != values.shape:
            raise ValueError(f"mask: shape {mask.shape} does not match the map's shape {values.shape}")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != values.shape:
            raise ValueError(f"weights: shape {weights.shape} does not match the map's shape {values.shape}")
        weights = weights[mask]
    graph = grid_graph(mask, connectivity, weights=weights)
    return np.asarray(values[mask], dtype=np.float64), graph


def tfce(stat, *, mask=None, connectivity=6, E=0.5, H=2.0, mode="exact", dh=None, two_sided=True,
         weights=None):
    """Threshold-free cluster enhancement of a statistic map.

    Parameters
    ----------
    stat : ndarray or nibabel image
        A 2D or 3D map, or 1D node values together with a sparse ``connectivity``.
        NaN values are treated as 0 (they take no part in any cluster).
    mask : ndarray or nibabel image, optional
        Voxels outside the mask take no part and get 0.
    connectivity : int or scipy.sparse matrix
        Neighbourhood on the grid: 6, 18 or 26 in 3D, 4 or 8 in 2D. A square
        sparse adjacency matrix (surfaces, graphs) may be given instead.
    E, H : float
        Extent and height exponents (defaults 0.5 and 2; use E=1, H=2 and
        26-connectivity for 2D/skeleton data such as TBSS, E=1, H=2 on surfaces).
    mode : {'exact', 'fsl'}
        ``'exact'``: the integral, without step error. ``'fsl'``: FSL randomise's
        stepped sum (see Notes).
    dh : float, optional
        Step for ``mode='fsl'``. Default: max(|stat|) / 100 (max(stat) / 100
        when one-sided), in single precision.
    two_sided : bool
        Enhance the negative part too (as negative TFCE values). If False, voxels
        <= 0 get 0.
    weights : ndarray, optional
        Extent weight of each node, the shape of ``stat`` (e.g. vertex areas in
        mm^2 on a mesh, PALM's area-weighted TFCE): a cluster's extent is the
        sum of its nodes' weights instead of their number. Finite and >= 0.

    Returns
    -------
    ndarray or nibabel image
        TFCE values, of the same shape (and kind) as ``stat``, float64.

    Raises
    ------
    ValueError
        For an unknown mode or connectivity, negative E or H, a step <= 0 (or
        given in exact mode), or a mask or weights of another shape.

    Notes
    -----
    With e_v(h) the extent (number of voxels, or sum of weights) of the
    cluster containing voxel v among voxels whose value exceeds h, and s(v)
    the value at v:

    - ``mode='exact'`` computes TFCE(v) = integral from 0 to s(v) of
      e_v(h)**E * h**H dh exactly. Voxels are visited once by decreasing value
      and clusters merged with a union-find; each cluster adds
      e**E * (h_hi**(H+1) - h_lo**(H+1)) / (H+1) over each height interval in
      which it does not change.
    - ``mode='fsl'`` follows FSL randomise 2.9 (``tfce()`` in newimage): the map
      is taken in single precision; thresholds h_0 = 0, h_{k+1} = h_k + dh
      accumulated in single precision (so whether the peak gets its last step
      depends on float rounding, as in FSL); voxels strictly above the
      threshold; each threshold adds e_v(h)**E * float(h**H), **without**
      multiplication by dh. In a permutation test dh is fixed from the
      unpermuted map for all permutations. FSL accumulates each voxel's sum in
      single precision; here it is summed in double (the difference is in the
      7th significant digit). The stepped sum times dh converges to the exact
      integral as dh shrinks.
    - Volume border: on a grid, ``mode='fsl'`` leaves the outermost layer of
      the volume (any index 0 or dim-1) at 0 and out of every cluster, as FSL
      does (its loop visits indices 1..dim-2 only); a grid with fewer than 3
      voxels along an axis is all border (FSL refuses such input).
      ``mode='exact'`` enhances the border like any other voxel. Graphs from a
      sparse adjacency have no border.
    - Below the first step (0 < s(v) <= dh in FSL mode) the value is exactly 0.
    - Both signs are enhanced separately when ``two_sided`` (clusters never mix
      signs) and negative voxels receive negative TFCE. F statistics should be
      converted to z first, as randomise does (``voxstats.glm.f_to_z``).
    - Clusters are formed with the given connectivity (6 by default, FSL's
      default; nilearn uses 6, CAT12's ``tfce`` package 26).

    References
    ----------
    Smith SM, Nichols TE (2009). Threshold-free cluster enhancement. NeuroImage
    44:83-98. doi:10.1016/j.neuroimage.2008.03.061
    """
    _check_params(E, H, mode, dh)
    img = None
    if hasattr(stat, "affine"):
        img = check_img(stat, name="stat", ndim=(2, 3))
        values = read_data(img, name="stat", dtype=np.float64)
    else:
        values = np.array(stat, dtype=np.float64)
    values = np.where(np.isfinite(values), values, 0.0)
    flat, graph = _graph_for(values, mask, connectivity, weights)
    out_flat = tfce_values(flat, graph, E=E, H=H, mode=mode, dh=dh, two_sided=two_sided)
    if sparse.issparse(connectivity):
        out = out_flat.reshape(np.shape(stat))
    else:
        out = np.zeros(values.shape)
        out[graph.mask] = out_flat
    if img is not None:
        import nibabel as nib
        return nib.Nifti1Image(out, img.affine, img.header)
    return out


def kernel_options(graph, fsl):
    """(weights, skip) arrays for the kernels: empty arrays mean unweighted / skip nothing."""
    weights = graph.weights if graph.weights is not None else np.zeros(0)
    skip = graph.border if fsl and graph.border is not None else np.zeros(0, dtype=bool)
    return weights, skip


def exponent_parts(graph, E):
    """[(nodes, subgraph, E)] for a per-node ``E``: one part per distinct value; None for a scalar.

    No edge may join nodes of different E (a cluster has one extent exponent).
    The parts are cached on the graph.
    """
    if np.ndim(E) == 0:
        return None
    E = np.asarray(E, dtype=np.float64)
    if E.shape != (graph.n_voxels,):
        raise ValueError(f"E: expected one exponent per node ({graph.n_voxels}), got shape {E.shape}")
    key = E.tobytes()
    cache = graph.__dict__.setdefault("_exponent_parts", {})
    if key not in cache:
        from .graph import subgraph

        table = graph.neighbours
        linked = table >= 0
        rows = np.broadcast_to(np.arange(graph.n_voxels)[:, None], table.shape)
        if np.any(E[rows[linked]] != E[table[linked]]):
            raise ValueError("E: neighbouring nodes have different extent exponents")
        cache.clear()
        cache[key] = [(nodes, subgraph(graph, nodes), float(value))
                      for value in np.unique(E) for nodes in [np.flatnonzero(E == value)]]
    return cache[key]


def extent_total(graph):
    """The largest possible cluster extent: the number of nodes, or their total weight."""
    return float(graph.weights.sum()) if graph.weights is not None else float(graph.n_voxels)


def batch_tfce(maps, graph, *, E=0.5, H=2.0, fsl=False, dh=None, two_sided=True, pool=None, out=None):
    """TFCE of every row of ``maps`` ((n_maps, n_voxels) float32) on ``graph``, into float32 ``out``.

    The engine's kernel: each row is sorted by a float32 radix sort and swept.
    With a ``pool`` (``concurrent.futures`` executor of threads) the rows are
    dealt to its threads dynamically, in tasks of about ``_TASK_VOXELS``
    voxels (a thread that the system holds back takes fewer); a row's result
    does not depend on the thread that computes it. ``dh`` (FSL mode) is
    required: it is fixed from the unpermuted map for all rows. Conventions as
    :func:`tfce`.
    """
    maps = np.ascontiguousarray(maps, dtype=np.float32)
    if out is None:
        out = np.empty(maps.shape, dtype=np.float32)
    parts = exponent_parts(graph, E)
    if parts is not None:  # one E per node: the parts (no edge between them) apart
        for nodes, part, value in parts:
            out[:, nodes] = batch_tfce(maps[:, nodes], part, E=value, H=H, fsl=fsl, dh=dh, two_sided=two_sided,
                                       pool=pool)
        return out
    if fsl:
        if dh is None:
            raise ValueError("batch_tfce: FSL mode needs the step 'dh' of the unpermuted map")
        E, H = fsl_exponents(E, H)
        # FSL's thresholds are one fixed sequence: a longer table for a larger maximum only
        # extends it, so a map gets the same values whatever the other maps of its batch
        top = float(np.abs(maps).max()) if maps.size else 0.0
        thresholds, cumulative = stepped_table(dh, H, top)
    else:
        thresholds, cumulative = _no_table()
    weights, skip = kernel_options(graph, fsl)
    n_maps, n_vox = maps.shape
    degree = graph.neighbours.shape[1]
    step = max(1, -(-_TASK_VOXELS // max(n_vox, 1)))
    tasks = [(lo, min(lo + step, n_maps)) for lo in range(0, n_maps, step)]
    spare = queue.SimpleQueue()  # one work space per thread, made on first need

    def run(task):
        try:
            work = spare.get_nowait()
        except queue.Empty:
            work = _tfce_numba.tfce_work(n_vox, degree)
        _tfce_numba.tfce_rows(maps, task[0], task[1], graph.neighbours, weights, skip, bool(two_sided),
                              float(E), float(H), bool(fsl), thresholds, cumulative, out, *work)
        spare.put(work)

    if pool is None or len(tasks) < 2:
        for task in tasks:
            run(task)
    else:
        list(pool.map(run, tasks))
    return out


def tfce_values(values, graph, *, E=0.5, H=2.0, mode="exact", dh=None, two_sided=True):
    """TFCE of float64 node values on a :class:`~voxstats.graph.VoxelGraph` (see :func:`tfce`).

    ``E`` may be one exponent per node (parts that no edge joins, run apart
    with one step for the whole map in FSL mode).
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    parts = exponent_parts(graph, E)
    if parts is not None:
        if mode == "fsl" and dh is None:
            top = float((np.abs(values) if two_sided else np.maximum(values, 0.0)).max()) if values.size else 0.0
            dh = fsl_step(float(np.float32(top)))
        out = np.zeros(values.shape)
        for nodes, part, value in parts:
            out[nodes] = tfce_values(values[nodes], part, E=value, H=H, mode=mode, dh=dh, two_sided=two_sided)
        return out
    fsl = mode == "fsl"
    if fsl:  # FSL works on a single-precision map
        values = values.astype(np.float32).astype(np.float64)
    enhanced = np.abs(values) if two_sided else np.maximum(values, 0.0)
    top = float(enhanced.max()) if enhanced.size else 0.0
    _check_params(E, H, mode, dh, max_height=top, n_elements=extent_total(graph))
    if fsl:
        E, H = fsl_exponents(E, H)
        dh = dh if dh is not None else fsl_step(top)
        thresholds, cumulative = stepped_table(dh, H, top)
    else:
        thresholds, cumulative = _no_table()
    weights, skip = kernel_options(graph, fsl)
    order = np.argsort(-np.abs(values))  # ties may come in any order: they add nothing
    return _tfce_numba.tfce_graph(values, order, graph.neighbours, weights, skip, bool(two_sided),
                                  float(E), float(H), fsl, thresholds, cumulative)
