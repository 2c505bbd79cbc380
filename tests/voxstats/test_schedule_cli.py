"""`voxstats randomise -n 0` and `--eb`: exhaustive enumeration and PALM's block files on the command line."""

import json
import math

import nibabel as nib
import numpy as np
import pytest

import voxstats
from voxstats.cli import main
from voxstats.design_files import read_exchangeability_blocks, write_contrasts, write_design
from voxstats.exchangeability import ExchangeabilityTree

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
EB = [[1, 1, 1, 1], [1, 1, 1, 2], [1, 1, 2, 3], [1, 1, 2, 4],
      [1, 2, 1, 5], [1, 2, 1, 6], [1, 2, 2, 7], [1, 2, 2, 8]]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Eight subjects, 4+4 groups (A, B columns), a 4x4x3 volume."""
    root = tmp_path_factory.mktemp("schedule_cli")
    rng = np.random.default_rng(5)
    group = np.array([1, 0, 1, 0, 0, 1, 0, 1], dtype=float)
    data = rng.normal(size=(4, 4, 3, 8)).astype(np.float32) + 3
    data[:2, :2, :, :] += 2 * group
    nib.save(nib.Nifti1Image(data, AFFINE), root / "all.nii.gz")
    design = np.column_stack([group, 1 - group])
    write_design(root / "design.mat", design)
    write_contrasts(root / "design.con", {"A>B": [1.0, -1.0]})
    (root / "eb.csv").write_text("\n".join(",".join(str(v) for v in row) for row in EB) + "\n")
    return {"root": root, "design": design, "data": data}


def _run(study, tmp_path, *extra):
    root = study["root"]
    argv = ["randomise", "-i", str(root / "all.nii.gz"), "-o", str(tmp_path / "out"), "-d",
            str(root / "design.mat"), "-t", str(root / "design.con"), "-x", "--quiet", "--seed", "3", *extra]
    return main(argv)


def test_n0_enumerates_distinct_relabellings(study, tmp_path):
    assert _run(study, tmp_path, "-n", "0") == 0
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["n_perm"] == record["n_possible"] == math.comb(8, 4)
    assert record["exhaustive"] is True
    assert record["enumeration"] == "distinct rearrangements of the design's rows (PALM's rule)"
    corrp = np.asarray(nib.load(tmp_path / "out_vox_corrp_tstat1.nii.gz").dataobj)
    res = voxstats.randomise(str(study["root"] / "all.nii.gz"), study["design"], [1.0, -1.0], n_perm=0,
                             two_sided=False, rng=3)
    np.testing.assert_allclose(corrp[res.mask_img.get_fdata() > 0], 1 - res[0].p_fwe, atol=1e-6)
    # randomise's exact p: a multiple of 1/70
    assert np.allclose(np.round((1 - corrp) * 70), (1 - corrp) * 70, atol=1e-4)


def test_eb_file_is_a_multilevel_tree(study, tmp_path):
    assert _run(study, tmp_path, "-n", "0", "--eb", str(study["root"] / "eb.csv")) == 0
    record = json.loads((tmp_path / "out.json").read_text())
    tree = ExchangeabilityTree.from_matrix(EB)
    assert record["n_possible"] == tree.count(study["design"]) == record["n_perm"] < 70
    assert "multi-level exchangeability tree" in record["enumeration"]
    np.testing.assert_array_equal(read_exchangeability_blocks(study["root"] / "eb.csv"), EB)


def test_eb_with_automatic_variance_groups(study, tmp_path):
    # tree T1 of tests/voxstats/test_exchangeability.py: PALM's -vg auto gives 1 2 1 2 3 3 3 3
    eb = tmp_path / "eb1.csv"
    eb.write_text("-1,1,-1,1\n-1,1,-1,2\n-1,1,-2,3\n-1,1,-2,4\n-1,2,1,5\n-1,2,1,6\n-1,2,2,7\n-1,2,2,8\n")
    assert _run(study, tmp_path, "-n", "0", "--eb", str(eb), "--vg", "auto") == 0
    record = json.loads((tmp_path / "out.json").read_text())
    codes = record["variance_groups"]["of_subject"]
    assert [codes.index(c) for c in codes] == [0, 1, 0, 1, 4, 4, 4, 4]  # same partition as PALM's


@pytest.mark.parametrize("content, extra, message", [
    ("1,1\n1,0\n" * 4, [], "--eb {eb}: block index 0 is neither positive"),
    ("1,1\n" * 7, [], "--eb {eb}: expected 8 rows (one per input image), got 7."),
    ("\n".join(",".join(map(str, r)) for r in EB), ["-e", "{eb}"], "--eb defines every level of shuffling"),
    ("1,1\n1,2,3\n", [], "{eb}, line 2: expected 2 block indices (as on the first row), got 3"),
])
def test_eb_errors_are_one_line(study, tmp_path, capsys, content, extra, message):
    eb = tmp_path / "eb.csv"
    eb.write_text(content)
    extra = [e.format(eb=eb) for e in extra]
    assert _run(study, tmp_path, "--eb", str(eb), *extra) == (2 if extra else 1)  # 2: usage
    err = capsys.readouterr().err
    assert message.format(eb=eb) in err and err.count("\n") == 1


def test_eb_reader_accepts_header_and_whitespace(tmp_path):
    path = tmp_path / "eb.txt"
    path.write_text("level1 level2\n-1 1\n-1 2\n")
    np.testing.assert_array_equal(read_exchangeability_blocks(path), [[-1, 1], [-1, 2]])


@pytest.mark.parametrize("labels, named", [
    ("1\n2\n3\n4\n5\n6\n7\n8\n", "1 (subject 1), 2 (subject 2), 3 (subject 3)"),  # eight groups of one
    ("1\n1\n1\n2\n2\n2\n2\n3\n", "3 (subject 8)"),  # one lone subject
])
def test_vg_groups_of_one_subject_are_a_one_line_error(study, tmp_path, capsys, labels, named):
    vg = tmp_path / "vg.txt"
    vg.write_text(labels)
    assert _run(study, tmp_path, "-n", "20", "--vg", str(vg)) == 1
    err = capsys.readouterr().err
    assert f"--vg: variance groups of one subject: {named}" in err and err.count("\n") == 1
    assert "at least 2 subjects per group" in err
    assert not (tmp_path / "out.json").exists()


def test_q_with_a_continuous_covariate_notes_randomise_count(study, tmp_path, capsys):
    root = study["root"]
    age = np.array([34.0, 41, 29, 52, 47, 38, 60, 33])
    write_design(tmp_path / "age.mat", np.column_stack([study["design"], age]))
    write_contrasts(tmp_path / "age.con", {"A>B": [1.0, -1.0, 0.0]})
    argv = ["randomise", "-i", str(root / "all.nii.gz"), "-o", str(tmp_path / "q"), "-d", str(tmp_path / "age.mat"),
            "-t", str(tmp_path / "age.con"), "-q"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    # every row distinct: 8! orderings; randomise (checked with randomise 2.9 -q on 12 subjects: 924 = C(12, 6))
    # counts the relabellings of (X - mean) c' only: C(8, 4)
    assert lines[0] == f"{math.factorial(8)} permutations required for exhaustive test of t-test 1"
    assert lines[1].startswith("Note: voxstats (as PALM) counts the distinct rearrangements of the whole design")
    assert f"would report {math.comb(8, 4)} for t-test 1" in lines[1] and "continuous covariate" in lines[1]
    assert len(lines) == 2  # 40320 <= 1,000,000: no note on -n 0
    assert main(argv[:-5] + ["-d", str(root / "design.mat"), "-t", str(root / "design.con"), "-q"]) == 0
    assert capsys.readouterr().out == f"{math.comb(8, 4)} permutations required for exhaustive test of t-test 1\n"


def test_cli_shows_the_warnings_about_the_count(tmp_path):
    import subprocess
    import sys

    n = 10
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(2, 2, 2, n)).astype(np.float32), AFFINE),
             tmp_path / "all.nii.gz")
    g = (np.arange(n) < 5).astype(float)
    write_design(tmp_path / "age.mat", np.column_stack([g, 1 - g, np.linspace(20, 70, n)]))
    write_contrasts(tmp_path / "age.con", {"A>B": [1.0, -1.0, 0.0]})
    (tmp_path / "eb.csv").write_text("".join(f"-1,-{i // 2 + 1},{i + 1}\n" for i in range(n)))
    base = [sys.executable, "-m", "voxstats", "randomise", "-i", str(tmp_path / "all.nii.gz"), "-o",
            str(tmp_path / "o"), "-d", str(tmp_path / "age.mat"), "-t", str(tmp_path / "age.con"), "-q"]
    huge = subprocess.run(base, capture_output=True, text=True, check=True)
    assert f"{math.factorial(n)} permutations required" in huge.stdout
    assert f"would report {math.comb(n, 5)} for t-test 1" in huge.stdout
    assert f"-n 0 (or -n {math.factorial(n)} or more) would enumerate all" in huge.stdout
    one = subprocess.run(base + ["--eb", str(tmp_path / "eb.csv")], capture_output=True, text=True, check=True)
    assert "1 permutations required" in one.stdout
    assert "WARNING" in one.stderr and "the smallest attainable p-value is 1/1 = 1" in one.stderr
