"""Cluster tables of a CIFTI grayordinate map (the CIFTI twin of ``cluster_table``).

Each CIFTI structure is labelled on its own, with the neighbourhoods of
:meth:`voxstats.cifti.CiftiMasker.graph`: a cortical structure's vertices by the
edges of its mesh (only the vertices in the file's brain models; the medial
wall is not there), a volume structure's voxels on their grid (6, 18 or 26
neighbours). No cluster spans two structures. Sizes are areas (mm², sums of
vertex areas as in :func:`voxstats.surface_clusters.surface_cluster_table`) on
surfaces and volumes (mm³, voxels times the voxel volume) in volume
structures; a cluster's mass is the integral of |stat| over it (mm² or mm³
times the statistic's unit).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.cifti2 import cifti2_axes
from scipy.sparse import csgraph

from .cifti import CORTEX, _meshes, _read_one, _volume_adjacency, save_cifti_map
from .cluster_table import _ALIASES, P_CONVENTIONS, _check_option, _check_p_values, _resolve_p_convention, _to_p
from .errors import ParameterError
from .image import atomic_write_text, save_img_atomic

logger = logging.getLogger(__name__)

__all__ = ["CIFTI_COLUMNS", "CiftiClusterTable", "cifti_cluster_table"]

#: Columns of :attr:`CiftiClusterTable.table`, always present in this order.
CIFTI_COLUMNS = (
    "cluster",
    "structure",
    "n_elements",
    "area_mm2",
    "volume_mm3",
    "mass",
    "max_value",
    "peak_grayordinate",
    "peak_vertex",
    "peak_i",
    "peak_j",
    "peak_k",
    "peak_x",
    "peak_y",
    "peak_z",
    "p_min",
    "peak_label",
)


@dataclass(frozen=True)
class CiftiClusterTable:
    """Clusters of a thresholded grayordinate map.

    Attributes
    ----------
    table : pandas.DataFrame, shape (n_clusters, len(CIFTI_COLUMNS))
        One row per cluster: structures in the file's order, largest cluster
        first within each (``cluster`` = 1, 2, ... over the whole table).
        ``structure`` is the CIFTI structure name; ``n_elements`` its vertices
        or voxels; ``area_mm2`` the sum of vertex areas (NaN in volume
        structures), ``volume_mm3`` voxels times the voxel volume (NaN on
        surfaces); ``mass`` the sum of size * |stat|; ``peak_grayordinate`` the
        0-based index of the most extreme element along the file's
        grayordinates, ``peak_vertex`` its vertex on the mesh (missing, ``<NA>``,
        in volume structures), ``peak_i, peak_j, peak_k`` its voxel (missing on
        surfaces; these four are pandas ``Int64`` columns, blank in the TSV), ``peak_x,
        peak_y, peak_z`` its coordinates (mm: on the mesh given, or through the
        brain models' affine); ``p_min`` the smallest p in the cluster (NaN
        without a p map); ``peak_label`` the atlas label at the peak.
    labels : (n_grayordinates,) ndarray of int32
        Each grayordinate's cluster number, 0 outside clusters.
    brain_models : nibabel.cifti2.cifti2_axes.BrainModelAxis
        The map's grayordinates.
    """

    table: pd.DataFrame
    labels: np.ndarray
    brain_models: object

    def to_tsv(self, path):
        """Write :attr:`table` as TSV, atomically."""
        atomic_write_text(path, self.table.to_csv(sep="\t", index=False, float_format="%.6g"))

    def save_labels(self, path):
        """Write the cluster numbers over the grayordinates, atomically.

        ``.dlabel.nii``: a CIFTI label map ("cluster 1", ...; Connectome
        Workbench shows it as a parcellation); ``.dscalar.nii``: the numbers as
        a scalar map.
        """
        name = str(path).lower()
        if name.endswith(".dscalar.nii"):
            return save_cifti_map(self.labels, path, self.brain_models, map_name="clusters")
        if not name.endswith(".dlabel.nii"):
            raise ParameterError("path", f"expected a name ending in .dlabel.nii or .dscalar.nii, got {path}")
        n = int(self.labels.max())
        colours = np.random.default_rng(0).uniform(0.2, 1.0, size=(n, 3))
        table = {0: ("???", (0.0, 0.0, 0.0, 0.0))}
        table.update({k: (f"cluster {k}", (*colours[k - 1], 1.0)) for k in range(1, n + 1)})
        axis = cifti2_axes.LabelAxis(["clusters"], [table])
        img = nib.Cifti2Image(self.labels[None].astype(np.float32), header=(axis, self.brain_models))
        img.nifti_header.set_intent("ConnDenseLabel")
        img.update_headers()
        return save_img_atomic(img, path)


def _one_map(img, name, brain_models=None):
    """One map over the grayordinates of a dense CIFTI file (or an array), and its brain models."""
    if isinstance(img, (str, os.PathLike)):
        data, models = _read_one(img, name)
        if data.shape[0] != 1:
            raise ParameterError(name, f"{img} holds {data.shape[0]} maps; expected one")
        if brain_models is not None and models != brain_models:
            raise ParameterError(name, f"{img} has other grayordinates (brain models) than the statistic map")
        return data[0].astype(np.float64), models
    values = np.asarray(img, dtype=np.float64).reshape(-1)
    if brain_models is None:
        raise ParameterError(name, "expected a dense CIFTI file (.dscalar.nii)")
    if values.size != len(brain_models):
        raise ParameterError(name, f"expected {len(brain_models)} grayordinates, got {values.size}")
    return values, brain_models


def _read_dlabel(path, brain_models, name):
    """Label codes over the grayordinates and their names, from a ``.dlabel.nii``."""
    path = Path(path)
    try:
        img = nib.load(path)
        axis = img.header.get_axis(0)
    except Exception as err:  # nibabel raises many kinds on broken files
        raise ParameterError(name, f"cannot read {path} as a CIFTI label file ({type(err).__name__}: {err})") from None
    if not isinstance(axis, cifti2_axes.LabelAxis):
        raise ParameterError(name, f"{path} is not a CIFTI label file (.dlabel.nii)")
    codes = np.rint(np.asarray(img.get_fdata())[0]).astype(np.int64)
    names = {int(k): v[0] for k, v in axis.label[0].items()}
    models = img.header.get_axis(1)
    if models == brain_models:
        return codes, names
    # another set of grayordinates (a cortical parcellation for a 91k map): match structure and vertex/voxel
    for structure, count in models.nvertices.items():
        if brain_models.nvertices.get(structure, count) != count:
            raise ParameterError(name, f"{path}: {structure} is on a mesh of {count} vertices, the statistic "
                                 f"map's on one of {brain_models.nvertices[structure]}")
    if models.volume_mask.any() and brain_models.volume_mask.any() and (
            models.volume_shape != brain_models.volume_shape or not np.allclose(models.affine, brain_models.affine)):
        raise ParameterError(name, f"{path}: its volume grid differs from the statistic map's")
    lookup = {}
    for structure, where, part in models.iter_structures():
        lookup.update(zip(_element_keys(structure, part), codes[where]))
    out = np.full(len(brain_models), -1, dtype=np.int64)  # -1: not in the atlas, no label
    for structure, where, part in brain_models.iter_structures():
        out[where] = [lookup.get(key, -1) for key in _element_keys(structure, part)]
    return out, names


def _element_keys(structure, part):
    if part.surface_mask.all():
        return [(structure, int(v)) for v in part.vertex]
    return [(structure, *map(int, v)) for v in part.voxel]


def cifti_cluster_table(stat_img, *, left_surf=None, right_surf=None, left_area=None, right_area=None,
                        p_img=None, p_convention=None, alpha=0.05, threshold=None, sign="pos", mask_img=None,
                        connectivity=26, min_size=0.0, atlas_img=None, atlas_labels=None):
    """Table the clusters of a dense CIFTI statistic map, structure by structure.

    A grayordinate belongs to a cluster when its statistic has the requested
    sign and exceeds ``threshold`` in magnitude (when given) and its p value is
    below ``alpha`` (when ``p_img`` is given); at least one of them is
    required. Neighbours: mesh edges on cortical structures, the voxel grid in
    volume structures; structures never join.

    Parameters
    ----------
    stat_img : str or path-like
        A dense CIFTI file (``.dscalar.nii``) holding one map. Non-finite
        grayordinates are in no cluster.
    left_surf, right_surf : str, path-like or Mesh, optional
        Meshes of ``CIFTI_STRUCTURE_CORTEX_LEFT`` / ``_RIGHT`` (e.g. fs_LR 32k
        midthickness); needed where that structure has clusters. Peaks are
        reported on them.
    left_area, right_area : str, path-like, float or array, optional
        Vertex areas (mm²) on each mesh; default: a third of each adjacent
        triangle's area.
    p_img : str, path-like or (n_grayordinates,) array, optional
        p map over the same grayordinates, stored as ``p_convention``.
    p_convention : {'p', '1-p', '-log10(p)'}, optional
        As :func:`voxstats.cluster_table.cluster_table` (read from the voxstats
        randomise record that lists ``p_img`` when omitted).
    alpha : float
    threshold : float, optional
        Cluster-forming threshold on |stat|.
    sign : {'pos', 'neg', 'both'}
    mask_img : str, path-like or array, optional
        Grayordinates that may join clusters (finite and non-zero).
    connectivity : {6, 18, 26}
        Neighbourhood in volume structures (default 26, as FSL's cluster).
    min_size : float
        Smallest cluster kept: mm² on surfaces, voxels in volume structures.
    atlas_img : str or path-like, optional
        A ``.dlabel.nii`` (e.g. HCP's multimodal parcellation); its first map
        names each peak. Its grayordinates may be a subset of the map's (a
        cortical parcellation for a 91k map): labels are matched by structure
        and vertex or voxel; elsewhere the label is empty.
    atlas_labels : dict of int to str, optional
        Names that override those stored in ``atlas_img``.

    Returns
    -------
    CiftiClusterTable

    Raises
    ------
    ValueError
        Bad options, files of other grayordinates, or clusters in a cortical
        structure whose mesh was not given (the message names the parameter).
    """
    if p_convention is not None:
        p_convention = _ALIASES.get(p_convention, p_convention)
        _check_option("p_convention", p_convention, P_CONVENTIONS)
    _check_option("sign", sign, ("pos", "neg", "both"))
    _check_option("connectivity", connectivity, (6, 18, 26))
    if p_img is None and threshold is None:
        raise ValueError("Either 'threshold' or 'p_img' must be given to define clusters.")
    if not 0 < alpha <= 1:
        raise ValueError(f"Invalid value for the 'alpha' parameter: expected 0 < alpha <= 1, got {alpha}.")
    if threshold is not None and not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"Invalid value for the 'threshold' parameter: expected a number >= 0, got {threshold}.")
    if not (np.isfinite(min_size) and min_size >= 0):
        raise ValueError(f"Invalid value for the 'min_size' parameter: expected a number >= 0, got {min_size}.")
    values, models = _one_map(stat_img, "stat_img")
    names = {"left_surf": "left_surf", "right_surf": "right_surf", "left_area": "left_area",
             "right_area": "right_area"}
    meshes, areas = _meshes(models, left_surf, right_surf, left_area, right_area, names)
    finite = np.isfinite(values)
    keep = finite.copy()
    if mask_img is not None:
        mask, _ = _one_map(mask_img, "mask_img", models)
        keep &= np.isfinite(mask) & (mask != 0)
    if threshold is not None:
        keep &= np.abs(np.where(finite, values, 0)) > threshold
    p_values = np.full(values.size, np.nan)
    if p_img is not None:
        if isinstance(p_img, (str, os.PathLike)):
            p_convention = _resolve_p_convention(p_img, p_convention)
        elif p_convention is None:
            raise ParameterError("p_convention", "give how the p values are stored: one of "
                                 f"{', '.join(map(repr, P_CONVENTIONS))}")
        raw, _ = _one_map(p_img, "p_img", models)
        _check_p_values(raw, p_convention, str(p_img) if isinstance(p_img, (str, os.PathLike)) else "p_img")
        p_values = _to_p(raw, p_convention, np.float32 if isinstance(p_img, (str, os.PathLike)) else raw.dtype)
        keep &= np.isfinite(p_values) & (p_values < alpha)
    codes, label_names = None, {}
    if atlas_img is not None:
        codes, label_names = _read_dlabel(atlas_img, models, "atlas_img")
        label_names = {**label_names, **(atlas_labels or {})}
    voxel_volume = abs(float(np.linalg.det(models.affine[:3, :3]))) if models.volume_mask.any() else 1.0
    signed = np.where(finite, values, 0.0)
    grayordinates = np.arange(values.size)

    rows = []
    for s_index, (structure, where, part) in enumerate(models.iter_structures()):
        index = grayordinates[where]
        surface = bool(part.surface_mask.all())
        candidates = {s: np.flatnonzero(keep[index] & (signed[index] * s > 0))
                      for s in {"pos": (1,), "neg": (-1,), "both": (1, -1)}[sign]}
        if not any(c.size for c in candidates.values()):
            continue
        if surface:
            if structure not in meshes:
                side = {v: k for k, v in CORTEX.items()}.get(structure)
                if side is None:
                    raise ParameterError("stat_img", f"{structure} is a surface structure with clusters, but "
                                         "only the cortices' meshes can be given")
                raise ParameterError(f"{side}_surf", f"{structure} has clusters: they need this hemisphere's "
                                     "mesh")
            mesh = meshes[structure]
            vertices = np.asarray(part.vertex)
            adjacency = mesh.adjacency.tocsr()[vertices][:, vertices]
            sizes = areas[structure][vertices]
        else:
            adjacency = _volume_adjacency(part.voxel, connectivity).tocsr()
            sizes = np.full(index.size, voxel_volume)
        for s, local in candidates.items():
            if local.size == 0:
                continue
            n_clusters, lab = csgraph.connected_components(adjacency[local][:, local], directed=False)
            size = np.bincount(lab, weights=sizes[local], minlength=n_clusters)
            count = np.bincount(lab, minlength=n_clusters)
            mass = np.bincount(lab, weights=sizes[local] * np.abs(signed[index[local]]), minlength=n_clusters)
            order = np.lexsort((local, -s * signed[index[local]], lab))
            first = order[np.r_[0, np.flatnonzero(np.diff(lab[order])) + 1]]
            for c in range(n_clusters):
                if (size[c] if surface else count[c]) < min_size:
                    continue
                members = index[local[lab == c]]
                peak_local = int(local[first[c]])
                peak = int(index[peak_local])
                if surface:
                    vertex, ijk = int(part.vertex[peak_local]), (pd.NA,) * 3
                    xyz = mesh.coordinates[vertex]
                else:
                    vertex, ijk = pd.NA, tuple(int(v) for v in part.voxel[peak_local])
                    xyz = models.affine[:3, :3] @ np.array(ijk, dtype=float) + models.affine[:3, 3]
                p_c = p_values[members]
                label = ""
                if codes is not None:
                    code = int(codes[peak])
                    label = label_names.get(code, "" if code <= 0 else f"label {code}")
                rows.append(dict(order=s_index, members=members, structure=structure, n_elements=members.size,
                                 area_mm2=float(size[c]) if surface else np.nan,
                                 volume_mm3=np.nan if surface else float(size[c]), size=float(size[c]),
                                 mass=float(mass[c]), max_value=float(values[peak]), peak_grayordinate=peak,
                                 peak_vertex=vertex, ijk=ijk, xyz=tuple(float(v) for v in xyz),
                                 p_min=float(np.nanmin(p_c)) if np.isfinite(p_c).any() else np.nan,
                                 peak_label=label))
    rows.sort(key=lambda r: (r["order"], -r["size"], -abs(r["max_value"]), r["peak_grayordinate"]))
    labels = np.zeros(values.size, dtype=np.int32)
    records = []
    for number, row in enumerate(rows, start=1):
        labels[row["members"]] = number
        records.append((number, row["structure"], row["n_elements"], row["area_mm2"], row["volume_mm3"],
                        row["mass"], row["max_value"], row["peak_grayordinate"], row["peak_vertex"], *row["ijk"],
                        *row["xyz"], row["p_min"], row["peak_label"]))
    table = pd.DataFrame.from_records(records, columns=list(CIFTI_COLUMNS))
    # a peak has a vertex or a voxel, never both: the other is missing (blank in the TSV), not -1
    table = table.astype({**{c: "int64" for c in ("cluster", "n_elements", "peak_grayordinate")},
                          **{c: "Int64" for c in ("peak_vertex", "peak_i", "peak_j", "peak_k")}})
    logger.info("%d clusters", len(table))
    return CiftiClusterTable(table=table, labels=labels, brain_models=models)
