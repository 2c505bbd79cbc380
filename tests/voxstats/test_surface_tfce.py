"""Area-weighted TFCE and clusters on meshes: kernels and engine against the csgraph reference twin."""

import itertools

import numpy as np
import pytest

import voxstats
from voxstats._reference import weighted_cluster_reference, weighted_tfce_reference
from voxstats.cifti import CiftiMasker
from voxstats.surface import Mesh, icosphere, load_mesh
from voxstats.surface_io import SurfaceFormat, SurfaceMasker
from voxstats.tfce import tfce


def _square():
    xyz = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
    return Mesh(coordinates=xyz, faces=np.array([[0, 1, 2], [0, 2, 3]]))


@pytest.fixture(scope="module")
def fsaverage5():
    from nilearn import datasets

    return load_mesh(datasets.load_fsaverage("fsaverage5")["pial"].parts["left"])


def _smooth(mesh, rng, n_iter=6):
    values = rng.standard_normal(mesh.n_vertices)
    adjacency = mesh.adjacency.astype(float)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    for _ in range(n_iter):
        values = (values + adjacency @ values) / (1 + degree)
    return values / values.std()


def test_hand_made_mesh_on_paper():
    """Unit square, values (3, 1, 0, 2), E = 1, H = 2 (see test_surface's reference on paper)."""
    mesh = _square()
    got = tfce(np.array([3.0, 1.0, 0.0, 2.0]), connectivity=mesh.adjacency, weights=mesh.vertex_areas,
               E=1.0, H=2.0)
    np.testing.assert_allclose(got, [3.5, 2 / 9, 0.0, 25 / 18], rtol=1e-12)


@pytest.mark.parametrize("E,H", [(1.0, 2.0), (0.5, 2.0), (2.0, 1.0)])
def test_fsaverage5_equals_reference_with_ties(fsaverage5, E, H):
    """Every vertex of fsaverage5: values on a 0.1 grid (ties, plateaus and merges at equal heights)."""
    values = np.round(_smooth(fsaverage5, np.random.default_rng(5)) * 10) / 10
    got = tfce(values, connectivity=fsaverage5.adjacency, weights=fsaverage5.vertex_areas, E=E, H=H)
    want = weighted_tfce_reference(values, fsaverage5.adjacency, fsaverage5.vertex_areas, E=E, H=H)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    assert np.abs(want).max() > 0 and np.count_nonzero(want < 0) > 1000


def test_fsaverage5_patch_equals_reference_continuous(fsaverage5):
    """Continuous values (no ties) on a patch of fsaverage5 whose border vertices are excluded."""
    centre = fsaverage5.coordinates[int(np.argmin(fsaverage5.coordinates[:, 0]))]
    mask = np.linalg.norm(fsaverage5.coordinates - centre, axis=1) < 30.0
    values = _smooth(fsaverage5, np.random.default_rng(6))
    kept = np.flatnonzero(mask)
    sub = fsaverage5.adjacency.tocsr()[kept][:, kept]
    got = tfce(values[kept], connectivity=sub, weights=fsaverage5.vertex_areas[kept], E=1.0, H=2.0)
    want = weighted_tfce_reference(values[kept], sub, fsaverage5.vertex_areas[kept], E=1.0, H=2.0)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())
    assert 300 < kept.size < 3000


def test_area_weighting_makes_tfce_independent_of_mesh_density():
    """A smooth map sampled on two spheres (642 and 10,242 vertices; the coarse vertices are shared):
    area-weighted TFCE agrees at the shared vertices, TFCE counting vertices differs 16-fold."""
    coarse, fine = icosphere(3, radius=70.0), icosphere(5, radius=70.0)
    np.testing.assert_allclose(fine.coordinates[:coarse.n_vertices], coarse.coordinates, atol=1e-9)
    centre = np.array([70.0, 0.0, 0.0])

    def field(mesh):
        return 4.0 * np.exp(-0.5 * (np.linalg.norm(mesh.coordinates - centre, axis=1) / 20.0) ** 2)

    area = [tfce(field(m), connectivity=m.adjacency, weights=m.vertex_areas, E=1.0, H=2.0) for m in (coarse, fine)]
    count = [tfce(field(m), connectivity=m.adjacency, E=1.0, H=2.0) for m in (coarse, fine)]
    shared = slice(0, coarse.n_vertices)
    strong = area[0] > 0.05 * area[0].max()
    ratio_area = area[1][shared][strong] / area[0][strong]
    ratio_count = count[1][shared][strong] / count[0][strong]
    assert np.all(np.abs(ratio_area - 1) < 0.04)  # discretisation of the coarse mesh's cluster borders
    assert np.all(np.abs(ratio_count / 16 - 1) < 0.04)  # 16 times as many vertices per mm²
    assert strong.sum() > 20


