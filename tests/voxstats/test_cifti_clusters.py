"""voxstats.cifti_clusters: cluster tables of CIFTI maps, against hand counts and per-structure references."""

import nibabel as nib
import numpy as np
import pytest
from nibabel.cifti2 import cifti2_axes
from scipy import ndimage

from voxstats.cifti_clusters import CIFTI_COLUMNS, cifti_cluster_table
from voxstats.cli import main
from voxstats.surface import Mesh, icosphere
from voxstats.surface_clusters import surface_cluster_table

AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


def _square():
    xyz = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float)
    return Mesh(coordinates=xyz, faces=np.array([[0, 1, 2], [0, 2, 3]]))


def _save(path, values, models, names=None):
    values = np.atleast_2d(np.asarray(values, np.float32))
    names = names or [f"map{i}" for i in range(values.shape[0])]
    img = nib.Cifti2Image(values, header=(cifti2_axes.ScalarAxis(names), models))
    img.nifti_header.set_intent("ConnDenseScalar")
    nib.save(img, path)
    return path


def _hand_models():
    """Left cortex: the unit square's vertices 0, 1, 2 (3 is 'medial wall'); thalamus: three voxels
    along i, (0,0,0) and (1,0,0) touching, (3,0,0) apart; 2 mm voxels (8 mm³)."""
    left = cifti2_axes.BrainModelAxis.from_surface(np.array([0, 1, 2]), 4, "CortexLeft")
    vol = cifti2_axes.BrainModelAxis(name=["thalamus_left"] * 3, voxel=np.array([[0, 0, 0], [1, 0, 0], [3, 0, 0]]),
                                     affine=AFFINE, volume_shape=(5, 5, 5))
    return left + vol


def test_hand_computed_clusters(tmp_path):
    """Square: vertex areas 1/3, 1/6, 1/3 (vertices 0, 1, 2). Values (3, 1, -2 | 2, 4, 5), |stat| > 0.5."""
    models = _hand_models()
    stat = _save(tmp_path / "stat.dscalar.nii", [3.0, 1.0, -2.0, 2.0, 4.0, 5.0], models)
    res = cifti_cluster_table(stat, left_surf=_square(), threshold=0.5, sign="both")
    t = res.table
    assert list(t.columns) == list(CIFTI_COLUMNS)
    assert list(t["structure"]) == ["CIFTI_STRUCTURE_CORTEX_LEFT"] * 2 + ["CIFTI_STRUCTURE_THALAMUS_LEFT"] * 2
    np.testing.assert_allclose(t["area_mm2"][:2], [1 / 3 + 1 / 6, 1 / 3], rtol=1e-12)
    assert t["area_mm2"][2:].isna().all() and t["volume_mm3"][:2].isna().all()
    np.testing.assert_allclose(t["volume_mm3"][2:], [16.0, 8.0])
    np.testing.assert_allclose(t["mass"], [3 / 3 + 1 / 6, 2 / 3, 8 * (2 + 4), 8 * 5], rtol=1e-12)
    assert list(t["n_elements"]) == [2, 1, 2, 1]
    assert list(t["max_value"]) == [3.0, -2.0, 4.0, 5.0]
    assert list(t["peak_grayordinate"]) == [0, 2, 4, 5]
    # a cortical peak has no voxel and a volume peak no vertex: missing, not -1
    assert list(t["peak_vertex"][:2]) == [0, 2] and t["peak_vertex"][2:].isna().all()
    assert t[["peak_i", "peak_j", "peak_k"]][:2].isna().all(axis=None)
    assert [tuple(r) for r in t[["peak_i", "peak_j", "peak_k"]][2:].to_numpy()] == [(1, 0, 0), (3, 0, 0)]
    res.to_tsv(tmp_path / "clusters.tsv")
    rows = [line.split("\t") for line in (tmp_path / "clusters.tsv").read_text().splitlines()]
    at = {name: rows[0].index(name) for name in ("peak_vertex", "peak_i", "peak_j", "peak_k")}
    assert [[row[i] for i in at.values()] for row in rows[1:]] == [["0", "", "", ""], ["2", "", "", ""],
                                                                   ["", "1", "0", "0"], ["", "3", "0", "0"]]
    np.testing.assert_allclose(t[["peak_x", "peak_y", "peak_z"]].to_numpy(),
                               [[0, 0, 0], [1, 1, 0], [88, -126, -72], [84, -126, -72]])
    np.testing.assert_array_equal(res.labels, [1, 1, 2, 3, 3, 4])
    # min_size: mm² on surfaces, voxels in volumes
    small = cifti_cluster_table(stat, left_surf=_square(), threshold=0.5, sign="both", min_size=0.4).table
    assert list(small["n_elements"]) == [2, 2, 1]
    # 6-connectivity changes nothing here; a threshold of 2.5 leaves one vertex and two lone voxels
    high = cifti_cluster_table(stat, left_surf=_square(), threshold=2.5, sign="pos", connectivity=6).table
    assert list(high["n_elements"]) == [1, 1, 1] and list(high["max_value"]) == [3.0, 5.0, 4.0]  # ties: larger peak first


