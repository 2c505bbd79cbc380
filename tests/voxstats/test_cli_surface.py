"""The command line on surfaces and CIFTI: voxstats randomise, tfce and cluster with nibabel-readable files."""

import json

import nibabel as nib
import numpy as np
import pytest
from nibabel.cifti2 import cifti2_axes

import voxstats
from voxstats.cli import main
from voxstats.surface import icosphere


def _save_gifti(path, arrays, structure="CortexLeft"):
    nib.save(nib.gifti.GiftiImage(darrays=[
        nib.gifti.GiftiDataArray(np.asarray(a, np.float32), meta={"AnatomicalStructurePrimary": structure})
        for a in arrays]), path)
    return path


@pytest.fixture
def study(tmp_path, save_surf):
    """Eight subjects' thickness-like maps on a 162-vertex sphere, 0 on a 'medial wall', an effect at vertex 0."""
    mesh = icosphere(2, radius=50.0)
    rng = np.random.default_rng(4)
    distance = np.linalg.norm(mesh.coordinates - mesh.coordinates[0], axis=1)
    data = (rng.normal(0.0, 1.0, (8, mesh.n_vertices)) + 3.0 * np.exp(-0.5 * (distance / 20) ** 2)).astype(np.float32)
    wall = mesh.coordinates[:, 2] < -40
    data[:, wall] = 0.0
    folder = tmp_path / "subjects"
    folder.mkdir()
    files = [_save_gifti(folder / f"sub-{i:02d}.lh.thickness.shape.gii", [row]) for i, row in enumerate(data)]
    listing = tmp_path / "lh.thickness_list.txt"
    listing.write_text("".join(f"subjects/{f.name}\n" for f in files))
    return mesh, save_surf(tmp_path / "lh.white.surf.gii", mesh), data, wall, listing