def _surface_masker(mesh, mask=None):
    mask = np.ones(mesh.n_vertices, bool) if mask is None else mask
    return SurfaceMasker(mesh=mesh, mask=mask, areas=mesh.vertex_areas, fmt=SurfaceFormat("gifti", ".func.gii"))


@pytest.fixture(scope="module")
def sphere_study():
    mesh = icosphere(2, radius=60.0)
    rng = np.random.default_rng(11)
    n = 6
    data = np.stack([_smooth(mesh, rng, 2) for _ in range(n)])
    distance = np.linalg.norm(mesh.coordinates - mesh.coordinates[0], axis=1)
    data = (data + 1.5 * np.exp(-0.5 * (distance / 15.0) ** 2)).astype(np.float32)
    mask = mesh.coordinates[:, 2] > -45  # a "medial wall" cap left out
    return mesh, mask, data


def _t(y):
    y = np.asarray(y, dtype=np.float64)
    return y.mean(0) / (y.std(0, ddof=1) / np.sqrt(y.shape[0]))


def test_engine_null_equals_reference_under_exhaustive_sign_flipping(sphere_study):
    """Every one of the 2^6 sign flips: max |TFCE| (area-weighted, E = 1) and the largest cluster's
    area and area-weighted mass, recomputed by the reference from an explicit t map."""
    mesh, mask, data = sphere_study
    masker = _surface_masker(mesh, mask)
    y = data[:, mask]
    res = voxstats.permuted_glm(y, np.ones((6, 1)), [1.0], mask=masker, n_perm=64, tfce=True, tfce_E=1.0,
                                cluster_threshold=2.0, rng=0)
    c = res[0]
    assert res.exhaustive and res.n_perm == 64
    kept = np.flatnonzero(mask)
    adjacency = mesh.adjacency.tocsr()[kept][:, kept]
    areas = mesh.vertex_areas[kept]
    want_tfce, want_extent, want_mass = [], [], []
    for signs in itertools.product([1.0, -1.0], repeat=6):
        t = _t(y * np.array(signs)[:, None])
        want_tfce.append(np.abs(weighted_tfce_reference(t, adjacency, areas, E=1.0, H=2.0)).max())
        extent, mass = weighted_cluster_reference(t, 2.0, adjacency, areas)
        want_extent.append(extent)
        want_mass.append(mass)
    assert np.count_nonzero(want_extent) > 10 and np.ptp(want_tfce) > 0
    np.testing.assert_allclose(np.sort(c.null_max_tfce), np.sort(want_tfce), rtol=2e-5)
    np.testing.assert_allclose(np.sort(c.null_max_extent), np.sort(want_extent), rtol=1e-6)
    np.testing.assert_allclose(np.sort(c.null_max_mass), np.sort(want_mass), rtol=2e-5)
    # the observed map is the public function's on the float32 t map
    np.testing.assert_allclose(c.tfce, tfce(c.stat, connectivity=adjacency, weights=areas, E=1.0), rtol=2e-5,
                               atol=1e-6 * np.abs(c.tfce).max())
    # the same with two threads, bit for bit
    two = voxstats.permuted_glm(y, np.ones((6, 1)), [1.0], mask=masker, n_perm=64, tfce=True, tfce_E=1.0,
                                cluster_threshold=2.0, rng=0, n_jobs=2)[0]
    np.testing.assert_array_equal(two.null_max_tfce, c.null_max_tfce)
    np.testing.assert_array_equal(two.tfce_p_fwe, c.tfce_p_fwe)


