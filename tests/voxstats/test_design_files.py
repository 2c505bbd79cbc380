"""Tests for voxstats.design_files: FSL VEST and CSV/TSV designs, contrasts, blocks."""

import re

import numpy as np
import pandas as pd
import pytest

from voxstats.design_files import (
    DesignFileError,
    read_blocks,
    read_contrasts,
    read_design,
    read_f_contrasts,
    read_vest,
    write_blocks,
    write_contrasts,
    write_design,
    write_f_contrasts,
    write_vest,
)

# What FSL's Glm GUI writes for a two-group design (tabs, %e numbers, trailing tabs).
GLM_MAT = (
    "/NumWaves\t2\n/NumPoints\t4\n/PPheights\t\t1.000000e+00\t1.000000e+00\n\n/Matrix\n"
    "1.000000e+00\t0.000000e+00\t\n1.000000e+00\t0.000000e+00\t\n"
    "0.000000e+00\t1.000000e+00\t\n0.000000e+00\t1.000000e+00\t\n"
)
GLM_CON = (
    "/ContrastName1\tgroup A > B\n/ContrastName2\tgroup B > A\n/NumWaves\t2\n/NumContrasts\t2\n"
    "/PPheights\t\t1.000000e+00\t1.000000e+00\n/RequiredEffect\t\t1.000\t1.000\n\n/Matrix\n"
    "1.000000e+00\t-1.000000e+00\t\n-1.000000e+00\t1.000000e+00\t\n"
)
GLM_FTS = "/NumWaves\t2\n/NumContrasts\t1\n\n/Matrix\n1 1 \n"
# What Text2Vest writes.
TEXT2VEST_GRP = "/NumWaves 1\n/NumPoints 4\n/Matrix\n1\n1\n2\n2\n"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_glm_files(tmp_path):
    design = read_design(_write(tmp_path, "design.mat", GLM_MAT))
    assert list(design.columns) == ["EV1", "EV2"]
    np.testing.assert_array_equal(design.to_numpy(), [[1, 0], [1, 0], [0, 1], [0, 1]])
    con = read_contrasts(_write(tmp_path, "design.con", GLM_CON), design_columns=design.columns)
    assert list(con) == ["group A > B", "group B > A"]
    np.testing.assert_array_equal(con["group A > B"], [1, -1])
    fts = read_f_contrasts(_write(tmp_path, "design.fts", GLM_FTS), t_contrasts=con)
    assert list(fts) == ["F1"]
    np.testing.assert_array_equal(fts["F1"], [[1, -1], [-1, 1]])
    np.testing.assert_array_equal(read_blocks(_write(tmp_path, "design.grp", TEXT2VEST_GRP)), [1, 1, 2, 2])
    vest = read_vest(tmp_path / "design.con", kind="con")
    assert vest.headers["RequiredEffect"] == "1.000\t1.000"


def test_plain_matrix_and_plain_blocks(tmp_path):
    design = read_design(_write(tmp_path, "d.txt", "1 0.5\n1 -0.25\n\n1 2e-3\n"))
    np.testing.assert_array_equal(design.to_numpy(), [[1, 0.5], [1, -0.25], [1, 0.002]])
    np.testing.assert_array_equal(read_blocks(_write(tmp_path, "b.txt", "3\n3\n7\n")), [3, 3, 7])
    con = read_contrasts(_write(tmp_path, "c.txt", "0 1\n"))
    assert list(con) == ["C1"]


@pytest.mark.parametrize("kind", ["mat", "con", "fts", "grp"])
def test_vest_round_trip(tmp_path, kind):
    rng = np.random.default_rng(0)
    if kind == "fts":
        matrix = np.array([[1, 0, 1], [0, 1, 0]], dtype=float)
    elif kind == "grp":
        matrix = rng.integers(1, 5, size=(7, 1)).astype(float)
    else:
        matrix = rng.normal(size=(6, 3)) * 10.0 ** rng.integers(-8, 8, size=(6, 3))
    names = ["a > b", "b", "x y z", "q", "r", "s"] if kind == "con" else None
    path = tmp_path / f"design.{kind}"
    write_vest(path, matrix, kind=kind, names=names)
    vest = read_vest(path, kind=kind)
    np.testing.assert_array_equal(vest.matrix, matrix)  # exact, not approximate
    if kind == "con":
        assert vest.names == tuple(names)
    assert int(vest.headers["NumWaves"]) == matrix.shape[1]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".mat"])
