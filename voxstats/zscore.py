"""z scores of t and F statistics whose degrees of freedom vary from voxel to voxel.

The Aspin-Welch v and the G statistic (:mod:`voxstats.welch`) have degrees of
freedom that depend on each voxel's group variances, so maps are compared on
the z scale, as PALM does: z has the same cumulative probability as the
statistic. The permutation kernels convert one value per voxel and
rearrangement, so the conversion has to be fast: :func:`z_table` tabulates
exact z values once per contrast on a grid over the statistic and the range of
degrees of freedom the contrast can produce, and the kernels read it by cubic
interpolation (the error is checked against exact values at every cell
midpoint when the table is built, below ``tol``), falling back to the exact
computation outside the grid.

Grid coordinates: ``x`` is |v| for v (kind 't') and log G for G (kind 'F');
``c`` is 1/df2 when the degrees of freedom span less than a factor
``LOG_RATIO`` and log(df2) otherwise (the z surface bends on a scale
proportional to 1/df2, so wide ranges need a logarithmic grid).
"""

import functools
import logging
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from . import _zscore_numba

logger = logging.getLogger(__name__)

__all__ = ["ZTable", "exact_table", "to_z", "z_table"]

T_MAX = 12.0  # |v| beyond this: exact path (v = 12 is p < 1e-24 for df >= 20)
LOG_G_RANGE = (float(np.log(1e-4)), float(np.log(144.0)))  # log G outside this: exact path
MAX_ENTRIES = 1 << 20  # a table that needs more is not built; every value is then exact
LOG_RATIO = 4.0  # df2_max / df2_min above which the df coordinate is log(df2)


@dataclass(frozen=True)
class ZTable:
    """Exact z on a grid: ``table[i, j] = z(x0 + i hx, c0 + j hc)``.

    An empty ``table`` (shape (0, 0)) means: always compute exactly.
    """

    kind: str
    df1: int
    table: np.ndarray
    x0: float
    hx: float
    c0: float
    hc: float
    log_df: bool
    max_error: float

    def arguments(self):
        """(df1, kind code, table, x0, hx, c0, hc, log_df): the kernels' view."""
        code = _zscore_numba.T_KIND if self.kind == "t" else _zscore_numba.F_KIND
        return (float(self.df1), code, self.table, float(self.x0), float(self.hx), float(self.c0),
                float(self.hc), bool(self.log_df))


def exact_table(kind, df1):
    """An empty table: every value computed exactly."""
    return ZTable(kind=kind, df1=int(df1), table=np.zeros((0, 0)), x0=0.0, hx=1.0, c0=0.0, hc=1.0,
                  log_df=False, max_error=0.0)


def _exact(kind, df1, x, df2):
    """Exact z at (x, df2) (float64 arrays of one shape); df2 = inf gives the limit."""
    x, df2 = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(df2, dtype=np.float64))
    stat = np.ravel(x if kind == "t" else np.exp(x))
    df2 = np.ravel(df2)
    out = np.empty(stat.size)
    finite = np.isfinite(df2)
    part = np.empty(int(finite.sum()))
    empty = exact_table(kind, df1)
    _zscore_numba.to_z_array(np.ascontiguousarray(stat[finite]), *empty.arguments()[:1],
                             np.ascontiguousarray(df2[finite]), *empty.arguments()[1:], part)
    out[finite] = part
    limit = ~finite
    if kind == "t":
        out[limit] = stat[limit]
    elif limit.any():
        q = df1 * stat[limit]
        upper, lower = stats.chi2.logsf(q, df1), stats.chi2.logcdf(q, df1)
        out[limit] = np.where(upper < lower, -special.ndtri_exp(upper), special.ndtri_exp(lower))
    return out.reshape(x.shape)


def _lookup(table, xs, cs):
    out = np.empty(xs.size)
    _zscore_numba.table_lookup_array(table.table, table.x0, table.hx, table.c0, table.hc,
                                     np.ascontiguousarray(np.ravel(xs), dtype=np.float64),
                                     np.ascontiguousarray(np.ravel(cs), dtype=np.float64), out)
    return out.reshape(np.shape(xs))


def _df_of(c, log_df):
    return np.exp(c) if log_df else 1.0 / c


def z_table(kind, df1, df2_min, df2_max, *, tol=1e-8):
    """Tabulate z for one contrast: statistic ``kind`` ('t' or 'F'), df2 in [df2_min, df2_max].

    The grid covers |v| in [0, 12] (t) or log G in [log 1e-4, log 144] (F).
    Its spacing is halved, in the direction whose midpoints err most, until
    the interpolation error at every cell midpoint, against the exact values,
    is below ``tol``. A grid that would need more than ``MAX_ENTRIES`` values
    is not built: every value is then computed exactly (~20x slower).

    Parameters
    ----------
    kind : {'t', 'F'}
    df1 : int
        Rank of the contrast (1 for 't').
    df2_min, df2_max : float
        Range of the degrees of freedom the contrast can give (0 < min <= max).
    tol : float
        Largest interpolation error allowed, in z units.

    Returns
    -------
    ZTable
    """
    if kind not in ("t", "F"):
        raise ValueError(f"Invalid value for the 'kind' parameter. Allowed values are 't', 'F', but got {kind!r}")
    if not 0 < df2_min <= df2_max < np.inf:
        raise ValueError(f"Invalid degrees of freedom range [{df2_min!r}, {df2_max!r}]: expected 0 < min <= max")
    return _build(kind, int(df1), float(df2_min), float(df2_max), float(tol))


