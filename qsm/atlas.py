"""Atlases: a labels image, a label table and the template space they live in.

An :class:`Atlas` holds a 3D integer labels image, a label table with the
columns ``index, name, hemisphere`` and the name of its template space.  Named
*unions* of labels (e.g. ``"thalamus_left"``) are regions too: ROI extraction
computes them from their member labels.

:func:`demo_thalamus_atlas` builds an approximate thalamus atlas at run time
from the MNI152 2009a template bundled with nilearn (nothing is downloaded).
It is meant for simulation and demos only; see its Notes for the rule and for
how to use a published thalamic atlas instead.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from voxstats.image import atomic_write_text as _atomic_write_text
from voxstats.image import save_img_atomic as _save_img_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "Atlas",
    "DEMO_SPACE",
    "atlas_labels_in_space",
    "demo_thalamus_atlas",
    "load_atlas",
    "read_label_table",
    "region_masks",
    "save_atlas",
]

#: Name of the template space of nilearn's bundled MNI152 2009a template (symmetric).
DEMO_SPACE = "MNI152NLin2009aSym"

_HEMI = {"l": "L", "left": "L", "r": "R", "right": "R", "b": "B", "bilateral": "B",
         "n/a": "B", "none": "B", "": "B"}
_LABEL_COLUMNS = ("index", "name", "hemisphere")


@dataclass(frozen=True, eq=False)
class Atlas:
    """A labels image with its label table and template space.

    Attributes
    ----------
    labels_img : nibabel.Nifti1Image
        3D integer image; 0 is background.
    labels : pandas.DataFrame
        One row per label with columns ``index`` (int), ``name`` (str, unique)
        and ``hemisphere`` (``"L"``, ``"R"`` or ``"B"``).
    space : str
        Template space name, e.g. ``"MNI152NLin2009aSym"``.
    unions : mapping of str to tuple of int
        Extra regions made of several labels, e.g. ``{"thalamus": (1, ..., 8)}``.
    description : str
        Free text (provenance, caveats).
    """

    labels_img: nib.Nifti1Image
    labels: pd.DataFrame
    space: str
    unions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    description: str = ""

    @property
    def region_names(self) -> list[str]:
        """Names of all regions: the labels in table order, then the unions."""
        return list(self.labels["name"]) + list(self.unions)


def read_label_table(path) -> pd.DataFrame:
    """Read and check a label table TSV with columns ``index, name, hemisphere``.

    Parameters
    ----------
    path : str or Path
        Tab-separated file.

    Returns
    -------
    labels : DataFrame
        Columns ``index`` (int), ``name``, ``hemisphere`` (``L``/``R``/``B``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Label table {path} does not exist.")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return _check_label_table(table, str(path))


def _check_label_table(table: pd.DataFrame, source: str) -> pd.DataFrame:
    table = table.copy()
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in _LABEL_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"Label table {source} lacks the column(s) {missing}; expected the columns "
            f"{list(_LABEL_COLUMNS)}, got {list(table.columns)}."
        )
    try:
        index = table["index"].astype(int)
    except (TypeError, ValueError):
        raise ValueError(f"Label table {source}: the 'index' column must hold integers.") from None
    if (index <= 0).any():
        raise ValueError(f"Label table {source}: label indices must be positive (0 is background).")
    if index.duplicated().any() or table["name"].duplicated().any():
        raise ValueError(f"Label table {source}: label indices and names must be unique.")
    hemi = table["hemisphere"].astype(str).str.strip().str.lower()
    bad = sorted(set(hemi) - set(_HEMI))
    if bad:
        raise ValueError(
            f"Label table {source}: invalid hemisphere value(s) {bad}; allowed values are "
            "'L', 'R', 'B' (or left/right/bilateral)."
        )
    return pd.DataFrame({
        "index": index.to_numpy(),
        "name": table["name"].astype(str).str.strip().to_numpy(),
        "hemisphere": hemi.map(_HEMI).to_numpy(),
    })


