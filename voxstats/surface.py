"""Triangle meshes: vertex adjacency, vertex areas and the graph TFCE runs on.

A cortical surface enters the engine as a :class:`~voxstats.graph.VoxelGraph`
over the vertices that are analysed (the medial wall and any other excluded
vertex left out), with one weight per vertex: its area. Cluster extents on a
mesh are then sums of vertex areas (mm²), so that TFCE and cluster inference do
not depend on how densely the surface is sampled.

Conventions (PALM's, Winkler et al.; ``palm_adjacency.m`` and
``palm_calcarea.m``):

- two vertices are neighbours when they share an edge of a triangle (on a
  triangle mesh this is the same as sharing a triangle);
- the area of a triangle is half the norm of the cross product of two of its
  edges; the area of a vertex is a third of the summed areas of the triangles
  it belongs to, so vertex areas add up to the area of the mesh;
- areas are those of the mesh given (for example ``lh.white``), or come from a
  file of per-vertex areas (PALM's ``-s surf area``: an average of the subjects'
  native areas resampled to the common mesh, as FreeSurfer's ``?h.white.avg.area.mgh``);
- excluded vertices keep their area out of every cluster (they are not in the
  graph), but the areas of the kept vertices are computed on the whole mesh.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import sparse

from .errors import MissingFileError, ParameterError
from .graph import graph_from_adjacency

__all__ = [
    "Mesh",
    "check_areas",
    "face_areas",
    "icosphere",
    "load_mesh",
    "mesh_adjacency",
    "mesh_graph",
    "vertex_areas",
]

_FS_TRIANGLE_MAGIC = b"\xff\xff\xfe"


@dataclass(frozen=True, eq=False)
class Mesh:
    """A triangle mesh.

    Attributes
    ----------
    coordinates : (n_vertices, 3) ndarray of float64
        Vertex positions (mm).
    faces : (n_faces, 3) ndarray of int64
        Vertex indices of each triangle (0-based).
    name : str
        Where the mesh comes from (file name), for messages.
    """

    coordinates: np.ndarray
    faces: np.ndarray
    name: str = "mesh"

    @property
    def n_vertices(self):
        return self.coordinates.shape[0]

    @property
    def n_faces(self):
        return self.faces.shape[0]

    @cached_property
    def adjacency(self):
        """(n_vertices, n_vertices) scipy.sparse CSR matrix of int8: 1 for neighbours."""
        return mesh_adjacency(self.faces, self.n_vertices)

    @cached_property
    def vertex_areas(self):
        """(n_vertices,) ndarray of float64: a third of the adjacent triangles' area (mm²)."""
        return vertex_areas(self.coordinates, self.faces)


def _check_mesh_arrays(coordinates, faces, name):
    coordinates = np.asarray(coordinates, dtype=np.float64)
    faces = np.asarray(faces)
    if coordinates.ndim != 2 or coordinates.shape[1] != 3:
        raise ParameterError(name, f"expected vertex coordinates of shape (n_vertices, 3), got {coordinates.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ParameterError(name, f"expected triangles of shape (n_faces, 3), got {faces.shape}")
    if not np.issubdtype(faces.dtype, np.integer):
        if not np.all(np.isfinite(faces)) or np.any(faces != np.round(faces)):
            raise ParameterError(name, f"triangle vertex indices must be integers")
    faces = faces.astype(np.int64)
    if not np.all(np.isfinite(coordinates)):
        raise ParameterError(name, f"vertex coordinates contain NaN or infinite values")
    if faces.size and (faces.min() < 0 or faces.max() >= coordinates.shape[0]):
        raise ParameterError(name, f"triangles refer to vertex {int(faces.max() if faces.max() >= coordinates.shape[0] else faces.min())}"
                         f" but the mesh has {coordinates.shape[0]} vertices (indices 0..{coordinates.shape[0] - 1})")
    if faces.size and np.any((faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2])
                             | (faces[:, 0] == faces[:, 2])):
        raise ParameterError(name, f"a triangle repeats a vertex")
    return coordinates, faces


def _read_gifti_mesh(path):
    img = nib.load(path)
    pointsets = img.get_arrays_from_intent("NIFTI_INTENT_POINTSET")
    triangles = img.get_arrays_from_intent("NIFTI_INTENT_TRIANGLE")
    return [a.data for a in pointsets], [a.data for a in triangles]


def _is_freesurfer_surface(path):
    with open(path, "rb") as handle:
        return handle.read(3) == _FS_TRIANGLE_MAGIC


