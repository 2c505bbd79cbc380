"""Cluster tables from a statistic map and a p map (like FSL's ``cluster``).

How a p map stores p
--------------------
A p map may hold p itself, randomise's 1 - p, or -log10 p, and nothing in a
NIfTI file says which. :func:`cluster_table` takes the convention from
``p_convention`` when given; otherwise it reads it from

1. a JSON sidecar next to the image (``pmap.nii.gz`` -> ``pmap.json``) with
   the key ``"p_convention"``: one of ``"p"``, ``"1-p"``, ``"-log10(p)"``
   (qsm writes these sidecars), or
2. the JSON record of the ``voxstats randomise`` run that wrote the image (in
   the same folder, listing it among its ``"p_maps"`` or ``"outputs"``).

When neither exists the convention must be given. A map whose values cannot
be in the convention (outside [0, 1] for p and 1 - p, negative for -log10 p)
is refused, and so is a given convention that contradicts the sidecar.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from voxstats.design_files import DesignFileError, _read_table
from voxstats.errors import ParameterError
from voxstats.image import _name, check_img, check_same_space, read_data
from voxstats.outputs import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["ClusterTable", "P_CONVENTIONS", "cluster_table", "read_atlas_labels", "read_p_convention",
           "COLUMNS"]

_CONNECTIVITY = {6: 1, 18: 2, 26: 3}
#: The ways a p map can store p (the values of the ``"p_convention"`` key).
P_CONVENTIONS = ("p", "1-p", "-log10(p)")
_ALIASES = {"logp": "-log10(p)"}
# randomise's p-map names: vox_p_, vox_corrp_, tfce_p_, tfce_corrp_, clustere_corrp_, clusterm_corrp_
_P_MAP_MARKERS = ("_p_", "corrp_")
_SIGNS = ("pos", "neg", "both")

#: Columns of :attr:`ClusterTable.table`, always present in this order.
COLUMNS = (
    "cluster",
    "n_voxels",
    "volume_mm3",
    "max_value",
    "peak_i",
    "peak_j",
    "peak_k",
    "peak_x",
    "peak_y",
    "peak_z",
    "cog_i",
    "cog_j",
    "cog_k",
    "cog_x",
    "cog_y",
    "cog_z",
    "p_min",
    "peak_label",
)


def _check_option(name, value, allowed):
    if value not in allowed:
        allowed_txt = ", ".join(repr(a) for a in allowed)
        raise ValueError(
            f"Invalid value for the '{name}' parameter. Allowed values are {allowed_txt}, "
            f"but got {value!r} instead."
        )


def _load_3d(img, name):
    img = check_img(img, name=name, ndim=3)
    return img, read_data(img, name=name, dtype=np.float64)


def _sidecar(path):
    name = path.name
    for suffix in (".nii.gz", ".nii", ".img.gz", ".img", ".hdr"):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_suffix(".json")


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None


def read_p_convention(path):
    """How the p map in ``path`` stores p, from its JSON sidecar or its randomise record.

    Parameters
    ----------
    path : str or Path
        The p map's file name.

    Returns
    -------
    convention : {'p', '1-p', '-log10(p)'} or None
        None when nothing next to the image says.
    source : Path or None
        The JSON file it was read from.

    Raises
    ------
    ValueError
        The sidecar holds a ``"p_convention"`` that is not one of
        :data:`P_CONVENTIONS`.
    """
    path = Path(path)
    sidecar = _sidecar(path)
    info = _read_json(sidecar) if sidecar.is_file() else None
    if isinstance(info, dict) and "p_convention" in info:
        value = _ALIASES.get(info["p_convention"], info["p_convention"])
        if value not in P_CONVENTIONS:
            raise ValueError(f"{sidecar}: 'p_convention' must be one of {', '.join(P_CONVENTIONS)}, "
                             f"got {info['p_convention']!r}")
        return value, sidecar
    folder = path.parent if str(path.parent) else Path(".")
    for record_path in sorted(folder.glob("*.json")):
        record = _read_json(record_path)
        if not isinstance(record, dict) or record.get("command") != "voxstats randomise":
            continue
        listed = record.get("p_maps")
        if listed is None:
            listed = [o for o in record.get("outputs", []) if any(m in Path(str(o)).name for m in _P_MAP_MARKERS)]
        if any(Path(str(o)).name == path.name for o in listed):
            value = _ALIASES.get(record.get("p_convention"), record.get("p_convention"))
            if value in P_CONVENTIONS:
                return value, record_path
    return None, None


def _resolve_p_convention(p_img, p_convention):
    path = Path(p_img) if isinstance(p_img, (str, Path)) else None
    filename = getattr(p_img, "get_filename", lambda: None)()
    if path is None and filename:
        path = Path(filename)
    recorded, source = read_p_convention(path) if path is not None else (None, None)
    if p_convention is None:
        if recorded is None:
            where = f"no JSON sidecar ({_sidecar(path)}) with a 'p_convention' key and no voxstats " \
                    "randomise record lists it" if path is not None else "it is an image in memory"
            raise ParameterError("p_convention", f"cannot tell how {_name(p_img, 'p_img')} stores p ({where}); "
                                 f"give it: one of {', '.join(map(repr, P_CONVENTIONS))}")
        logger.info("%s stores %s (from %s)", path, recorded, source)
        return recorded
    if recorded is not None and recorded != p_convention:
        raise ParameterError("p_convention", f"{p_convention!r} contradicts {source}, which says "
                             f"{path} stores {recorded!r}")
    return p_convention


def _check_p_values(values, convention, label):
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return
    low, high = float(finite.min()), float(finite.max())
    tol = 1e-6
    if convention == "-log10(p)" and low < -tol:
        raise ParameterError("p_img", f"{label} cannot hold -log10(p): it has negative values (min {low:.4g})")
    if convention in ("p", "1-p") and (low < -tol or high > 1 + tol):
        raise ParameterError("p_img", f"{label} cannot hold {convention}: values must lie in [0, 1], "
                             f"got [{low:.4g}, {high:.4g}]")


def read_atlas_labels(path):
    """Read an atlas look-up table (BIDS ``dseg.tsv``: columns ``index`` and ``name``).

    Parameters
    ----------
    path : str or Path
        TSV (or CSV) with a header holding at least ``index`` and ``name``.

    Returns
    -------
    labels : dict of int to str
    """
    header_line, header, rows = _read_table(path)
    lower = [h.lower() for h in header]
    for needed in ("index", "name"):
        if needed not in lower:
            raise DesignFileError(
                f"{path}, line {header_line}: expected columns 'index' and 'name', got {header}"
            )
    i_col, n_col = lower.index("index"), lower.index("name")
    labels = {}
    for lineno, cells in rows:
        token = cells[i_col]
        if not token.lstrip("-").isdigit():
            raise DesignFileError(f"{path}, line {lineno}: expected an integer index, got {token!r}")
        if int(token) in labels:
            raise DesignFileError(f"{path}, line {lineno}: expected unique indices, got {token} again")
        labels[int(token)] = cells[n_col]
    return labels


@dataclass(frozen=True)
class ClusterTable:
    """Clusters of a thresholded statistic map.

    Attributes
    ----------
    table : pandas.DataFrame, shape (n_clusters, len(COLUMNS))
        One row per cluster, largest first (``cluster`` = 1, 2, ...).
        Voxel coordinates are 0-based indices; ``*_x, *_y, *_z`` are world
        (mm) coordinates through the image affine; ``cog`` is the centre of
        gravity weighted by ``|stat|`` (as FSL's ``cluster``); ``p_min`` is
        the smallest p value in the cluster (NaN without a p map);
        ``peak_label`` the atlas label at the peak ("" without an atlas).
    labels_img : nibabel.Nifti1Image
        Integer image: each voxel's cluster number, 0 outside clusters.
    """

    table: pd.DataFrame
    labels_img: nib.Nifti1Image

    def to_tsv(self, path):
        """Write :attr:`table` as TSV, atomically."""
        atomic_write_text(path, self.table.to_csv(sep="\t", index=False, float_format="%.6g"))


def _to_p(values, convention, stored_dtype=np.float64):
    """p from the stored values.

    1 - p stored in float32 carries ~6e-8 absolute rounding (the spacing of
    float32 just below 1), so p recovered from it is rounded to 7 decimals:
    a stored 0.9998 gives 0.0002, not 0.000199974.
    """
    if convention == "p":
        return values
    if convention == "1-p":
        p = 1.0 - values
        return np.round(p, 7) if np.dtype(stored_dtype).itemsize <= 4 else p
    return 10.0 ** (-values)


def cluster_table(
    stat_img,
    *,
    p_img=None,
    p_convention=None,
    alpha=0.05,
    threshold=None,
    sign="pos",
    connectivity=26,
    min_size=1,
    atlas_img=None,
    atlas_labels=None,
):
    """Table the connected clusters of a statistic map.

    A voxel belongs to a cluster when its statistic has the requested sign
    and exceeds ``threshold`` in magnitude (when given) and its p value is
    below ``alpha`` (when ``p_img`` is given).  At least one of ``threshold``
    and ``p_img`` is required.

    Parameters
    ----------
    stat_img : str, Path or nibabel image, 3D
        Statistic map (t, F, TFCE...).  Non-finite voxels are never in a cluster.
    p_img : str, Path or nibabel image, 3D, optional
        p map in the space of ``stat_img``.
    p_convention : {'p', '1-p', '-log10(p)'}, optional
        How ``p_img`` stores p: p itself, randomise's 1 - p, or -log10 p
        (``'logp'`` is accepted for the latter). Default: read from the
        image's JSON sidecar or its randomise record (see the module notes);
        an error when neither says.
    alpha : float
        Significance level applied to ``p_img``.
    threshold : float, optional
        Cluster-forming threshold on ``|stat|``.
    sign : {'pos', 'neg', 'both'}
        Positive clusters, negative clusters, or both (labelled separately).
    connectivity : {6, 18, 26}
        Voxel neighbourhood (26, FSL's default, when omitted).
    min_size : int
        Smallest cluster (voxels) kept.
    atlas_img : str, Path or nibabel image, 3D, optional
        Integer label image in the space of ``stat_img``.
    atlas_labels : dict of int to str, str or Path, optional
        Names of ``atlas_img`` labels, or a TSV read by :func:`read_atlas_labels`.

    Returns
    -------
    ClusterTable

    Raises
    ------
    voxstats.errors.ParameterError
        A bad file or value, named by its parameter; a p map whose convention
        cannot be told, or whose values cannot be in it.
    """
    if p_convention is not None:
        p_convention = _ALIASES.get(p_convention, p_convention)
        _check_option("p_convention", p_convention, P_CONVENTIONS)
    _check_option("sign", sign, _SIGNS)
    _check_option("connectivity", connectivity, tuple(_CONNECTIVITY))
    if p_img is None and threshold is None:
        raise ValueError("Either 'threshold' or 'p_img' must be given to define clusters.")
    if not 0 < alpha <= 1:
        raise ValueError(f"Invalid value for the 'alpha' parameter: expected 0 < alpha <= 1, got {alpha}.")
    if threshold is not None and not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"Invalid value for the 'threshold' parameter: expected a number >= 0, got {threshold}.")
    if int(min_size) != min_size or min_size < 1:
        raise ValueError(f"Invalid value for the 'min_size' parameter: expected an integer >= 1, got {min_size}.")

    stat_img, stat = _load_3d(stat_img, "stat_img")
    finite = np.isfinite(stat)
    p = np.full(stat.shape, np.nan)
    if p_img is not None:
        p_img, p_raw = _load_3d(p_img, "p_img")
        check_same_space(stat_img, p_img, "stat_img", "p_img")
        p_convention = _resolve_p_convention(p_img, p_convention)
        _check_p_values(p_raw, p_convention, _name(p_img, "p_img"))
        p = _to_p(p_raw, p_convention, p_img.get_data_dtype())
    atlas = None
    if atlas_img is not None:
        atlas_img, atlas = _load_3d(atlas_img, "atlas_img")
        check_same_space(stat_img, atlas_img, "stat_img", "atlas_img")
        atlas = np.where(np.isfinite(atlas), atlas, 0.0)  # NaN is outside every label
        off = np.abs(atlas - np.rint(atlas))
        if off.max() > 1e-3:
            bad = atlas.ravel()[int(np.argmax(off))]
            raise ParameterError("atlas_img", f"{_name(atlas_img, 'atlas_img')} holds non-integer values "
                                 f"(e.g. {bad:g}); expected integer labels")
        atlas = np.rint(atlas).astype(np.int64)
        if isinstance(atlas_labels, (str, Path)):
            atlas_labels = read_atlas_labels(atlas_labels)
        atlas_labels = atlas_labels or {}

    keep = finite.copy()
    if threshold is not None:
        keep &= np.abs(np.where(finite, stat, 0)) > threshold
    if p_img is not None:
        keep &= np.isfinite(p) & (p < alpha)
    structure = ndimage.generate_binary_structure(3, _CONNECTIVITY[connectivity])
    signs = {"pos": (1,), "neg": (-1,), "both": (1, -1)}[sign]
    affine = stat_img.affine
    voxel_volume = abs(np.linalg.det(affine[:3, :3]))

    rows, masks = [], []
    for s in signs:
        in_sign = keep & (np.where(finite, stat, 0) * s > 0)
        labels, n = ndimage.label(in_sign, structure=structure)
        if n == 0:
            continue
        flat = labels.ravel()
        idx = np.flatnonzero(flat)
        lab = flat[idx]
        val = stat.ravel()[idx]
        # peak: the most extreme value in the cluster, first voxel (C order) on ties
        order = np.lexsort((-s * val, lab))
        first = order[np.r_[0, np.flatnonzero(np.diff(lab[order])) + 1]]
        sizes = np.bincount(lab, minlength=n + 1)[1:]
        ijk = np.array(np.unravel_index(idx, stat.shape)).T.astype(np.float64)
        weight = np.abs(val)
        wsum = np.bincount(lab, weights=weight, minlength=n + 1)[1:]
        cog = np.stack(
            [np.bincount(lab, weights=weight * ijk[:, d], minlength=n + 1)[1:] for d in range(3)],
            axis=1,
        ) / wsum[:, None]
        p_flat = p.ravel()[idx]
        for c in range(n):
            if sizes[c] < min_size:
                continue
            peak = idx[first[c]]
            peak_ijk = np.array(np.unravel_index(peak, stat.shape))
            in_c = lab == c + 1
            p_c = p_flat[in_c]
            label = ""
            if atlas is not None:
                code = int(atlas[tuple(peak_ijk)])
                label = atlas_labels.get(code, "" if code == 0 else f"label {code}")
            rows.append(
                {
                    "n_voxels": int(sizes[c]),
                    "volume_mm3": float(sizes[c] * voxel_volume),
                    "max_value": float(stat.ravel()[peak]),
                    "peak_ijk": peak_ijk,
                    "cog_ijk": cog[c],
                    "p_min": float(np.nanmin(p_c)) if np.isfinite(p_c).any() else np.nan,
                    "peak_label": label,
                }
            )
            masks.append(idx[in_c])

    order = sorted(range(len(rows)), key=lambda r: (-rows[r]["n_voxels"], -abs(rows[r]["max_value"])))
    label_data = np.zeros(stat.shape, dtype=np.int32)
    records = []
    for number, r in enumerate(order, start=1):
        row = rows[r]
        label_data.ravel()[masks[r]] = number
        peak_xyz = nib.affines.apply_affine(affine, row["peak_ijk"])
        cog_xyz = nib.affines.apply_affine(affine, row["cog_ijk"])
        records.append(
            (number, row["n_voxels"], row["volume_mm3"], row["max_value"],
             *(int(v) for v in row["peak_ijk"]), *peak_xyz, *row["cog_ijk"], *cog_xyz,
             row["p_min"], row["peak_label"])
        )
    table = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    if table.empty:
        table = table.astype({c: "int64" for c in ("cluster", "n_voxels", "peak_i", "peak_j", "peak_k")})
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int32)
    labels_img = nib.Nifti1Image(label_data, affine, header)
    logger.info("%d clusters", len(table))
    return ClusterTable(table=table, labels_img=labels_img)
