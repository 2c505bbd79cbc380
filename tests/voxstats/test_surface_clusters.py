"""voxstats.surface_clusters: cluster tables on a mesh, against hand-computed cases and brute force."""

import nibabel as nib
import numpy as np
import pytest

from voxstats._reference import weighted_cluster_reference
from voxstats.surface import Mesh, icosphere
from voxstats.surface_clusters import SURFACE_COLUMNS, surface_cluster_table


def _strip(n_squares=6):
    """A flat strip of unit squares along x, two triangles each; vertices (i, 0) = 2i and (i, 1) = 2i+1."""
    xyz = np.array([[i, j, 0.0] for i in range(n_squares + 1) for j in (0, 1)])
    faces = []
    for i in range(n_squares):
        a, b, c, d = 2 * i, 2 * i + 2, 2 * i + 3, 2 * i + 1
        faces += [(a, b, c), (a, c, d)]
    return Mesh(coordinates=xyz, faces=np.array(faces))


def test_hand_computed_strip():
    mesh = _strip()
    # vertex areas: end columns 1/6 and 1/3 (one square each), inner columns 1/2 each
    values = np.zeros(14)
    values[[0, 1, 2, 3]] = [3.0, 2.0, 2.5, 2.5]  # columns 0-1: one cluster
    values[[10, 11]] = [-4.0, -4.0]  # column 5: a negative cluster
    values[[13]] = 5.0  # the far corner alone
    res = surface_cluster_table(values, mesh, threshold=1.0, sign="both")
    t = res.table
    assert list(t.columns) == list(SURFACE_COLUMNS)
    assert t["n_vertices"].tolist() == [4, 2, 1]
    areas = mesh.vertex_areas
    np.testing.assert_allclose(t["area_mm2"], [areas[[0, 1, 2, 3]].sum(), areas[[10, 11]].sum(), areas[13]])
    assert t["area_mm2"][0] == pytest.approx(1 / 3 + 1 / 6 + 1 / 2 + 1 / 2)
    np.testing.assert_allclose(t["mass"][0], (areas[[0, 1, 2, 3]] * values[[0, 1, 2, 3]]).sum())
    assert t["max_value"].tolist() == [3.0, -4.0, 5.0]
    assert t["peak_vertex"].tolist() == [0, 10, 13]  # ties (-4, -4): lowest vertex index
    np.testing.assert_array_equal(t.loc[2, ["peak_x", "peak_y", "peak_z"]].to_numpy(float), [6, 1, 0])
    np.testing.assert_array_equal(res.labels[[0, 1, 2, 3, 10, 11, 13, 5]], [1, 1, 1, 1, 2, 2, 3, 0])
    assert t["p_min"].isna().all() and (t["peak_label"] == "").all()
    # only positive clusters by default; min_area drops the corner
    pos = surface_cluster_table(values, mesh, threshold=1.0, min_area=0.4).table  # the corner has 1/3
    assert pos["n_vertices"].tolist() == [4]


def test_random_maps_match_the_reference(rng):
    mesh = icosphere(3, radius=50.0)
    for _ in range(3):
        values = rng.standard_normal(mesh.n_vertices)
        res = surface_cluster_table(values, mesh, threshold=0.8, sign="both")
        extent, mass = weighted_cluster_reference(values, 0.8, mesh.adjacency, mesh.vertex_areas)
        assert res.table["area_mm2"].max() == pytest.approx(extent, rel=1e-12)
        assert res.table["mass"].max() == pytest.approx(mass, rel=1e-12)
        assert res.table["n_vertices"].sum() == int((np.abs(values) > 0.8).sum())


def test_p_map_atlas_and_labels_file(tmp_path):
    mesh = _strip()
    values = np.zeros(14)
    values[[0, 1, 2, 3, 12, 13]] = [3.0, 2.0, 2.5, 2.5, 4.0, 4.0]
    one_minus_p = np.where(values > 0, 0.99, 0.0)
    one_minus_p[12] = 0.96
    codes = np.where(np.arange(14) < 6, 1, 2)
    ctab = np.array([[0, 0, 0, 0, 0], [200, 10, 10, 0, 0], [10, 10, 200, 0, 0]])
    annot = tmp_path / "lh.test.annot"
    nib.freesurfer.write_annot(str(annot), codes, ctab, [b"unknown", b"frontal", b"occipital"], fill_ctab=True)
    res = surface_cluster_table(values, mesh, p_img=one_minus_p, p_convention="1-p", alpha=0.05, atlas_img=annot)
    t = res.table
    assert t["peak_label"].tolist() == ["frontal", "occipital"]
    assert t["p_min"].tolist() == pytest.approx([0.01, 0.01])
    assert t["peak_vertex"].tolist() == [0, 12]
    path = res.save_labels(tmp_path / "clusters.label.gii")
    img = nib.load(path)
    np.testing.assert_array_equal(img.darrays[0].data, res.labels)
    assert img.labeltable.get_labels_as_dict()[2] == "cluster 2"


def test_errors():
    mesh = _strip()
    with pytest.raises(ValueError, match=r"Either 'threshold' or 'p_img' must be given"):
        surface_cluster_table(np.zeros(14), mesh)
    with pytest.raises(ValueError, match=r"stat_img: expected one value per vertex of the mesh \(14\), got 3"):
        surface_cluster_table(np.zeros(3), mesh, threshold=1)
    with pytest.raises(ValueError, match=r"Invalid value for the 'sign' parameter"):
        surface_cluster_table(np.zeros(14), mesh, threshold=1, sign="up")
    empty = surface_cluster_table(np.zeros(14), mesh, threshold=1).table
    assert empty.empty and list(empty.columns) == list(SURFACE_COLUMNS)