def load_mesh(surf, *, name="surf"):
    """Read a triangle mesh.

    Parameters
    ----------
    surf : str, path-like, Mesh, (coordinates, faces) tuple, or mesh object
        A GIFTI surface (``.surf.gii``), a FreeSurfer surface (``lh.white``,
        ``lh.pial``, ``lh.sphere``...; read with
        :func:`nibabel.freesurfer.read_geometry`), a :class:`Mesh`, a tuple of
        arrays, or any object with ``coordinates`` and ``faces`` attributes
        (nilearn's ``InMemoryMesh``, ``FileMesh``).
    name : str
        How the mesh is named in error messages (a parameter or a CLI flag).

    Returns
    -------
    Mesh

    Raises
    ------
    FileNotFoundError, ValueError
        One line naming ``name`` and the file.
    """
    if isinstance(surf, Mesh):
        return surf
    if isinstance(surf, (str, os.PathLike)):
        path = Path(surf)
        if not path.exists():
            raise MissingFileError(name, path)
        is_gifti = path.name.lower().endswith((".gii", ".gii.gz"))
        if not is_gifti and not _is_freesurfer_surface(path):
            raise ParameterError(name, f"cannot read {path} as a surface: expected a GIFTI surface "
                             "(.surf.gii) or a FreeSurfer surface (lh.white, lh.pial, ...)")
        try:
            if is_gifti:
                pointsets, triangles = _read_gifti_mesh(path)
            else:
                pointsets, triangles = [[a] for a in nib.freesurfer.read_geometry(str(path))]
        except Exception as err:  # nibabel raises many kinds on broken files
            raise ParameterError(name, f"cannot read {path} as a surface ({type(err).__name__}: {err})") from None
        if len(pointsets) != 1 or len(triangles) != 1:
            raise ParameterError(name, f"expected a GIFTI surface with one POINTSET and one TRIANGLE array "
                             f"(a .surf.gii), got {len(pointsets)} and {len(triangles)} in {path}")
        coordinates, faces = pointsets[0], triangles[0]
        label = f"{name} {path}"
        coordinates, faces = _check_mesh_arrays(coordinates, faces, label)
        return Mesh(coordinates=coordinates, faces=faces, name=str(path))
    if isinstance(surf, (tuple, list)) and len(surf) == 2:
        coordinates, faces = _check_mesh_arrays(surf[0], surf[1], name)
        return Mesh(coordinates=coordinates, faces=faces, name=name)
    if hasattr(surf, "coordinates") and hasattr(surf, "faces"):
        coordinates, faces = _check_mesh_arrays(surf.coordinates, surf.faces, name)
        return Mesh(coordinates=coordinates, faces=faces, name=name)
    raise TypeError(f"{name}: expected a surface file, a Mesh or (coordinates, faces), "
                    f"got {type(surf).__name__}")


def mesh_adjacency(faces, n_vertices):
    """Vertex adjacency of a triangle mesh: vertices that share an edge.

    Parameters
    ----------
    faces : (n_faces, 3) array of int
    n_vertices : int

    Returns
    -------
    (n_vertices, n_vertices) scipy.sparse.csr_matrix of int8
        Symmetric, 1 for neighbours, empty diagonal, sorted indices.
    """
    faces = np.asarray(faces, dtype=np.int64)
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    both_r = np.concatenate([rows, cols])
    both_c = np.concatenate([cols, rows])
    matrix = sparse.csr_matrix((np.ones(both_r.size, dtype=np.int32), (both_r, both_c)),
                               shape=(n_vertices, n_vertices))
    matrix.sum_duplicates()
    matrix.data[:] = 1
    matrix.sort_indices()
    return matrix.astype(np.int8)


