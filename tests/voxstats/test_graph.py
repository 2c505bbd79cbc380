"""voxstats.graph: grid neighbourhoods and sparse adjacencies, against brute force."""

import itertools

import numpy as np
import pytest
from scipy import sparse

from voxstats.graph import graph_from_adjacency, grid_graph


def _brute_force_edges(mask, order):
    """Pairs (i, j) of masked voxels (C-order numbering) that are neighbours."""
    coords = np.argwhere(mask)
    edges = set()
    for i, j in itertools.combinations(range(len(coords)), 2):
        d = np.abs(coords[i] - coords[j])
        if d.max() == 1 and d.sum() <= order:
            edges.add((i, j))
            edges.add((j, i))
    return edges


def _edges(graph):
    rows = np.repeat(np.arange(graph.n_voxels), np.diff(graph.indptr))
    return set(zip(rows.tolist(), graph.indices.tolist()))


@pytest.mark.parametrize("shape,connectivity,order", [
    ((5, 4, 3), 6, 1), ((5, 4, 3), 18, 2), ((5, 4, 3), 26, 3), ((6, 5), 4, 1), ((6, 5), 8, 2)])
def test_grid_graph_matches_brute_force(rng, shape, connectivity, order):
    mask = rng.random(shape) < 0.7
    graph = grid_graph(mask, connectivity)
    assert graph.n_voxels == mask.sum()
    assert _edges(graph) == _brute_force_edges(mask, order)
    np.testing.assert_array_equal(graph.mask, mask)
    assert graph.connectivity == connectivity
    # the padded table holds exactly the CSR rows
    for v in range(graph.n_voxels):
        row = graph.neighbours[v]
        assert sorted(row[row >= 0].tolist()) == sorted(graph.indices[graph.indptr[v]:graph.indptr[v + 1]].tolist())
        assert np.all((row == -1) | ((row >= 0) & (row < graph.n_voxels)))  # -1 pads anywhere


@pytest.mark.parametrize("shape,connectivity", [((3, 3, 3), 6), ((3, 3, 3), 18), ((3, 3, 3), 26),
                                                ((3, 3), 4), ((3, 3), 8)])
def test_interior_degree(shape, connectivity):
    graph = grid_graph(np.ones(shape, bool), connectivity)
    centre = graph.n_voxels // 2
    assert graph.indptr[centre + 1] - graph.indptr[centre] == connectivity
    assert graph.neighbours.shape[1] == connectivity


def test_empty_and_isolated_masks():
    graph = grid_graph(np.zeros((3, 3, 3), bool), 6)
    assert graph.n_voxels == 0 and graph.indices.size == 0
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, 0] = mask[2, 2, 2] = True
    graph = grid_graph(mask, 26)
    assert graph.n_voxels == 2 and graph.indices.size == 0
    assert np.all(graph.neighbours == -1)


def test_adjacency_symmetrised_diagonal_and_zeros_ignored():
    adjacency = sparse.coo_matrix(([1.0, 1.0, 5.0, 0.0, 1.0], ([0, 1, 2, 3, 1], [1, 2, 2, 0, 2])), shape=(4, 4))
    graph = graph_from_adjacency(adjacency)
    assert _edges(graph) == {(0, 1), (1, 0), (1, 2), (2, 1)}  # duplicates merged, 2-2 and 3-0 (zero) dropped
    assert graph.n_voxels == 4
    assert graph.mask is None


def test_adjacency_errors():
    with pytest.raises(TypeError, match=r"adjacency: expected a scipy\.sparse matrix, got ndarray"):
        graph_from_adjacency(np.eye(3))
    with pytest.raises(ValueError, match=r"adjacency: expected a square matrix, got shape \(3, 4\)"):
        graph_from_adjacency(sparse.csr_matrix((3, 4)))
    with pytest.raises(ValueError, match=r"adjacency: has 3 nodes but the data have 5 voxels"):
        graph_from_adjacency(sparse.eye(3, format="csr"), n_voxels=5)


def test_grid_errors():
    with pytest.raises(ValueError, match=r"Invalid value for the 'connectivity' parameter in 3D\. "
                                         r"Allowed values are 6, 18, 26, but got 8 instead\."):
        grid_graph(np.ones((2, 2, 2), bool), 8)
    with pytest.raises(ValueError, match=r"Expected a 2D or 3D map for a grid neighbourhood, got 1D"):
        grid_graph(np.ones(4, bool), 6)


@pytest.mark.parametrize("shape", [(5, 4, 3), (6, 5), (3, 2, 4), (1, 5, 5)])
def test_grid_border_is_the_outermost_layer(rng, shape):
    mask = rng.random(shape) < 0.7
    graph = grid_graph(mask, 6 if len(shape) == 3 else 4)
    coords = np.argwhere(mask)
    want = np.any((coords == 0) | (coords == np.array(shape) - 1), axis=1)
    np.testing.assert_array_equal(graph.border, want)
    assert graph_from_adjacency(sparse.eye(4, format="csr")).border is None


def test_weights_are_checked_copied_and_carried(rng):
    mask = rng.random((4, 4, 3)) < 0.8
    n = int(mask.sum())
    weights = rng.uniform(0.5, 2.0, n)
    graph = grid_graph(mask, 6, weights=weights)
    np.testing.assert_array_equal(graph.weights, weights)
    weights[0] = 99.0  # the graph holds its own copy
    assert graph.weights[0] != 99.0
    assert grid_graph(mask, 6).weights is None
    same = graph.with_weights(None)
    assert same.weights is None and same.neighbours is graph.neighbours
    adjacency = sparse.eye(3, k=1, format="csr")
    assert graph_from_adjacency(adjacency, weights=[1, 2, 3]).weights.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match=r"weights: expected one weight per node, shape \(3,\), got \(2,\)"):
        graph_from_adjacency(adjacency, weights=[1.0, 2.0])
    for bad in ([1.0, np.nan, 1.0], [1.0, -1.0, 1.0], [np.inf, 1.0, 1.0]):
        with pytest.raises(ValueError, match=r"weights: expected finite weights >= 0"):
            graph_from_adjacency(adjacency, weights=bad)