def test_randomise_on_gifti_writes_gifti(tmp_path, study, capsys):
    mesh, surf, data, wall, listing = study
    out = tmp_path / "stats" / "lh"
    argv = ["randomise", "-i", str(listing), "--surf", str(surf), "-1", "-o", str(out), "-n", "64", "-x",
            "--uncorrp", "--seed", "3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{mesh.n_vertices - wall.sum()} vertices; outputs {out}_*.func.gii" in printed
    assert "at vertex " in printed
    res = voxstats.randomise(str(listing), np.ones((8, 1)), [1.0], surf=str(surf), n_perm=64, rng=3,
                             two_sided=False)
    c = res[0]
    for name, values in (("tstat1", c.stat), ("vox_corrp_tstat1", 1 - c.p_fwe), ("vox_p_tstat1", 1 - c.p)):
        img = nib.load(f"{out}_{name}.func.gii")
        got = img.darrays[0].data
        assert got.shape == (mesh.n_vertices,) and got.dtype == np.float32
        np.testing.assert_allclose(got[~wall], values, rtol=1e-6, atol=1e-6)
        assert np.all(got[wall] == 0)
        assert img.darrays[0].meta["AnatomicalStructurePrimary"] == "CortexLeft"
    record = json.loads((tmp_path / "stats" / "lh.json").read_text())
    assert record["n_voxels"] == mesh.n_vertices - wall.sum()
    assert all(o.endswith(".func.gii") for o in record["outputs"])
    assert str(surf) in record["sha256"]
    assert isinstance(record["summary"][0]["max_voxel"], int)
    # the cluster table of the outputs, p convention read from the run's record
    table = tmp_path / "clusters.tsv"
    assert main(["cluster", f"{out}_tstat1.func.gii", "--surf", str(surf), "--threshold", "2.5",
                 "--p", f"{out}_vox_p_tstat1.func.gii", "-o", str(table),
                 "--out-index", str(tmp_path / "clusters.label.gii")]) == 0
    rows = table.read_text().splitlines()
    assert rows[0].split("\t")[:4] == ["cluster", "n_vertices", "area_mm2", "mass"]
    labels = nib.load(tmp_path / "clusters.label.gii").darrays[0].data
    significant = (np.round(c.p, 7) < 0.05) & (c.stat > 2.5)
    assert (labels[~wall] > 0).sum() == significant.sum() and len(rows) - 1 == len(set(labels[labels > 0]))


def test_randomise_on_curv_and_mgh(tmp_path, study):
    mesh, surf, data, wall, _ = study
    curv = []
    for i, row in enumerate(data):
        path = tmp_path / f"sub-{i}.lh.thickness"
        nib.freesurfer.write_morph_data(str(path), row)
        curv.append(path)
    listing = tmp_path / "curv.txt"
    listing.write_text("".join(f"{p.name}\n" for p in curv))
    fs_surf = tmp_path / "lh.white"
    nib.freesurfer.write_geometry(str(fs_surf), mesh.coordinates, mesh.faces.astype(np.int32))
    assert main(["randomise", "-i", str(listing), "--surf", str(fs_surf), "-1", "-o", str(tmp_path / "c"),
                 "-n", "16", "--seed", "1", "--quiet"]) == 0
    t_curv = np.asarray(nib.load(tmp_path / "c_tstat1.mgz").dataobj).ravel()
    frames = tmp_path / "all.mgh"
    nib.save(nib.MGHImage(data.T.reshape(-1, 1, 1, 8), np.eye(4)), frames)
    assert main(["randomise", "-i", str(frames), "--surf", str(surf), "-1", "-o", str(tmp_path / "m"),
                 "-n", "16", "--seed", "1", "--quiet"]) == 0
    t_mgh = np.asarray(nib.MGHImage.from_bytes((tmp_path / "m_tstat1.mgh").read_bytes()).dataobj).ravel()
    y = data[:, ~wall].astype(np.float64)
    t = y.mean(0) / (y.std(0, ddof=1) / np.sqrt(8))
    np.testing.assert_allclose(t_curv[~wall], t, rtol=1e-5)
    np.testing.assert_array_equal(t_mgh, t_curv)


def test_randomise_on_cifti_keeps_brain_models(tmp_path, save_surf):
    mesh = icosphere(1, radius=40.0)
    left = cifti2_axes.BrainModelAxis.from_surface(np.arange(40), 42, "CortexLeft")
    block = np.zeros((3, 3, 2), bool)
    block[:2, :2, :] = True
    vol = cifti2_axes.BrainModelAxis.from_mask(block, "thalamus_left", affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    models = left + vol
    rng = np.random.default_rng(0)
    data = rng.normal(0.5, 1.0, (7, len(models))).astype(np.float32)
    files = []
    for i, row in enumerate(data):
        img = nib.Cifti2Image(row[None], header=(cifti2_axes.ScalarAxis([f"sub-{i}"]), models))
        files.append(tmp_path / f"sub-{i}.dscalar.nii")
        nib.save(img, files[-1])
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{f.name}\n" for f in files))
    surf = save_surf(tmp_path / "L.midthickness.surf.gii", mesh)
    assert main(["randomise", "-i", str(listing), "--left-surf", str(surf), "-1", "-o", str(tmp_path / "g"),
                 "-n", "16", "-x", "--seed", "2", "--quiet"]) == 0
    out = nib.load(tmp_path / "g_tstat1.dscalar.nii")
    assert out.header.get_axis(1) == models
    y = data.astype(np.float64)
    np.testing.assert_allclose(out.get_fdata()[0], y.mean(0) / (y.std(0, ddof=1) / np.sqrt(7)), rtol=1e-5)
    assert nib.load(tmp_path / "g_vox_corrp_tstat1.dscalar.nii").header.get_axis(1) == models


def test_command_line_errors(tmp_path, study, capsys, save_surf):
    mesh, surf, data, wall, listing = study
    base = ["randomise", "-i", str(listing), "-1", "-o", str(tmp_path / "x"), "-n", "8"]
    assert main(base) == 1
    assert "error: --surf: surface data need the mesh they are on" in capsys.readouterr().err
    assert main(base + ["--surf", str(surf), "--left-surf", str(surf)]) == 1
    assert "error: --left-surf: only for CIFTI input" in capsys.readouterr().err
    assert main(base + ["--surf", str(surf), "a", "b"]) == 1
    assert "error: --surf: expected a mesh and optionally vertex areas, got 3 values" in capsys.readouterr().err
    assert main(base + ["--surf", str(tmp_path / "none.surf.gii")]) == 1
    assert "error: --surf: file not found:" in capsys.readouterr().err
    assert main(base + ["--surf", str(surf), "--area=-3"]) == 1
    assert "error: --area: expected a file or a number > 0, got -3" in capsys.readouterr().err
    other = icosphere(1)
    small = save_surf(tmp_path / "small.surf.gii", other)
    assert main(base + ["--surf", str(small)]) == 1
    assert f"error: --surf: {small} has 42 vertices but the maps" in capsys.readouterr().err
    volume = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(3, 3, 3, 8)).astype(np.float32), np.eye(4)),
             volume)
    assert main(["randomise", "-i", str(volume), "-1", "-o", str(tmp_path / "y"), "-n", "8", "--surf",
                 str(surf)]) == 1
    assert "error: --surf: only for surface (GIFTI, FreeSurfer) or CIFTI inputs" in capsys.readouterr().err
    assert main(["cluster", str(listing.parent / "subjects" / "sub-00.lh.thickness.shape.gii"), "--threshold",
                 "1"]) == 1
    assert "error: --surf: a surface map needs the mesh it is on" in capsys.readouterr().err


