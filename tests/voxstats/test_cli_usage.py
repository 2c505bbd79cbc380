"""What a newcomer meets first on the ``voxstats`` command line: warnings said once, errors
before warnings, negative numbers reaching our range checks, usage errors naming the
subcommand, plain progress in logs and one contrast order."""

import json
import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from voxstats.cli import main
from voxstats.design_files import write_contrasts, write_design, write_f_contrasts
from voxstats.loading import load

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
SHAPE = (5, 4, 3)
N = 8


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Eight 3D maps (two groups), a 4D file, a list naming one map twice, FSL design files."""
    root = tmp_path_factory.mktemp("usage")
    rng = np.random.default_rng(5)
    data = rng.normal(size=SHAPE + (N,)).astype(np.float32) + 10
    nib.save(nib.Nifti1Image(data, AFFINE), root / "all.nii.gz")
    for i in range(N):
        nib.save(nib.Nifti1Image(data[..., i], AFFINE), root / f"sub{i}.nii.gz")
    names = [f"sub{i}.nii.gz" for i in range(N - 1)] + ["sub0.nii.gz"]  # sub0 on lines 1 and 8
    (root / "dup.txt").write_text("\n".join(names) + "\n")
    group = np.repeat([1.0, 0.0], N // 2)
    write_design(root / "design.mat", np.column_stack([group, 1 - group]))
    write_contrasts(root / "design.con", {"A>B": [1.0, -1.0], "B>A": [-1.0, 1.0]})
    write_f_contrasts(root / "design.fts", [[1, 0]], t_names=["A>B", "B>A"])
    return root


def _duplicate_warnings(caplog):
    return [r for r in caplog.records if "is listed twice" in r.getMessage()]


def test_a_duplicate_in_a_list_is_reported_once(study, tmp_path, caplog):
    """Before: once when the list's kind was probed, once when it was read (library and CLI alike)."""
    caplog.set_level(logging.WARNING)
    data, _ = load(str(study / "dup.txt"))
    assert data.shape[0] == N
    (warning,) = _duplicate_warnings(caplog)
    assert "lines 1 and 8" in warning.getMessage()
    caplog.clear()
    argv = ["randomise", "-i", str(study / "dup.txt"), "-o", str(tmp_path / "r"), "-d", str(study / "design.mat"),
            "-t", str(study / "design.con"), "-n", "5", "--seed", "1", "--quiet", "-x"]
    assert main(argv) == 0
    assert len(_duplicate_warnings(caplog)) == 1


@pytest.mark.parametrize("problem", ["missing", "other_space"])
def test_inputs_are_checked_before_any_warning(study, tmp_path, capsys, caplog, problem):
    """Before: 'Warning! No output options selected...' (and --norcmask's warning) came before -m's error."""
    mask = tmp_path / "mask.nii.gz"
    if problem == "other_space":
        nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.uint8), AFFINE), mask)
    argv = ["randomise", "-i", str(study / "all.nii.gz"), "-o", str(tmp_path / "r"), "-d", str(study / "design.mat"),
            "-t", str(study / "design.con"), "-m", str(mask), "--norcmask"]
    caplog.set_level(logging.WARNING)
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and not caplog.records
    assert err.count("\n") == 1
    if problem == "missing":
        assert err == f"voxstats randomise: error: -m: file not found: {mask}\n"
    else:
        assert "not in the same space: shapes (3, 3, 3) and (5, 4, 3)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["mask.nii.gz"] if problem == "other_space" else [])


@pytest.fixture(scope="module")
def stat_map(tmp_path_factory):
    root = tmp_path_factory.mktemp("stat")
    data = np.random.default_rng(2).normal(size=(6, 6, 5))
    data[1:4, 1:4, 1:3] += 3
    nib.save(nib.Nifti1Image(data.astype(np.float32), AFFINE), root / "stat.nii.gz")
    return root / "stat.nii.gz"


