"""Quality-control figures of registrations and atlas transfers (PNG, matplotlib Agg).

* :func:`save_qc_png`: a normalized image (structural, or the χ map when there
  is no structural image) on three orthogonal slices with the template's edges,
  and a second row of close-ups around the thalamus when a thalamus mask is given.
* :func:`thalamus_closeup_png`: a template image cropped around the thalamus
  with label outlines (e.g. a transferred atlas against a reference).

Both write the file atomically (temporary file, then rename) and return its path
(or, with ``path=None``, return the figure). Every panel names its view and
the slice's position in mm and marks the subject's sides (``L``/``R``,
``P``/``A``) from the image's affine; a legend names the outline colours.
"""

from __future__ import annotations

import logging

import numpy as np

from qsm.transforms import write_atomic

logger = logging.getLogger(__name__)

__all__ = ["save_qc_png", "thalamus_closeup_png", "thalamus_region"]

_CLOSEUP_MARGIN_MM = 12.0


def thalamus_region(shape, affine):
    """Where the thalamus is in an MNI-aligned grid: the demo atlas' two ellipsoids.

    Used to place QC close-ups when no atlas is at hand (centres ``(±11, -19,
    6)`` mm, semi-axes ``(7.5, 16, 9)`` mm; see :func:`qsm.atlas.demo_thalamus_atlas`).

    Returns
    -------
    (x, y, z) bool ndarray
    """
    from qsm.atlas import DEMO_THALAMUS_AXES, DEMO_THALAMUS_CENTER
    from qsm.transforms import grid_world

    world = grid_world(tuple(shape[:3]), affine)
    cx, cy, cz = DEMO_THALAMUS_CENTER
    ax, ay, az = DEMO_THALAMUS_AXES
    out = np.zeros(tuple(shape[:3]), bool)
    for sign in (-1, 1):
        out |= (((world[..., 0] - sign * abs(cx)) / ax) ** 2 + ((world[..., 1] - cy) / ay) ** 2
                + ((world[..., 2] - cz) / az) ** 2) <= 1.0
    return out


#: PNG resolution: 9 inches across are 1350 pixels, 8-point text stays legible.
_DPI = 150
_VIEWS = ("sagittal", "coronal", "axial")
_COLOURS = {"y": "yellow", "c": "cyan", "m": "magenta", "r": "red"}


def _figure(width, height):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI)


def _save(fig, path):
    return write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=_DPI,
                                                    bbox_inches="tight", pad_inches=0.05))


def _orientation(affine, axis):
    """(left, right, bottom, top) side letters of the rot90 slice across voxel ``axis``.

    ``np.rot90`` of a slice puts the slice's first remaining voxel axis along the
    columns (its index growing to the right) and the second along the rows
    (growing upwards); the letters say where each end lies in the subject
    (``L``/``R``, ``P``/``A``, ``I``/``S``), read from the affine.
    """
    import nibabel as nib

    codes = nib.aff2axcodes(affine)
    opposite = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
    h, v = [a for a in range(3) if a != axis]
    return opposite[codes[h]], codes[h], opposite[codes[v]], codes[v]


def _mark(ax, text, x, y, ha, va):
    from matplotlib import patheffects

    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=9, fontweight="bold",
            color="white", path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])


def _slice(volume, axis, index):
    sl = [slice(None)] * 3
    sl[axis] = int(index)
    return np.rot90(np.asarray(volume)[tuple(sl)])


def _box(mask, zooms, margin_mm):
    idx = np.argwhere(mask)
    margin = np.ceil(margin_mm / np.asarray(zooms)).astype(int)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _display_range(data, mask):
    vals = data[mask & np.isfinite(data) & (data != 0)] if mask.any() else data[data != 0]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [1, 99])
    if lo < 0 < hi:   # a signed map (χ): symmetric grey scale
        hi = max(abs(lo), hi)
        return -hi, hi
    return min(0.0, lo), hi if hi > lo else lo + 1.0


def _centre(mask):
    """Slices through a mask: its centroid, the sagittal one through one side of a
    two-sided (left + right thalamus) mask rather than the empty midline."""
    idx = np.argwhere(mask)
    centre = [int(round(c)) for c in idx.mean(axis=0)]
    per_plane = mask.sum(axis=(1, 2))
    if per_plane[centre[0]] < 0.25 * per_plane.max():   # the gap between two sides
        side = idx[idx[:, 0] < centre[0]]
        side = side if side.size else idx[idx[:, 0] >= centre[0]]
        centre[0] = int(round(np.median(side[:, 0])))
    return centre