def face_areas(coordinates, faces):
    """Area of each triangle: half the norm of the cross product of two edges.

    Parameters
    ----------
    coordinates : (n_vertices, 3) array of float (mm)
    faces : (n_faces, 3) array of int

    Returns
    -------
    (n_faces,) ndarray of float64 (mm²)
    """
    xyz = np.asarray(coordinates, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    a, b, c = xyz[faces[:, 0]], xyz[faces[:, 1]], xyz[faces[:, 2]]
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def vertex_areas(coordinates, faces):
    """Area of each vertex: a third of the area of every triangle it belongs to.

    This is PALM's vertex-wise area (``palm_calcarea.m``); the areas sum to the
    mesh's total area. A vertex in no triangle has area 0.

    Parameters
    ----------
    coordinates : (n_vertices, 3) array of float (mm)
    faces : (n_faces, 3) array of int

    Returns
    -------
    (n_vertices,) ndarray of float64 (mm²)
    """
    faces = np.asarray(faces, dtype=np.int64)
    third = face_areas(coordinates, faces) / 3.0
    n = np.asarray(coordinates).shape[0]
    return (np.bincount(faces[:, 0], third, minlength=n) + np.bincount(faces[:, 1], third, minlength=n)
            + np.bincount(faces[:, 2], third, minlength=n))


def check_areas(areas, n_vertices, *, name="areas"):
    """Per-vertex areas as a float64 vector: finite, >= 0, one per vertex of the mesh.

    ``areas`` may be a number (every vertex gets that weight: PALM's ``-s surf 1``).
    """
    values = np.asarray(areas, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(n_vertices, float(values))
    values = values.reshape(-1) if values.size == n_vertices else values
    if values.shape != (n_vertices,):
        raise ParameterError(name, f"expected one area per vertex of the mesh ({n_vertices}), "
                         f"got {values.size} values")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ParameterError(name, f"areas must be finite and >= 0")
    return values


def mesh_graph(mesh, mask=None, *, areas=None):
    """The graph of the analysed vertices of a mesh, weighted by vertex area.

    Parameters
    ----------
    mesh : Mesh
    mask : (n_vertices,) array of bool, optional
        Vertices analysed (default: all). The others are left out of the graph:
        they join no cluster and their area counts nowhere.
    areas : (n_vertices,) array or float, optional
        Vertex areas on the whole mesh (mm²). Default: the mesh's own
        (:func:`vertex_areas`).

    Returns
    -------
    graph : VoxelGraph
        Nodes are the kept vertices in increasing vertex order.
    weights : (n_kept,) ndarray of float64
        The kept vertices' areas, the extent each one adds to a cluster.
    """
    n = mesh.n_vertices
    mask = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool).reshape(-1)
    if mask.shape != (n,):
        raise ValueError(f"mask: expected one value per vertex of {mesh.name} ({n}), got {mask.size}")
    areas = mesh.vertex_areas if areas is None else check_areas(areas, n)
    kept = np.flatnonzero(mask)
    sub = mesh.adjacency[kept][:, kept]
    return graph_from_adjacency(sub, n_voxels=kept.size), areas[kept].copy()


_PHI = (1 + 5 ** 0.5) / 2
_ICOSAHEDRON_FACES = np.array([
    [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
    [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
    [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]])


def icosphere(n_subdivisions, *, radius=100.0):
    """A geodesic sphere: an icosahedron whose triangles are split in four ``n_subdivisions`` times.

    It has ``10 * 4**n_subdivisions + 2`` vertices, the vertex counts of
    FreeSurfer's icosahedral meshes (fsaverage5: 5 subdivisions, 10,242
    vertices; fsaverage: 7, 163,842). Vertices of a coarser sphere come first,
    new vertices (edge midpoints pushed out to the sphere) after.

    Parameters
    ----------
    n_subdivisions : int >= 0
    radius : float
        In mm.

    Returns
    -------
    Mesh
    """
    if int(n_subdivisions) != n_subdivisions or n_subdivisions < 0:
        raise ValueError(f"Invalid value for the 'n_subdivisions' parameter: expected an integer >= 0, "
                         f"got {n_subdivisions!r}")
    xyz = np.array([[-1, _PHI, 0], [1, _PHI, 0], [-1, -_PHI, 0], [1, -_PHI, 0], [0, -1, _PHI], [0, 1, _PHI],
                    [0, -1, -_PHI], [0, 1, -_PHI], [_PHI, 0, -1], [_PHI, 0, 1], [-_PHI, 0, -1], [-_PHI, 0, 1]])
    xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
    faces = _ICOSAHEDRON_FACES.copy()
    for _ in range(int(n_subdivisions)):
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        middle = xyz[unique[:, 0]] + xyz[unique[:, 1]]
        middle /= np.linalg.norm(middle, axis=1, keepdims=True)
        ab, bc, ca = (xyz.shape[0] + inverse.reshape(3, -1))
        a, b, c = faces.T
        faces = np.concatenate([np.column_stack(t) for t in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))])
        xyz = np.vstack([xyz, middle])
    return Mesh(coordinates=radius * xyz, faces=faces.astype(np.int64), name=f"icosphere({n_subdivisions})")
