"""CIFTI-2 grayordinates: dense scalars and series in, dense scalars out, and their graph.

A dense CIFTI file (``.dscalar.nii``, ``.dtseries.nii``) holds maps along its
first axis and grayordinates along its second: vertices of surface structures
(``CIFTI_STRUCTURE_CORTEX_LEFT``, ...) and voxels of volume structures
(``CIFTI_STRUCTURE_THALAMUS_LEFT``, ...), described by a brain-model axis
(:class:`nibabel.cifti2.cifti2_axes.BrainModelAxis`). Everything is read and
written through nibabel.

Neighbourhoods (:meth:`CiftiMasker.graph`):

- each structure is its own set of components: no edge joins two structures,
  so the hemispheres, and surface and volume, never share a cluster;
- a surface structure's vertices are linked by the edges of its mesh (one mesh
  per hemisphere, given by the user), restricted to the vertices in the file
  (the medial wall is not in a CIFTI file's brain models) and weighted by their
  area (a third of each adjacent triangle, or a user's area file);
- a volume structure's voxels keep their grid (6, 18 or 26 neighbours), each
  voxel weighing 1 (cluster extent in voxels, as in a volume analysis).

Each node also knows whether it lies on a surface or in a volume, so that TFCE
can use E = 1 on surfaces and E = 0.5 in volumes (see :func:`voxstats.tfce`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np
from nibabel.cifti2 import cifti2_axes
from scipy import sparse

from .errors import MissingFileError, ParameterError
from .graph import graph_from_adjacency, grid_graph
from .image import save_img_atomic
from .surface import load_mesh
from .surface_io import _with_weights, default_mask, vertex_areas_of

__all__ = ["CiftiMasker", "load_cifti", "load_cifti_data", "save_cifti_map"]

CORTEX = {"left": "CIFTI_STRUCTURE_CORTEX_LEFT", "right": "CIFTI_STRUCTURE_CORTEX_RIGHT"}
_SUFFIXES = (".dscalar.nii", ".dtseries.nii")


def _read_one(path, name):
    path = Path(path)
    if not path.exists():
        raise MissingFileError(name, path)
    try:
        img = nib.load(path)
    except Exception as err:
        raise ParameterError(name, f"cannot read {path} as CIFTI-2 ({type(err).__name__}: {err})") from None
    if not isinstance(img, nib.Cifti2Image):
        raise ParameterError(name, f"{path} is not a CIFTI-2 file (expected .dscalar.nii or .dtseries.nii)")
    rows, columns = img.header.get_axis(0), img.header.get_axis(1)
    if not isinstance(columns, cifti2_axes.BrainModelAxis):
        raise ParameterError(name, f"{path} is not a dense CIFTI file: its second axis is "
                         f"{type(columns).__name__}, expected grayordinates (BrainModelAxis)")
    if not isinstance(rows, (cifti2_axes.ScalarAxis, cifti2_axes.SeriesAxis)):
        raise ParameterError(name, f"{path}: expected maps (dscalar) or a series (dtseries) along the "
                         f"first axis, got {type(rows).__name__}")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as err:
        raise ParameterError(name, f"cannot read the data of {path} ({type(err).__name__}: {err})") from None
    return data, columns


def load_cifti_data(imgs, *, name="imgs"):
    """Subjects' grayordinate maps as one matrix.

    Parameters
    ----------
    imgs : str, path-like, or list of them
        One dense CIFTI file with a map per subject, or one file per subject
        (each one map or more), in the design's order.

    Returns
    -------
    data : (n_maps, n_grayordinates) ndarray of float32
    names : list of str
    brain_models : nibabel.cifti2.cifti2_axes.BrainModelAxis
        Shared by every file (checked: structures, vertex and voxel indices,
        volume grid).
    """
    single = isinstance(imgs, (str, os.PathLike))
    paths = [imgs] if single else list(imgs)
    if not paths:
        raise ParameterError(name, f"expected at least one file, got an empty list")
    blocks, names, models = [], [], None
    for i, path in enumerate(paths):
        data, axis = _read_one(path, name if single else f"{name}[{i}]")
        if models is None:
            models, first = axis, str(path)
        elif axis != models:
            raise ParameterError(name, f"{path} and {first} have different brain models (structures, vertices or "
                             "voxels); every map must have the same grayordinates")
        blocks.append(data)
        names += [str(path)] if data.shape[0] == 1 else [f"{path}[{j}]" for j in range(data.shape[0])]
    return np.concatenate(blocks), names, models


def save_cifti_map(values, path, brain_models, *, map_name=None):
    """Write one map over every grayordinate of ``brain_models`` as a ``.dscalar.nii``, atomically."""
    values = np.asarray(values, dtype=np.float32).reshape(1, -1)
    if values.shape[1] != len(brain_models):
        raise ParameterError("values", f"expected {len(brain_models)} grayordinates, got {values.shape[1]}")
    if map_name is None:
        map_name = Path(path).name.removesuffix(".dscalar.nii")
    img = nib.Cifti2Image(values, header=(cifti2_axes.ScalarAxis([map_name]), brain_models))
    img.nifti_header.set_intent("ConnDenseScalar")
    img.update_headers()
    return save_img_atomic(img, path)


def _volume_adjacency(voxels, connectivity):
    """Grid adjacency of one volume structure's voxels, in the file's voxel order."""
    voxels = np.asarray(voxels, dtype=np.int64)
    low = voxels.min(axis=0)
    local = voxels - low
    shape = tuple(local.max(axis=0) + 1)
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(local.T)] = True
    graph = grid_graph(mask, connectivity)
    # grid_graph numbers voxels in C order; the file may list them in any order
    c_order = np.ravel_multi_index(tuple(local.T), shape)
    rank = np.empty(voxels.shape[0], dtype=np.int64)
    rank[np.argsort(c_order)] = np.arange(voxels.shape[0])  # file index -> C-order index
    to_file = np.argsort(rank)  # C-order index -> file index
    n = voxels.shape[0]
    rows = np.repeat(np.arange(n), np.diff(graph.indptr))
    return sparse.csr_matrix((np.ones(rows.size, dtype=np.int8), (to_file[rows], to_file[graph.indices])),
                             shape=(n, n))


@dataclass(frozen=True, eq=False)
class CiftiMasker:
    """The analysed grayordinates of a dense CIFTI file, and how results go back to files.

    The masker protocol of the loaders: ``n_elements``, ``graph(connectivity)``,
    ``unmask(values)``, ``save(values, path)`` and ``suffix``.

    Attributes
    ----------
    brain_models : BrainModelAxis
        The input's grayordinates, written unchanged into every output.
    mask : (n_grayordinates,) ndarray of bool
        Grayordinates analysed (the others are written as 0).
    meshes : dict of str to Mesh
        Mesh of each surface structure (CIFTI structure name), if given.
    areas : dict of str to ndarray
        Vertex areas (mm²) on each of those meshes.
    """

    brain_models: object
    mask: np.ndarray
    meshes: dict
    areas: dict

    kind: ClassVar[str] = "cifti"
    suffix: ClassVar[str] = ".dscalar.nii"

    @property
    def n_elements(self):
        return int(self.mask.sum())

    @property
    def on_surface(self):
        """(n_elements,) bool: analysed grayordinates that are surface vertices."""
        return np.asarray(self.brain_models.surface_mask)[self.mask]

    @property
    def structures(self):
        """(n_elements,) str: CIFTI structure of each analysed grayordinate."""
        return np.asarray(self.brain_models.name)[self.mask]

    def graph(self, connectivity=6):
        """Graph of the analysed grayordinates: mesh edges per hemisphere, grid per volume structure.

        Weights: vertex areas (mm²) on surfaces, 1 per voxel in volumes.

        Raises
        ------
        ValueError
            A surface structure without its mesh.
        """
        n = len(self.brain_models)
        blocks = []
        weights = np.ones(n)
        for structure, where, models in self.brain_models.iter_structures():
            index = np.arange(n)[where]
            if models.surface_mask.all():
                if structure not in self.meshes:
                    side = {v: k for k, v in CORTEX.items()}.get(structure)
                    hint = f"--{side}-surf / {side}_surf" if side else "a mesh"
                    raise ValueError(f"{structure}: TFCE and cluster inference need this structure's mesh "
                                     f"({hint})")
                mesh = self.meshes[structure]
                vertices = np.asarray(models.vertex)
                adjacency = mesh.adjacency.tocsr()[vertices][:, vertices]
                weights[index] = self.areas[structure][vertices]
            else:
                adjacency = _volume_adjacency(models.voxel, connectivity)
            blocks.append(sparse.coo_matrix(adjacency))
        whole = sparse.block_diag(blocks, format="csr")
        kept = np.flatnonzero(self.mask)
        graph = graph_from_adjacency(whole[kept][:, kept], n_voxels=kept.size)
        return _with_weights(graph, weights[kept])

    def unmask(self, values):
        """(n_elements,) values over every grayordinate, 0 outside the mask."""
        values = np.asarray(values)
        if values.shape != (self.n_elements,):
            raise ParameterError("values", f"expected shape ({self.n_elements},), got {values.shape}")
        out = np.zeros(self.mask.size, dtype=values.dtype)
        out[self.mask] = values
        return out

    def save(self, values, path):
        """Write (n_elements,) values as a ``.dscalar.nii`` with the input's brain models."""
        return save_cifti_map(self.unmask(np.asarray(values, dtype=np.float32)), path, self.brain_models)

    def position(self, k):
        """Where element ``k`` is: ``(structure, vertex)`` or ``(structure, (i, j, k))``, and mm.

        Coordinates of a vertex are on its structure's mesh (NaN without one);
        of a voxel, through the brain models' affine.
        """
        index = int(np.flatnonzero(self.mask)[int(k)])
        kind, element, structure = self.brain_models.get_element(index)
        if kind == "CIFTI_MODEL_TYPE_SURFACE":
            mesh = self.meshes.get(structure)
            xyz = (np.nan,) * 3 if mesh is None else tuple(float(v) for v in mesh.coordinates[int(element)])
            return (structure, int(element)), xyz
        ijk = tuple(int(v) for v in element)
        affine = self.brain_models.affine
        return (structure, ijk), tuple(float(v) for v in affine[:3, :3] @ ijk + affine[:3, 3])