def _panels(fig, row, n_rows, data, edges, outlines, centre, box, vrange, affine):
    """One row of three orthogonal slices; ``outlines`` is [(mask, colour), ...].

    Each panel is titled with its view and the slice's position in mm, and
    marked with the subject's sides (``L``/``R`` left and right in coronal and
    axial views, ``P``/``A`` in sagittal ones), read from the affine.
    """
    crop = box if box is not None else (slice(None),) * 3
    if vrange is None:
        vrange = _display_range(data[crop], np.ones(data[crop].shape, bool))
    world = np.asarray(affine, float)[:3, :3] @ np.asarray(centre, float) + \
        np.asarray(affine, float)[:3, 3]
    for k, axis in enumerate(range(3)):
        ax = fig.add_subplot(n_rows, 3, 3 * row + k + 1)
        local = [c - (s.start or 0) for c, s in zip(centre, crop)]
        code = "xyz"[int(np.argmax(np.abs(np.asarray(affine)[:3, axis])))]
        ax.set_title(f"{_VIEWS[axis]} {code} = {world['xyz'.index(code)]:.0f} mm", fontsize=8,
                     pad=3)
        left, right, _, _ = _orientation(affine, axis)
        _mark(ax, left, 0.02, 0.02, "left", "bottom")
        _mark(ax, right, 0.98, 0.02, "right", "bottom")
        ax.imshow(_slice(data[crop], axis, local[axis]), cmap="gray", vmin=vrange[0],
                  vmax=vrange[1], interpolation="nearest")
        if edges is not None:
            t = _slice(edges[0][crop], axis, local[axis])
            if np.ptp(t) > 0:
                ax.contour(t, levels=edges[1], colors="r", linewidths=0.6)
        for mask, colour in outlines:
            m = _slice(mask[crop], axis, local[axis]).astype(float)
            if m.any() and not m.all():
                ax.contour(m, levels=[0.5], colors=colour, linewidths=0.9)
        ax.set_axis_off()


def save_qc_png(img, template_img, mask_img, path, *, title="", thalamus_mask=None):
    """Normalized image with template edges (red), and thalamus close-ups.

    Parameters
    ----------
    img : nibabel image
        The normalized image on the template grid: a structural image, or the
        χ map when the subject has no structural image (signed grey scale).
    template_img, mask_img : nibabel images on the same grid
        Template (edges at its 40th and 80th brain percentiles) and brain mask.
    path : str, Path or None
        None: return the matplotlib figure instead of writing it.
    title : str
    thalamus_mask : (x, y, z) bool ndarray or None
        Thalamus on the grid (e.g. the atlas' ``thalamus`` region); adds a row
        of close-ups (±12 mm around it) with its outline in yellow.

    Returns
    -------
    Path, or the matplotlib Figure when path is None
    """
    data = np.asarray(img.dataobj, dtype=np.float32)
    tpl = np.asarray(template_img.dataobj, dtype=np.float32)
    mask = np.asarray(mask_img.dataobj) > 0
    centre = ([int(round(c)) for c in np.argwhere(mask).mean(axis=0)] if mask.any()
              else [s // 2 for s in data.shape])
    levels = sorted(set(np.percentile(tpl[mask], [40, 80]))) if mask.any() else [tpl.mean()]
    vrange = _display_range(data, mask)
    closeup = thalamus_mask is not None and np.asarray(thalamus_mask).any()
    n_rows = 2 if closeup else 1
    fig = _figure(9, 3.2 * n_rows + 0.5)
    _panels(fig, 0, n_rows, data, (tpl, levels), [], centre, None, vrange, img.affine)
    legend = [("r", "template edges")]
    if closeup:
        thal = np.asarray(thalamus_mask, dtype=bool)
        zooms = np.sqrt((np.asarray(img.affine)[:3, :3] ** 2).sum(axis=0))
        box = _box(thal, zooms, _CLOSEUP_MARGIN_MM)
        _panels(fig, 1, n_rows, data, (tpl, levels), [(thal, "y")], _centre(thal), box, None,
                img.affine)
        legend.append(("y", "thalamus (close-ups)"))
    _finish(fig, title, legend)
    return _save(fig, path) if path is not None else fig


def _finish(fig, title, legend):
    """Title on top, outline colours named in a legend at the bottom."""
    from matplotlib.lines import Line2D

    if title:
        fig.suptitle(title, fontsize=9)
    handles = [Line2D([], [], color=c, lw=1.5, label=f"{name} ({_COLOURS.get(c, c)})")
               for c, name in legend]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               fontsize=8, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06, 1, 0.97 if title else 1), h_pad=1.8)


def thalamus_closeup_png(background_img, path, *, outlines, title="", names=None):
    """A template cropped around the thalamus with label outlines.

    Parameters
    ----------
    background_img : nibabel image
        Template (grey scale).
    path : str, Path or None
        None: return the matplotlib figure instead of writing it.
    outlines : sequence of ((x, y, z) bool ndarray, str)
        Masks on the background's grid with their matplotlib colours; the
        first one fixes the crop (±12 mm) and the slices (its centroid).
    title : str
    names : sequence of str, optional
        What each outline is, for the legend (default: "outline 1", ...).

    Returns
    -------
    Path, or the matplotlib Figure when path is None
    """
    data = np.asarray(background_img.dataobj, dtype=np.float32)
    first = np.asarray(outlines[0][0], dtype=bool)
    if not first.any():
        raise ValueError("The first outline mask is empty: nothing to show.")
    zooms = np.sqrt((np.asarray(background_img.affine)[:3, :3] ** 2).sum(axis=0))
    box = _box(first, zooms, _CLOSEUP_MARGIN_MM)
    fig = _figure(9, 3.6)
    _panels(fig, 0, 1, data, None, [(np.asarray(m, bool), c) for m, c in outlines],
            _centre(first), box, None, background_img.affine)
    names = list(names) if names is not None else [f"outline {k + 1}"
                                                   for k in range(len(outlines))]
    _finish(fig, title, [(c, n) for (_, c), n in zip(outlines, names)])
    return _save(fig, path) if path is not None else fig
