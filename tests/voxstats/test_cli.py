"""The ``voxstats`` command run in-process through ``main([...])``."""

import hashlib
import io
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
            "-n", str(NPERM), "-T", "-x", "--uncorrp", "-R", "-c", "2.0", "-C", "2.5", "-F", "3",
            "--seed", "7"]
    assert main(argv) == 0
    res = _library(study, f_contrasts={"F1": np.array([[1.0, -1, 0], [0, 0, 1]])},
                   mask_img=str(root / "mask.nii.gz"), tfce=True, tfce_mode="fsl", cluster_threshold=2.0,
                   cluster_mass_threshold=2.5, cluster_threshold_f=3.0)
    names = sorted(p.name for p in out.parent.iterdir())
    # randomise's names: raw TFCE/cluster images with -R only, vox_p with -x only
    expected = sorted(
        [f"rand_{n}{s}.nii.gz" for s in ("tstat1", "tstat2", "tstat3")
         for n in ("", "vox_p_", "vox_corrp_", "tfce_", "tfce_p_", "tfce_corrp_", "clustere_",
                   "clustere_corrp_", "clusterm_", "clusterm_corrp_")]
        + [f"rand_{n}fstat1.nii.gz" for n in ("", "vox_p_", "vox_corrp_", "tfce_", "tfce_p_", "tfce_corrp_",
                                              "clustere_", "clustere_corrp_")]
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
            _assert_map(f"{out}_clustere_{stat}.nii.gz", res, c.cluster_extent)
            if kind == "t":
                _assert_map(f"{out}_clusterm_corrp_{stat}.nii.gz", res, 1 - c.cluster_mass_p_fwe)
                _assert_map(f"{out}_clusterm_{stat}.nii.gz", res, c.cluster_mass)
                assert c.cluster_mass_threshold == 2.5 and c.cluster_threshold == 2.0
    # the effect is found: A>B significant somewhere, values in randomise's 1-p convention
    corrp = _load(f"{out}_tfce_corrp_tstat1.nii.gz")
    assert corrp.max() > 0.95 and corrp.min() >= 0
    # the provenance record
    record = json.loads((out.parent / "rand.json").read_text())
    assert record["seed"] == 7 and record["n_perm"] == res.n_perm
    assert record["exhaustive"] == bool(res.exhaustive)
    assert record["library_call"]["two_sided"] is False
    assert record["library_call"]["tfce_E"] == 0.5 and record["library_call"]["connectivity"] == 6
    assert record["tfce_mode"] == "fsl" and record["cluster_connectivity"] == 26
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
    assert f"{res.n_perm} permutations" in text and "one-sided (t > 0), TFCE fsl" in text
    # randomise's critical values: the sorted null maxima at ceil(0.95 N), printed with %g
    for stat, c in (("tstat1", res.contrasts[0]), ("fstat1", res.contrasts[3])):
        for label, null in (("vox", c.null_max), ("tfce", c.null_max_tfce), ("clustere", c.null_max_extent)):
            value = np.sort(null)[int(np.ceil(0.95 * null.size)) - 1]
            assert f"Critical Value for: {out}_{label}_{stat} is: {value:g}\n" in text
    assert text.index("rand_vox_fstat1") < text.index("rand_vox_tstat1")  # F first, as randomise


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
            "-n", "40", "--seed", "3", "--quiet", "-R"]
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
        (["-c", "0"], "-c: expected a cluster-forming threshold > 0, got 0.0."),
        (["--fonly"], "--fonly needs F contrasts (-f)."),
        (["--vxl", "1"], "--vxl and --vxf go together"),
        (["-v", "0"], "-v: expected a sigma > 0 mm, got 0.0."),
        (["-Q"], "-Q prints randomise_parallel's job split; voxstats splits the work itself"),
        (["--permout"], "--permout would write one statistic image per permutation"),
        (["-U", "0"], "-U 0: only Freedman-Lane (-U 1, randomise's default) is implemented."),
        (["--twopass"], "--twopass normalises cluster sizes (-c) and TFCE (-T): give one of them."),
        (["--skipTo", "9"], "--skipTo 9: expected 1..3 (F contrasts first, then t)."),
        (["-F", "2"], "-F and -S need F contrasts (-f)"),
        (["--permuteBlocks"], "--permuteBlocks needs -e BLOCKS"),
        (["-n=-5"], "-n: expected a number of permutations >= 0 (0: all distinct ones), got -5."),
        (["-T", "--tfce_D", "1e-9", "--quiet"], "Invalid value for --tfce_D: a step of 1e-09 makes"),
        (["-T", "--tfce_H", "400", "--quiet"], "Invalid value for --tfce_H: with H=400 and E=0.5, TFCE values"),
        (["--n-jobs", "0"], "Invalid value for --n-jobs: got 0, expected >= 1 or -1"),
    ],
)
def test_option_errors(study, tmp_path, capsys, extra, message):
    root = study["root"]
    argv = ["randomise", "-i", str(root / "all.nii.gz"), "-o", str(tmp_path / "x"),
            "-d", str(root / "design.mat"), "-t", str(root / "design.con")] + extra
    # 2: wrong whatever the data (as argparse's usage errors); 1: wrong for these files
    data_dependent = ("--skipTo 9", "a step of 1e-09", "with H=400")
    assert main(argv) == (1 if any(m in message for m in data_dependent) else 2)
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
    assert "randomise needs -d DESIGN and -t CONTRASTS" in capsys.readouterr().err
    assert main(base + ["-i", str(tmp_path / "nothing.nii.gz"), "-1"]) == 1
    assert "-i: file not found" in capsys.readouterr().err
    grp = tmp_path / "g.grp"
    write_blocks(grp, [1, 2, 1])
    assert main(base + ["-i", str(root / "all.nii.gz"), "-1", "-e", str(grp)]) == 1
    assert f"{grp}: expected 12 block labels (one per input image), got 3." in capsys.readouterr().err
    assert main(base + ["-i", str(root / "sub00.nii.gz"), "-1"]) == 1
    assert "-i: expected a 4D image, got shape (7, 6, 5)" in capsys.readouterr().err
    binary = tmp_path / "inputs.bin"
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
    assert main(["tfce", str(path), str(tmp_path / "o.nii.gz"), "--dh", "0.1"]) == 2
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
    assert main(["cluster", str(path)]) == 2
    assert "give --threshold, --p PMAP, or both, to define clusters." in capsys.readouterr().err
    assert main(["cluster", str(path), "--threshold", "2", "--atlas-labels", str(tmp_path / "lut.tsv")]) == 2
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


