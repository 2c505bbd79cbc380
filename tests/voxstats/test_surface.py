"""voxstats.surface: meshes, adjacency, vertex areas; the area-weighted TFCE reference on paper."""

import itertools

import nibabel as nib
import numpy as np
import pytest
from scipy import sparse

from voxstats._reference import weighted_cluster_reference, weighted_tfce_reference
from voxstats.surface import Mesh, face_areas, load_mesh, mesh_adjacency, mesh_graph, vertex_areas


def _square():
    """Unit square in two triangles (0,1,2) and (0,2,3): v1 and v3 are not neighbours."""
    xyz = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
    return Mesh(coordinates=xyz, faces=np.array([[0, 1, 2], [0, 2, 3]]))


def _octahedron(scale=1.0):
    xyz = scale * np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    faces = [(a, b, c) for a in (0, 1) for b in (2, 3) for c in (4, 5)]
    return Mesh(coordinates=xyz, faces=np.array(faces))


def test_square_areas_and_adjacency_on_paper():
    mesh = _square()
    np.testing.assert_allclose(face_areas(mesh.coordinates, mesh.faces), [0.5, 0.5])
    # a third of each triangle: v0 and v2 are in both, v1 and v3 in one
    np.testing.assert_allclose(mesh.vertex_areas, [1 / 3, 1 / 6, 1 / 3, 1 / 6], rtol=1e-15)
    dense = mesh.adjacency.toarray()
    expected = np.zeros((4, 4), int)
    for a, b in ((0, 1), (1, 2), (0, 2), (2, 3), (0, 3)):
        expected[a, b] = expected[b, a] = 1
    np.testing.assert_array_equal(dense, expected)


def test_octahedron_areas_and_degree():
    mesh = _octahedron(scale=2.0)
    # equilateral triangles of side 2*sqrt(2): area sqrt(3)/4 * 8 = 2 sqrt(3); 4 per vertex
    np.testing.assert_allclose(mesh.vertex_areas, 4 * 2 * np.sqrt(3) / 3, rtol=1e-14)
    assert mesh.vertex_areas.sum() == pytest.approx(8 * 2 * np.sqrt(3))
    dense = mesh.adjacency.toarray()
    assert np.all(dense.sum(axis=1) == 4)
    for v, antipode in ((0, 1), (2, 3), (4, 5)):
        assert dense[v, antipode] == 0


def test_adjacency_matches_brute_force_on_fsaverage5():
    from nilearn import datasets

    mesh = load_mesh(datasets.load_fsaverage("fsaverage5")["pial"].parts["left"])
    edges = set()
    for face in mesh.faces[:3000].tolist():
        for a, b in itertools.permutations(face, 2):
            edges.add((a, b))
    sub_rows = {a for a, _ in edges}
    adj = mesh.adjacency.tocsr()
    assert adj.dtype == np.int8 and (adj != adj.T).nnz == 0 and adj.diagonal().sum() == 0
    # each vertex of the first 3000 triangles: its neighbours there are neighbours in the matrix
    for a, b in edges:
        assert adj[a, b] == 1
    # and the total number of edges obeys Euler's formula for a closed genus-0 mesh: E = 3V - 6
    assert adj.nnz // 2 == 3 * mesh.n_vertices - 6
    assert len(sub_rows) > 1000
    # vertex areas sum to the mesh's area
    assert mesh.vertex_areas.sum() == pytest.approx(face_areas(mesh.coordinates, mesh.faces).sum(), rel=1e-12)


def test_areas_scale_with_the_square_of_the_mesh_size():
    mesh = _octahedron()
    big = _octahedron(scale=3.0)
    np.testing.assert_allclose(big.vertex_areas, 9 * mesh.vertex_areas, rtol=1e-14)


def test_weighted_tfce_reference_on_paper():
    """The reference twin on the unit square, E = 1, H = 2, values (3, 1, 0, 2).

    v0 stands alone above 2 (extent 1/3); v3 joins at 2 (extent 1/2); v1 at 1 (2/3).
    """
    mesh = _square()
    values = np.array([3.0, 1.0, 0.0, 2.0])
    got = weighted_tfce_reference(values, mesh.adjacency, mesh.vertex_areas, E=1.0, H=2.0)
    v0 = (1 / 3) * (27 - 8) / 3 + (1 / 2) * (8 - 1) / 3 + (2 / 3) * (1 - 0) / 3
    v3 = (1 / 2) * (8 - 1) / 3 + (2 / 3) / 3
    v1 = (2 / 3) / 3
    np.testing.assert_allclose(got, [v0, v1, 0.0, v3], rtol=1e-14)
    assert v0 == pytest.approx(3.5)
    # the negative side is enhanced apart, with the same areas
    np.testing.assert_allclose(weighted_tfce_reference(-values, mesh.adjacency, mesh.vertex_areas),
                               -got, rtol=1e-14)
    # largest cluster above 0.5: {v0, v1, v3}, area 2/3, mass 1/3*3 + 1/6*1 + 1/6*2
    extent, mass = weighted_cluster_reference(values, 0.5, mesh.adjacency, mesh.vertex_areas)
    assert extent == pytest.approx(2 / 3) and mass == pytest.approx(1 + 1 / 6 + 2 / 6)


