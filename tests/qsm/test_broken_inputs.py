"""A corpus of broken inputs for `qsm run|demo|normalize`.

Every case must end with a non-zero exit status, exactly one line on stderr that
names the file or the command-line flag at fault, no traceback, and nothing
written where it should not be.
"""

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsm.atlas import demo_thalamus_atlas, region_masks
from qsm.cli import main
from qsm.simulate import simulate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return simulate_cohort(tmp_path_factory.mktemp("cohort") / "data", n_per_group=3, rng=5,
                           verbose=False)


def _table(cohort, tmp, change=None, name="participants.tsv"):
    """The cohort's participants with absolute χ paths, optionally changed, in ``tmp``."""
    rows = cohort.participants.copy()
    rows["chi_path"] = [str(cohort.root / p) for p in rows.chi_path]
    rows = rows.astype(object)
    if change is not None:
        change(rows, tmp)
    path = tmp / name
    rows.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


def _config(tmp, table, extra="", study=""):
    path = tmp / "study.toml"
    path.write_text(f'[study]\nparticipants = "{table.as_posix()}"\n{study}'
                    '[groups]\nCIS = "HC_CIS"\nRRMS = "HC_RRMS"\nSPMS = "HC_SPMS"\n'
                    '[voxelwise]\nn_perm = 20\n' + extra)
    return path


def run_case(change=None, extra="", out="out", flags=(), study=""):
    def build(cohort, tmp):
        return ["run", str(_config(tmp, _table(cohort, tmp, change), extra, study)),
                "--out", str(tmp / out), *flags]
    return build


def _set(column, row, value):
    def change(rows, tmp):
        rows.loc[row, column] = value
    return change