def test_high_level_round_trips(tmp_path, suffix):
    design = pd.DataFrame({"age": [30.5, 41.0, 52.25, 60.0], "patient": [0.0, 1, 1, 0], "icpt": 1.0})
    write_design(tmp_path / f"d{suffix}", design)
    back = read_design(tmp_path / f"d{suffix}")
    np.testing.assert_array_equal(back.to_numpy(), design.to_numpy())
    if suffix != ".mat":
        assert list(back.columns) == ["age", "patient", "icpt"]
    cons = {"age+": np.array([1.0, 0, 0]), "pat>ctl": np.array([0.0, 1, 0])}
    write_contrasts(tmp_path / f"c{suffix}", cons, design_columns=design.columns)
    back_c = read_contrasts(tmp_path / f"c{suffix}", design_columns=back.columns)
    assert list(back_c) == list(cons)
    for name in cons:
        np.testing.assert_array_equal(back_c[name], cons[name])
    write_f_contrasts(tmp_path / f"f{suffix}", [[1, 1]], t_names=list(cons))
    f = read_f_contrasts(tmp_path / f"f{suffix}", t_contrasts=back_c)
    np.testing.assert_array_equal(next(iter(f.values())), [[1, 0, 0], [0, 1, 0]])
    write_blocks(tmp_path / f"g{suffix}", [1, 2, 2, 1])
    np.testing.assert_array_equal(read_blocks(tmp_path / f"g{suffix}"), [1, 2, 2, 1])


def test_csv_contrast_columns_matched_by_name(tmp_path):
    path = _write(tmp_path, "con.csv", "name,patient,age,icpt\nP,1,0,0\nage down,0,-1,0\n")
    con = read_contrasts(path, design_columns=["age", "patient", "icpt"])
    np.testing.assert_array_equal(con["P"], [0, 1, 0])
    np.testing.assert_array_equal(con["age down"], [-1, 0, 0])
    # without a name column, default names C1, C2...
    path = _write(tmp_path, "con2.tsv", "age\tpatient\n1\t0\n")
    assert list(read_contrasts(path)) == ["C1"]


def test_csv_f_contrast_subset_of_t_columns(tmp_path):
    t = {"a": np.array([1.0, 0]), "b": np.array([0.0, 1]), "c": np.array([1.0, 1])}
    path = _write(tmp_path, "f.csv", "name,c,a\nomni,1,1\n")
    f = read_f_contrasts(path, t_contrasts=t)
    np.testing.assert_array_equal(f["omni"], [[1, 0], [1, 1]])  # in t-contrast order


