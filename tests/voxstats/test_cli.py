"""The ``voxstats`` command run in-process through ``main([...])``."""

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import voxstats
from voxstats.cli import main
from voxstats.cluster_table import cluster_table
from voxstats.design_files import write_blocks, write_contrasts, write_design, write_f_contrasts
from voxstats.tfce import tfce

AFFINE = np.array([[-2.0, 0, 0, 8], [0, 2, 0, -10], [0, 0, 2, -4], [0, 0, 0, 1]])
SHAPE = (7, 6, 5)
N = 12
NPERM = 60


def _load(path):
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 12-subject two-group study with an effect in one corner, as FSL files."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(42)
    data = rng.normal(size=SHAPE + (N,)).astype(np.float32) + 5.0
    group = np.repeat([1.0, 0.0], N // 2)
    data[1:4, 1:4, 1:3, :] += 1.5 * group  # group A > B here
    data[0, 0, 0, :] = 0.0  # outside the default mask
    nib.save(nib.Nifti1Image(data, AFFINE), root / "all.nii.gz")
    paths = []
    for i in range(N):
        paths.append(root / f"sub{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image(data[..., i], AFFINE), paths[-1])
    (root / "list.txt").write_text("\n".join(p.name for p in paths) + "\n")
    age = rng.normal(40, 10, size=N)
    design = pd.DataFrame({"A": group, "B": 1 - group, "age": age})
    write_design(root / "design.mat", design)
    write_design(root / "design.csv", design)
    cons = {"A>B": [1.0, -1, 0], "B>A": [-1.0, 1, 0], "age": [0.0, 0, 1]}
    write_contrasts(root / "design.con", cons)
    # CSV contrasts name the design columns, in another order
    (root / "con.csv").write_text("name,age,B,A\nA>B,0,-1,1\nB>A,0,1,-1\nage,1,0,0\n")
    write_f_contrasts(root / "design.fts", [[1, 0, 1]], t_names=list(cons))
    write_blocks(root / "design.grp", np.tile([1, 2, 3], N // 3))
    mask = np.ones(SHAPE, dtype=np.int16)
    mask[-1] = 0
    nib.save(nib.Nifti1Image(mask, AFFINE), root / "mask.nii.gz")
    return {"root": root, "data": data, "design": design, "cons": cons}


def _library(study, **kwargs):
    root = study["root"]
    options = dict(n_perm=NPERM, rng=7, two_sided=False)
    options.update(kwargs)
    return voxstats.randomise(str(root / "all.nii.gz"), study["design"].to_numpy(),
                              {k: np.array(v) for k, v in study["cons"].items()}, **options)


def _assert_map(path, res, values):
    expected = np.asarray(res.to_img(np.asarray(values, dtype=np.float32)).dataobj, dtype=np.float64)
    np.testing.assert_allclose(_load(path), expected, rtol=1e-6, atol=1e-6)


def test_randomise_matches_library(study, tmp_path, capsys):
    root = study["root"]
    out = tmp_path / "res" / "rand"
    argv = ["randomise", "-i", str(root / "all.nii.gz"), "-o", str(out), "-d", str(root / "design.mat"),
            "-t", str(root / "design.con"), "-f", str(root / "design.fts"), "-m", str(root / "mask.nii.gz"),
            "-n", str(NPERM), "-T", "-x", "--uncorrp", "-c", "2.0", "-C", "2.0", "-F", "3", "--seed", "7"]
    assert main(argv) == 0
    res = _library(study, f_contrasts={"F1": np.array([[1.0, -1, 0], [0, 0, 1]])},
                   mask_img=str(root / "mask.nii.gz"), tfce=True, cluster_threshold=2.0,
                   cluster_threshold_f=3.0)
    names = sorted(p.name for p in out.parent.iterdir())
    expected = sorted(
        [f"rand_{n}{s}.nii.gz" for s in ("tstat1", "tstat2", "tstat3")
         for n in ("", "vox_p_", "vox_corrp_", "tfce_", "tfce_p_", "tfce_corrp_", "clustere_corrp_", "clusterm_corrp_")]
        + [f"rand_{n}fstat1.nii.gz" for n in ("", "vox_p_", "vox_corrp_", "tfce_", "tfce_p_", "tfce_corrp_", "clustere_corrp_")]
        + ["rand.json"]
    )
    assert names == expected  # no temporary files left, nothing else written
    for kind, contrasts in (("t", res.contrasts[:3]), ("f", res.contrasts[3:])):
        for i, c in enumerate(contrasts, start=1):
            stat = f"{kind}stat{i}"
            _assert_map(f"{out}_{stat}.nii.gz", res, c.stat)
            _assert_map(f"{out}_vox_p_{stat}.nii.gz", res, 1 - c.p)
            _assert_map(f"{out}_vox_corrp_{stat}.nii.gz", res, 1 - c.p_fwe)
            _assert_map(f"{out}_tfce_{stat}.nii.gz", res, c.tfce)
            _assert_map(f"{out}_tfce_p_{stat}.nii.gz", res, 1 - c.tfce_p)
            _assert_map(f"{out}_tfce_corrp_{stat}.nii.gz", res, 1 - c.tfce_p_fwe)
            _assert_map(f"{out}_clustere_corrp_{stat}.nii.gz", res, 1 - c.cluster_extent_p_fwe)
            if kind == "t":
                _assert_map(f"{out}_clusterm_corrp_{stat}.nii.gz", res, 1 - c.cluster_mass_p_fwe)
    # the effect is found: A>B significant somewhere, values in randomise's 1-p convention
    corrp = _load(f"{out}_tfce_corrp_tstat1.nii.gz")
    assert corrp.max() > 0.95 and corrp.min() >= 0
    # the provenance record
    record = json.loads((out.parent / "rand.json").read_text())
    assert record["seed"] == 7 and record["n_perm"] == res.n_perm
    assert record["exhaustive"] == bool(res.exhaustive)
    assert record["library_call"]["two_sided"] is False
    assert record["library_call"]["tfce_E"] == 0.5 and record["library_call"]["connectivity"] == 6
    assert record["versions"]["numpy"] == np.__version__
    for name in ("all.nii.gz", "design.mat", "design.con", "design.fts", "mask.nii.gz"):
        digest = hashlib.sha256((root / name).read_bytes()).hexdigest()
        assert record["sha256"][str(root / name)] == digest
    assert record["t_contrasts"] == {"A>B": [1, -1, 0], "B>A": [-1, 1, 0], "age": [0, 0, 1]}
    # the printed summary
    text = capsys.readouterr().out
    c = res.contrasts[0]
    k = int(np.argmax(c.stat))
    ijk = tuple(int(v) for v in np.argwhere(np.asarray(res.mask_img.dataobj) > 0)[k])
    n_vox = int(np.sum(c.p_fwe < 0.05))
    n_tfce = int(np.sum(c.tfce_p_fwe < 0.05))
    assert f"tstat1 (A>B): FWE p<0.05 voxels: voxel {n_vox}, TFCE {n_tfce}; max {c.stat[k]:.4g} at voxel {ijk}" in text
    xyz = AFFINE[:3, :3] @ ijk + AFFINE[:3, 3]
    assert "= ({:.1f}, {:.1f}, {:.1f}) mm".format(*xyz) in text
    assert f"{res.n_perm} permutations" in text


def test_logp_list_input_csv_design(study, tmp_path, capsys):
    root = study["root"]
    out = tmp_path / "lp"
    argv = ["randomise", "-i", str(root / "list.txt"), "-o", str(out), "-d", str(root / "design.csv"),
            "-t", str(root / "con.csv"), "-n", str(NPERM), "-x", "--seed", "7", "--logp", "--quiet"]
    assert main(argv) == 0
    assert capsys.readouterr().out == ""
    res = _library(study)
    for i, c in enumerate(res.contrasts, start=1):
        _assert_map(f"{out}_tstat{i}.nii.gz", res, c.stat)
        _assert_map(f"{out}_vox_corrp_tstat{i}.nii.gz", res, -np.log10(c.p_fwe))
    record = json.loads((tmp_path / "lp.json").read_text())
    assert record["p_convention"] == "-log10(p)"
    assert str(root / "sub03.nii.gz") in record["sha256"]  # listed images are checksummed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lp.json"] + sorted(
        f"lp_{kind}tstat{i}.nii.gz" for i in (1, 2, 3) for kind in ("", "vox_corrp_"))


def test_one_sample_T2_and_fixed_step(study, tmp_path):
    root = study["root"]
    out = tmp_path / "os"
    argv = ["randomise", "-i", str(root / "all.nii.gz"), "-o", str(out), "-1", "--T2", "--tfce_D", "0.5",
            "-n", "40", "--seed", "3", "--quiet"]
    assert main(argv) == 0
    res = voxstats.randomise(str(root / "all.nii.gz"), np.ones((N, 1)), {"C1": [1.0]}, n_perm=40, rng=3,
                             two_sided=False, sign_flip=True, tfce=True, tfce_E=1.0, tfce_H=2.0,
                             connectivity=26, tfce_mode="fsl", tfce_dh=0.5)
    c = res.contrasts[0]
    _assert_map(f"{out}_tstat1.nii.gz", res, c.stat)
    _assert_map(f"{out}_tfce_tstat1.nii.gz", res, c.tfce)
    _assert_map(f"{out}_tfce_corrp_tstat1.nii.gz", res, 1 - c.tfce_p_fwe)
    record = json.loads((tmp_path / "os.json").read_text())
    assert record["scheme"] == res.scheme
    call = record["library_call"]
    assert (call["tfce_E"], call["tfce_H"], call["connectivity"], call["tfce_mode"], call["tfce_dh"]) == (1.0, 2.0, 26, "fsl", 0.5)
    assert call["sign_flip"] is True
    assert record["summary"][0]["tfce_dh"] == 0.5 == c.tfce_dh


def test_exchangeability_blocks_and_demean(study, tmp_path):
    root = study["root"]
    design = study["design"][["A", "age"]].to_numpy()  # demeaning removes the intercept
    write_design(tmp_path / "d.mat", design)
    write_contrasts(tmp_path / "d.con", {"A+": [1.0, 0], "age-": [0.0, -1]})
    out = tmp_path / "out" / "eb"
    argv = ["randomise", "-i", str(root / "all.nii.gz"), "-o", str(out), "-d", str(tmp_path / "d.mat"),
            "-t", str(tmp_path / "d.con"), "-e", str(root / "design.grp"), "-D", "-x", "-n", str(NPERM),
            "--seed", "7", "--quiet"]
    assert main(argv) == 0
    res = voxstats.randomise(str(root / "all.nii.gz"), design, {"A+": [1.0, 0], "age-": [0.0, -1]},
                             n_perm=NPERM, rng=7, two_sided=False, demean=True,
                             exchangeability_blocks=np.tile([1, 2, 3], N // 3))
    for i, c in enumerate(res.contrasts, start=1):
        _assert_map(f"{out}_tstat{i}.nii.gz", res, c.stat)
        _assert_map(f"{out}_vox_corrp_tstat{i}.nii.gz", res, 1 - c.p_fwe)
    record = json.loads((tmp_path / "out" / "eb.json").read_text())
    assert record["library_call"]["demean"] is True and record["n_perm"] == res.n_perm


def test_refuses_to_overwrite(study, tmp_path, capsys):
    root = study["root"]
    out = tmp_path / "ow"
    argv = ["randomise", "-i", str(root / "all.nii.gz"), "-o", str(out), "-1", "-n", "20", "--seed", "1", "--quiet"]
    assert main(argv) == 0
    before = (tmp_path / "ow_tstat1.nii.gz").read_bytes()
    (tmp_path / "ow_tstat1.nii.gz").write_bytes(b"sentinel")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"voxstats randomise: error: Output file {out}_tstat1.nii.gz exists; use --overwrite to replace it."
    assert (tmp_path / "ow_tstat1.nii.gz").read_bytes() == b"sentinel"
    assert main(argv + ["--overwrite"]) == 0
    assert (tmp_path / "ow_tstat1.nii.gz").read_bytes() == before  # same seed, same bytes


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-T", "--T2"], "-T and --T2 are exclusive"),
        (["--tfce_H", "3"], "need -T or --T2"),
        (["-T", "--tfce_D", "0.1", "--tfce-mode", "exact"], "--tfce_D sets a fixed step"),
        (["-T", "--tfce_D", "0"], "--tfce_D: expected a step > 0, got 0.0"),
        (["-c", "2", "-C", "3"], "-c 2.0 and -C 3.0: extent and mass share one cluster-forming threshold"),
        (["-F", "2"], "-F and -S need F contrasts (-f)"),
        (["--permuteBlocks"], "--permuteBlocks needs -e BLOCKS"),
        (["-n", "0"], "-n: expected a number of permutations >= 1 (all rearrangements are enumerated"),
        (["-T", "--tfce_D", "1e-9", "--quiet"], "Invalid value for --tfce_D: a step of 1e-09 makes"),
        (["-T", "--tfce_H", "400", "--quiet"], "Invalid value for --tfce_H: with H=400 and E=0.5, TFCE values"),
        (["--n-jobs", "0"], "Invalid value for --n-jobs: got 0, expected >= 1 or -1"),
    ],
)
def test_option_errors(study, tmp_path, capsys, extra, message):
    root = study["root"]
    argv = ["randomise", "-i", str(root / "all.nii.gz"), "-o", str(tmp_path / "x"),
            "-d", str(root / "design.mat"), "-t", str(root / "design.con")] + extra
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_file_errors(study, tmp_path, capsys):
    root = study["root"]
    base = ["randomise", "-o", str(tmp_path / "x")]
    bad = tmp_path / "bad.mat"
    bad.write_text("/NumWaves 3\n/Matrix\n1 0 2\n1 0\n")
    assert main(base + ["-i", str(root / "all.nii.gz"), "-d", str(bad), "-t", str(root / "design.con")]) == 1
    assert f"{bad}, line 4: expected 3 values (as on line 3), got 2" in capsys.readouterr().err
    short = tmp_path / "short.mat"
    write_design(short, np.ones((5, 3)))
    assert main(base + ["-i", str(root / "all.nii.gz"), "-d", str(short), "-t", str(root / "design.con")]) == 1
    assert f"{short}: expected 12 rows (one per input image), got 5." in capsys.readouterr().err
    lst = tmp_path / "list.txt"
    lst.write_text(f"{root / 'sub00.nii.gz'}\n\nmissing.nii.gz\n")
    assert main(base + ["-i", str(lst), "-1"]) == 1
    assert (f"-i: {lst}, line 3: expected an existing image file (relative to {tmp_path}), got 'missing.nii.gz'"
            in capsys.readouterr().err)
    assert main(base + ["-i", str(root / "all.nii.gz"), "-d", str(root / "design.mat")]) == 1
    assert "randomise needs -d DESIGN and -t CONTRASTS" in capsys.readouterr().err
    assert main(base + ["-i", str(root / "all.nii.gz"), "-1", "-d", str(root / "design.mat")]) == 1
    assert "do not combine it with -d, -t or -f" in capsys.readouterr().err
    assert main(base + ["-i", str(tmp_path / "nothing.nii.gz"), "-1"]) == 1
    assert "-i: file not found" in capsys.readouterr().err
    grp = tmp_path / "g.grp"
    write_blocks(grp, [1, 2, 1])
    assert main(base + ["-i", str(root / "all.nii.gz"), "-1", "-e", str(grp)]) == 1
    assert f"{grp}: expected 12 block labels (one per input image), got 3." in capsys.readouterr().err
    assert main(base + ["-i", str(root / "sub00.nii.gz"), "-1"]) == 1
    assert "-i: expected a 4D image, got shape (7, 6, 5)" in capsys.readouterr().err
    binary = tmp_path / "inputs.mgz"
    binary.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")
    assert main(base + ["-i", str(binary), "-1"]) == 1
    assert "expected a NIfTI image (.nii, .nii.gz) or a text file listing 3D images" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("x")] == []


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["randomise", "-o", "x"])
    assert info.value.code == 2
    assert "-i" in capsys.readouterr().err


# --------------------------------------------------------------------------- tfce


@pytest.fixture
def stat_map(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(9, 8, 7))
    data[2:5, 2:5, 2:4] += 3
    data[6:8, 5:7, 4:6] -= 3
    path = tmp_path / "zstat.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), path)
    return path, np.asarray(nib.load(path).dataobj, dtype=np.float64)


@pytest.mark.parametrize("connectivity", [6, 26])
def test_tfce_command_matches_library(tmp_path, stat_map, connectivity):
    path, data = stat_map
    out = tmp_path / "tfce.nii.gz"
    assert main(["tfce", str(path), str(out), "--connectivity", str(connectivity), "-E", "0.6", "-H", "1.8"]) == 0
    expected = tfce(data, connectivity=connectivity, E=0.6, H=1.8)
    np.testing.assert_allclose(_load(out), expected, rtol=1e-5, atol=1e-6)
    assert np.allclose(nib.load(out).affine, AFFINE)
    assert (_load(out)[data < 0] <= 0).all()  # both signs enhanced, sign kept


def test_tfce_command_mask_fsl_mode_positive_only(tmp_path, stat_map):
    path, data = stat_map
    mask = np.zeros(data.shape, dtype=np.int16)
    mask[:, :, 1:6] = 1
    nib.save(nib.Nifti1Image(mask, AFFINE), tmp_path / "mask.nii.gz")
    out = tmp_path / "tfce.nii.gz"
    argv = ["tfce", str(path), str(out), "--mode", "fsl", "--dh", "0.1", "--mask", str(tmp_path / "mask.nii.gz"),
            "--positive-only"]
    assert main(argv) == 0
    expected = tfce(data, mask=mask > 0, mode="fsl", dh=0.1, two_sided=False)
    result = _load(out)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
    assert (result[mask == 0] == 0).all() and (result >= 0).all() and result.max() > 0
    assert main(argv) == 1  # exists


def test_tfce_command_errors(tmp_path, stat_map, capsys):
    path, _ = stat_map
    assert main(["tfce", str(path), str(tmp_path / "o.nii.gz"), "--dh", "0.1"]) == 1
    assert "--dh sets a fixed step, which needs --mode fsl." in capsys.readouterr().err
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.int16), AFFINE), tmp_path / "m.nii.gz")
    assert main(["tfce", str(path), str(tmp_path / "o.nii.gz"), "--mask", str(tmp_path / "m.nii.gz")]) == 1
    assert "are not in the same space" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


