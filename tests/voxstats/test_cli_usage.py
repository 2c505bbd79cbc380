"""What a newcomer meets first on the ``voxstats`` command line: warnings said once, errors
before warnings, negative numbers reaching our range checks, usage errors naming the
subcommand, plain progress in logs and one contrast order."""

import logging

import nibabel as nib
import numpy as np
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
    write_f_contrasts(root / "design.fts", [[1, 1]], t_names=["A>B", "B>A"])
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