BAD = [
    # (file name, content, kind/reader, expected message regex)
    ("missing.mat", None, "design", r"missing\.mat: file does not exist"),
    ("e.mat", "", "design", r"e\.mat: expected at least one matrix row"),
    ("e.mat", "/NumWaves 2\n/NumPoints 1\n1 0\n", "design", r"e\.mat, line 3: expected a '/' header line or /Matrix"),
    ("e.mat", "/NumWaves 2\n/NumPoints 1\n", "design", r"e\.mat, line 2: expected a /Matrix line"),
    ("e.mat", "/NumWaves two\n/Matrix\n1 0\n", "design", r"e\.mat, line 1: expected a non-negative integer after /NumWaves, got 'two'"),
    ("e.mat", "/NumWaves 3\n/Matrix\n1 0\n", "design", r"e\.mat, line 1: /NumWaves says 3 columns but the matrix has 2"),
    ("e.mat", "/NumWaves 2\n/NumPoints 3\n/Matrix\n1 0\n0 1\n", "design", r"e\.mat, line 2: /NumPoints says 3 rows but the matrix has 2"),
    ("e.mat", "/Matrix\n1 0\n0 1 1\n", "design", r"e\.mat, line 3: expected 2 values \(as on line 2\), got 3"),
    ("e.mat", "/Matrix\n1 0\n0 x\n", "design", r"e\.mat, line 3: expected a number, got 'x'"),
    ("e.mat", "/Matrix\n1 nan\n", "design", r"e\.mat, line 2: expected a finite number, got 'nan'"),
    ("e.mat", "/NumWaves 1\n/NumWaves 1\n/Matrix\n1\n", "design", r"e\.mat, line 2: expected each header once"),
    ("e.mat", "/NumWaves 1\n/Matrix\n1\n/NumPoints 1\n", "design", r"e\.mat, line 4: expected a matrix row after /Matrix"),
    ("e.mat", "/ 1\n/Matrix\n1\n", "design", r"e\.mat, line 1: expected a header name after '/'"),
    ("e.con", "/ContrastName3 x\n/NumWaves 2\n/Matrix\n1 0\n", "con", r"e\.con, line 1: expected /ContrastName1 to /ContrastName1, got /ContrastName3"),
    ("e.con", "/NumWaves 2\n/NumContrasts 2\n/Matrix\n1 0\n", "con", r"e\.con, line 2: /NumContrasts says 2 rows but the matrix has 1"),
    ("e.con", "/ContrastName1 a\n/ContrastName2 a\n/Matrix\n1 0\n0 1\n", "con", r"e\.con, line 2: expected unique contrast names, got 'a' again \(first on line 1\)"),
    ("e.con", "/Matrix\n1 0 0\n", "con", r"e\.con, line 2: expected 2 columns \(one per design column\), got 3"),
    ("e.fts", "/NumWaves 2\n/Matrix\n1 2\n", "fts", r"e\.fts, line 3: expected only 0 or 1"),
    ("e.fts", "/NumWaves 2\n/Matrix\n0 0\n", "fts", r"e\.fts, line 3: expected at least one 1"),
    ("e.fts", "/Matrix\n1 0 1\n", "fts", r"e\.fts, line 2: expected 2 columns \(one per t contrast\), got 3"),
    ("e.fts", "/Matrix\n1 0.5\n", "fts", r"e\.fts, line 2: expected an integer, got '0.5'"),
    ("e.grp", "1\n2.5\n", "grp", r"e\.grp, line 2: expected an integer, got '2.5'"),
    ("e.grp", "1 1\n2 2\n", "grp", r"e\.grp, line 1: expected one block label per line, got 2"),
    ("e.csv", "", "design", r"e\.csv: expected a header row naming the columns, got an empty file"),
    ("e.csv", "1,0\n0,1\n", "design", r"e\.csv, line 1: expected a header row naming the columns, got the number '1'"),
    ("e.csv", "a,a\n0,1\n", "design", r"e\.csv, line 1: expected unique column names, got 'a' twice"),
    ("e.csv", "a,\n0,1\n", "design", r"e\.csv, line 1: expected a name for every column"),
    ("e.csv", "a,b\n", "design", r"e\.csv, line 1: expected at least one data row"),
    ("e.csv", "a,b\n0,1\n\n0,1,2\n", "design", r"e\.csv, line 4: expected 2 fields \(as in the header\), got 3"),
    ("e.tsv", "a\tb\n0\tyes\n", "design", r"e\.tsv, line 2: expected a number, got 'yes'"),
    ("e.csv", "name,a,b,z\nc,1,0,0\n", "con", r"e\.csv, line 1: expected design columns \['a', 'b'\], got unknown column 'z'"),
    ("e.csv", "name,a\nc,1\n", "con", r"e\.csv, line 1: expected a column for every design column, missing 'b'"),
    ("e.csv", "name,a,b\n,1,0\n", "con", r"e\.csv, line 2: expected a name in the 'name' column"),
    ("e.csv", "name,a,b\nx,1,0\nx,0,1\n", "con", r"e\.csv, line 3: expected unique contrast names, got 'x' again \(first on line 2\)"),
    ("e.csv", "name\nx\n", "con", r"e\.csv, line 1: expected at least one design column"),
    ("e.csv", "name,C1,Q\nF,1,1\n", "fts", r"e\.csv, line 1: expected t contrast names \['C1', 'C2'\], got unknown column 'Q'"),
    ("e.csv", "name,C1,C2\nF,0,0\n", "fts", r"e\.csv, line 2: expected at least one 1"),
    ("e.csv", "name,C1,C2\nF,3,0\n", "fts", r"e\.csv, line 2: expected only 0 or 1"),
    ("e.csv", "block,x\n1,2\n", "grp", r"e\.csv, line 1: expected one column of block labels, got 2"),
    ("e.csv", "block\n1\n1.5\n", "grp", r"e\.csv, line 3: expected an integer, got '1.5'"),
]


@pytest.mark.parametrize(("name", "content", "reader", "pattern"), BAD)
def test_malformed_files(tmp_path, name, content, reader, pattern):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    t = {"C1": np.array([1.0, 0]), "C2": np.array([0.0, 1])}
    call = {
        "design": lambda: read_design(path),
        "con": lambda: read_contrasts(path, design_columns=["a", "b"]),
        "fts": lambda: read_f_contrasts(path, t_contrasts=t),
        "grp": lambda: read_blocks(path),
    }[reader]
    with pytest.raises(DesignFileError, match=pattern) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))


def test_non_utf8_file(tmp_path):
    path = tmp_path / "bin.mat"
    path.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DesignFileError, match=re.escape(str(path)) + ": expected a UTF-8 text file"):
        read_design(path)


def test_bad_kind_and_bad_matrix(tmp_path):
    with pytest.raises(ValueError, match="Invalid value for the 'kind' parameter. Allowed values are 'mat', 'con', 'fts', 'grp', but got 'x' instead."):
        read_vest(tmp_path / "a", kind="x")
    with pytest.raises(ValueError, match="Expected only finite values"):
        write_vest(tmp_path / "a.mat", [[1.0, np.inf]])
    with pytest.raises(ValueError, match="Expected 2 contrast names"):
        write_vest(tmp_path / "a.con", [[1.0], [2.0]], kind="con", names=["x"])
    assert list(tmp_path.iterdir()) == []