def test_random_maps_equal_per_structure_references(tmp_path):
    """Two hemispheres (162-vertex spheres minus a cap) and a volume block: each structure's clusters are
    those of surface_cluster_table on its mesh, and of scipy.ndimage.label on the block's grid."""
    rng = np.random.default_rng(3)
    mesh = icosphere(2, radius=50.0)
    keep_l = np.flatnonzero(mesh.coordinates[:, 2] > -30)
    keep_r = np.flatnonzero(mesh.coordinates[:, 0] > -30)
    block = np.zeros((6, 5, 4), bool)
    block[1:5, :4, 1:3] = True
    block[0, 0, 0] = True
    models = (cifti2_axes.BrainModelAxis.from_surface(keep_l, mesh.n_vertices, "CortexLeft")
              + cifti2_axes.BrainModelAxis.from_surface(keep_r, mesh.n_vertices, "CortexRight")
              + cifti2_axes.BrainModelAxis.from_mask(block, "thalamus_right", affine=AFFINE))
    adjacency = mesh.adjacency.astype(float)
    degree = np.asarray(adjacency.sum(1)).ravel()
    hemis = []
    for _ in range(2):
        v = rng.standard_normal(mesh.n_vertices)
        for _ in range(2):
            v = (v + adjacency @ v) / (1 + degree)
        hemis.append(v / v.std())
    volume = ndimage.gaussian_filter(rng.standard_normal(block.shape), 0.7)
    volume /= volume[block].std()
    values = np.concatenate([hemis[0][keep_l], hemis[1][keep_r], volume[block]]).astype(np.float32)
    stat = _save(tmp_path / "stat.dscalar.nii", values, models)
    res = cifti_cluster_table(stat, left_surf=mesh, right_surf=mesh, threshold=0.8, sign="both")
    t = res.table
    for side, keep, structure in (("left", keep_l, "CIFTI_STRUCTURE_CORTEX_LEFT"),
                                  ("right", keep_r, "CIFTI_STRUCTURE_CORTEX_RIGHT")):
        full = np.full(mesh.n_vertices, np.nan)
        full[keep] = values[models.name == structure]
        want = surface_cluster_table(full, mesh, threshold=0.8, sign="both").table
        got = t[t["structure"] == structure]
        assert len(got) == len(want) > 2
        np.testing.assert_allclose(got["area_mm2"], want["area_mm2"], rtol=1e-6)
        np.testing.assert_allclose(got["mass"], want["mass"], rtol=1e-6)
        np.testing.assert_array_equal(got["peak_vertex"], want["peak_vertex"])
        np.testing.assert_allclose(got[["peak_x", "peak_y", "peak_z"]], want[["peak_x", "peak_y", "peak_z"]])
    got = t[t["structure"] == "CIFTI_STRUCTURE_THALAMUS_RIGHT"]
    grid = np.zeros(block.shape)
    grid[block] = values[models.volume_mask]
    sizes = []
    for s in (1, -1):
        lab, n = ndimage.label((grid * s > 0.8) & block, structure=np.ones((3, 3, 3)))
        sizes += list(np.bincount(lab.ravel())[1:])
    assert len(got) == len(sizes) > 1
    np.testing.assert_allclose(np.sort(got["volume_mm3"]), 8.0 * np.sort(sizes))
    # every labelled grayordinate passes the threshold, each cluster stays in one structure
    labelled = res.labels > 0
    assert np.all(np.abs(values[labelled]) > 0.8)
    assert np.count_nonzero(np.abs(values) > 0.8) == labelled.sum()
    for k in range(1, len(t) + 1):
        assert len(set(models.name[res.labels == k])) == 1


