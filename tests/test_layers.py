"""The import-layer contract: voxstats is the engine and never imports qsm."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_voxstats_sources_never_import_qsm():
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "voxstats").rglob("*.py"))
        for name in _imported_modules(path)
        if name == "qsm" or name.startswith("qsm.")
    ]
    assert offenders == []


def test_importing_voxstats_does_not_load_qsm():
    code = (
        "import sys, pkgutil, importlib, voxstats\n"
        "for m in pkgutil.walk_packages(voxstats.__path__, 'voxstats.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n == 'qsm' or n.startswith('qsm.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_import_linter_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():  # pragma: no cover - import-linter is in the test extra
        raise AssertionError("lint-imports not installed; install the 'test' extra")
    out = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
