"""Cluster tables of a per-vertex statistic map on a mesh (the surface twin of ``cluster_table``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.sparse import csgraph

from .errors import ParameterError
from .cluster_table import _ALIASES, P_CONVENTIONS, _check_option, _check_p_values, _resolve_p_convention, _to_p
from .image import atomic_write_text, save_img_atomic
from .surface import check_areas, load_mesh
from .surface_io import read_surface_labels, read_vertex_mask, read_vertex_values

logger = logging.getLogger(__name__)

__all__ = ["SURFACE_COLUMNS", "SurfaceClusterTable", "surface_cluster_table"]

#: Columns of :attr:`SurfaceClusterTable.table`, always present in this order.
SURFACE_COLUMNS = (
    "cluster",
    "n_vertices",
    "area_mm2",
    "mass",
    "max_value",
    "peak_vertex",
    "peak_x",
    "peak_y",
    "peak_z",
    "p_min",
    "peak_label",
)


@dataclass(frozen=True)
class SurfaceClusterTable:
    """Clusters of a thresholded per-vertex map.

    Attributes
    ----------
    table : pandas.DataFrame, shape (n_clusters, len(SURFACE_COLUMNS))
        One row per cluster, largest area first (``cluster`` = 1, 2, ...).
        ``area_mm2`` is the sum of the cluster's vertex areas; ``mass`` the sum
        of area * |stat| (the integral of the statistic over the cluster);
        ``peak_vertex`` the 0-based index of the most extreme vertex and
        ``peak_x, peak_y, peak_z`` its coordinates on the mesh given (mm);
        ``p_min`` the smallest p in the cluster (NaN without a p map);
        ``peak_label`` the atlas label at the peak ("" without an atlas).
    labels : (n_vertices,) ndarray of int32
        Each vertex's cluster number, 0 outside clusters.
    """

    table: pd.DataFrame
    labels: np.ndarray

    def to_tsv(self, path):
        """Write :attr:`table` as TSV, atomically."""
        atomic_write_text(path, self.table.to_csv(sep="\t", index=False, float_format="%.6g"))

    def save_labels(self, path):
        """Write the cluster numbers as a GIFTI label file (``.label.gii``), atomically."""
        table = nib.gifti.GiftiLabelTable()
        for key in range(int(self.labels.max()) + 1):
            label = nib.gifti.GiftiLabel(key=key)
            label.label = "???" if key == 0 else f"cluster {key}"
            table.labels.append(label)
        array = nib.gifti.GiftiDataArray(self.labels.astype(np.int32), intent="NIFTI_INTENT_LABEL",
                                         datatype="NIFTI_TYPE_INT32")
        return save_img_atomic(nib.gifti.GiftiImage(labeltable=table, darrays=[array]), path)


def _values(x, n_vertices, name):
    if isinstance(x, (str, os.PathLike)):
        return read_vertex_values(x, n_vertices, name=name)
    values = np.asarray(x, dtype=np.float64).reshape(-1)
    if values.size != n_vertices:
        raise ParameterError(name, f"expected one value per vertex of the mesh ({n_vertices}), got {values.size}")
    return values


def surface_cluster_table(stat_img, surf, *, p_img=None, p_convention=None, alpha=0.05, threshold=None,
                          sign="pos", mask_img=None, areas=None, min_area=0.0, atlas_img=None, atlas_labels=None):
    """Table the clusters of a per-vertex statistic map on a mesh.

    A vertex belongs to a cluster when its statistic has the requested sign and
    exceeds ``threshold`` in magnitude (when given) and its p value is below
    ``alpha`` (when ``p_img`` is given); at least one of them is required.
    Neighbours are vertices sharing a triangle edge of ``surf``.

    Parameters
    ----------
    stat_img : str, path-like or (n_vertices,) array
        Statistic map over every vertex of the mesh (GIFTI, MGH or curv file).
        Non-finite vertices are in no cluster.
    surf : str, path-like, Mesh or (coordinates, faces)
        The mesh; peak coordinates are given on it (use the white, pial or
        midthickness surface you want to report coordinates on).
    p_img : str, path-like or array, optional
        p map on the same mesh, stored as ``p_convention``.
    p_convention : {'p', '1-p', '-log10(p)'}, optional
        How ``p_img`` stores p; when omitted, read from the p map's JSON sidecar or
        the voxstats randomise record that lists it (as
        :func:`voxstats.cluster_table.cluster_table`).
    alpha : float
    threshold : float, optional
        Cluster-forming threshold on |stat|.
    sign : {'pos', 'neg', 'both'}
    mask_img : str, path-like or array, optional
        Vertices that may join clusters (a per-vertex file or a ``.label``).
    areas : str, path-like, float or array, optional
        Vertex areas (mm²) for ``area_mm2`` and ``mass``; default: a third of
        each adjacent triangle's area on ``surf``.
    min_area : float
        Smallest cluster area (mm²) kept.
    atlas_img : str or path-like, optional
        Parcellation on the same mesh: FreeSurfer ``.annot`` or ``.label.gii``.
    atlas_labels : dict of int to str, optional
        Names that override those stored in ``atlas_img``.

    Returns
    -------
    SurfaceClusterTable
    """
    if p_convention is not None:
        p_convention = _ALIASES.get(p_convention, p_convention)
        _check_option("p_convention", p_convention, P_CONVENTIONS)
    _check_option("sign", sign, ("pos", "neg", "both"))
    if p_img is None and threshold is None:
        raise ValueError("Either 'threshold' or 'p_img' must be given to define clusters.")
    if not 0 < alpha <= 1:
        raise ValueError(f"Invalid value for the 'alpha' parameter: expected 0 < alpha <= 1, got {alpha}.")
    if threshold is not None and not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"Invalid value for the 'threshold' parameter: expected a number >= 0, got {threshold}.")
    if not (np.isfinite(min_area) and min_area >= 0):
        raise ValueError(f"Invalid value for the 'min_area' parameter: expected a number >= 0, got {min_area}.")
    mesh = load_mesh(surf, name="surf")
    n = mesh.n_vertices
    values = _values(stat_img, n, "stat_img")
    finite = np.isfinite(values)
    keep = finite.copy()
    if mask_img is not None:
        keep &= read_vertex_mask(mask_img, n, name="mask_img")
    if threshold is not None:
        keep &= np.abs(np.where(finite, values, 0)) > threshold
    p_values = np.full(n, np.nan)
    if p_img is not None:
        if isinstance(p_img, (str, os.PathLike)):
            p_convention = _resolve_p_convention(p_img, p_convention)
        elif p_convention is None:
            raise ParameterError("p_convention", "give how the p values are stored: one of "
                                 f"{', '.join(map(repr, P_CONVENTIONS))}")
        raw = _values(p_img, n, "p_img")
        _check_p_values(raw, p_convention, str(p_img) if isinstance(p_img, (str, os.PathLike)) else "p_img")
        p_values = _to_p(raw, p_convention, np.float32 if isinstance(p_img, (str, os.PathLike)) else raw.dtype)
        keep &= np.isfinite(p_values) & (p_values < alpha)
    vertex_areas = mesh.vertex_areas if areas is None else (
        check_areas(read_vertex_values(areas, n, name="areas"), n, name="areas")
        if isinstance(areas, (str, os.PathLike)) else check_areas(areas, n))
    codes, names = (None, {})
    if atlas_img is not None:
        codes, names = read_surface_labels(atlas_img, n, name="atlas_img")
        names = {**names, **(atlas_labels or {})}

    rows = []
    adjacency = mesh.adjacency.tocsr()
    for s in {"pos": (1,), "neg": (-1,), "both": (1, -1)}[sign]:
        nodes = np.flatnonzero(keep & (np.where(finite, values, 0) * s > 0))
        if nodes.size == 0:
            continue
        n_clusters, lab = csgraph.connected_components(adjacency[nodes][:, nodes], directed=False)
        area = np.bincount(lab, weights=vertex_areas[nodes], minlength=n_clusters)
        mass = np.bincount(lab, weights=vertex_areas[nodes] * np.abs(values[nodes]), minlength=n_clusters)
        # peak: the most extreme value of each cluster, lowest vertex index on ties
        order = np.lexsort((nodes, -s * values[nodes], lab))
        first = order[np.r_[0, np.flatnonzero(np.diff(lab[order])) + 1]]
        for c in range(n_clusters):
            if area[c] < min_area:
                continue
            members = nodes[lab == c]
            peak = int(nodes[first[c]])
            p_c = p_values[members]
            label = ""
            if codes is not None:
                code = int(codes[peak])
                label = names.get(code, "" if code <= 0 else f"label {code}")
            rows.append(dict(members=members, n_vertices=members.size, area_mm2=float(area[c]),
                             mass=float(mass[c]), max_value=float(values[peak]), peak_vertex=peak,
                             p_min=float(np.nanmin(p_c)) if np.isfinite(p_c).any() else np.nan,
                             peak_label=label))
    rows.sort(key=lambda r: (-r["area_mm2"], -abs(r["max_value"]), r["peak_vertex"]))
    labels = np.zeros(n, dtype=np.int32)
    records = []
    for number, row in enumerate(rows, start=1):
        labels[row["members"]] = number
        x, y, z = mesh.coordinates[row["peak_vertex"]]
        records.append((number, row["n_vertices"], row["area_mm2"], row["mass"], row["max_value"],
                        row["peak_vertex"], x, y, z, row["p_min"], row["peak_label"]))
    table = pd.DataFrame.from_records(records, columns=list(SURFACE_COLUMNS))
    if table.empty:
        table = table.astype({c: "int64" for c in ("cluster", "n_vertices", "peak_vertex")})
    logger.info("%d clusters", len(table))
    return SurfaceClusterTable(table=table, labels=labels)