def _meshes(brain_models, left_surf, right_surf, left_area, right_area, names):
    meshes, areas = {}, {}
    given = {"left": (left_surf, left_area), "right": (right_surf, right_area)}
    for side, (surf, area) in given.items():
        structure = CORTEX[side]
        flag, area_flag = names[f"{side}_surf"], names[f"{side}_area"]
        if surf is None:
            if area is not None:
                raise ParameterError(area_flag, f"vertex areas need the mesh ({flag})")
            continue
        if structure not in brain_models.nvertices:
            raise ParameterError(flag, f"the CIFTI file has no {structure}")
        mesh = load_mesh(surf, name=flag)
        expected = brain_models.nvertices[structure]
        if mesh.n_vertices != expected:
            raise ParameterError(flag, f"{mesh.name} has {mesh.n_vertices} vertices but the CIFTI file's "
                             f"{structure} is on a mesh of {expected}")
        meshes[structure], areas[structure] = mesh, vertex_areas_of(mesh, area, name=area_flag)
    return meshes, areas


def load_cifti(imgs, *, left_surf=None, right_surf=None, left_area=None, right_area=None,
               mask_img=None, keep_constant=False, name="imgs", flag_names=None):
    """Subjects' dense CIFTI maps and the masker that goes with them.

    Parameters
    ----------
    imgs : str, path-like, or list of them
        See :func:`load_cifti_data`.
    left_surf, right_surf : str, path-like or Mesh, optional
        Meshes of the cortical structures (for example the fs_LR 32k
        ``L.midthickness.surf.gii``), needed for TFCE and clusters on them.
    left_area, right_area : str, path-like, float or array, optional
        Vertex areas on each mesh (PALM's ``-s surf area``); default: the
        mesh's own.
    mask_img : str, path-like or array, optional
        A dense CIFTI file (or array over the grayordinates), finite and
        non-zero = analysed. Default: grayordinates finite in every subject and
        not constant across subjects (FSL randomise's rule).
    keep_constant : bool
        Without ``mask_img``, keep constant grayordinates too (``--norcmask``).

    Returns
    -------
    data : (n_subjects, n_elements) ndarray of float32
    masker : CiftiMasker
    """
    names = {"left_surf": "left_surf", "right_surf": "right_surf", "left_area": "left_area",
             "right_area": "right_area", "mask_img": "mask_img"}
    names.update(flag_names or {})
    data, labels, models = load_cifti_data(imgs, name=name)
    if data.shape[0] < 2:
        raise ParameterError(name, f"expected at least 2 subjects, got {data.shape[0]}")
    meshes, areas = _meshes(models, left_surf, right_surf, left_area, right_area, names)
    finite = np.all(np.isfinite(data), axis=0)
    if mask_img is None:
        mask = default_mask(data, keep_constant)
    else:
        if isinstance(mask_img, (str, os.PathLike)):
            values, _, mask_models = load_cifti_data(mask_img, name=names["mask_img"])
            if mask_models != models:
                raise ParameterError(names['mask_img'], f"{mask_img} has other brain models than {labels[0]}")
            values = values[0]
        else:
            values = np.asarray(mask_img, dtype=np.float64).reshape(-1)
            if values.size != len(models):
                raise ParameterError(names['mask_img'], f"expected {len(models)} grayordinates, got {values.size}")
        mask = np.isfinite(values) & (values != 0)
        bad = mask & ~finite
        if bad.any():
            row = int(np.flatnonzero(~np.all(np.isfinite(data[:, bad]), axis=1))[0])
            raise ParameterError(name, f"{labels[row]}: NaN or infinite values at {int(bad.sum())} grayordinates "
                             "inside the mask")
    if not mask.any():
        raise ParameterError(names["mask_img"], "no grayordinate to analyse (none is finite in every subject "
                             "and varies across subjects)" if mask_img is None else "the mask is empty")
    masker = CiftiMasker(brain_models=models, mask=mask, meshes=meshes, areas=areas)
    return np.ascontiguousarray(data[:, mask]), masker


def is_cifti_path(path):
    """True for dense CIFTI file names (``.dscalar.nii``, ``.dtseries.nii``)."""
    return str(path).lower().endswith(_SUFFIXES)
