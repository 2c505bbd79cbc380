"""Close-ups of the thalamus on brain slices: the atlas and the voxel-wise results.

Each figure shows an axial slice and two coronal slices (through the anterior
and the posterior thalamus) cropped to the thalamus, in neurological
orientation (the subject's left on the left, marked ``L``/``R`` inside each
panel, never under a title), over the template with the atlas outline.

The voxel-wise figure colours voxels with FWE p < alpha by −log10 p with
sequential ColorBrewer maps, so that stronger is darker and more saturated
(blue: lower χ in patients, red: higher), on one scale for every row; a row
without such voxels says so instead of showing an empty colour bar.
"""

from __future__ import annotations

import functools
import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors, patheffects  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from qsm.figures import WIDTH_IN, style  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["atlas_figure", "pmaps_figure", "LOWER_CMAP", "HIGHER_CMAP"]

#: Lower χ in patients: light to dark, more saturated blue as p gets smaller.
LOWER_CMAP = colors.LinearSegmentedColormap.from_list(
    "qsm_lower", ["#9ecae1", "#4292c6", "#2171b5", "#08306b"])
#: Higher χ in patients: light to dark red.
HIGHER_CMAP = colors.LinearSegmentedColormap.from_list(
    "qsm_higher", ["#fcbba1", "#fb6a4a", "#cb181d", "#67000d"])
_MARGIN_MM = 10.0


class _Grid:
    """A volume in RAS voxel order (positive diagonal affine) with its mm coordinates."""

    def __init__(self, img, interpolation="nearest"):
        from nilearn.image import reorder_img

        img = reorder_img(img, resample=interpolation, copy_header=True)
        self.data = np.asarray(img.dataobj)
        self.affine = img.affine
        self.coords = [self.affine[a, a] * np.arange(self.data.shape[a]) + self.affine[a, 3]
                       for a in range(3)]

    def index(self, axis, mm):
        return int(np.argmin(np.abs(self.coords[axis] - mm)))

    def cut(self, data, axis, mm):
        """2D slice (rows: the vertical axis) and its extent (mm)."""
        k = self.index(axis, mm)
        plane = np.take(data, k, axis=axis)
        h, v = [a for a in range(3) if a != axis]
        step = [self.affine[a, a] / 2 for a in (h, v)]
        extent = (self.coords[h][0] - step[0], self.coords[h][-1] + step[0],
                  self.coords[v][0] - step[1], self.coords[v][-1] + step[1])
        return plane.T, extent


def _on_grid(img, grid_img, interpolation):
    from nilearn.image import resample_to_img

    if img.shape[:3] == grid_img.shape[:3] and np.allclose(img.affine, grid_img.affine,
                                                             atol=1e-4):
        return img
    return resample_to_img(img, grid_img, interpolation=interpolation, force_resample=True,
                           copy_header=True)


@functools.lru_cache(maxsize=1)
def _mni_template():
    from nilearn import datasets

    return datasets.load_mni152_template(resolution=2)  # nilearn resamples it at each call


def _template(grid_img, background_img=None):
    """The background on the figure's grid: the study's template, else nilearn's MNI152."""
    return _on_grid(background_img if background_img is not None else _mni_template(),
                    grid_img, "continuous")


def _cuts(grid: _Grid, mask: np.ndarray):
    """(axis, mm, title) of an axial cut where the mask is widest and coronal cuts through its
    anterior and posterior parts, and the close-up box (mm) around the mask."""
    idx = np.argwhere(mask)
    mm = np.column_stack([grid.coords[a][idx[:, a]] for a in range(3)])
    zs, counts = np.unique(mm[:, 2], return_counts=True)
    z = float(zs[np.argmax(counts)])
    y_front, y_back = np.quantile(mm[:, 1], [0.7, 0.15])
    box = [(mm[:, a].min() - _MARGIN_MM, mm[:, a].max() + _MARGIN_MM) for a in range(3)]
    return [(2, z, f"axial z = {z:.0f} mm"),
            (1, float(grid.coords[1][grid.index(1, y_front)]), "coronal y = {:.0f} mm"),
            (1, float(grid.coords[1][grid.index(1, y_back)]), "coronal y = {:.0f} mm")], box


def _window(grid, background, box):
    """Grey levels of the template from the close-up box (2nd to 99.5th percentile)."""
    inside = [(grid.coords[a] >= box[a][0]) & (grid.coords[a] <= box[a][1]) for a in range(3)]
    values = background[np.ix_(*inside)]
    values = values[values > 0]
    return tuple(np.percentile(values, [2, 99.5])) if values.size else (0.0, 1.0)