def test_command_line_on_randomise_outputs(tmp_path, capsys, save_surf):
    """randomise on CIFTI, then cluster on its 1 - p map: the convention comes from the record."""
    mesh = icosphere(1, radius=40.0)
    models = (cifti2_axes.BrainModelAxis.from_surface(np.arange(40), 42, "CortexLeft")
              + cifti2_axes.BrainModelAxis.from_mask(np.ones((3, 3, 2), bool), "thalamus_left",
                                                     affine=np.diag([2.0, 2.0, 2.0, 1.0])))
    rng = np.random.default_rng(0)
    data = rng.normal(0.0, 1.0, (8, len(models))) + 2.0 * (np.arange(len(models)) < 20)
    data[:, -4:] += 3.0
    files = [_save(tmp_path / f"sub-{i}.dscalar.nii", row, models) for i, row in enumerate(data)]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{f.name}\n" for f in files))
    surf = save_surf(tmp_path / "L.surf.gii", mesh)
    assert main(["randomise", "-i", str(listing), "--left-surf", str(surf), "-1", "-o", str(tmp_path / "g"),
                 "-n", "256", "-x", "--seed", "2", "--quiet"]) == 0
    tsv, index = tmp_path / "clusters.tsv", tmp_path / "clusters.dlabel.nii"
    assert main(["cluster", str(tmp_path / "g_tstat1.dscalar.nii"), "--p", str(tmp_path / "g_vox_corrp_tstat1.dscalar.nii"),
                 "--left-surf", str(surf), "-o", str(tsv), "--out-index", str(index)]) == 0
    import pandas as pd

    table = pd.read_csv(tsv, sep="\t")
    p = 1 - nib.load(tmp_path / "g_vox_corrp_tstat1.dscalar.nii").get_fdata()[0]
    t = nib.load(tmp_path / "g_tstat1.dscalar.nii").get_fdata()[0]
    want = cifti_cluster_table(tmp_path / "g_tstat1.dscalar.nii", left_surf=surf,
                               p_img=np.where(t > 0, p, 1.0), p_convention="p").table
    assert len(table) == len(want) >= 2
    np.testing.assert_array_equal(table["n_elements"], want["n_elements"])
    labels = nib.load(index)
    assert labels.header.get_axis(1) == models
    assert isinstance(labels.header.get_axis(0), cifti2_axes.LabelAxis)
    got_labels = labels.get_fdata()[0]
    assert int(got_labels.max()) == len(table)
    np.testing.assert_array_equal(np.bincount(got_labels.astype(int))[1:], table["n_elements"])
    # errors: a CIFTI STAT needs the hemisphere's mesh where it has clusters, and no --surf
    stat = str(tmp_path / "g_tstat1.dscalar.nii")
    assert main(["cluster", stat, "--threshold", "1"]) == 1
    assert "--left-surf: CIFTI_STRUCTURE_CORTEX_LEFT has clusters" in capsys.readouterr().err
    assert main(["cluster", stat, "--threshold", "1", "--surf", str(surf)]) == 1
    assert "--surf: a CIFTI STAT takes one mesh per hemisphere" in capsys.readouterr().err
    assert main(["cluster", stat, "--threshold", "1", "--left-surf", str(surf), "--out-index",
                 str(tmp_path / "x.label.gii")]) == 1
    assert "--out-index: CIFTI clusters are written over the grayordinates" in capsys.readouterr().err


