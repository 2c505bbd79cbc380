"""Small shared fixtures for the engine tests.

Builders are handed out as fixtures (not imported) so that this file never
clashes with another ``conftest`` module on ``sys.path``.
"""

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, sparse


def _smooth_noise(rng, shape, n, *, sigma=1.0):
    """(n, prod(shape)) float64 rows of Gaussian noise smoothed on the grid ``shape``."""
    out = np.empty((n,) + tuple(shape))
    for i in range(n):
        out[i] = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="constant")
    return out.reshape(n, -1)


def _random_graph(rng, n_nodes, *, n_edges):
    """A random symmetric scipy.sparse adjacency (COO with duplicates and a diagonal entry)."""
    rows = rng.integers(0, n_nodes, n_edges)
    cols = rng.integers(0, n_nodes, n_edges)
    rows = np.append(rows, 0)
    cols = np.append(cols, 0)  # a self-loop, which must be ignored
    return sparse.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n_nodes, n_nodes))


def _design_with_nuisance(rng, n):
    """[intercept, tested covariate, nuisance covariate, group] design, (n, 4)."""
    group = np.tile([0.0, 1.0], n // 2 + 1)[:n]
    return np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n), group])


def _save_surf(path, mesh):
    """Write a ``voxstats.surface.Mesh`` as a GIFTI surface (pointset + triangles); ``path``."""
    nib.save(nib.gifti.GiftiImage(darrays=[
        nib.gifti.GiftiDataArray(mesh.coordinates.astype(np.float32), intent="NIFTI_INTENT_POINTSET"),
        nib.gifti.GiftiDataArray(mesh.faces.astype(np.int32), intent="NIFTI_INTENT_TRIANGLE")]), path)
    return path


@pytest.fixture
def save_surf():
    return _save_surf


@pytest.fixture
def rng():
    return np.random.default_rng(20180301)


@pytest.fixture
def smooth_noise():
    return _smooth_noise


@pytest.fixture
def random_graph():
    return _random_graph


@pytest.fixture
def design_with_nuisance():
    return _design_with_nuisance