def _truncated_map(rows, tmp):
    src = rows.loc[4, "chi_path"]
    data = Path(src).read_bytes()
    bad = tmp / "sub-005_broken.nii.gz"
    bad.write_bytes(data[: len(data) // 3])
    rows.loc[4, "chi_path"] = str(bad)


def _not_gzip(rows, tmp):
    bad = tmp / "sub-002_text.nii.gz"
    bad.write_text("this is not an image\n")
    rows.loc[1, "chi_path"] = str(bad)


def _nan_in_thalamus(rows, tmp):
    img = nib.load(rows.loc[7, "chi_path"])
    data = np.asarray(img.dataobj).copy()
    data[tuple(np.argwhere(region_masks(demo_thalamus_atlas())["pulvinar"])[0])] = np.nan
    bad = tmp / "sub-008_nan.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), bad)
    rows.loc[7, "chi_path"] = str(bad)


def _other_grid(rows, tmp):
    img = nib.load(rows.loc[2, "chi_path"])
    bad = tmp / "sub-003_grid.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine), bad)
    rows.loc[2, "chi_path"] = str(bad)


def _all_na(column):
    def change(rows, tmp):
        rows[column] = None
    return change


def _native_escape(rows, tmp):
    rows["structural_path"] = rows["chi_path"]
    rows.loc[0, "participant_id"] = "sub-../../x"


def normalize_case(change=None, flags=()):
    def build(cohort, tmp):
        def native(rows, tmp_):
            rows["structural_path"] = rows["chi_path"]
            if change is not None:
                change(rows, tmp_)
        return ["normalize", str(_table(cohort, tmp, native)), str(tmp / "norm"), *flags]
    return build


def demo_case(*flags, prepare=None):
    def build(cohort, tmp):
        if prepare is not None:
            prepare(tmp)
        return ["demo", "--out", str(tmp / "demo"), *flags]
    return build


def _file_at(name):
    def prepare(tmp):
        (tmp / name).write_text("keep me")
    return prepare


def _non_empty(tmp):
    (tmp / "demo").mkdir()
    (tmp / "demo" / "results.txt").write_text("keep me")


CASES = {
    # qsm run: configs
    "config missing": (lambda c, t: ["run", str(t / "nope.toml"), "--out", str(t / "o")],
                       "nope.toml"),
    "config not TOML": (lambda c, t: ["run", str(_write(t / "s.toml", "[study\n")), "--out",
                                      str(t / "o")], "s.toml is not valid TOML"),
    "code in group_formula": (run_case(extra='[regression]\ngroup_formula = "chi ~ patient + '
                                             'I(__import__(\'os\').system(\'touch pwned\'))"\n'),
                              "[regression] group_formula"),
    "code in clinical_formula": (run_case(extra='[regression]\nclinical_formula = "chi ~ '
                                                '{variable} + age.__class__"\n'),
                                 "[regression] clinical_formula"),
    "group escapes --out": (lambda c, t: ["run", str(_write(t / "s.toml", '[groups]\n"../../esc'
                                                        'ape" = "HC"\n')), "--out", str(t / "o")],
                            "'../../escape' is used in file names"),
    "group with slash": (lambda c, t: ["run", str(_write(t / "s.toml", '[groups]\n"RR/MS" = '
                                                     '"HC"\n')), "--out", str(t / "o")],
                         "'RR/MS' is used in file names"),
    "participants missing": (lambda c, t: ["run", str(_write(t / "s.toml", '[study]\npartici'
                                                         'pants = "none.tsv"\n[groups]\nA = "B"\n'
                                                         )), "--out", str(t / "o")],
                             "none.tsv"),
    "chi_path n/a": (run_case(_set("chi_path", 3, None)), "chi_path is n/a for sub-004"),
    "text in age": (run_case(_set("age", 5, "forty")), "'forty' (sub-006) is not a number"),
    "text in a clinical column": (run_case(_set("disease_duration", 0, "long")),
                                  "'long' (sub-001) is not a number"),
    "clinical column all n/a": (run_case(_all_na("edss"), extra='[regression]\nclinical = '
                                                              '["edss"]\n'),
                                "clinical variable 'edss' is n/a for every"),
    "missing covariate": (run_case(_set("age", 2, None)), "covariate 'age' is n/a for sub-003"),
    "truncated chi map": (run_case(_truncated_map), "sub-005_broken.nii.gz"),
    "not an image": (run_case(_not_gzip), "sub-002_text.nii.gz"),
    "NaN in thalamus": (run_case(_nan_in_thalamus), "sub-008_nan.nii.gz of sub-008"),
    "map on another grid": (run_case(_other_grid), "sub-003_grid.nii.gz"),
    "--out is a file": (run_case(out="afile"), "--out"),
    "--n-perm 0": (run_case(flags=("--n-perm", "0")), "--n-perm"),
    "native id escapes": (run_case(_native_escape, study='space = "native"\n'),
                          "participant label '../../x' is used in file names"),
    # qsm demo
    "demo --n-per-group 0": (demo_case("--n-per-group", "0"), "--n-per-group"),
    "demo --n-per-group 2": (demo_case("--n-per-group", "2"), "--n-per-group"),
    "demo --n-perm 0": (demo_case("--n-perm", "0"), "--n-perm"),
    "demo --out is a file": (demo_case(prepare=_file_at("demo")), "--out"),
    "demo --out not empty": (demo_case("--n-per-group", "3", prepare=_non_empty), "--overwrite"),
    # qsm normalize
    "normalize source missing": (lambda c, t: ["normalize", str(t / "none"), str(t / "n")],
                                 "none"),
    "normalize id escapes": (normalize_case(_set("participant_id", 0, "sub-../../x")),
                             "'../../x' (sub-) is used in file names"),
    "normalize truncated map": (normalize_case(_truncated_map), "sub-005_broken.nii.gz"),
    "normalize mask flag alone": (normalize_case(flags=("--reference", "mask")),
                                  "--reference-mask"),
    "normalize template alone": (normalize_case(flags=("--template", "t.nii.gz")),
                                 "--template-mask"),
    "normalize --n-jobs 0": (normalize_case(flags=("--n-jobs", "0")), "--n-jobs"),
    "normalize template not an image": (
        normalize_case(flags=("--template", "afile", "--template-mask", "afile", "--space",
                              "MyTpl")), "--template"),
    "normalize reference mask missing": (
        normalize_case(flags=("--reference", "mask", "--reference-mask", "none.nii.gz")),
        "none.nii.gz"),
}


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_broken_input_gives_one_line_naming_it(case, cohort, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep me")
    build, expected = CASES[case]
    argv = [*build(cohort, tmp_path), "-q"]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code in (1, 2), (case, code)
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 2:  # argparse prints its usage first, then one error line
        lines = [line for line in lines if "error:" in line]
    assert len(lines) == 1, (case, err)
    assert "Traceback" not in err and expected in lines[0], (case, lines[0])
    assert lines[0].startswith(f"qsm {argv[0]}: error:"), lines[0]
    # nothing escaped, nothing was run
    assert not (tmp_path / "pwned").exists() and not (tmp_path.parent / "escape").exists()
    assert (tmp_path / "afile").read_text() == "keep me"
    if (tmp_path / "demo").is_dir():
        assert [p.name for p in (tmp_path / "demo").iterdir()] in ([], ["results.txt"])
    assert not (tmp_path / "out" / "report.md").exists()


def _one_line_naming(argv, names, capsys):
    """Run; return a problem description, or None when the error is one line naming a file."""
    try:
        code = main([*argv, "-q"])
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # a traceback on the command line
        return f"raised {type(exc).__name__}: {exc}"
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    if code != 1 or len(lines) != 1 or not any(n in lines[0] for n in names):
        return f"exit {code}: {lines}"
    return None


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "normalize"])
def test_every_broken_image_of_the_shared_corpus_as_a_chi_map(command, broken_corpus, cohort,
                                                              tmp_path, capsys):
    """The voxstats corpus (tests/conftest.py): each broken 3D image as one subject's χ map."""
    problems = {}
    for k, case in enumerate(broken_corpus.cases("img3d")):
        folder = tmp_path / str(k)
        folder.mkdir()

        def swap(rows, tmp, case=case):
            rows.loc[1, "chi_path"] = str(case.path)
            if command == "normalize":
                rows["structural_path"] = rows["chi_path"]
        table = _table(cohort, folder, swap)
        argv = (["run", str(_config(folder, table)), "--out", str(folder / "out")]
                if command == "run" else ["normalize", str(table), str(folder / "norm")])
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # as on a user's console: warnings are not errors
            problem = _one_line_naming(argv, case.names, capsys)
        if problem:
            problems[case.name] = problem
    assert len(broken_corpus.cases("img3d")) >= 10
    assert not problems, problems