def test_atlas_and_errors(tmp_path):
    models = _hand_models()
    stat = _save(tmp_path / "stat.dscalar.nii", [3.0, 1.0, -2.0, 2.0, 4.0, 5.0], models)
    atlas_axis = cifti2_axes.LabelAxis(["parcels"], [{0: ("???", (0, 0, 0, 0)), 7: ("V1", (1, 0, 0, 1)),
                                                      9: ("MD", (0, 1, 0, 1))}])
    atlas = tmp_path / "atlas.dlabel.nii"
    nib.save(nib.Cifti2Image(np.array([[7, 7, 0, 9, 9, 9]], np.float32), header=(atlas_axis, models)), atlas)
    t = cifti_cluster_table(stat, left_surf=_square(), threshold=0.5, atlas_img=atlas).table
    assert list(t["peak_label"]) == ["V1", "MD", "MD"]
    renamed = cifti_cluster_table(stat, left_surf=_square(), threshold=0.5, atlas_img=atlas,
                                  atlas_labels={9: "mediodorsal"}).table
    assert list(renamed["peak_label"]) == ["V1", "mediodorsal", "mediodorsal"]
    # a cortical parcellation on part of the grayordinates: matched by structure and vertex
    cortex = cifti2_axes.BrainModelAxis.from_surface(np.array([2, 0]), 4, "CortexLeft")
    nib.save(nib.Cifti2Image(np.array([[5, 7]], np.float32), header=(atlas_axis, cortex)), tmp_path / "ctx.dlabel.nii")
    t = cifti_cluster_table(stat, left_surf=_square(), threshold=0.5, sign="both",
                            atlas_img=tmp_path / "ctx.dlabel.nii").table
    assert list(t["peak_label"]) == ["V1", "label 5", "", ""]
    wrong = cifti2_axes.BrainModelAxis.from_surface(np.array([0]), 5, "CortexLeft")
    nib.save(nib.Cifti2Image(np.array([[7]], np.float32), header=(atlas_axis, wrong)), tmp_path / "w.dlabel.nii")
    with pytest.raises(ValueError, match="atlas_img: .*CORTEX_LEFT is on a mesh of 5 vertices"):
        cifti_cluster_table(stat, left_surf=_square(), threshold=0.5, atlas_img=tmp_path / "w.dlabel.nii")
    # volume clusters alone need no mesh
    only_volume = cifti_cluster_table(stat, threshold=3.5).table
    assert list(only_volume["structure"]) == ["CIFTI_STRUCTURE_THALAMUS_LEFT"] * 2
    two_maps = _save(tmp_path / "two.dscalar.nii", np.ones((2, 6)), models)
    with pytest.raises(ValueError, match="stat_img: .* holds 2 maps; expected one"):
        cifti_cluster_table(two_maps, threshold=0.5)
    with pytest.raises(ValueError, match="left_surf: CIFTI_STRUCTURE_CORTEX_LEFT has clusters"):
        cifti_cluster_table(stat, threshold=0.5)
    with pytest.raises(ValueError, match="Either 'threshold' or 'p_img'"):
        cifti_cluster_table(stat, left_surf=_square())
    with pytest.raises(ValueError, match="p_convention: give how the p values are stored"):
        cifti_cluster_table(stat, left_surf=_square(), p_img=np.zeros(6))
    other = cifti2_axes.BrainModelAxis.from_surface(np.array([0, 1, 2, 3, 4, 5]), 6, "CortexLeft")
    with pytest.raises(ValueError, match="p_img: .* other grayordinates"):
        cifti_cluster_table(stat, left_surf=_square(), p_img=_save(tmp_path / "p.dscalar.nii", np.zeros(6), other),
                            p_convention="p")
    res = cifti_cluster_table(stat, left_surf=_square(), threshold=0.5, sign="both")
    res.save_labels(tmp_path / "c.dscalar.nii")
    np.testing.assert_array_equal(nib.load(tmp_path / "c.dscalar.nii").get_fdata()[0], res.labels)
    with pytest.raises(ValueError, match="path: expected a name ending in .dlabel.nii"):
        res.save_labels(tmp_path / "c.nii.gz")