def test_palm_stepped_reference_converges_to_exact():
    mesh = _square()
    values = np.array([3.0, 1.0, 0.0, 2.0])
    exact = weighted_tfce_reference(values, mesh.adjacency, mesh.vertex_areas, two_sided=False)
    errors = [np.abs(weighted_tfce_reference(values, mesh.adjacency, mesh.vertex_areas, two_sided=False,
                                             mode="palm", dh=dh) - exact).max() for dh in (0.1, 0.01, 0.001)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01
    # PALM's steps on paper: dh = 3/100; v1 (value 1) sees the thresholds 0.03, 0.06, .., 0.99
    palm = weighted_tfce_reference(values, mesh.adjacency, mesh.vertex_areas, two_sided=False, mode="palm")
    dh = 0.03
    assert palm[1] == pytest.approx(dh * (2 / 3) * sum((k * dh) ** 2 for k in range(1, 34)), rel=1e-12)


def test_mesh_graph_leaves_out_excluded_vertices():
    mesh = _octahedron()
    mask = np.array([True, True, True, True, True, False])
    graph, weights = mesh_graph(mesh, mask)
    assert graph.n_voxels == 5
    np.testing.assert_allclose(weights, mesh.vertex_areas[:5])
    # kept vertices keep their edges among themselves only
    expected = mesh.adjacency.toarray()[:5, :5]
    got = sparse.csr_matrix((np.ones(graph.indices.size), graph.indices, graph.indptr), shape=(5, 5)).toarray()
    np.testing.assert_array_equal(got, expected)
    # user areas (PALM's -s surf area) replace the mesh's own, a number weights every vertex alike
    _, w = mesh_graph(mesh, mask, areas=np.arange(6.0))
    np.testing.assert_array_equal(w, np.arange(5.0))
    _, w = mesh_graph(mesh, mask, areas=1.0)
    np.testing.assert_array_equal(w, np.ones(5))


@pytest.mark.parametrize("fmt", ["gifti", "freesurfer"])
def test_load_mesh_from_files(tmp_path, fmt):
    mesh = _octahedron(2.0)
    if fmt == "gifti":
        path = tmp_path / "lh.white.surf.gii"
        img = nib.gifti.GiftiImage(darrays=[
            nib.gifti.GiftiDataArray(mesh.coordinates.astype(np.float32), intent="NIFTI_INTENT_POINTSET"),
            nib.gifti.GiftiDataArray(mesh.faces.astype(np.int32), intent="NIFTI_INTENT_TRIANGLE")])
        nib.save(img, path)
    else:
        path = tmp_path / "lh.white"
        nib.freesurfer.write_geometry(str(path), mesh.coordinates, mesh.faces.astype(np.int32))
    loaded = load_mesh(path)
    np.testing.assert_allclose(loaded.coordinates, mesh.coordinates, rtol=1e-6)
    np.testing.assert_array_equal(loaded.faces, mesh.faces)
    assert loaded.name == str(path)


def test_load_mesh_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--surf: file not found: .*nope\.surf\.gii"):
        load_mesh(tmp_path / "nope.surf.gii", name="--surf")
    func = tmp_path / "data.func.gii"
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(np.zeros(6, np.float32))]), func)
    with pytest.raises(ValueError, match=r"--surf: expected a GIFTI surface with one POINTSET and one "
                                         r"TRIANGLE array \(a \.surf\.gii\), got 0 and 0"):
        load_mesh(func, name="--surf")
    text = tmp_path / "lh.white"
    text.write_text("not a surface\n")
    with pytest.raises(ValueError, match=r"--surf: cannot read .*lh\.white as a surface"):
        load_mesh(text, name="--surf")
    with pytest.raises(ValueError, match=r"surf: triangles refer to vertex 9 but the mesh has 4 vertices"):
        load_mesh((np.zeros((4, 3)), np.array([[0, 1, 9]])))
    with pytest.raises(ValueError, match=r"surf: a triangle repeats a vertex"):
        load_mesh((np.zeros((4, 3)), np.array([[0, 1, 1]])))
    with pytest.raises(ValueError, match=r"surf: expected vertex coordinates of shape \(n_vertices, 3\)"):
        load_mesh((np.zeros((4, 2)), np.array([[0, 1, 2]])))
    with pytest.raises(ValueError, match=r"areas: expected one area per vertex of the mesh \(6\), got 5"):
        mesh_graph(_octahedron(), areas=np.ones(5))
    with pytest.raises(ValueError, match=r"areas: areas must be finite and >= 0"):
        mesh_graph(_octahedron(), areas=-np.ones(6))


def test_mesh_adjacency_of_a_lone_vertex():
    xyz = np.zeros((5, 3))
    xyz[:3, :2] = [[0, 0], [1, 0], [0, 1]]
    adj = mesh_adjacency(np.array([[0, 1, 2]]), 5)
    assert adj.shape == (5, 5) and adj[3].nnz == 0 and adj[4].nnz == 0
    np.testing.assert_allclose(vertex_areas(xyz, np.array([[0, 1, 2]])), [1 / 6, 1 / 6, 1 / 6, 0, 0])