def _default_unions(labels: pd.DataFrame, structure: str | None) -> dict[str, tuple[int, ...]]:
    if not structure:
        return {}
    unions = {}
    for hemi, suffix in (("L", "_left"), ("R", "_right")):
        members = tuple(int(i) for i in labels.loc[labels["hemisphere"] == hemi, "index"])
        if members:
            unions[structure + suffix] = members
    unions[structure] = tuple(int(i) for i in labels["index"])
    return unions


def load_atlas(labels_img, label_table, *, space: str, structure: str | None = None,
               unions: Mapping[str, Sequence[int]] | None = None,
               description: str = "") -> Atlas:
    """Load an atlas from a labels image and its label table.

    Parameters
    ----------
    labels_img : str, Path or nibabel image
        3D image of integer labels (0 = background).
    label_table : str, Path or DataFrame
        Label table with columns ``index, name, hemisphere``. Required.
    space : str
        Name of the template space of ``labels_img``.
    structure : str or None
        If given, add the unions ``<structure>_left``, ``<structure>_right``
        (labels of each hemisphere) and ``<structure>`` (all labels).
    unions : mapping of str to sequence of int, optional
        Further named unions of label indices.
    description : str
        Free text stored on the atlas.

    Returns
    -------
    atlas : Atlas
    """
    if label_table is None or (isinstance(label_table, str) and not label_table.strip()):
        raise ValueError(
            f"The atlas {labels_img} has no label table; give a TSV with the columns "
            "'index, name, hemisphere'."
        )
    if not isinstance(space, str) or not space.strip():
        raise ValueError(f"Invalid value for the 'space' parameter: expected a template space "
                         f"name, got {space!r} instead.")
    source = str(labels_img) if isinstance(labels_img, (str, Path)) else "labels_img"
    if isinstance(labels_img, (str, Path)):
        if not Path(labels_img).is_file():
            raise FileNotFoundError(f"Atlas labels image {labels_img} does not exist.")
        labels_img = nib.load(str(labels_img))
    if labels_img.ndim != 3:
        raise ValueError(f"Atlas labels image {source} must be 3D, got shape {labels_img.shape}.")
    data = np.asarray(labels_img.dataobj)
    if not np.all(np.isfinite(data)) or not np.allclose(data, np.round(data)):
        raise ValueError(f"Atlas labels image {source} must hold integer labels.")
    data = np.round(data).astype(np.int32)
    labels_img = nib.Nifti1Image(data, labels_img.affine)
    if isinstance(label_table, pd.DataFrame):
        labels = _check_label_table(label_table, "label_table")
    else:
        labels = read_label_table(label_table)
    present = set(np.unique(data)) - {0}
    extra = sorted(int(v) for v in present - set(labels["index"]))
    if extra:
        raise ValueError(f"Atlas labels image {source} holds label(s) {extra} that are not in "
                         "its label table.")
    absent = sorted(set(labels["index"]) - present)
    if absent:
        logger.warning("Atlas %s: label(s) %s of the label table are absent from the image.",
                       source, absent)
    all_unions = _default_unions(labels, structure)
    for name, members in (unions or {}).items():
        members = tuple(int(m) for m in members)
        unknown = sorted(set(members) - set(labels["index"]))
        if unknown:
            raise ValueError(f"Atlas union {name!r} refers to unknown label(s) {unknown}.")
        all_unions[str(name)] = members
    clash = set(all_unions) & set(labels["name"])
    if clash:
        raise ValueError(f"Atlas union name(s) {sorted(clash)} clash with label names.")
    return Atlas(labels_img, labels, space.strip(), dict(all_unions), description)