# --------------------------------------------------------------------------- cluster


def test_cluster_command(tmp_path, stat_map, capsys):
    path, data = stat_map
    p = np.where(np.abs(data) > 2.5, 0.001, 0.5)
    nib.save(nib.Nifti1Image((1 - p).astype(np.float32), AFFINE), tmp_path / "corrp.nii.gz")
    atlas = np.zeros(data.shape, dtype=np.int16)
    atlas[:5] = 4
    nib.save(nib.Nifti1Image(atlas, AFFINE), tmp_path / "atlas.nii.gz")
    (tmp_path / "lut.tsv").write_text("index\tname\n4\tPulvinar\n")
    out = tmp_path / "clusters.tsv"
    argv = ["cluster", str(path), "--p", str(tmp_path / "corrp.nii.gz"), "--p-convention", "1-p", "--sign", "both",
            "--atlas", str(tmp_path / "atlas.nii.gz"), "--atlas-labels", str(tmp_path / "lut.tsv"),
            "-o", str(out), "--out-index", str(tmp_path / "index.nii.gz")]
    assert main(argv) == 0
    expected = cluster_table(path, p_img=tmp_path / "corrp.nii.gz", p_convention="1-p", sign="both",
                             atlas_img=tmp_path / "atlas.nii.gz", atlas_labels={4: "Pulvinar"})
    table = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert len(table) == len(expected.table) >= 2
    pd.testing.assert_frame_equal(table.drop(columns=["peak_label", "p_min"]),
                                  expected.table.drop(columns=["peak_label", "p_min"]), rtol=1e-5,
                                  check_dtype=False)
    assert table.peak_label[0] == "Pulvinar"
    np.testing.assert_array_equal(_load(tmp_path / "index.nii.gz"), np.asarray(expected.labels_img.dataobj))
    # stdout when no -o
    assert main(["cluster", str(path), "--threshold", "2.5"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split("\t")[:3] == ["cluster", "n_voxels", "volume_mm3"]
    assert len(printed.splitlines()) == 1 + len(cluster_table(path, threshold=2.5).table)
    assert main(argv) == 1
    assert "use --overwrite" in capsys.readouterr().err
    assert main(["cluster", str(path)]) == 1
    assert "give --threshold, --p PMAP, or both, to define clusters." in capsys.readouterr().err
    assert main(["cluster", str(path), "--threshold", "2", "--atlas-labels", str(tmp_path / "lut.tsv")]) == 1
    assert "--atlas-labels needs --atlas." in capsys.readouterr().err


def test_drawn_seed_is_recorded_and_reproduces(study, tmp_path, capsys):
    root = study["root"]
    base = ["randomise", "-i", str(root / "all.nii.gz"), "-d", str(root / "design.mat"),
            "-t", str(root / "design.con"), "-x", "-n", "30", "--quiet"]
    assert main(base + ["-o", str(tmp_path / "a")]) == 0
    seed = json.loads((tmp_path / "a.json").read_text())["seed"]
    assert isinstance(seed, int)
    # the recorded seed reproduces the run, whatever the thread count
    assert main(base + ["-o", str(tmp_path / "b"), "--seed", str(seed), "--n-jobs", "2"]) == 0
    for i in (1, 2, 3):
        np.testing.assert_array_equal(_load(tmp_path / f"a_vox_corrp_tstat{i}.nii.gz"),
                                      _load(tmp_path / f"b_vox_corrp_tstat{i}.nii.gz"))


def test_interrupted_write_leaves_no_finished_looking_file(study, tmp_path, monkeypatch, capsys):
    root = study["root"]
    real_save = nib.save
    calls = []

    def failing_save(img, filename):
        calls.append(filename)
        if len(calls) == 2:  # the second image: half written, then the disk fills up
            with open(filename, "wb") as handle:
                handle.write(b"\x1f\x8b partial")
            raise OSError("No space left on device")
        return real_save(img, filename)

    monkeypatch.setattr(nib, "save", failing_save)
    out = tmp_path / "cut"
    assert main(["randomise", "-i", str(root / "all.nii.gz"), "-o", str(out), "-1", "-x", "-n", "20",
                 "--seed", "1", "--quiet"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["cut_tstat1.nii.gz"]  # the first file is complete; no temporary, no truncated output
    assert np.isfinite(_load(out.with_name("cut_tstat1.nii.gz"))).all()
    assert not str(calls[1]).endswith("cut_vox_corrp_tstat1.nii.gz")  # written under a temporary name
