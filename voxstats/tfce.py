"""Threshold-free cluster enhancement (TFCE) of statistic maps.

The public function :func:`tfce` validates its input and calls the compiled
kernels of ``voxstats._tfce_numba``.
"""

import numpy as np
from scipy import sparse

from . import _tfce_numba
from .graph import grid_graph, graph_from_adjacency
from .image import check_img, read_data

__all__ = ["tfce"]

_MODES = ("exact", "fsl")


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
        if not np.isfinite(value) or value < 0:
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
    n = max(int(n_elements or 1), 1)
    log_h = np.log10(max_height)
    if mode == "fsl":
        bound = E * np.log10(n) + H * log_h + np.log10(max(steps, 1.0))
    else:
        bound = E * np.log10(n) + (H + 1) * log_h - np.log10(H + 1)
    if bound > _MAX_LOG10:
        raise ValueError(f"Invalid value for the 'H' parameter: with H={H:g} and E={E:g}, TFCE values of a "
                         f"map up to {max_height:.4g} could reach 1e{bound:.0f}, beyond float32 (3.4e38); "
                         "use a smaller H")


def stepped_table(dh, H, max_height):
    """Cumulative sums ``T[m] = sum_{k=0}^{m-1} (k*dh)**H`` for FSL-style TFCE.

    Long enough for any height up to ``max_height``.
    """
    if not max_height / dh <= 100 * MAX_STEPS:  # an allocation guard; users hit MAX_STEPS first
        raise ValueError(f"Invalid value for the 'dh' parameter: a step of {dh:g} makes "
                         f"{max_height / dh:.3g} steps up to {max_height:.4g}")
    n_steps = int(np.ceil(max_height / dh)) + 3
    heights = np.arange(n_steps, dtype=np.float64) * dh
    table = np.zeros(n_steps + 1)
    table[1:] = np.cumsum(heights ** H)
    return table


def _graph_for(values, mask, connectivity):
    """Voxel values (1D) and the graph that links them."""
    if sparse.issparse(connectivity):
        flat = np.asarray(values, dtype=np.float64).ravel()
        if mask is not None:
            raise ValueError("mask: not used with a sparse adjacency; pass the values of the graph's nodes")
        return flat, graph_from_adjacency(connectivity, n_voxels=flat.size)
    if values.ndim not in (2, 3):
        raise ValueError(f"stat: expected a 2D or 3D map (or 1D values with a sparse adjacency), "
                         f"got shape {values.shape}")
    if mask is None:
        mask = np.ones(values.shape, dtype=bool)
    else:
        mask = np.asarray(mask.get_fdata() if hasattr(mask, "get_fdata") else mask) != 0
        if mask.shape != values.shape:
            raise ValueError(f"mask: shape {mask.shape} does not match the map's shape {values.shape}")
    graph = grid_graph(mask, connectivity)
    return np.asarray(values[mask], dtype=np.float64), graph


def tfce(stat, *, mask=None, connectivity=6, E=0.5, H=2.0, mode="exact", dh=None, two_sided=True):
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
        26-connectivity for 2D/skeleton data such as TBSS).
    mode : {'exact', 'fsl'}
        ``'exact'``: the integral, without step error. ``'fsl'``: FSL randomise's
        stepped sum (see Notes).
    dh : float, optional
        Step for ``mode='fsl'``. Default: max(|stat|) / 100.
    two_sided : bool
        Enhance the negative part too (as negative TFCE values). If False, voxels
        <= 0 get 0.

    Returns
    -------
    ndarray or nibabel image
        TFCE values, of the same shape (and kind) as ``stat``, float64.

    Notes
    -----
    With e_v(h) the size (number of voxels) of the cluster containing voxel v
    among voxels whose value exceeds h, and s(v) the value at v:

    - ``mode='exact'`` computes TFCE(v) = integral from 0 to s(v) of
      e_v(h)**E * h**H dh exactly. Voxels are visited once by decreasing value
      and clusters merged with a union-find; each cluster adds
      size**E * (h_hi**(H+1) - h_lo**(H+1)) / (H+1) over each height interval in
      which it does not change.
    - ``mode='fsl'`` follows FSL randomise: thresholds h = 0, dh, 2 dh, ...,
      voxels strictly above the threshold, and each threshold adds
      e_v(h)**E * h**H **without** multiplication by dh. In a permutation test
      dh is fixed from the unpermuted map for all permutations. The stepped sum
      times dh converges to the exact integral as dh shrinks.
    - Both signs are enhanced separately when ``two_sided`` (clusters never mix
      signs) and negative voxels receive negative TFCE. F statistics should be
      converted to z first, as randomise does (``voxstats.glm.f_to_z``).
    - Clusters are formed with the given connectivity (6 by default, FSL's
      default; nilearn uses 6, CAT12's ``tfce`` package 26). Unlike FSL, voxels
      on the volume border are enhanced like any other.

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
    flat, graph = _graph_for(values, mask, connectivity)
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


def tfce_values(values, graph, *, E=0.5, H=2.0, mode="exact", dh=None, two_sided=True):
    """TFCE of float64 node values on a :class:`~voxstats.graph.VoxelGraph`."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    enhanced = np.abs(values) if two_sided else np.maximum(values, 0.0)
    top = float(enhanced.max()) if enhanced.size else 0.0
    fsl = mode == "fsl"
    _check_params(E, H, mode, dh, max_height=top, n_elements=values.size)
    if fsl:
        dh = dh if dh is not None else (top / 100.0 if top > 0 else 1.0)
        table = stepped_table(dh, H, top)
    else:
        dh, table = 1.0, np.zeros(1)
    order = np.argsort(-np.abs(values))  # ties may come in any order: they add nothing
    return _tfce_numba.tfce_graph(values, order, graph.neighbours, bool(two_sided),
                                  float(E), float(H), fsl, float(dh), table)
