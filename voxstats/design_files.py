"""Design, contrast and exchangeability-block files.

Two families of text files are read and written:

* FSL VEST files as written by FSL's ``Glm`` GUI and ``Text2Vest``
  (``design.mat``, ``design.con``, ``design.fts``, ``design.grp``): header
  lines starting with ``/`` (``/NumWaves``, ``/NumPoints``, ``/NumContrasts``,
  ``/ContrastName1``, ``/PPheights``, ...) followed by ``/Matrix`` and one row
  of whitespace-separated numbers per line.  A plain whitespace-separated
  matrix without any header (the input of ``Text2Vest``) is accepted too.
* CSV (``.csv``) or TSV (``.tsv``) tables with a header row.  A design table's
  header names the regressors; a contrast table's header names the design
  columns it weights (so its columns may come in any order), with an optional
  first column ``name`` holding the contrast names; an F-contrast table's
  header names the t contrasts it combines (0/1 entries, as in ``design.fts``);
  a block table has one column.

Every malformed file raises :class:`DesignFileError` whose one-line message
names the file, the line number and what was expected.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from voxstats.image import atomic_write_text

logger = logging.getLogger(__name__)

_KINDS = ("mat", "con", "fts", "grp")
_NAME_COLUMNS = ("name", "contrast")

__all__ = [
    "DesignFileError",
    "VestFile",
    "read_vest",
    "write_vest",
    "read_design",
    "write_design",
    "read_contrasts",
    "write_contrasts",
    "read_f_contrasts",
    "write_f_contrasts",
    "read_blocks",
    "read_exchangeability_blocks",
    "write_blocks",
]


class DesignFileError(ValueError):
    """A design, contrast or block file that cannot be parsed."""


def _fail(path, line, expected):
    where = f"{path}, line {line}" if line is not None else f"{path}"
    raise DesignFileError(f"{where}: {expected}")


def _check_kind(kind):
    if kind not in _KINDS:
        allowed = ", ".join(repr(k) for k in _KINDS)
        raise ValueError(
            f"Invalid value for the 'kind' parameter. Allowed values are {allowed}, "
            f"but got {kind!r} instead."
        )


def _read_lines(path):
    path = Path(path)
    if not path.is_file():
        raise DesignFileError(f"{path}: file does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DesignFileError(f"{path}: expected a UTF-8 text file ({err.reason})") from None
    return text.splitlines()


def _is_table(path):
    return Path(path).suffix.lower() in (".csv", ".tsv")


def _number(path, lineno, token, *, integer=False):
    try:
        value = float(token)
    except ValueError:
        what = "an integer" if integer else "a number"
        _fail(path, lineno, f"expected {what}, got {token!r}")
    if not math.isfinite(value):
        _fail(path, lineno, f"expected a finite number, got {token!r}")
    if integer and value != int(value):
        _fail(path, lineno, f"expected an integer, got {token!r}")
    return value


# --------------------------------------------------------------------------- VEST


@dataclass(frozen=True)
class VestFile:
    """Content of an FSL VEST file.

    Attributes
    ----------
    matrix : (n_rows, n_columns) ndarray of float
        The ``/Matrix`` block.
    names : tuple of str
        Contrast names from ``/ContrastName<i>`` (``design.con``); empty
        strings where a name is absent, an empty tuple for other kinds.
    headers : dict
        Every header line as ``{key: value text}`` (``/`` stripped).
    """

    matrix: np.ndarray
    names: tuple = ()
    headers: dict = field(default_factory=dict)


def _parse_vest(path, lines):
    """Return (headers {key: (lineno, value)}, rows [(lineno, tokens)])."""
    headers = {}
    rows = []
    in_matrix = False
    has_headers = any(line.strip().startswith("/") for line in lines)
    if not has_headers:
        in_matrix = True  # a plain whitespace-separated matrix
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if in_matrix:
            if line.startswith("/"):
                _fail(path, lineno, f"expected a matrix row after /Matrix, got header {line.split()[0]!r}")
            rows.append((lineno, line.split()))
            continue
        if not line.startswith("/"):
            _fail(path, lineno, f"expected a '/' header line or /Matrix, got {line[:30]!r}")
        parts = line[1:].split(None, 1)
        key = parts[0] if parts and not line[1].isspace() else ""
        if not key:
            _fail(path, lineno, "expected a header name after '/'")
        if key == "Matrix":
            in_matrix = True
            continue
        if key in headers:
            _fail(path, lineno, f"expected each header once, got a second /{key}")
        headers[key] = (lineno, parts[1].strip() if len(parts) > 1 else "")
    if has_headers and not in_matrix:
        _fail(path, len(lines), "expected a /Matrix line before the end of the file")
    return headers, rows


def _header_int(path, headers, key):
    if key not in headers:
        return None, None
    lineno, value = headers[key]
    tokens = value.split()
    if len(tokens) != 1 or not tokens[0].isdigit():
        _fail(path, lineno, f"expected a non-negative integer after /{key}, got {value!r}")
    return lineno, int(tokens[0])


def read_vest(path, *, kind="mat"):
    """Read an FSL VEST file (or a plain whitespace-separated matrix).

    Parameters
    ----------
    path : str or Path
        The file.
    kind : {'mat', 'con', 'fts', 'grp'}
        What the file holds; selects the header consistency checks (and
        integer/0-1 checks for ``grp``/``fts``).

    Returns
    -------
    VestFile

    Raises
    ------
    DesignFileError
        With the file, line and what was expected.
    """
    _check_kind(kind)
    lines = _read_lines(path)
    headers, rows = _parse_vest(path, lines)
    if not rows:
        _fail(path, len(lines) or None, "expected at least one matrix row, got none")
    integer = kind in ("grp", "fts")
    n_cols = len(rows[0][1])
    first_line = rows[0][0]
    matrix = np.empty((len(rows), n_cols))
    for i, (lineno, tokens) in enumerate(rows):
        if len(tokens) != n_cols:
            _fail(
                path,
                lineno,
                f"expected {n_cols} values (as on line {first_line}), got {len(tokens)}",
            )
        matrix[i] = [_number(path, lineno, t, integer=integer) for t in tokens]

    line_w, n_waves = _header_int(path, headers, "NumWaves")
    if n_waves is not None and n_waves != n_cols:
        _fail(path, line_w, f"/NumWaves says {n_waves} columns but the matrix has {n_cols}")
    count_key = "NumContrasts" if kind in ("con", "fts") else "NumPoints"
    line_n, n_declared = _header_int(path, headers, count_key)
    if n_declared is not None and n_declared != len(rows):
        _fail(path, line_n, f"/{count_key} says {n_declared} rows but the matrix has {len(rows)}")

    names = ()
    if kind == "con":
        found = {}
        for key, (lineno, value) in headers.items():
            if key.startswith("ContrastName"):
                index = key[len("ContrastName"):]
                if not index.isdigit() or not 1 <= int(index) <= len(rows):
                    _fail(path, lineno, f"expected /ContrastName1 to /ContrastName{len(rows)}, got /{key}")
                found[int(index)] = value
        names = tuple(found.get(i + 1, "") for i in range(len(rows)))
    if kind == "fts":
        for i, (lineno, _) in enumerate(rows):
            if not np.isin(matrix[i], (0, 1)).all():
                _fail(path, lineno, "expected only 0 or 1 (which t contrasts this F test combines)")
            if not matrix[i].any():
                _fail(path, lineno, "expected at least one 1 (an F test must combine a t contrast)")
    return VestFile(matrix=matrix, names=names, headers={k: v for k, (_, v) in headers.items()})


def _fmt(value):
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def write_vest(path, matrix, *, kind="mat", names=None):
    """Write an FSL VEST file as FSL's ``Glm`` does, atomically.

    Parameters
    ----------
    path : str or Path
        Destination.
    matrix : (n_rows, n_columns) array-like
        Design (``mat``), contrasts (``con``), F selections (``fts``) or
        exchangeability blocks (``grp``; a 1D vector is one column).
    kind : {'mat', 'con', 'fts', 'grp'}
        File type; sets the header lines.
    names : sequence of str, optional
        Contrast names, written as ``/ContrastName<i>`` (``con`` only).

    Notes
    -----
    Numbers are written in the shortest form that reads back to the same
    float, so :func:`read_vest` returns exactly ``matrix``.
    """
    _check_kind(kind)
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"Expected a non-empty 2D matrix to write to {path}, got shape {matrix.shape}.")
    if not np.isfinite(matrix).all():
        raise ValueError(f"Expected only finite values to write to {path}.")
    n_rows, n_cols = matrix.shape
    out = []
    if kind == "con" and names is not None:
        if len(names) != n_rows:
            raise ValueError(f"Expected {n_rows} contrast names for {path}, got {len(names)}.")
        out += [f"/ContrastName{i}\t{name}" for i, name in enumerate(names, start=1)]
    out.append(f"/NumWaves\t{n_cols}")
    if kind in ("con", "fts"):
        out.append(f"/NumContrasts\t{n_rows}")
    else:
        out.append(f"/NumPoints\t{n_rows}")
    if kind == "mat":
        heights = matrix.max(axis=0) - matrix.min(axis=0)
        out.append("/PPheights\t" + "\t".join(f"{h:e}" for h in heights))
    out += ["", "/Matrix"]
    out += ["\t".join(_fmt(v) for v in row) for row in matrix]
    atomic_write_text(path, "\n".join(out) + "\n")


# --------------------------------------------------------------------------- CSV / TSV


def _read_table(path):
    """Return (header list, rows [(lineno, cells)]) of a CSV/TSV file."""
    lines = _read_lines(path)
    delimiter = "\t" if Path(path).suffix.lower() == ".tsv" else ","
    records = []
    for lineno, cells in enumerate(csv.reader(lines, delimiter=delimiter), start=1):
        if not cells or all(not c.strip() for c in cells):
            continue
        records.append((lineno, [c.strip() for c in cells]))
    if not records:
        _fail(path, None, "expected a header row naming the columns, got an empty file")
    header_line, header = records[0]
    for cell in header:
        try:
            float(cell)
        except ValueError:
            continue
        _fail(path, header_line, f"expected a header row naming the columns, got the number {cell!r}")
    seen = set()
    for cell in header:
        if not cell:
            _fail(path, header_line, "expected a name for every column, got an empty header cell")
        if cell in seen:
            _fail(path, header_line, f"expected unique column names, got {cell!r} twice")
        seen.add(cell)
    rows = records[1:]
    if not rows:
        _fail(path, header_line, "expected at least one data row after the header")
    for lineno, cells in rows:
        if len(cells) != len(header):
            _fail(path, lineno, f"expected {len(header)} fields (as in the header), got {len(cells)}")
    return header_line, header, rows


def _split_names(path, header, rows, default_prefix):
    """Separate an optional leading name column from the numeric columns."""
    if header[0].lower() in _NAME_COLUMNS:
        names = [cells[0] for _, cells in rows]
        for (lineno, _), name in zip(rows, names):
            if not name:
                _fail(path, lineno, f"expected a name in the {header[0]!r} column, got an empty cell")
        return header[1:], [(ln, cells[1:]) for ln, cells in rows], names
    return header, rows, [f"{default_prefix}{i}" for i in range(1, len(rows) + 1)]


def _numeric(path, rows, *, integer=False):
    return np.array(
        [[_number(path, ln, c, integer=integer) for c in cells] for ln, cells in rows], dtype=float
    )


def _write_table(path, header, rows):
    delimiter = "\t" if Path(path).suffix.lower() == ".tsv" else ","
    lines = [header] + rows
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerows(lines)
    atomic_write_text(path, buf.getvalue())


def _unique_names(path, names, lines):
    seen = {}
    for name, lineno in zip(names, lines):
        if name in seen:
            _fail(path, lineno, f"expected unique contrast names, got {name!r} again (first on line {seen[name]})")
        seen[name] = lineno


# --------------------------------------------------------------------------- public readers


def read_design(path):
    """Read a design matrix.

    Parameters
    ----------
    path : str or Path
        ``design.mat`` (VEST or plain matrix; columns named ``EV1``...) or a
        CSV/TSV table whose header names the regressors.

    Returns
    -------
    design : pandas.DataFrame, shape (n_subjects, n_regressors)
    """
    if _is_table(path):
        _, header, rows = _read_table(path)
        return pd.DataFrame(_numeric(path, rows), columns=header)
    vest = read_vest(path, kind="mat")
    columns = [f"EV{i}" for i in range(1, vest.matrix.shape[1] + 1)]
    return pd.DataFrame(vest.matrix, columns=columns)


def read_contrasts(path, *, design_columns=None):
    """Read t contrasts.

    Parameters
    ----------
    path : str or Path
        ``design.con`` (VEST; names from ``/ContrastName<i>``, else ``C<i>``)
        or a CSV/TSV table whose header names design columns, with an optional
        first ``name`` column.
    design_columns : sequence of str, optional
        The design's column names.  Table columns are matched to them by name
        (any order; every design column must appear).  For VEST files only the
        number of columns is checked.

    Returns
    -------
    contrasts : dict of str to (n_regressors,) ndarray
        In file order.
    """
    if _is_table(path):
        header_line, header, rows = _read_table(path)
        columns, rows, names = _split_names(path, header, rows, "C")
        if not columns:
            _fail(path, header_line, "expected at least one design column in the header")
        matrix = _numeric(path, rows)
        if design_columns is not None:
            design_columns = [str(c) for c in design_columns]
            unknown = [c for c in columns if c not in design_columns]
            if unknown:
                _fail(path, header_line, f"expected design columns {design_columns}, got unknown column {unknown[0]!r}")
            missing = [c for c in design_columns if c not in columns]
            if missing:
                _fail(path, header_line, f"expected a column for every design column, missing {missing[0]!r}")
            matrix = matrix[:, [columns.index(c) for c in design_columns]]
        _unique_names(path, names, [ln for ln, _ in rows])
        return {name: row for name, row in zip(names, matrix)}
    vest = read_vest(path, kind="con")
    lines = _read_lines(path)
    if design_columns is not None and vest.matrix.shape[1] != len(design_columns):
        _fail(path, _matrix_line(lines), f"expected {len(design_columns)} columns (one per design column), got {vest.matrix.shape[1]}")
    names = [name or f"C{i}" for i, name in enumerate(vest.names, start=1)]
    _unique_names(path, names, [_header_line(lines, f"ContrastName{i}") for i in range(1, len(names) + 1)])
    return {name: row for name, row in zip(names, vest.matrix)}


def _matrix_line(lines):
    for lineno, line in enumerate(lines, start=1):
        if line.strip() and not line.strip().startswith("/"):
            return lineno
    return None


def _header_line(lines, key):
    for lineno, line in enumerate(lines, start=1):
        parts = line.strip()[1:].split(None, 1) if line.strip().startswith("/") else []
        if parts and parts[0] == key:
            return lineno
    return None


def read_f_contrasts(path, *, t_contrasts):
    """Read F contrasts as selections of t contrasts (FSL ``design.fts``).

    Parameters
    ----------
    path : str or Path
        ``design.fts`` (VEST, one 0/1 column per t contrast; F tests named
        ``F<i>``) or a CSV/TSV table whose header names the t contrasts, with
        an optional first ``name`` column.
    t_contrasts : dict of str to (n_regressors,) ndarray
        The t contrasts, in order, as returned by :func:`read_contrasts`.

    Returns
    -------
    f_contrasts : dict of str to (q, n_regressors) ndarray
        Each F contrast is the stack of the t contrasts it selects.
    """
    t_names = list(t_contrasts)
    t_matrix = np.array([np.asarray(v, dtype=float) for v in t_contrasts.values()])
    if _is_table(path):
        header_line, header, rows = _read_table(path)
        columns, rows, names = _split_names(path, header, rows, "F")
        unknown = [c for c in columns if c not in t_names]
        if unknown:
            _fail(path, header_line, f"expected t contrast names {t_names}, got unknown column {unknown[0]!r}")
        selection = np.zeros((len(rows), len(t_names)))
        selection[:, [t_names.index(c) for c in columns]] = _numeric(path, rows, integer=True)
        for (lineno, _), sel in zip(rows, selection):
            if not np.isin(sel, (0, 1)).all():
                _fail(path, lineno, "expected only 0 or 1 (which t contrasts this F test combines)")
            if not sel.any():
                _fail(path, lineno, "expected at least one 1 (an F test must combine a t contrast)")
        _unique_names(path, names, [ln for ln, _ in rows])
    else:
        vest = read_vest(path, kind="fts")
        selection = vest.matrix
        if selection.shape[1] != len(t_names):
            lines = _read_lines(path)
            _fail(path, _matrix_line(lines), f"expected {len(t_names)} columns (one per t contrast), got {selection.shape[1]}")
        names = [f"F{i}" for i in range(1, len(selection) + 1)]
    return {name: t_matrix[sel.astype(bool)] for name, sel in zip(names, selection)}


def read_blocks(path):
    """Read exchangeability blocks (``-e``; FSL ``design.grp``).

    Parameters
    ----------
    path : str or Path
        VEST ``design.grp``, a plain file with one integer per line, or a
        one-column CSV/TSV table with a header.

    Returns
    -------
    blocks : (n_subjects,) ndarray of int
    """
    if _is_table(path):
        header_line, header, rows = _read_table(path)
        if len(header) != 1:
            _fail(path, header_line, f"expected one column of block labels, got {len(header)}")
        values = _numeric(path, rows, integer=True)
    else:
        values = read_vest(path, kind="grp").matrix
        if values.shape[1] != 1:
            lines = _read_lines(path)
            _fail(path, _matrix_line(lines), f"expected one block label per line, got {values.shape[1]}")
    return values[:, 0].astype(int)


def read_exchangeability_blocks(path):
    """Read PALM's exchangeability blocks (``-eb``), one or several levels.

    Parameters
    ----------
    path : str or Path
        PALM's CSV: one row per subject, one column per level, comma-separated
        integers without a header (as ``hcp2blocks`` writes). A header row of
        names, TSV (by the ``.tsv`` suffix), whitespace-separated columns and
        VEST ``design.grp`` files are accepted too.

    Returns
    -------
    blocks : (n_subjects, n_levels) ndarray of int
        Signs kept: see :class:`voxstats.exchangeability.ExchangeabilityTree`.
    """
    lines = _read_lines(path)
    if any(line.strip().startswith("/") for line in lines):
        return read_vest(path, kind="grp").matrix.astype(int)
    delimiter = "\t" if Path(path).suffix.lower() == ".tsv" else ("," if any("," in line for line in lines) else None)
    records = []
    for lineno, line in enumerate(lines, start=1):
        cells = [c.strip() for c in (line.split(delimiter) if delimiter else line.split())]
        if cells and any(cells):
            records.append((lineno, cells))
    if not records:
        _fail(path, None, "expected one row of block indices per subject, got an empty file")
    lineno, first = records[0]
    try:
        [float(c) for c in first]
    except ValueError:  # a header row of names
        records = records[1:]
        if not records:
            _fail(path, lineno, "expected rows of block indices after the header, got none")
    width = len(records[0][1])
    values = []
    for lineno, cells in records:
        if len(cells) != width:
            _fail(path, lineno, f"expected {width} block indices (as on the first row), got {len(cells)}")
        values.append([_number(path, lineno, c, integer=True) for c in cells])
    return np.array(values, dtype=float).astype(int)


# --------------------------------------------------------------------------- public writers


def write_design(path, design):
    """Write a design matrix (VEST, or CSV/TSV by the ``.csv``/``.tsv`` suffix).

    Parameters
    ----------
    path : str or Path
    design : (n_subjects, n_regressors) ndarray or pandas.DataFrame
        Column names of a DataFrame become the table header (``EV<i>`` else).
    """
    if _is_table(path):
        if isinstance(design, pd.DataFrame):
            columns, matrix = [str(c) for c in design.columns], design.to_numpy(dtype=float)
        else:
            matrix = np.asarray(design, dtype=float)
            columns = [f"EV{i}" for i in range(1, matrix.shape[1] + 1)]
        _write_table(path, columns, [[_fmt(v) for v in row] for row in matrix])
    else:
        write_vest(path, np.asarray(design, dtype=float), kind="mat")


def write_contrasts(path, contrasts, *, design_columns=None):
    """Write t contrasts (VEST ``design.con``, or CSV/TSV by suffix).

    Parameters
    ----------
    path : str or Path
    contrasts : dict of str to (n_regressors,) array-like
    design_columns : sequence of str, optional
        Header of a CSV/TSV file (``EV<i>`` when omitted).
    """
    names = list(contrasts)
    matrix = np.array([np.asarray(v, dtype=float) for v in contrasts.values()])
    if _is_table(path):
        if design_columns is None:
            design_columns = [f"EV{i}" for i in range(1, matrix.shape[1] + 1)]
        rows = [[name] + [_fmt(v) for v in row] for name, row in zip(names, matrix)]
        _write_table(path, ["name"] + [str(c) for c in design_columns], rows)
    else:
        write_vest(path, matrix, kind="con", names=names)


def write_f_contrasts(path, selection, *, t_names, names=None):
    """Write F contrasts as t-contrast selections (VEST ``design.fts`` or CSV/TSV).

    Parameters
    ----------
    path : str or Path
    selection : (n_f, n_t) array-like of 0/1
    t_names : sequence of str
        Names of the t contrasts (the CSV/TSV header).
    names : sequence of str, optional
        F-contrast names for CSV/TSV (``F<i>`` when omitted; VEST has none).
    """
    selection = np.asarray(selection, dtype=float)
    if _is_table(path):
        names = names or [f"F{i}" for i in range(1, len(selection) + 1)]
        rows = [[name] + [_fmt(v) for v in row] for name, row in zip(names, selection)]
        _write_table(path, ["name"] + list(t_names), rows)
    else:
        write_vest(path, selection, kind="fts")


def write_blocks(path, blocks):
    """Write exchangeability blocks (VEST ``design.grp`` or a one-column CSV/TSV).

    Parameters
    ----------
    path : str or Path
    blocks : (n_subjects,) array-like of int
    """
    blocks = np.asarray(blocks)
    if _is_table(path):
        _write_table(path, ["block"], [[str(int(b))] for b in blocks])
    else:
        write_vest(path, blocks.astype(float), kind="grp")