def test_cifti_tfce_uses_E_by_structure(rng):
    """A CIFTI graph: cortex vertices (area-weighted, E = 1) and a volume structure (voxel count, E = 0.5)."""
    from nibabel.cifti2 import cifti2_axes

    mesh = icosphere(2, radius=40.0)
    left = cifti2_axes.BrainModelAxis.from_surface(np.arange(mesh.n_vertices), mesh.n_vertices, "CortexLeft")
    block = np.zeros((4, 4, 3), bool)
    block[:3, :3, :2] = True
    vol = cifti2_axes.BrainModelAxis.from_mask(block, "thalamus_left", affine=np.eye(4))
    masker = CiftiMasker(brain_models=left + vol, mask=np.ones(len(left) + len(vol), bool),
                         meshes={"CIFTI_STRUCTURE_CORTEX_LEFT": mesh},
                         areas={"CIFTI_STRUCTURE_CORTEX_LEFT": mesh.vertex_areas})
    graph = masker.graph(6)
    from voxstats.surface_loading import tfce_defaults
    from voxstats.tfce import tfce_values

    values = rng.standard_normal(graph.n_voxels) + 1.0
    got = tfce_values(values, graph, E=tfce_defaults(masker), H=2.0)
    n = mesh.n_vertices
    want_surface = weighted_tfce_reference(values[:n], mesh.adjacency, mesh.vertex_areas, E=1.0, H=2.0)
    volume = np.zeros(block.shape)
    volume[block] = values[n:]
    want_volume = voxstats._reference.tfce_reference(volume, connectivity=6, E=0.5, H=2.0)[block]
    np.testing.assert_allclose(got[:n], want_surface, rtol=1e-10)
    np.testing.assert_allclose(got[n:], want_volume, rtol=1e-10)


def _cifti_study():
    from nibabel.cifti2 import cifti2_axes

    mesh = icosphere(2, radius=40.0)
    left = cifti2_axes.BrainModelAxis.from_surface(np.arange(mesh.n_vertices), mesh.n_vertices, "CortexLeft")
    block = np.zeros((4, 4, 3), bool)
    block[:3, :3, :] = True
    vol = cifti2_axes.BrainModelAxis.from_mask(block, "thalamus_left", affine=np.eye(4))
    masker = CiftiMasker(brain_models=left + vol, mask=np.ones(len(left) + len(vol), bool),
                         meshes={"CIFTI_STRUCTURE_CORTEX_LEFT": mesh},
                         areas={"CIFTI_STRUCTURE_CORTEX_LEFT": mesh.vertex_areas})
    rng = np.random.default_rng(21)
    data = rng.normal(0.4, 1.0, (9, masker.n_elements)).astype(np.float32)
    return masker, data


def test_cifti_checkpoint_resume_and_chunks_give_the_same_null(tmp_path):
    """Mixed E (surface 1, volume 0.5) and area weights through chunks, a checkpoint and a resume."""
    from voxstats.surface_loading import tfce_defaults

    masker, data = _cifti_study()
    options = dict(mask=masker, n_perm=96, tfce=True, tfce_E=tfce_defaults(masker), cluster_threshold=2.0, rng=4)
    whole = voxstats.permuted_glm(data, np.ones((9, 1)), [1.0], **options)[0]
    chunked = voxstats.permuted_glm(data, np.ones((9, 1)), [1.0], chunk_size=32, checkpoint_dir=tmp_path / "ck",
                                    **options)[0]
    resumed = voxstats.permuted_glm(data, np.ones((9, 1)), [1.0], chunk_size=32, checkpoint_dir=tmp_path / "ck",
                                    resume=True, **options)[0]
    for name in ("tfce", "tfce_p_fwe", "null_max_tfce", "null_max_extent", "null_max_mass", "p_fwe"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name), err_msg=name)
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name), err_msg=name)
    # each part enhanced with its own E: the observed map equals the reference per structure
    n = masker.meshes["CIFTI_STRUCTURE_CORTEX_LEFT"].n_vertices
    mesh = masker.meshes["CIFTI_STRUCTURE_CORTEX_LEFT"]
    np.testing.assert_allclose(whole.tfce[:n], weighted_tfce_reference(whole.stat[:n].astype(np.float32),
                                                                       mesh.adjacency, mesh.vertex_areas, E=1.0),
                               rtol=2e-5, atol=1e-6 * np.abs(whole.tfce).max())


def test_cifti_dask_equals_local():
    distributed = pytest.importorskip("distributed")
    from voxstats.surface_loading import tfce_defaults

    masker, data = _cifti_study()
    options = dict(mask=masker, n_perm=64, tfce=True, tfce_E=tfce_defaults(masker), cluster_threshold=2.0, rng=6,
                   chunk_size=16)
    local = voxstats.permuted_glm(data, np.ones((9, 1)), [1.0], **options)[0]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        remote = voxstats.permuted_glm(data, np.ones((9, 1)), [1.0], executor="dask", scheduler=client,
                                       **options)[0]
    for name in ("tfce", "tfce_p_fwe", "null_max_tfce", "null_max_extent", "null_max_mass"):
        np.testing.assert_array_equal(getattr(remote, name), getattr(local, name), err_msg=name)