def _panel(ax, grid, background, axis, mm, box, outline_labels, *, window,
           outline_color="white"):
    plane, extent = grid.cut(background, axis, mm)
    ax.imshow(plane, cmap="gray", vmin=window[0], vmax=window[1], origin="lower",
              extent=extent, interpolation="nearest", label="background")
    if outline_labels is not None:
        labels, _ = grid.cut(outline_labels, axis, mm)
        h, v = [a for a in range(3) if a != axis]
        for value in np.unique(labels[labels > 0]):
            ax.contour(grid.coords[h], grid.coords[v], (labels == value).astype(float),
                       levels=[0.5], colors=outline_color, linewidths=0.6)
    h, v = [a for a in range(3) if a != axis]
    ax.set_xlim(*box[h])
    ax.set_ylim(*box[v])
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    for x, text, ha in ((0.03, "L", "left"), (0.97, "R", "right")):
        ax.text(x, 0.04, text, transform=ax.transAxes, color="black", ha=ha, va="bottom",
                fontsize=9, fontweight="bold", gid=f"side-{text}",
                path_effects=[patheffects.withStroke(linewidth=2.2, foreground="white")])


def _layout(n_rows, box, *, top_in, bottom_in, left_in=0.05, gap_in=0.12):
    """Rows of three panels sized to the close-up box, so no space is left unused.

    Returns the figure, the axes and a function mapping inches from the bottom of
    the figure to figure coordinates (to place colour bars and legends).
    """
    right_in = 0.05
    panel_w = (WIDTH_IN - left_in - right_in - 2 * 0.06) / 3
    aspect = max(box[1][1] - box[1][0], box[2][1] - box[2][0]) / (box[0][1] - box[0][0])
    row_h = panel_w * aspect
    height = top_in + bottom_in + n_rows * row_h + (n_rows - 1) * gap_in
    fig, axes = plt.subplots(n_rows, 3, figsize=(WIDTH_IN, height), squeeze=False)
    fig.subplots_adjust(left=left_in / WIDTH_IN, right=1 - right_in / WIDTH_IN,
                        top=1 - top_in / height, bottom=bottom_in / height,
                        wspace=0.06 / panel_w, hspace=gap_in / row_h)
    return fig, axes, (lambda inches: inches / height)


def atlas_figure(atlas, labels: np.ndarray, affine, *, title=None, background_img=None):
    """The atlas regions in colour on three thalamus close-ups, with a legend of names.

    Parameters
    ----------
    atlas : qsm.atlas.Atlas
        Its label table gives the names (legend) and indices.
    labels : (x, y, z) int ndarray
        The atlas labels on the χ maps' grid.
    affine : (4, 4) ndarray
        Of that grid.
    title : str, optional
        Figure title (default: the atlas space).
    background_img : nibabel image, optional
        The template drawn underneath (default: nilearn's bundled MNI152 2009a,
        resampled to the grid).

    Returns
    -------
    matplotlib.figure.Figure
        The legend's texts are the atlas's label names, in table order.
    """
    grid_img = nib.Nifti1Image(np.asarray(labels).astype(np.int32), affine)
    with style():
        grid = _Grid(grid_img)
        background = _Grid(_template(grid_img, background_img), "continuous").data
        table = atlas.labels.reset_index(drop=True)
        palette = [c for k, c in enumerate(plt.get_cmap("tab20").colors) if k not in (14, 15)]
        if len(table) <= 9:  # strong colours first; never grey, which the template is
            palette = [plt.get_cmap("tab10").colors[k] for k in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
        color_of = {int(i): palette[k % len(palette)] for k, i in enumerate(table["index"])}
        mask = grid.data > 0
        cuts, box = _cuts(grid, mask)
        window = _window(grid, background, box)
        rows = int(np.ceil(len(table) / 4))
        fig, axes, y = _layout(1, box, top_in=0.55, bottom_in=0.12 + 0.2 * rows)
        for ax, (axis, mm, name) in zip(axes[0], cuts):
            _panel(ax, grid, background, axis, mm, box, grid.data, window=window)
            plane, extent = grid.cut(grid.data, axis, mm)
            rgba = np.zeros(plane.shape + (4,))
            for value, c in color_of.items():
                rgba[plane == value] = (*c[:3], 0.85)
            ax.imshow(rgba, origin="lower", extent=extent, interpolation="nearest",
                      label="atlas")
            ax.set_title(name.format(mm), pad=3)
        handles = [Patch(facecolor=color_of[int(i)], edgecolor="none", label=str(n))
                   for i, n in zip(table["index"], table["name"])]
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)),
                   frameon=False, bbox_to_anchor=(0.5, 0.0), handlelength=1.2,
                   columnspacing=1.2, borderaxespad=0.1)
        fig.suptitle(title or f"Thalamus atlas ({atlas.space})", y=1 - y(0.04), va="top")
    return fig