# --------------------------------------------------------------------------- outputs, locks, overwrite


def test_cli_outputs_are_readable_by_the_group(study, tmp_path):
    """Under umask 022 every output is 0644, as any file the user creates (mkstemp gave 0600)."""
    import os

    root = study["root"]
    previous = os.umask(0o022)
    try:
        out = tmp_path / "rand"
        assert main(["randomise", "-i", str(root / "all.nii.gz"), "-o", str(out), "-1", "-T", "-R", "-x",
                     "-n", "20", "--seed", "1", "--quiet", "--checkpoint-dir", str(tmp_path / "ckpt")]) == 0
        assert main(["tfce", str(out) + "_tstat1.nii.gz", str(tmp_path / "t.nii.gz")]) == 0
        assert main(["cluster", str(out) + "_tstat1.nii.gz", "--threshold", "2", "-o", str(tmp_path / "c.tsv"),
                     "--out-index", str(tmp_path / "c.nii.gz")]) == 0
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 10 and any(p.suffix == ".npz" for p in files)
    assert {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files} == \
        {str(p.relative_to(tmp_path)): "0o644" for p in files}


def test_unwritable_output_fails_before_any_permutation(study, tmp_path, monkeypatch, capsys):
    root = study["root"]
    monkeypatch.setattr(voxstats, "randomise", lambda *a, **k: pytest.fail("the run started"))
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should be")
    assert main(["randomise", "-i", str(root / "all.nii.gz"), "-o", str(blocker / "rand"), "-1",
                 "-n", "20", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("voxstats randomise: error: -o: cannot write ") and err.count("\n") == 1


def test_a_second_run_on_the_same_output_refuses(study, tmp_path, capsys):
    """While a run holds -o, another refuses (even with --overwrite) and writes nothing."""
    from voxstats.outputs import output_lock

    root = study["root"]
    out = tmp_path / "rand"
    argv = ["randomise", "-i", str(root / "all.nii.gz"), "-o", str(out), "-1", "-n", "20", "--seed", "1",
            "--quiet"]
    with output_lock(out, flag="-o"):  # the first run, still writing
        for extra in ([], ["--overwrite"]):
            assert main(argv + extra) == 1
            err = capsys.readouterr().err
            assert err.startswith(f"voxstats randomise: error: -o: {out} is being written by another run (pid ")
            assert err.count("\n") == 1
            assert [p.name for p in tmp_path.iterdir()] == [".rand.lock"]
        assert main(["tfce", str(root / "sub00.nii.gz"), str(out)]) == 1  # same name, other command
        assert "is being written by another run" in capsys.readouterr().err
    assert main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rand.json", "rand_tstat1.nii.gz"]


def test_overwrite_removes_what_the_earlier_run_wrote(study, tmp_path, capsys):
    root = study["root"]
    out = tmp_path / "rand"
    base = ["randomise", "-i", str(root / "all.nii.gz"), "-o", str(out), "-1", "-n", "20", "--seed", "1",
            "--quiet"]
    assert main(base + ["-T", "-x"]) == 0
    first = json.loads((tmp_path / "rand.json").read_text())["outputs"]
    assert any("_tfce_" in p for p in first)
    (tmp_path / "rand_notes.nii.gz").write_bytes(b"mine")  # not in the record: never touched
    assert main(base + ["--overwrite"]) == 0
    record = json.loads((tmp_path / "rand.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rand.json", "rand_notes.nii.gz", "rand_tstat1.nii.gz"]
    assert record["outputs"] == [str(tmp_path / "rand_tstat1.nii.gz")]
    # a record listing files elsewhere: nothing outside rand_* in its folder is removed
    outside = tmp_path.parent / f"{tmp_path.name}_outside.nii.gz"
    outside.write_bytes(b"keep")
    record["outputs"] += [str(outside), str(tmp_path / "other_tstat1.nii.gz")]
    (tmp_path / "other_tstat1.nii.gz").write_bytes(b"keep")
    (tmp_path / "rand.json").write_text(json.dumps(record))
    assert main(base + ["--overwrite", "-x"]) == 0
    assert outside.read_bytes() == b"keep" and (tmp_path / "other_tstat1.nii.gz").read_bytes() == b"keep"
    outside.unlink()
    # an unreadable record: refused before any work, nothing changed
    (tmp_path / "rand.json").write_text("{truncated")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(base + ["--overwrite", "-T"]) == 1
    err = capsys.readouterr().err
    assert "--overwrite cannot tell which files the earlier run wrote: its record" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_n_jobs_minus_one_can_be_typed(study, tmp_path):
    root = study["root"]
    argv = ["randomise", "-i", str(root / "all.nii.gz"), "-o", str(tmp_path / "r"), "-1", "-n", "20",
            "--seed", "1", "--quiet", "--n-jobs", "-1"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "r.json").read_text())["library_call"]["n_jobs"] == -1


# --------------------------------------------------------------------------- messages name flags


def test_errors_name_flags_not_parameters(study, tmp_path, stat_map, capsys):
    root = study["root"]
    path, _ = stat_map
    cases = [
        (["cluster", str(path), "--threshold", "2", "--atlas", str(tmp_path / "no_atlas.nii.gz")],
         f"--atlas: file not found: {tmp_path / 'no_atlas.nii.gz'}"),
        (["cluster", str(path), "--p", str(path), "--p-convention", "p"], "--p: "),
        (["cluster", str(path), "--p", str(path)], "--p-convention: cannot tell how"),
        (["randomise", "-i", str(root / "all.nii.gz"), "-o", str(tmp_path / "x"), "-1", "-m",
          str(tmp_path / "none.nii.gz")], f"-m: file not found: {tmp_path / 'none.nii.gz'}"),
        (["tfce", str(path), str(tmp_path / "o.nii.gz"), "-H", "400"], "Invalid value for -H: with H=400"),
        (["randomise", "-i", str(tmp_path / "list.txt"), "-o", str(tmp_path / "x"), "-1"],
         f"-i: file not found: {tmp_path / 'list.txt'}"),
    ]
    for argv, expected in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"voxstats {argv[0]}: error: {expected}"), err
        assert err.count("\n") == 1
        for name in ("atlas_img", "mask_img", "p_img", "p_convention", "'H'", "imgs"):
            assert name not in err, err


def test_masks_use_one_rule_finite_and_non_zero(study, tmp_path, stat_map):
    """randomise -m, tfce --mask: NaN is outside, negative values inside (tfce --mask used > 0)."""
    path, data = stat_map
    mask = np.full(data.shape, np.nan, dtype=np.float32)
    mask[1:7, 1:6, 1:5] = -1.0
    mask[2, 2, 2] = 0.0
    nib.save(nib.Nifti1Image(mask, AFFINE), tmp_path / "mask.nii.gz")
    inside = np.isfinite(mask) & (mask != 0)
    assert main(["tfce", str(path), str(tmp_path / "t.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz")]) == 0
    np.testing.assert_allclose(_load(tmp_path / "t.nii.gz"), tfce(data, mask=inside), rtol=1e-5, atol=1e-6)
    root = study["root"]
    study_mask = np.full(SHAPE, np.nan, dtype=np.float32)
    study_mask[1:5, 1:4, 1:4] = 2.0
    nib.save(nib.Nifti1Image(study_mask, AFFINE), tmp_path / "study_mask.nii.gz")
    assert main(["randomise", "-i", str(root / "all.nii.gz"), "-o", str(tmp_path / "r"), "-1", "-n", "20",
                 "--seed", "1", "--quiet", "-m", str(tmp_path / "study_mask.nii.gz")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["n_voxels"] == 4 * 3 * 3  # not 210 (NaN inside)


def test_default_mask_is_randomises_and_norcmask_keeps_constant_voxels(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.normal(size=SHAPE + (N,)).astype(np.float32)
    data[0] = 0.0  # constant zero: out
    data[1, 0, 0] = 7.0  # constant non-zero: out (randomise), in with --norcmask
    data[1, 1, 0, :3] = 0.0  # zero in some subjects only: in (the old rule dropped it)
    nib.save(nib.Nifti1Image(data, AFFINE), tmp_path / "all.nii.gz")
    varies = np.any(data != data[..., :1], axis=-1)
    for extra, expected in (([], int(varies.sum())), (["--norcmask"], int(np.prod(SHAPE)))):
        out = tmp_path / ("rc" if extra else "default")
        assert main(["randomise", "-i", str(tmp_path / "all.nii.gz"), "-o", str(out), "-1", "-n", "20",
                     "--seed", "1", "--quiet", *extra]) == 0
        assert json.loads(out.with_suffix(".json").read_text())["n_voxels"] == expected
    stat = _load(tmp_path / "default_tstat1.nii.gz")
    assert stat[1, 1, 0] != 0 and np.all(stat[0] == 0)


# --------------------------------------------------------------------------- cluster: p conventions


def test_cluster_reads_the_p_convention(study, tmp_path, capsys):
    root = study["root"]
    out = tmp_path / "rand"
    assert main(["randomise", "-i", str(root / "all.nii.gz"), "-o", str(out), "-d", str(root / "design.mat"),
                 "-t", str(root / "design.con"), "-x", "-n", str(NPERM), "--seed", "7", "--quiet"]) == 0
    stat, corrp = f"{out}_tstat1.nii.gz", f"{out}_vox_corrp_tstat1.nii.gz"
    # from the randomise record: 1-p, as if given
    assert main(["cluster", stat, "--p", corrp, "--alpha", "0.5", "-o", str(tmp_path / "auto.tsv")]) == 0
    expected = cluster_table(stat, p_img=corrp, p_convention="1-p", alpha=0.5).table
    auto = pd.read_csv(tmp_path / "auto.tsv", sep="\t", keep_default_na=False)
    assert len(auto) == len(expected) >= 1
    np.testing.assert_array_equal(auto.n_voxels, expected.n_voxels)
    # a contradicting flag is refused, naming the record
    assert main(["cluster", stat, "--p", corrp, "--p-convention", "p"]) == 1
    err = capsys.readouterr().err
    assert f"--p-convention: 'p' contradicts {tmp_path / 'rand.json'}" in err and err.count("\n") == 1
    # a JSON sidecar (as qsm writes) says plain p
    p = np.where(_load(stat) > 2.0, 0.0002, 0.5).astype(np.float32)
    nib.save(nib.Nifti1Image(p, AFFINE), tmp_path / "plain_p.nii.gz")
    (tmp_path / "plain_p.json").write_text(json.dumps({"p_convention": "p"}))
    assert main(["cluster", stat, "--p", str(tmp_path / "plain_p.nii.gz")]) == 0
    table = capsys.readouterr().out
    rows = table.splitlines()
    assert len(rows) == 1 + len(cluster_table(stat, p_img=tmp_path / "plain_p.nii.gz", p_convention="p").table)
    # without any record or sidecar the convention must be given
    nib.save(nib.Nifti1Image(1 - p, AFFINE), tmp_path / "loose.nii.gz")
    assert main(["cluster", stat, "--p", str(tmp_path / "loose.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "--p-convention: cannot tell how" in err and "give it: one of 'p', '1-p', '-log10(p)'" in err
    # p printed as the file holds it: 1 - 0.9998 (float32) is 0.0002, not 0.000199974
    assert main(["cluster", stat, "--p", str(tmp_path / "loose.nii.gz"), "--p-convention", "1-p"]) == 0
    printed = pd.read_csv(io.StringIO(capsys.readouterr().out), sep="\t", dtype=str)
    assert set(printed.p_min) == {"0.0002"}
    # a map that cannot hold the convention is refused
    nib.save(nib.Nifti1Image(_load(stat).astype(np.float32), AFFINE), tmp_path / "not_p.nii.gz")
    assert main(["cluster", stat, "--p", str(tmp_path / "not_p.nii.gz"), "--p-convention", "-log10(p)"]) == 1
    assert "cannot hold -log10(p): it has negative values" in capsys.readouterr().err


# --------------------------------------------------------------------------- help


def test_help_shows_every_default_and_every_command_has_a_description(capsys):
    import argparse

    from voxstats.cli import _get_parser

    parser = _get_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"randomise", "tfce", "cluster"}
    for name, sub in commands.choices.items():
        assert sub.description and len(sub.description) > 40, name
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings}"
            if action.default not in (None, False):
                assert "default" in action.help or f"(default: {action.default})" in text, \
                    f"{name} {action.option_strings}"
    tfce_help = " ".join(commands.choices["tfce"].format_help().split())
    cluster_help = " ".join(commands.choices["cluster"].format_help().split())
    assert "corners (26) (default: 6)" in tfce_help
    assert "corners (26, as FSL's cluster) (default: 26)" in cluster_help and "(default: pos)" in cluster_help


def test_help_and_version_import_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, contextlib, io\n"
            "from voxstats.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    for argv in (['--help'], ['randomise', '--help'], ['--version']):\n"
            "        try: main(argv)\n"
            "        except SystemExit: pass\n"
            "print(sorted(m for m in ('numba', 'scipy', 'numpy', 'nibabel', 'pandas', 'voxstats.engine') "
            "if m in sys.modules))\n"
            "print(out.getvalue().splitlines()[-1])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, version = result.stdout.splitlines()
    assert loaded == "[]"
    assert version == f"voxstats {voxstats.__version__}"


def test_variance_groups_corrcon_twotail(study, tmp_path, capsys):
    root = study["root"]
    (tmp_path / "vg.csv").write_text("".join(f"{g}\n" for g in np.repeat([1, 2], N // 2)))  # PALM's format
    out = tmp_path / "vg" / "r"
    argv = ["randomise", "-i", str(root / "all.nii.gz"), "-o", str(out), "-d", str(root / "design.mat"),
            "-t", str(root / "design.con"), "-f", str(root / "design.fts"), "-n", str(NPERM), "-x", "-T",
            "--vg", str(tmp_path / "vg.csv"), "--corrcon", "--twotail", "--seed", "7", "--quiet"]
    assert main(argv) == 0
    res = _library(study, f_contrasts={"F1": np.array([[1.0, -1, 0], [0, 0, 1]])}, tfce=True, tfce_mode="fsl",
                   variance_groups=np.repeat([1, 2], N // 2), correct_across_contrasts=True, two_sided=True)
    assert [c.kind for c in res.contrasts] == ["v", "v", "v", "G"]
    for name, c in zip(("vstat1", "vstat2", "vstat3", "gstat1"), res.contrasts):
        _assert_map(f"{out}_{name}.nii.gz", res, c.stat)
        _assert_map(f"{out}_z{name}.nii.gz", res, c.z)
        _assert_map(f"{out}_vox_corrp_{name}.nii.gz", res, 1 - c.p_fwe)
        _assert_map(f"{out}_vox_cfwep_{name}.nii.gz", res, 1 - c.p_cfwe)
        _assert_map(f"{out}_tfce_cfwep_{name}.nii.gz", res, 1 - c.tfce_p_cfwe)
    assert not (tmp_path / "vg" / "r_tstat1.nii.gz").exists()
    record = json.loads((tmp_path / "vg" / "r.json").read_text())
    assert [s["statistic"] for s in record["summary"]] == ["G", "v", "v", "v"]  # randomise's order: F first
    assert record["variance_groups"]["sizes"] == [N // 2, N // 2]
    assert record["tail"] == "two-sided" and record["library_call"]["correct_across_contrasts"] is True
    lo, hi = record["summary"][1]["df2_range"]
    assert lo == pytest.approx(res.contrasts[0].df2.min()) and hi == pytest.approx(res.contrasts[0].df2.max())


def test_variance_group_option_errors(study, tmp_path, capsys):
    root = study["root"]
    base = ["randomise", "-i", str(root / "all.nii.gz"), "-o", str(tmp_path / "x"), "-d", str(root / "design.mat"),
            "-t", str(root / "design.con")]
    assert main(base + ["--vg", "auto"]) == 1
    assert "--vg auto derives variance groups from exchangeability blocks: give -e BLOCKS or --eb CSV." in capsys.readouterr().err
    (tmp_path / "short.csv").write_text("1\n2\n")
    assert main(base + ["--vg", str(tmp_path / "short.csv")]) == 1
    assert f"short.csv: expected {N} variance group labels (one per input image), got 2." in capsys.readouterr().err
    (tmp_path / "two.csv").write_text("1,2\n")
    assert main(base + ["--vg", str(tmp_path / "two.csv")]) == 1
    assert "two.csv, line 1: expected one variance group label per line, got 2" in capsys.readouterr().err
