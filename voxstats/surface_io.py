"""Per-vertex data on one surface: reading subjects' maps, writing results, the surface masker.

Formats (all read and written through nibabel):

- GIFTI data arrays (``.func.gii``, ``.shape.gii``, ``.gii``): each data array is a
  map (a 2D array holds one map per column); one file per subject, or one file
  holding every subject;
- FreeSurfer ``curv`` files (``lh.thickness``, ``lh.curv``, ``lh.sulc``): one map;
- FreeSurfer MGH/MGZ (``.mgh``, ``.mgz``) of shape (n_vertices, 1, 1) or
  (n_vertices, 1, 1, n_maps): one map per frame.

Results are written in the input's format: GIFTI input gives ``.func.gii``
(one float32 data array, with the input's ``AnatomicalStructurePrimary``),
MGH input the same extension as the input, and ``curv`` input ``.mgz`` (a curv
file has no header to keep anything else; FreeSurfer tools read both).
Vertices outside the analysis are written as 0, as voxels outside a volume mask.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np

from .errors import MissingFileError, ParameterError
from .image import save_img_atomic
from .surface import check_areas, load_mesh, mesh_graph

__all__ = [
    "SurfaceFormat",
    "SurfaceMasker",
    "load_surface",
    "load_surface_data",
    "read_surface_labels",
    "read_vertex_values",
    "save_surface_map",
]

_CURV_MAGIC = b"\xff\xff\xff"
_GIFTI_SUFFIXES = (".gii", ".gii.gz")
_MGH_SUFFIXES = (".mgh", ".mgz")


@dataclass(frozen=True)
class SurfaceFormat:
    """How per-vertex maps were stored, to write results the same way.

    Attributes
    ----------
    kind : {'gifti', 'mgh', 'curv'}
    suffix : str
        File name ending of outputs ('.func.gii', '.mgz', '.mgh').
    meta : dict
        GIFTI: metadata of the first data array (``AnatomicalStructurePrimary``...).
        MGH: ``affine``.
    """

    kind: str
    suffix: str
    meta: dict = field(default_factory=dict)


def _is_curv(path):
    with open(path, "rb") as handle:
        return handle.read(3) == _CURV_MAGIC


def surface_kind(path):
    """'gifti', 'mgh', 'curv' or None for a file name (curv files by their magic number)."""
    lower = str(path).lower()
    if lower.endswith(_GIFTI_SUFFIXES):
        return "gifti"
    if lower.endswith(_MGH_SUFFIXES):
        return "mgh"
    try:
        return "curv" if Path(path).is_file() and _is_curv(path) else None
    except OSError:
        return None


def _read_maps(path, name):
    """(n_maps, n_vertices) float32 maps of one file and its SurfaceFormat."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(name, path)
    kind = surface_kind(path)
    if kind is None:
        raise ParameterError(name, f"cannot read {path} as per-vertex data: expected GIFTI (.func.gii, "
                         ".shape.gii), FreeSurfer MGH/MGZ or a FreeSurfer curv file (lh.thickness)")
    try:
        if kind == "gifti":
            img = nib.load(path)
            arrays = [a for a in img.darrays
                      if a.intent not in (nib.nifti1.intent_codes["NIFTI_INTENT_POINTSET"],
                                          nib.nifti1.intent_codes["NIFTI_INTENT_TRIANGLE"])]
            if len(arrays) < len(img.darrays):
                raise ValueError("it is a surface mesh (POINTSET/TRIANGLE), not per-vertex data")
            if not arrays:
                raise ValueError("it holds no data array")
            columns = []
            for array in arrays:
                data = np.asarray(array.data)
                if data.ndim == 1:
                    columns.append(data[np.newaxis])
                elif data.ndim == 2:
                    columns.append(data.T)
                else:
                    raise ValueError(f"a data array has shape {data.shape}; expected (n_vertices,) "
                                     "or (n_vertices, n_maps)")
            lengths = {c.shape[1] for c in columns}
            if len(lengths) != 1:
                raise ValueError(f"its data arrays have different lengths {sorted(lengths)}")
            maps = np.concatenate(columns).astype(np.float32)
            meta = dict(arrays[0].meta) if arrays[0].meta is not None else {}
            keep = {k: v for k, v in meta.items() if k.startswith("AnatomicalStructure")}
            fmt = SurfaceFormat("gifti", ".func.gii", keep)
        elif kind == "mgh":
            # from bytes: nibabel's MGH loader leaves an uncompressed file's handle open
            raw = path.read_bytes()
            img = nib.MGHImage.from_bytes(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
            data = np.asarray(img.dataobj)
            if data.ndim < 3 or data.shape[1:3] != (1, 1) or data.ndim > 4:
                raise ValueError(f"shape {data.shape}; expected per-vertex data of shape "
                                 "(n_vertices, 1, 1) or (n_vertices, 1, 1, n_maps)")
            maps = data.reshape(data.shape[0], -1).T.astype(np.float32)
            suffix = ".mgz" if str(path).lower().endswith(".mgz") else ".mgh"
            fmt = SurfaceFormat("mgh", suffix, {"affine": np.asarray(img.affine)})
        else:
            maps = np.asarray(nib.freesurfer.read_morph_data(str(path)), dtype=np.float32)[np.newaxis]
            fmt = SurfaceFormat("curv", ".mgz", {"affine": np.eye(4)})
    except (ValueError, OSError, EOFError, KeyError, TypeError, IndexError) as err:
        raise ParameterError(name, f"cannot read {path} as per-vertex data ({err})") from None
    except Exception as err:  # nibabel's XML and zlib errors on broken files
        raise ParameterError(name, f"cannot read {path} as per-vertex data ({type(err).__name__}: {err})") from None
    return maps, fmt


def load_surface_data(imgs, *, name="imgs"):
    """Subjects' per-vertex maps as one matrix.

    Parameters
    ----------
    imgs : str, path-like, or list of them
        One file holding every subject's map (GIFTI with one data array per
        subject, MGH with one frame per subject), or a list of files, one (or
        more) maps each, in the design's order.
    name : str
        How the input is named in error messages.

    Returns
    -------
    data : (n_maps, n_vertices) ndarray of float32
    names : list of str
        One per map: ``file`` or ``file[i]``.
    fmt : SurfaceFormat
        The first file's format, for the outputs.

    Raises
    ------
    ValueError
        Unreadable file, or files with different numbers of vertices (both named).
    """
    single = isinstance(imgs, (str, os.PathLike))
    paths = [imgs] if single else list(imgs)
    if not paths:
        raise ParameterError(name, f"expected at least one file, got an empty list")
    blocks, names, fmt, first = [], [], None, None
    for i, path in enumerate(paths):
        maps, this = _read_maps(path, name if single else f"{name}[{i}]")
        if first is None:
            first, fmt = (str(path), maps.shape[1]), this
        elif maps.shape[1] != first[1]:
            raise ParameterError(name, f"{path} has {maps.shape[1]} vertices but {first[0]} has {first[1]}; "
                             "every map must be on the same mesh")
        blocks.append(maps)
        names += [str(path)] if maps.shape[0] == 1 else [f"{path}[{j}]" for j in range(maps.shape[0])]
    return np.concatenate(blocks), names, fmt


def read_vertex_values(path, n_vertices, *, name="file"):
    """One per-vertex map from a file (the first map of a GIFTI, MGH or curv file), float64."""
    maps, _ = _read_maps(path, name)
    if maps.shape[1] != n_vertices:
        raise ParameterError(name, f"{path} has {maps.shape[1]} vertices but the mesh has {n_vertices}")
    return maps[0].astype(np.float64)


def _read_label_file(path, n_vertices, name):
    """A FreeSurfer ``.label`` file as a boolean vertex mask."""
    try:
        vertices = np.asarray(nib.freesurfer.read_label(str(path)), dtype=np.int64)
    except Exception as err:
        raise ParameterError(name, f"cannot read {path} as a FreeSurfer label ({err})") from None
    if vertices.size and (vertices.min() < 0 or vertices.max() >= n_vertices):
        raise ParameterError(name, f"{path} lists vertex {int(vertices.max())} but the mesh has {n_vertices} vertices")
    mask = np.zeros(n_vertices, dtype=bool)
    mask[vertices] = True
    return mask


def read_vertex_mask(mask, n_vertices, *, name="mask"):
    """A vertex mask: an array, a per-vertex file (finite and non-zero = in) or a ``.label`` file."""
    if isinstance(mask, (str, os.PathLike)):
        if str(mask).lower().endswith(".label"):
            if not Path(mask).exists():
                raise MissingFileError(name, mask)
            return _read_label_file(mask, n_vertices, name)
        values = read_vertex_values(mask, n_vertices, name=name)
    else:
        values = np.asarray(mask, dtype=np.float64).reshape(-1)
        if values.size != n_vertices:
            raise ParameterError(name, f"expected one value per vertex ({n_vertices}), got {values.size}")
    return np.isfinite(values) & (values != 0)


def read_surface_labels(path, n_vertices, *, name="atlas"):
    """Vertex labels of a parcellation: FreeSurfer ``.annot`` or GIFTI ``.label.gii``.

    Returns
    -------
    labels : (n_vertices,) ndarray of int64
        Label key per vertex (-1 for FreeSurfer's unlabelled vertices).
    names : dict of int to str
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(name, path)
    try:
        if str(path).lower().endswith(_GIFTI_SUFFIXES):
            img = nib.load(path)
            labels = np.asarray(img.darrays[0].data, dtype=np.int64).reshape(-1)
            names = {int(k): str(v) for k, v in img.labeltable.get_labels_as_dict().items()}
        else:
            labels, _, raw = nib.freesurfer.read_annot(str(path))
            labels = np.asarray(labels, dtype=np.int64)
            names = {i: (n.decode() if isinstance(n, bytes) else str(n)) for i, n in enumerate(raw)}
    except Exception as err:
        raise ParameterError(name, f"cannot read {path} as an atlas (.annot or .label.gii) "
                         f"({type(err).__name__}: {err})") from None
    if labels.size != n_vertices:
        raise ParameterError(name, f"{path} labels {labels.size} vertices but the mesh has {n_vertices}")
    return labels, names


def save_surface_map(values, path, fmt):
    """Write one per-vertex map (all vertices of the mesh) in ``fmt``, atomically.

    Parameters
    ----------
    values : (n_vertices,) array
        Written as float32.
    path : str or Path
    fmt : SurfaceFormat

    Returns
    -------
    Path
    """
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if fmt.kind == "gifti":
        meta = nib.gifti.GiftiMetaData(dict(fmt.meta))
        array = nib.gifti.GiftiDataArray(values, intent="NIFTI_INTENT_NONE", datatype="NIFTI_TYPE_FLOAT32",
                                         meta=meta)
        img = nib.gifti.GiftiImage(darrays=[array])
    else:
        img = nib.MGHImage(values.reshape(-1, 1, 1), fmt.meta.get("affine", np.eye(4)))
    return save_img_atomic(img, path)


@dataclass(frozen=True, eq=False)
class SurfaceMasker:
    """The analysed vertices of one hemisphere's mesh, and how results go back to files.

    The masker protocol of the loaders: ``n_elements``, ``graph()``,
    ``unmask(values)``, ``save(values, path)`` and ``suffix``.

    Attributes
    ----------
    mesh : voxstats.surface.Mesh
    mask : (n_vertices,) ndarray of bool
        Vertices analysed; the others (medial wall, vertices without data) are
        in no cluster and are written as 0.
    areas : (n_vertices,) ndarray of float64
        Vertex areas on the whole mesh (mm²): the mesh's own or a user's file.
    fmt : SurfaceFormat
        Format of the input, used for the outputs.
    """

    mesh: object
    mask: np.ndarray
    areas: np.ndarray
    fmt: SurfaceFormat

    kind: ClassVar[str] = "surface"

    @property
    def n_elements(self):
        return int(self.mask.sum())

    @property
    def suffix(self):
        return self.fmt.suffix

    @property
    def vertices(self):
        """(n_elements,) vertex indices of the analysed vertices, increasing."""
        return np.flatnonzero(self.mask)

    @property
    def coordinates(self):
        """(n_elements, 3) coordinates (mm) of the analysed vertices."""
        return self.mesh.coordinates[self.mask]

    def graph(self, connectivity=None):
        """Graph of the analysed vertices (mesh edges), with vertex areas as weights.

        ``connectivity`` is ignored: the triangles define the neighbours.
        """
        graph, weights = mesh_graph(self.mesh, self.mask, areas=self.areas)
        return _with_weights(graph, weights)

    def unmask(self, values):
        """(n_elements,) values as a (n_vertices,) map, 0 outside the mask."""
        values = np.asarray(values)
        if values.shape != (self.n_elements,):
            raise ParameterError("values", f"expected shape ({self.n_elements},), got {values.shape}")
        out = np.zeros(self.mesh.n_vertices, dtype=values.dtype)
        out[self.mask] = values
        return out

    def save(self, values, path):
        """Write (n_elements,) values to ``path`` in the input's format."""
        return save_surface_map(self.unmask(np.asarray(values, dtype=np.float32)), path, self.fmt)

    def position(self, k):
        """Vertex index and coordinates (mm, on the mesh) of element ``k``."""
        vertex = int(self.vertices[int(k)])
        return vertex, tuple(float(v) for v in self.mesh.coordinates[vertex])


def _with_weights(graph, weights):
    """The graph with per-node extent weights (vertex areas, mm²)."""
    return graph.with_weights(weights)


def default_mask(data, keep_constant=False):
    """Elements finite in every subject and, unless ``keep_constant``, not constant across subjects.

    FSL randomise's default mask (``--norcmask`` keeps constant elements): on
    FreeSurfer's thickness, area or curvature maps it leaves out the medial
    wall, which is 0 in every subject.
    """
    mask = np.all(np.isfinite(data), axis=0)
    if not keep_constant:
        mask &= np.any(data != data[:1], axis=0)
    return mask


def load_surface(imgs, surf, *, mask_img=None, areas=None, keep_constant=False, name="imgs",
                 surf_name="surf", mask_name="mask_img", areas_name="areas"):
    """Subjects' maps on one hemisphere's mesh and the masker that goes with them.

    Parameters
    ----------
    imgs : str, path-like, or list of them
        See :func:`load_surface_data`.
    surf : str, path-like, Mesh or (coordinates, faces)
        The mesh the maps live on (for example ``lh.white.surf.gii`` of the
        common template); its vertex count must match the maps'.
    mask_img : str, path-like or array, optional
        Vertices to analyse: a per-vertex file (finite and non-zero = in) or
        a FreeSurfer ``.label`` (``lh.cortex.label``). Default: vertices finite
        in every subject and not constant across subjects (FSL randomise's
        rule), which leaves out the medial wall of FreeSurfer's thickness,
        area and curvature maps (0 in every subject).
    areas : str, path-like, float or array, optional
        Vertex areas (mm²) to weigh cluster extents with, as PALM's
        ``-s surf area``: a per-vertex file (for example an average of the
        subjects' native areas on the common mesh) or a number (every vertex
        weighs the same). Default: a third of each adjacent triangle's area on
        ``surf``.
    keep_constant : bool
        Without ``mask_img``, keep vertices constant across subjects too
        (randomise ``--norcmask``).

    Returns
    -------
    data : (n_subjects, n_elements) ndarray of float32
    masker : SurfaceMasker
    """
    data, names, fmt = load_surface_data(imgs, name=name)
    mesh = load_mesh(surf, name=surf_name)
    if data.shape[1] != mesh.n_vertices:
        raise ParameterError(surf_name, f"{mesh.name} has {mesh.n_vertices} vertices but the maps "
                             f"({names[0]}) have {data.shape[1]}; give the mesh the maps were resampled to")
    if data.shape[0] < 2:
        raise ParameterError(name, f"expected at least 2 subjects, got {data.shape[0]}")
    finite = np.all(np.isfinite(data), axis=0)
    if mask_img is None:
        mask = default_mask(data, keep_constant)
    else:
        mask = read_vertex_mask(mask_img, mesh.n_vertices, name=mask_name)
        bad = mask & ~finite
        if bad.any():
            row = int(np.flatnonzero(~np.all(np.isfinite(data[:, bad]), axis=1))[0])
            raise ParameterError(name, f"{names[row]}: NaN or infinite values at {int(bad.sum())} vertices "
                                 "inside the mask")
    if not mask.any():
        raise ParameterError(mask_name, "no vertex to analyse (none is finite in every subject and varies "
                             "across subjects)" if mask_img is None else "the mask is empty")
    masker = SurfaceMasker(mesh=mesh, mask=mask, areas=vertex_areas_of(mesh, areas, name=areas_name), fmt=fmt)
    return np.ascontiguousarray(data[:, mask]), masker


def vertex_areas_of(mesh, areas=None, *, name="areas"):
    """Vertex areas of ``mesh``: its own (None), a per-vertex file, a number or an array (mm²)."""
    if areas is None:
        return mesh.vertex_areas
    if isinstance(areas, (str, os.PathLike)):
        return check_areas(read_vertex_values(areas, mesh.n_vertices, name=name), mesh.n_vertices, name=name)
    return check_areas(areas, mesh.n_vertices, name=name)