def test_randomise_tfce_and_clusters_on_a_surface(tmp_path, study, capsys):
    """-T (E = 1, area-weighted) and -c/-C on GIFTI: the files equal the library's maps (raw maps with -R, as randomise)."""
    mesh, surf, data, wall, listing = study
    out = tmp_path / "t"
    assert main(["randomise", "-i", str(listing), "--surf", str(surf), "-1", "-o", str(out), "-n", "32", "-T",
                 "-R", "-c", "2.5", "-C", "2.5", "--seed", "9", "--quiet"]) == 0
    res = voxstats.randomise(str(listing), np.ones((8, 1)), [1.0], surf=str(surf), n_perm=32, rng=9,
                             two_sided=False, tfce=True, cluster_threshold=2.5)
    c = res[0]
    assert res.settings["tfce_E"] == 1.0
    for name, values in (("tfce_tstat1", c.tfce), ("tfce_corrp_tstat1", 1 - c.tfce_p_fwe),
                         ("clustere_corrp_tstat1", 1 - c.cluster_extent_p_fwe),
                         ("clusterm_corrp_tstat1", 1 - c.cluster_mass_p_fwe)):
        got = nib.load(f"{out}_{name}.func.gii").darrays[0].data
        np.testing.assert_allclose(got[~wall], values, rtol=1e-6, atol=1e-6 * max(1.0, np.abs(values).max()))
    record = json.loads((tmp_path / "t.json").read_text())
    assert record["library_call"]["tfce_E"] == 1.0
    # the TFCE map is the area-weighted TFCE of the t map on the kept vertices
    kept = np.flatnonzero(~wall)
    want = voxstats.tfce(c.stat, connectivity=mesh.adjacency.tocsr()[kept][:, kept],
                         weights=mesh.vertex_areas[kept], E=1.0, two_sided=False)
    np.testing.assert_allclose(c.tfce, want, rtol=1e-4, atol=1e-5 * want.max())
    # --area 1 counts vertices: another TFCE map
    assert main(["randomise", "-i", str(listing), "--surf", str(surf), "1", "-1", "-o", str(tmp_path / "u"),
                 "-n", "8", "-T", "-R", "--seed", "9", "--quiet"]) == 0
    counted = nib.load(tmp_path / "u_tfce_tstat1.func.gii").darrays[0].data[~wall]
    want = voxstats.tfce(c.stat, connectivity=mesh.adjacency.tocsr()[kept][:, kept], E=1.0, two_sided=False)
    np.testing.assert_allclose(counted, want, rtol=1e-4, atol=1e-5 * want.max())


def test_tfce_command_on_gifti_and_cifti(tmp_path, study, capsys):
    mesh, surf, data, wall, _ = study
    t = data.mean(0)
    stat = _save_gifti(tmp_path / "stat.func.gii", [t])
    assert main(["tfce", str(stat), str(tmp_path / "stat_tfce.func.gii"), "--surf", str(surf)]) == 0
    got = nib.load(tmp_path / "stat_tfce.func.gii").darrays[0].data
    want = voxstats.tfce(t.astype(np.float64), connectivity=mesh.adjacency, weights=mesh.vertex_areas, E=1.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    assert main(["tfce", str(stat), str(tmp_path / "x.nii.gz"), "--surf", str(surf)]) == 1
    assert "error: OUT: " in capsys.readouterr().err
    # CIFTI: the cortex with E = 1 and areas, a volume structure with E = 0.5 and 6 neighbours
    left = cifti2_axes.BrainModelAxis.from_surface(np.arange(mesh.n_vertices), mesh.n_vertices, "CortexLeft")
    block = np.ones((3, 3, 2), bool)
    vol = cifti2_axes.BrainModelAxis.from_mask(block, "thalamus_left", affine=np.eye(4))
    values = np.concatenate([t, np.linspace(-1, 3, 18)]).astype(np.float32)
    cifti = tmp_path / "stat.dscalar.nii"
    nib.save(nib.Cifti2Image(values[None], header=(cifti2_axes.ScalarAxis(["t"]), left + vol)), cifti)
    assert main(["tfce", str(cifti), str(tmp_path / "stat_tfce.dscalar.nii"), "--left-surf", str(surf)]) == 0
    out = nib.load(tmp_path / "stat_tfce.dscalar.nii")
    assert out.header.get_axis(1) == left + vol
    np.testing.assert_allclose(out.get_fdata()[0, :mesh.n_vertices], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    volume = np.zeros(block.shape)
    volume[block] = values[mesh.n_vertices:]
    want_volume = voxstats.tfce(volume, connectivity=6, E=0.5)[block]
    np.testing.assert_allclose(out.get_fdata()[0, mesh.n_vertices:], want_volume, rtol=1e-6)
