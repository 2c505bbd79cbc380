"""Neighbourhoods of voxels: grids of any connectivity, or a sparse adjacency.

TFCE and cluster inference only need to know which voxels touch. Both a masked
grid and a surface mesh become the same thing here: a symmetric graph over the
voxels in CSR form (``indptr``, ``indices``), in the order of the voxels, with
optional per-node extent weights (e.g. vertex areas in mm^2) and, for grids,
which voxels lie on the volume's outermost layer (FSL's TFCE leaves it out).
"""

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from scipy import sparse

__all__ = ["VoxelGraph", "check_weights", "graph_from_adjacency", "grid_graph", "subgraph"]

_CONNECTIVITY = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}


@dataclass(frozen=True)
class VoxelGraph:
    """Which voxels are neighbours.

    Attributes
    ----------
    neighbours : (n_voxels, width) ndarray of int32
        Row v lists the neighbours of voxel v, padded with -1: the form the
        kernels read.
    n_voxels : int
    mask : ndarray of bool or None
        The grid mask the voxels come from (in C order), if any.
    connectivity : int or None
    border : (n_voxels,) ndarray of bool or None
        Grids only: voxels with an index 0 or ``dim - 1`` on some axis of the
        full grid (the volume's outermost layer). FSL randomise's TFCE never
        visits them (``mode='fsl'`` follows it). None for graphs built from an
        adjacency, which have no border.
    weights : (n_voxels,) ndarray of float64 or None
        Extent weight of each node (e.g. vertex areas in mm^2 on a mesh): a
        cluster's extent is the sum of its nodes' weights. None: every node
        counts 1 (extent = number of voxels).
    indptr, indices : ndarray of int32
        The same graph in CSR form (computed on first use).
    """

    neighbours: np.ndarray
    n_voxels: int
    mask: np.ndarray | None = None
    connectivity: int | None = None
    border: np.ndarray | None = None
    weights: np.ndarray | None = None

    def with_weights(self, weights):
        """The same graph with per-node extent ``weights`` (None: unweighted); see :func:`check_weights`."""
        return replace(self, weights=check_weights(weights, self.n_voxels))

    @cached_property
    def indptr(self):
        counts = (self.neighbours >= 0).sum(axis=1)
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)

    @cached_property
    def indices(self):
        return self.neighbours[self.neighbours >= 0].astype(np.int32)