@pytest.mark.parametrize(("argv", "message"), [
    # randomise (the 4D study follows); before: "argument -n: expected one argument", and so on
    (["-n", "-5"], "-n: expected a number of permutations >= 0 (0: all distinct ones), got -5."),
    (["-n", "-1"], "-n: expected a number of permutations >= 0 (0: all distinct ones), got -1."),
    (["-c", "-2"], "-c: expected a cluster-forming threshold > 0, got -2.0."),
    (["-C", "-2.5"], "-C: expected a cluster-forming threshold > 0, got -2.5."),
    (["-f", "FTS", "-F", "-1e1"], "-F: expected a cluster-forming threshold > 0, got -10.0."),
    (["-f", "FTS", "-S", "-.5"], "-S: expected a cluster-forming threshold > 0, got -0.5."),
    (["-T", "--tfce_H", "-2"], "Invalid value for --tfce_H: expected a finite number >= 0, got -2.0"),
    (["-T", "--tfce_E", "-1"], "Invalid value for --tfce_E: expected a finite number >= 0, got -1.0"),
    (["-T", "--tfce_D", "-0.1"], "--tfce_D: expected a step > 0, got -0.1."),
    (["-v", "-3"], "-v: expected a sigma > 0 mm, got -3.0."),
    (["--seed", "-4"], "--seed: expected an integer >= 0, got -4."),
    (["--skipTo", "-1"], "--skipTo -1: expected 1..2 (F contrasts first, then t)."),
    (["-U", "-1"], "-U -1: only Freedman-Lane (-U 1, randomise's default) is implemented."),
    (["--n-jobs", "-999"], "Invalid value for --n-jobs: got -999, expected >= 1 or -1 (all cores)."),
    (["--area", "-2"], "--area: expected a file or a number > 0, got -2"),
    (["--left-area", "-2"], "--left-area: expected a file or a number > 0, got -2"),
    (["--surf", "lh.white", "-2"], "--surf: expected a file or a number > 0, got -2"),
    # tfce and cluster (the statistic map follows)
    (["tfce", "-E", "-1"], "Invalid value for -E: expected a finite number >= 0, got -1.0"),
    (["tfce", "-H", "-2"], "Invalid value for -H: expected a finite number >= 0, got -2.0"),
    (["tfce", "--mode", "fsl", "--dh", "-0.5"], "Invalid value for --dh: expected a step > 0, got -0.5"),
    (["tfce", "--area", "-3"], "--area: expected a file or a number > 0, got -3"),
    (["cluster", "--threshold", "-2"], "Invalid value for --threshold: expected a number >= 0, got -2.0."),
    (["cluster", "--threshold", "1", "--min-size", "-3"], "Invalid value for --min-size: expected an integer >= 1, got -3."),
    (["cluster", "--p", "STAT", "--p-convention", "p", "--alpha", "-0.1"],
     "Invalid value for --alpha: expected 0 < alpha <= 1, got -0.1."),
])
def test_negative_numbers_reach_the_range_checks(study, stat_map, tmp_path, capsys, argv, message):
    """Every numeric option of every command: a negative value is read as a value and refused in one line."""
    argv = [str(study / "design.fts") if a == "FTS" else str(stat_map) if a == "STAT" else a for a in argv]
    if argv[0] in ("tfce", "cluster"):
        command, argv = argv[0], [argv[0], str(stat_map)] + (["--threshold", "1"] if argv[0] == "cluster"
                                                             and "--threshold" not in argv else []) + argv[1:]
        if command == "tfce":
            argv.insert(2, str(tmp_path / "out.nii.gz"))
    else:
        command = "randomise"
        argv = ["randomise", "-i", str(study / "all.nii.gz"), "-o", str(tmp_path / "r"),
                "-d", str(study / "design.mat"), "-t", str(study / "design.con")] + argv
    assert main(argv) in (1, 2)  # 2: wrong whatever the data, 1: found by the library (before: argparse exited)
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"voxstats {command}: error: {message}")
    assert list(tmp_path.iterdir()) == []


def test_minus_one_is_still_the_one_sample_flag(study, tmp_path, capsys):
    argv = ["randomise", "-i", str(study / "all.nii.gz"), "-o", str(tmp_path / "r"), "-1", "-n", "8", "--seed", "2",
            "--quiet", "-x"]
    assert main(argv) == 0
    design = json.loads((tmp_path / "r.json").read_text())
    assert design["seed"] == 2 and (tmp_path / "r_vox_corrp_tstat1.nii.gz").exists()


@pytest.mark.parametrize("command", ["randomise", "tfce", "cluster"])
def test_usage_errors_name_the_subcommand(command, capsys):
    """Before: 'voxstats: error: unrecognized arguments: 1' for a subcommand's stray argument."""
    argv = {"randomise": ["randomise", "-i", "x", "-o", "y", "stray"], "tfce": ["tfce", "a", "b", "stray"],
            "cluster": ["cluster", "a", "--threshold", "1", "stray"]}[command]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: voxstats {command} ")
    assert err.splitlines()[-1] == f"voxstats {command}: error: unrecognized arguments: stray"