def save_atlas(atlas: Atlas, out_dir, *, prefix: str = "atlas") -> tuple[Path, Path]:
    """Write ``<prefix>_dseg.nii.gz`` and ``<prefix>_dseg.tsv`` into ``out_dir``.

    Returns
    -------
    img_path, tsv_path : Path
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    img_path = out_dir / f"{prefix}_dseg.nii.gz"
    tsv_path = out_dir / f"{prefix}_dseg.tsv"
    _save_img_atomic(atlas.labels_img, img_path)
    _atomic_write_text(tsv_path, atlas.labels.to_csv(sep="\t", index=False))
    return img_path, tsv_path


def region_masks(atlas: Atlas, *, regions: Sequence[str] | None = None,
                 labels_data: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Boolean masks of atlas regions (labels and unions).

    Parameters
    ----------
    atlas : Atlas
    regions : sequence of str, optional
        Region names (label names or union names); default all, labels first.
    labels_data : (x, y, z) int ndarray, optional
        Labels already brought into another grid (see
        :func:`atlas_labels_in_space`); default the atlas' own grid.

    Returns
    -------
    masks : dict of str to (x, y, z) bool ndarray
    """
    data = np.asarray(atlas.labels_img.dataobj) if labels_data is None else labels_data
    name_to_index = dict(zip(atlas.labels["name"], atlas.labels["index"]))
    if regions is None:
        regions = atlas.region_names
    masks = {}
    for name in regions:
        if name in name_to_index:
            masks[name] = data == name_to_index[name]
        elif name in atlas.unions:
            masks[name] = np.isin(data, atlas.unions[name])
        else:
            raise ValueError(f"Unknown atlas region {name!r}; allowed values are "
                             f"{', '.join(map(repr, atlas.region_names))}.")
    return masks


def atlas_labels_in_space(atlas: Atlas, img, *, resample: bool = False,
                          img_name: str = "image") -> np.ndarray:
    """The atlas labels on the grid of ``img``.

    Parameters
    ----------
    atlas : Atlas
    img : nibabel image (3D or 4D)
        Image whose grid (shape of the first three axes and affine) is wanted.
    resample : bool
        If False (default) a different grid is an error; if True the labels are
        resampled with nearest-neighbour interpolation.
    img_name : str
        Name of the image used in error messages (e.g. its path).

    Returns
    -------
    labels : (x, y, z) int32 ndarray
    """
    shape = tuple(img.shape[:3])
    same = shape == atlas.labels_img.shape and np.allclose(img.affine, atlas.labels_img.affine,
                                                           atol=1e-4)
    if same:
        return np.asarray(atlas.labels_img.dataobj)
    if not resample:
        raise ValueError(
            f"The atlas (space {atlas.space}, shape {atlas.labels_img.shape}) and {img_name} "
            f"(shape {shape}) are not on the same grid (shape/affine); resample the image to "
            "the atlas space or pass resample=True for nearest-neighbour resampling of the atlas."
        )
    from nilearn.image import resample_img

    target = nib.Nifti1Image(np.zeros(shape, np.int8), img.affine)
    res = resample_img(atlas.labels_img, target_affine=target.affine, target_shape=shape,
                       interpolation="nearest", force_resample=True, copy_header=True)
    logger.info("Resampled atlas labels to the grid of %s (nearest neighbour).", img_name)
    return np.round(np.asarray(res.dataobj)).astype(np.int32)


# --------------------------------------------------------------------------- demo atlas
#: Centre (x, y, z) in MNI mm of the left thalamus ellipsoid; the right one is mirrored.
DEMO_THALAMUS_CENTER = (-11.0, -19.0, 6.0)
#: Semi-axes (x, y, z) in mm of the thalamus ellipsoids.
DEMO_THALAMUS_AXES = (7.5, 16.0, 9.0)
#: Template intensity band kept inside the ellipsoid (excludes CSF and bright white matter).
DEMO_INTENSITY_BAND = (0.45, 0.81)
_NUCLEI = ("anterior", "medial", "lateral", "pulvinar")