def check_weights(weights, n_voxels, name="weights"):
    """Per-node extent weights as a (n_voxels,) float64 array (None passes through).

    Raises
    ------
    ValueError
        If the shape is not (n_voxels,) or a weight is negative, NaN or infinite.
    """
    if weights is None:
        return None
    weights = np.array(weights, dtype=np.float64)  # a copy: the caller's array stays theirs
    if weights.shape != (n_voxels,):
        raise ValueError(f"{name}: expected one weight per node, shape ({n_voxels},), got {weights.shape}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"{name}: expected finite weights >= 0 (e.g. vertex areas in mm^2)")
    return weights


def _border(mask):
    """Masked voxels on the grid's outermost layer, in C order."""
    inner = np.zeros(mask.shape, dtype=bool)
    inner[tuple(slice(1, max(n - 1, 1)) for n in mask.shape)] = True
    return ~inner[mask]


def _check_connectivity(connectivity, ndim):
    allowed = _CONNECTIVITY.get(ndim)
    if allowed is None:
        raise ValueError(f"Expected a 2D or 3D map for a grid neighbourhood, got {ndim}D")
    if connectivity not in allowed:
        raise ValueError(f"Invalid value for the 'connectivity' parameter in {ndim}D. Allowed values are "
                         f"{', '.join(map(str, allowed))}, but got {connectivity!r} instead.")
    return allowed[connectivity]


def grid_graph(mask, connectivity=6, *, weights=None):
    """Graph of the voxels of a boolean mask, numbered in C order.

    Parameters
    ----------
    mask : (x, y) or (x, y, z) ndarray of bool
        The whole grid: its outermost layer is the graph's ``border``.
    connectivity : int
        3D: 6 (faces), 18 (faces and edges) or 26 (and corners). 2D: 4 or 8.
    weights : (n_voxels,) array-like, optional
        Extent weight of each masked voxel (C order).

    Returns
    -------
    VoxelGraph
        Column j of ``neighbours`` holds each voxel's neighbour at the j-th
        offset of the neighbourhood (-1 outside the mask or the grid).
    """
    mask = np.asarray(mask, dtype=bool)
    order = _check_connectivity(connectivity, mask.ndim)
    n = int(mask.sum())
    index = np.full(mask.shape, -1, dtype=np.int32)
    index[mask] = np.arange(n, dtype=np.int32)
    offsets = [np.array(o) - 1 for o in np.ndindex(*(3,) * mask.ndim)]
    offsets = [o for o in offsets if 0 < np.abs(o).sum() <= order]
    table = np.empty((n, len(offsets)), dtype=np.int32)
    for j, offset in enumerate(offsets):
        # shifted[p] = index[p + offset], -1 where p + offset leaves the grid
        shifted = np.full(mask.shape, -1, dtype=np.int32)
        dst = tuple(slice(max(0, -o), mask.shape[d] - max(0, o)) for d, o in enumerate(offset))
        src = tuple(slice(max(0, o), mask.shape[d] - max(0, -o)) for d, o in enumerate(offset))
        shifted[dst] = index[src]
        table[:, j] = shifted[mask]
    return VoxelGraph(neighbours=table, n_voxels=n, mask=mask, connectivity=connectivity,
                      border=_border(mask), weights=check_weights(weights, n))


def _symmetric_csr(rows, cols, n):
    data = np.ones(2 * rows.size, dtype=np.int8)
    matrix = sparse.csr_matrix((data, (np.concatenate([rows, cols]), np.concatenate([cols, rows]))),
                               shape=(n, n))
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix.indptr.astype(np.int32), matrix.indices.astype(np.int32)


def graph_from_adjacency(adjacency, n_voxels=None, *, weights=None):
    """Graph from a square scipy.sparse adjacency (non-zero = neighbours).

    The adjacency is symmetrised and its diagonal ignored. ``weights``
    (n_nodes,), optional, are the nodes' extent weights (e.g. vertex areas in
    mm^2, so that a cluster's extent is its area). Such a graph has no border.
    """
    if not sparse.issparse(adjacency):
        raise TypeError(f"adjacency: expected a scipy.sparse matrix, got {type(adjacency).__name__}")
    if adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError(f"adjacency: expected a square matrix, got shape {adjacency.shape}")
    if n_voxels is not None and adjacency.shape[0] != n_voxels:
        raise ValueError(f"adjacency: has {adjacency.shape[0]} nodes but the data have {n_voxels} voxels")
    coo = sparse.coo_matrix(adjacency)
    keep = (coo.row != coo.col) & (coo.data != 0)
    indptr, indices = _symmetric_csr(coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64),
                                     adjacency.shape[0])
    return VoxelGraph(neighbours=_padded(indptr, indices), n_voxels=adjacency.shape[0],
                      weights=check_weights(weights, adjacency.shape[0]))


_MAX_TABLE = 200_000_000  # entries of the padded neighbour table


def _padded(indptr, indices):
    """CSR rows as a (n, max_degree) table padded with -1."""
    n = indptr.size - 1
    degree = np.diff(indptr)
    width = int(degree.max()) if n else 0
    if n * width > _MAX_TABLE:
        raise ValueError(f"adjacency: a node has {width} neighbours; graphs whose largest degree times "
                         f"the number of nodes exceeds {_MAX_TABLE:,} are not supported")
    table = np.full((n, max(width, 1)), -1, dtype=np.int32)
    rows = np.repeat(np.arange(n), degree)
    cols = np.arange(indices.size) - np.repeat(indptr[:-1], degree)
    table[rows, cols] = indices
    return table


def subgraph(graph, nodes):
    """The graph induced by ``nodes`` (increasing indices): their edges among themselves.

    Nodes are renumbered 0..len(nodes)-1 in the given order; ``weights`` and
    ``border`` follow them. Used to run TFCE separately on parts of a graph
    that no edge joins (the structures of a CIFTI file).
    """
    nodes = np.asarray(nodes, dtype=np.int64)
    index = np.full(graph.n_voxels, -1, dtype=np.int64)
    index[nodes] = np.arange(nodes.size)
    table = graph.neighbours[nodes]
    table = np.where(table >= 0, index[np.maximum(table, 0)], -1).astype(np.int32)
    return VoxelGraph(neighbours=table, n_voxels=int(nodes.size),
                      border=None if graph.border is None else graph.border[nodes],
                      weights=None if graph.weights is None else graph.weights[nodes])