@functools.lru_cache(maxsize=64)
def _build(kind, df1, df2_min, df2_max, tol):
    x0, x1 = (0.0, T_MAX) if kind == "t" else LOG_G_RANGE
    log_df = df2_max / df2_min > LOG_RATIO
    c_lo, c_hi = (np.log(df2_min), np.log(df2_max)) if log_df else (1.0 / df2_max, 1.0 / df2_min)
    if c_hi - c_lo < 1e-12:  # a single df2: widen a little so that the grid has a width
        c_lo, c_hi = c_lo - 1e-6 * max(abs(c_lo), 1e-3), c_hi + 1e-6 * max(abs(c_hi), 1e-3)
    n_x, n_c = int(np.ceil((x1 - x0) * 16)) + 1, 4
    while True:
        if n_x * n_c > MAX_ENTRIES:
            logger.info("z table for %s(%d, %.3g..%.3g) would exceed %d entries: exact z for every value",
                        kind, df1, df2_min, df2_max, MAX_ENTRIES)
            return exact_table(kind, df1)
        xs = np.linspace(x0, x1, n_x)
        cs = np.linspace(c_lo, c_hi, n_c)
        values = _exact(kind, df1, xs[:, np.newaxis], _df_of(cs, log_df)[np.newaxis, :])
        table = ZTable(kind=kind, df1=int(df1), table=np.ascontiguousarray(values), x0=float(x0),
                       hx=float(xs[1] - xs[0]), c0=float(c_lo), hc=float(cs[1] - cs[0]), log_df=bool(log_df),
                       max_error=np.inf)
        xm, cm = (xs[:-1] + xs[1:]) / 2, (cs[:-1] + cs[1:]) / 2

        def error(px, pc):
            gx, gc = np.meshgrid(px, pc, indexing="ij")
            return float(np.max(np.abs(_lookup(table, gx, gc) - _exact(kind, df1, gx, _df_of(gc, log_df)))))

        err_x, err_c, err_m = error(xm, cs), error(xs, cm), error(xm, cm)
        worst = max(err_x, err_c, err_m)
        if worst <= tol:
            logger.debug("z table %s(%d, %.3g..%.3g): %d x %d, error %.2g", kind, df1, df2_min, df2_max,
                         n_x, n_c, worst)
            values.setflags(write=False)
            return ZTable(kind=kind, df1=int(df1), table=values, x0=table.x0, hx=table.hx, c0=table.c0,
                          hc=table.hc, log_df=table.log_df, max_error=worst)
        if err_x >= err_c:
            n_x = 2 * n_x - 1
        else:
            n_c = 2 * n_c - 1


def to_z(stat, df1, df2, *, kind=None, table=None):
    """z scores of t/v or F/G values with per-value ``df2`` (float64 arrays).

    Parameters
    ----------
    stat : array-like
    df1 : int
    df2 : array-like
        Same shape as ``stat`` (or broadcastable).
    kind : {'t', 'F'}, optional
        How ``stat`` is distributed: Student's t (signed, df1 = 1) or F(df1,
        df2). Default: 't' when df1 is 1, 'F' otherwise.
    table : ZTable, optional
        Interpolation table of the same kind (see :func:`z_table`); exact when None.

    Returns
    -------
    ndarray of float64
        As :func:`voxstats.welch.g_to_z`, to ``table.max_error``.
    """
    stat = np.asarray(stat, dtype=np.float64)
    df2 = np.broadcast_to(np.asarray(df2, dtype=np.float64), stat.shape)
    kind = ("t" if df1 == 1 else "F") if kind is None else kind
    if kind not in ("t", "F") or (kind == "t" and df1 != 1):
        raise ValueError(f"Invalid value for the 'kind' parameter: expected 't' (df1 = 1) or 'F', got {kind!r}")
    if table is None:
        table = exact_table(kind, df1)
    elif table.kind != kind:
        raise ValueError(f"table: built for kind {table.kind!r}, not {kind!r}")
    out = np.empty(stat.size)
    _, code, values, x0, hx, c0, hc, log_df = table.arguments()
    _zscore_numba.to_z_array(np.ravel(stat), float(df1), np.ascontiguousarray(np.ravel(df2)), code,
                             values, x0, hx, c0, hc, log_df, out)
    return out.reshape(stat.shape)