@functools.lru_cache(maxsize=4)
def demo_thalamus_atlas(*, resolution: int = 2) -> Atlas:
    """Approximate thalamus atlas on nilearn's bundled MNI152 2009a template.

    Parameters
    ----------
    resolution : {1, 2}
        Voxel size in mm of the template grid.

    Returns
    -------
    atlas : Atlas
        Labels 1-4: ``anterior_left, medial_left, lateral_left, pulvinar_left``;
        5-8: the same on the right. Unions: ``thalamus_left``,
        ``thalamus_right``, ``thalamus`` and the bilateral nuclear groups
        ``anterior``, ``medial``, ``lateral``, ``pulvinar``.

    Notes
    -----
    The rule, in MNI millimetres (``y`` antero-posterior, ``x`` left-right):

    1. Each thalamus is the ellipsoid centred at ``(±11, -19, 6)`` with
       semi-axes ``(7.5, 16, 9)`` intersected with nilearn's MNI152 grey-matter
       mask and with the template intensity band ``[0.45, 0.81)`` (removes the
       third/lateral ventricles and the internal capsule).
    2. With ``u = (y + 19) / 16`` the normalised antero-posterior position:
       ``u < -0.45`` is the *pulvinar*, ``u > 0.45`` the *anterior* group; the
       rest is *medial* where ``|x| < 11`` and *lateral* otherwise.

    This is a geometric caricature of the thalamic nuclear groups, good for
    simulation and demos only. For real studies use a published thalamic atlas
    in MNI space (e.g. Morel/Krauth, THOMAS, Najdenovska) through
    :func:`load_atlas` with its label table.
    """
    from nilearn import datasets

    if resolution not in (1, 2):
        raise ValueError(f"Invalid value for the 'resolution' parameter. Allowed values are "
                         f"1, 2, but got {resolution!r} instead.")
    template = datasets.load_mni152_template(resolution=resolution)
    gm = np.asarray(datasets.load_mni152_gm_mask(resolution=resolution).dataobj) > 0
    intensity = np.asarray(template.get_fdata(), dtype=np.float32)
    affine = template.affine
    ijk = np.indices(template.shape, dtype=np.float32).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:]).reshape((3,) + template.shape)
    x, y, z = xyz
    cx, cy, cz = DEMO_THALAMUS_CENTER
    ax, ay, az = DEMO_THALAMUS_AXES
    lo, hi = DEMO_INTENSITY_BAND
    tissue = gm & (intensity >= lo) & (intensity < hi)
    u = (y - cy) / ay
    labels = np.zeros(template.shape, np.int32)
    rows = []
    for offset, (hemi, sign, suffix) in enumerate((("L", -1, "_left"), ("R", 1, "_right"))):
        inside = (((x - sign * abs(cx)) / ax) ** 2 + (u ** 2) + ((z - cz) / az) ** 2 <= 1.0)
        inside &= tissue & (sign * x > 0)
        medial_side = np.abs(x) < abs(cx)
        parts = {
            "anterior": inside & (u > 0.45),
            "medial": inside & (u >= -0.45) & (u <= 0.45) & medial_side,
            "lateral": inside & (u >= -0.45) & (u <= 0.45) & ~medial_side,
            "pulvinar": inside & (u < -0.45),
        }
        for k, nucleus in enumerate(_NUCLEI):
            index = 4 * offset + k + 1
            labels[parts[nucleus]] = index
            rows.append((index, nucleus + suffix, hemi))
    table = pd.DataFrame(rows, columns=list(_LABEL_COLUMNS))
    unions = {n: (i + 1, i + 5) for i, n in enumerate(_NUCLEI)}
    img = nib.Nifti1Image(labels, affine)
    img.header.set_xyzt_units("mm")
    return load_atlas(
        img, table, space=DEMO_SPACE, structure="thalamus", unions=unions,
        description=("Approximate demo thalamus atlas (geometric rule on nilearn's MNI152 "
                     "2009a template; for simulation and demos only)."),
    )