def pmaps_figure(pmaps: dict, affine, *, atlas_labels=None, region_mask=None, alpha=0.05,
                 n_perm=None, background_img=None):
    """Voxel-wise FWE p maps per patient group on thalamus close-ups.

    Parameters
    ----------
    pmaps : dict of str to ((x, y, z) ndarray, (x, y, z) ndarray)
        Row label (e.g. ``"RRMS vs HC_RRMS"``) -> (FWE p map, t map). The sign of
        t says the direction (negative: lower χ in patients).
    affine : (4, 4) ndarray
    atlas_labels : (x, y, z) int ndarray, optional
        Atlas labels on the same grid, drawn as outlines.
    region_mask : (x, y, z) bool ndarray, optional
        The analysed region (default: the atlas labels > 0, else the voxels with p < 1).
    alpha : float
        Voxels with p < alpha are coloured.
    n_perm : int, optional
        Permutations: the scale's top is the smallest p they can give, −log10(1/n_perm),
        the same for every row (default: the strongest voxel of all rows).
    background_img : nibabel image, optional
        As in :func:`atlas_figure`.

    Returns
    -------
    matplotlib.figure.Figure
        Overlay images are labelled ``"lower"``/``"higher"`` (their norm is the common
        scale); a row without significant voxels has a text labelled ``"empty"``.
    """
    first = next(iter(pmaps.values()))[0] if pmaps else None
    shape = first.shape if first is not None else atlas_labels.shape
    threshold = -np.log10(alpha)
    strongest = max([float(-np.log10(np.clip(p, 1e-12, 1)).max()) for p, _ in pmaps.values()]
                    + [threshold + 0.5])
    vmax = float(np.log10(n_perm)) if n_perm else strongest
    vmax = max(vmax, threshold + 0.1)
    norm = colors.Normalize(vmin=threshold, vmax=vmax)
    with style():
        img = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
        grid = _Grid(img)
        background = _Grid(_template(img, background_img), "continuous").data
        labels = (_Grid(nib.Nifti1Image(np.asarray(atlas_labels).astype(np.int32), affine)).data
                  if atlas_labels is not None else None)
        if region_mask is not None:
            mask = _Grid(nib.Nifti1Image(np.asarray(region_mask).astype(np.uint8), affine)).data > 0
        elif labels is not None:
            mask = labels > 0
        else:
            mask = np.zeros(grid.data.shape, bool)
            for p, _ in pmaps.values():
                mask |= _Grid(nib.Nifti1Image(p.astype(np.float32), affine)).data < 1
        cuts, box = _cuts(grid, mask)
        window = _window(grid, background, box)
        any_sig = any(bool((np.asarray(p) < alpha).any()) for p, _ in pmaps.values())
        fig, axes, y = _layout(max(1, len(pmaps)), box, top_in=0.25, left_in=0.25,
                               bottom_in=0.75 if any_sig else 0.05)
        for r, (row, (name, (p, t))) in enumerate(zip(axes, pmaps.items())):
            p = _Grid(nib.Nifti1Image(np.asarray(p, np.float32), affine)).data
            t = _Grid(nib.Nifti1Image(np.asarray(t, np.float32), affine)).data
            logp = -np.log10(np.clip(p, 1e-12, 1.0))
            sig = p < alpha
            for ax, (axis, mm, title) in zip(row, cuts):
                _panel(ax, grid, background, axis, mm, box, labels, window=window,
                       outline_color="0.2")
                for direction, cmap, keep in (("lower", LOWER_CMAP, t < 0),
                                              ("higher", HIGHER_CMAP, t > 0)):
                    plane, extent = grid.cut(np.where(sig & keep, logp, np.nan), axis, mm)
                    ax.imshow(np.ma.masked_invalid(plane), cmap=cmap, norm=norm, origin="lower",
                              extent=extent, interpolation="nearest", label=direction)
                if r == 0:
                    ax.set_title(title.format(mm), pad=3)
            row[0].set_ylabel(name, labelpad=4)
            if not sig.any():
                row[1].text(0.5, 0.5, f"no voxel with FWE p < {alpha:g}",
                            transform=row[1].transAxes, ha="center", va="center", fontsize=9,
                            color="black", label="empty",
                            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.6",
                                      alpha=0.9))
        if any_sig:
            _colorbars(fig, norm, alpha, y(0.42), y(0.11))
    return fig


def _colorbars(fig, norm, alpha, bottom, height):
    ticks = [t for t in (alpha, 0.01, 0.001, 0.0001) if -np.log10(t) <= norm.vmax + 1e-9]
    top = 10 ** -norm.vmax
    if all(abs(np.log10(t) - np.log10(top)) > 0.15 for t in ticks):
        ticks.append(top)
    for k, (cmap, label) in enumerate(((LOWER_CMAP, "lower χ in patients"),
                                       (HIGHER_CMAP, "higher χ in patients"))):
        cax = fig.add_axes([0.1 + 0.45 * k, bottom, 0.35, height])
        bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax,
                           orientation="horizontal")
        bar.set_ticks([-np.log10(t) for t in ticks])
        bar.set_ticklabels([f"{t:.2g}" for t in ticks])
        bar.set_label(f"{label}: FWE-corrected p (TFCE)", labelpad=2)
        cax.set_gid(f"colorbar-{'lower' if k == 0 else 'higher'}")