def test_cluster_surf_takes_surf_and_area(tmp_path, capsys):
    """cluster --surf SURF [AREA], as randomise and tfce: every vertex weighs AREA mm²."""
    from voxstats.surface import icosphere
    from voxstats.surface_clusters import surface_cluster_table

    mesh = icosphere(2, radius=50.0)
    surf = tmp_path / "lh.white.surf.gii"
    nib.save(nib.gifti.GiftiImage(darrays=[
        nib.gifti.GiftiDataArray(mesh.coordinates.astype(np.float32), intent="NIFTI_INTENT_POINTSET"),
        nib.gifti.GiftiDataArray(mesh.faces.astype(np.int32), intent="NIFTI_INTENT_TRIANGLE")]), surf)
    values = np.exp(-0.5 * (np.linalg.norm(mesh.coordinates - mesh.coordinates[0], axis=1) / 20) ** 2) * 4
    stat = tmp_path / "stat.func.gii"
    nib.save(nib.gifti.GiftiImage(darrays=[nib.gifti.GiftiDataArray(values.astype(np.float32))]), stat)
    out = tmp_path / "clusters.tsv"
    assert main(["cluster", str(stat), "--surf", str(surf), "2", "--threshold", "1", "-o", str(out)]) == 0
    want = surface_cluster_table(str(stat), str(surf), threshold=1.0, areas=2.0).table
    got = pd.read_csv(out, sep="\t")
    n_vertices = int((values > 1).sum())
    assert len(got) == 1 and int(got["n_vertices"][0]) == n_vertices
    np.testing.assert_allclose(got["area_mm2"], [2.0 * n_vertices], rtol=1e-6)  # by hand: 2 mm² per vertex
    np.testing.assert_allclose(got["area_mm2"], want["area_mm2"], rtol=1e-6)
    assert main(["cluster", str(stat), "--surf", str(surf), "2", "--area", "3", "--threshold", "1"]) == 1
    assert "--surf SURF AREA and --area both give vertex areas; give one" in capsys.readouterr().err


def test_critical_values_and_summary_in_randomises_order(study, tmp_path, capsys):
    """FSL randomise 2.9 (checked by hand on this kind of design: -t with two contrasts, -f one, -x -c -F -T)
    analyses F contrasts first, then t, and prints each contrast's vox, clustere and tfce critical values
    in turn. Before: critical values F first but the summary t first."""
    out = tmp_path / "r"
    argv = ["randomise", "-i", str(study / "all.nii.gz"), "-o", str(out), "-d", str(study / "design.mat"),
            "-t", str(study / "design.con"), "-f", str(study / "design.fts"), "-n", "10", "--seed", "3",
            "-x", "-c", "1.5", "-F", "2", "-T"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    critical = [line.split()[3].removeprefix(f"{out}_") for line in lines if line.startswith("Critical Value for:")]
    assert critical == [f"{kind}_{stat}" for stat in ("fstat1", "tstat1", "tstat2")
                        for kind in ("vox", "clustere", "tfce")]
    summary = [line.split()[0] for line in lines if line.split()[0] in ("fstat1", "tstat1", "tstat2")]
    assert summary == ["fstat1", "tstat1", "tstat2"]
    record = json.loads((tmp_path / "r.json").read_text())
    assert [s["output"] for s in record["summary"]] == summary


def test_progress_in_a_log_is_a_few_plain_lines(study, tmp_path, capsys):
    """stderr captured (not a terminal): no carriage returns, at most 11 lines per contrast's bar
    (the 70 distinct relabellings of 4 + 4 subjects, exhaustive instead of 200)."""
    argv = ["randomise", "-i", str(study / "all.nii.gz"), "-o", str(tmp_path / "r"), "-d", str(study / "design.mat"),
            "-t", str(study / "design.con"), "-n", "200", "--seed", "4", "-x"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    for name in ("A>B (1/2)", "B>A (2/2)"):
        lines = [line for line in err.splitlines() if line.startswith(f"{name}:")]
        assert 1 <= len(lines) <= 11 and lines[-1].startswith(f"{name}: 100% (70/70 perm)")  # 8!/(4!4!)
