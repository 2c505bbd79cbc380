"""numba kernels turning t and F statistics with real degrees of freedom into z scores.

Two ways, one answer:

* exact: the regularised incomplete beta function by its continued fraction
  (modified Lentz, both tails in log space, so nothing saturates) and the
  normal quantile of a log-probability by Newton's method on ``log Phi``;
* table: a (x, 1/df) grid of exact z values (built by :mod:`voxstats.zscore`
  with SciPy) read by cubic Lagrange interpolation in both directions, ~10x
  faster; points outside the grid take the exact path.

The NumPy/SciPy twin is :func:`voxstats.welch.g_to_z`.
"""

import math

import numpy as np

from ._numba import JIT, njit

_LOG_HALF = math.log(0.5)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_TINY = 1e-300
_EPS = 1e-15
_MAX_ITER = 10000

T_KIND, F_KIND = 0, 1


@njit(**JIT)
def _betacf(a, b, x):
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    qab = a + b
    qap = a + 1.0
    qam = a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    if abs(d) < _TINY:
        d = _TINY
    d = 1.0 / d
    h = d
    for m in range(1, _MAX_ITER):
        m2 = 2.0 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        if abs(d) < _TINY:
            d = _TINY
        c = 1.0 + aa / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        if abs(d) < _TINY:
            d = _TINY
        c = 1.0 + aa / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < _EPS:
            break
    return h


@njit(**JIT)
def _stirling_tail(x):
    """log Gamma(x) - [(x - 1/2) log x - x + log(2 pi)/2], for x >= 10."""
    r = 1.0 / (x * x)
    return (1.0 / 12.0 - r * (1.0 / 360.0 - r * (1.0 / 1260.0 - r / 1680.0))) / x


@njit(**JIT)
def _log_beta(a, b):
    """log B(a, b), without the cancellation of lgamma differences when a or b is large."""
    if a < b:
        a, b = b, a
    if a < 10.0:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    # log Gamma(a) - log Gamma(a + b) by Stirling's series, written without cancellation
    ab = a + b
    diff = (-(a - 0.5) * math.log1p(b / a) - b * math.log(ab) + b
            + _stirling_tail(a) - _stirling_tail(ab))
    return math.lgamma(b) + diff


@njit(**JIT)
def log_beta_tails(a, b, x, y):
    """(log I_x(a, b), log(1 - I_x(a, b))) for a, b > 0, 0 <= x <= 1 and y = 1 - x.

    ``y`` is passed separately so that x close to 1 keeps its precision.
    """
    if x <= 0.0:
        return -np.inf, 0.0
    if y <= 0.0:
        return 0.0, -np.inf
    log_x = math.log1p(-y) if y < 0.5 else math.log(x)
    log_y = math.log1p(-x) if x < 0.5 else math.log(y)
    log_front = a * log_x + b * log_y - _log_beta(a, b)
    if x < (a + 1.0) / (a + b + 2.0):
        lower = log_front + math.log(_betacf(a, b, x)) - math.log(a)
        lower = min(lower, 0.0)
        return lower, math.log(-math.expm1(lower)) if lower < 0.0 else -np.inf
    upper = log_front + math.log(_betacf(b, a, y)) - math.log(b)
    upper = min(upper, 0.0)
    return (math.log(-math.expm1(upper)) if upper < 0.0 else -np.inf), upper


@njit(**JIT)
def _log_phi_lower(z):
    """log Phi(z) and d/dz log Phi(z) for z <= 0."""
    if z > -30.0:
        value = math.log(0.5 * math.erfc(-z / math.sqrt(2.0)))
    else:
        r = 1.0 / (z * z)
        series = 1.0 - r * (1.0 - r * (3.0 - r * (15.0 - r * (105.0 - r * 945.0))))
        value = -0.5 * z * z - math.log(-z) - _LOG_SQRT_2PI + math.log(series)
    log_density = -0.5 * z * z - _LOG_SQRT_2PI
    return value, math.exp(log_density - value)


@njit(**JIT)
def ndtri_log(log_p):
    """z <= 0 with log Phi(z) = log_p, for log_p <= log(1/2) (Newton on log Phi)."""
    if log_p >= _LOG_HALF:
        return 0.0
    if log_p == -np.inf:
        return -np.inf
    p = math.exp(log_p)
    if p > 0.1:
        z = (p - 0.5) * math.sqrt(2.0 * math.pi)
    else:
        t = -2.0 * log_p
        z = -math.sqrt(max(t - math.log(t) - math.log(2.0 * math.pi), 1e-4))
    for _ in range(100):
        value, slope = _log_phi_lower(z)
        step = (value - log_p) / slope
        z_new = min(z - step, 0.0)
        if abs(z_new - z) <= 1e-15 * max(1.0, abs(z)):
            z = z_new
            break
        z = z_new
    return z


@njit(**JIT)
def z_from_log_tails(log_lower, log_upper):
    """The z score of a distribution point from the logs of its two tail probabilities."""
    if log_upper <= log_lower:
        return -ndtri_log(log_upper)
    return ndtri_log(log_lower)


@njit(**JIT)
def t_to_z_exact(t, df):
    """z with the tail probability of Student's t = ``t`` with ``df`` (real) degrees of freedom."""
    if t == 0.0 or not df > 0.0:
        return 0.0
    t2 = t * t
    log_i, _ = log_beta_tails(0.5 * df, 0.5, df / (df + t2), t2 / (df + t2))
    log_upper = _LOG_HALF + log_i  # P(T > |t|)
    z = -ndtri_log(log_upper)
    return z if t > 0.0 else -z


@njit(**JIT)
def f_to_z_exact(f, df1, df2):
    """z with the probability of F(df1, df2) below ``f`` (upper tail above the median)."""
    if not f > 0.0:
        return -np.inf if f == 0.0 else 0.0
    scaled = df1 * f
    log_upper, log_lower = log_beta_tails(0.5 * df2, 0.5 * df1, df2 / (df2 + scaled),
                                          scaled / (df2 + scaled))
    return z_from_log_tails(log_lower, log_upper)


@njit(**JIT)
def table_lookup(table, x0, hx, c0, hc, x, c):
    """Interpolated z at (x, c) on ``table[i, j]`` = z(x0 + i hx, c0 + j hc); NaN outside.

    Cubic Lagrange interpolation in both directions on a 4 x 4 stencil,
    shifted inwards at the edges.
    """
    nx, nl = table.shape
    fx = (x - x0) / hx
    fl = (c - c0) / hc
    if fl < 0.0 and fl > -1e-6:
        fl = 0.0
    elif fl > nl - 1 and fl < nl - 1 + 1e-6:
        fl = nl - 1.0
    if not (fx >= 0.0 and fx <= nx - 1 and fl >= 0.0 and fl <= nl - 1):
        return np.nan
    ix = min(max(int(fx) - 1, 0), nx - 4)
    il = min(max(int(fl) - 1, 0), nl - 4)
    fx -= ix
    fl -= il
    f1 = fx - 1.0
    f2 = fx - 2.0
    f3 = fx - 3.0
    g1 = fl - 1.0
    g2 = fl - 2.0
    g3 = fl - 3.0
    b0 = -g1 * g2 * g3 / 6.0
    b1 = fl * g2 * g3 / 2.0
    b2 = -fl * g1 * g3 / 2.0
    b3 = fl * g1 * g2 / 6.0
    r0 = table[ix, il] * b0 + table[ix, il + 1] * b1 + table[ix, il + 2] * b2 + table[ix, il + 3] * b3
    r1 = (table[ix + 1, il] * b0 + table[ix + 1, il + 1] * b1 + table[ix + 1, il + 2] * b2
          + table[ix + 1, il + 3] * b3)
    r2 = (table[ix + 2, il] * b0 + table[ix + 2, il + 1] * b1 + table[ix + 2, il + 2] * b2
          + table[ix + 2, il + 3] * b3)
    r3 = (table[ix + 3, il] * b0 + table[ix + 3, il + 1] * b1 + table[ix + 3, il + 2] * b2
          + table[ix + 3, il + 3] * b3)
    return (-f1 * f2 * f3 * r0 + 3.0 * fx * f2 * f3 * r1 - 3.0 * fx * f1 * f3 * r2 + fx * f1 * f2 * r3) / 6.0


@njit(**JIT)
def to_z(stat, df1, df2, kind, table, x0, hx, c0, hc, log_df):
    """z of a v (``kind`` T_KIND) or G (F_KIND) value with df2 degrees of freedom.

    Uses the table when it has one (``table.shape[0] >= 4``) and the point is
    inside it (its second coordinate is log(df2) if ``log_df`` else 1/df2);
    the exact path otherwise.
    """
    if kind == T_KIND:
        if stat == 0.0:
            return 0.0
        if table.shape[0] >= 4:
            z = table_lookup(table, x0, hx, c0, hc, abs(stat), math.log(df2) if log_df else 1.0 / df2)
            if z == z:
                return z if stat > 0.0 else -z
        return t_to_z_exact(stat, df2)
    if table.shape[0] >= 4 and stat > 0.0:
        z = table_lookup(table, x0, hx, c0, hc, math.log(stat), math.log(df2) if log_df else 1.0 / df2)
        if z == z:
            return z
    return f_to_z_exact(stat, df1, df2)


@njit(**JIT)
def _interpolate(table, x0, hx, c0, hc, x, c):
    """Cubic Lagrange interpolation at (x, c), clamped to the grid (no branches)."""
    nx, nl = table.shape
    fx = min(max((x - x0) / hx, 0.0), nx - 1.0)
    fl = min(max((c - c0) / hc, 0.0), nl - 1.0)
    ix = min(max(np.int64(fx) - 1, 0), nx - 4)
    il = min(max(np.int64(fl) - 1, 0), nl - 4)
    fx -= ix
    fl -= il
    f1 = fx - 1.0
    f2 = fx - 2.0
    f3 = fx - 3.0
    g1 = fl - 1.0
    g2 = fl - 2.0
    g3 = fl - 3.0
    b0 = -g1 * g2 * g3
    b1 = 3.0 * fl * g2 * g3
    b2 = -3.0 * fl * g1 * g3
    b3 = fl * g1 * g2
    r0 = table[ix, il] * b0 + table[ix, il + 1] * b1 + table[ix, il + 2] * b2 + table[ix, il + 3] * b3
    r1 = (table[ix + 1, il] * b0 + table[ix + 1, il + 1] * b1 + table[ix + 1, il + 2] * b2
          + table[ix + 1, il + 3] * b3)
    r2 = (table[ix + 2, il] * b0 + table[ix + 2, il + 1] * b1 + table[ix + 2, il + 2] * b2
          + table[ix + 2, il + 3] * b3)
    r3 = (table[ix + 3, il] * b0 + table[ix + 3, il + 1] * b1 + table[ix + 3, il + 2] * b2
          + table[ix + 3, il + 3] * b3)
    return (-f1 * f2 * f3 * r0 + 3.0 * fx * f2 * f3 * r1 - 3.0 * fx * f1 * f3 * r2 + fx * f1 * f2 * r3) / 36.0


@njit(**JIT)
def coordinate(df2, log_df):
    """The table's second coordinate of ``df2``: log(df2) or 1/df2."""
    return math.log(df2) if log_df else 1.0 / df2


@njit(**JIT)
def convert_many(stats, coords, df1, kind, table, x0, hx, c0, hc, log_df, out):
    """z of ``stats[i]`` whose degrees of freedom have table coordinate ``coords[i]``; 0 stays 0.

    ``coords`` is :func:`coordinate` of df2 (1/df2 or log df2 as the table
    says). Two passes: the table for every value, without branches (the
    compiler vectorises it), then the exact path for the few values outside
    the grid. Gives :func:`to_z`'s values.
    """
    n = stats.shape[0]
    if table.shape[0] < 4:
        for i in range(n):
            df2 = math.exp(coords[i]) if log_df else 1.0 / coords[i]
            out[i] = 0.0 if stats[i] == 0.0 else to_z(stats[i], df1, df2, kind, table, x0, hx, c0, hc, log_df)
        return
    nx, nl = table.shape
    x_hi = x0 + hx * (nx - 1)
    c_lo = c0 - 1e-6 * hc
    c_hi = c0 + hc * (nl - 1 + 1e-6)
    outside = 0
    if kind == T_KIND:
        for i in range(n):
            value = np.float64(stats[i])
            x = abs(value)
            z = _interpolate(table, x0, hx, c0, hc, x, coords[i])
            out[i] = -z if value < 0.0 else z
            outside += (x > x_hi) | (coords[i] < c_lo) | (coords[i] > c_hi)
    else:
        for i in range(n):
            value = np.float64(stats[i])
            x = math.log(value) if value > 0.0 else -np.inf
            out[i] = _interpolate(table, x0, hx, c0, hc, x, coords[i])
            outside += (x < x0) | (x > x_hi) | (coords[i] < c_lo) | (coords[i] > c_hi)
    if outside:
        for i in range(n):
            value = np.float64(stats[i])
            c = coords[i]
            x = abs(value) if kind == T_KIND else (math.log(value) if value > 0.0 else -np.inf)
            if not (x >= x0 and x <= x_hi and c >= c_lo and c <= c_hi):
                df2 = math.exp(c) if log_df else 1.0 / c
                if value == 0.0:
                    out[i] = 0.0
                elif kind == T_KIND:
                    out[i] = t_to_z_exact(value, df2)
                else:
                    out[i] = f_to_z_exact(value, df1, df2)


@njit(**JIT)
def table_lookup_array(table, x0, hx, c0, hc, xs, cs, out):
    """:func:`table_lookup` over arrays."""
    for i in range(xs.shape[0]):
        out[i] = table_lookup(table, x0, hx, c0, hc, xs[i], cs[i])


@njit(**JIT)
def to_z_array(stats, df1, df2, kind, table, x0, hx, c0, hc, log_df, out):
    """:func:`to_z` over arrays (``df2`` per element), through :func:`convert_many`."""
    coords = np.empty(df2.shape[0])
    for i in range(df2.shape[0]):
        coords[i] = coordinate(df2[i], log_df)
    convert_many(stats, coords, df1, kind, table, x0, hx, c0, hc, log_df, out)


@njit(nogil=True, **JIT)
def to_z_block(values, df1, df2, kind, table, x0, hx, c0, hc, log_df):
    """:func:`to_z` in place over a 2D block of float32 statistics with one ``df2`` (0 stays 0)."""
    rows, cols = values.shape
    coords = np.full(cols, coordinate(df2, log_df))
    row = np.empty(cols)
    for i in range(rows):
        convert_many(values[i], coords, df1, kind, table, x0, hx, c0, hc, log_df, row)
        for j in range(cols):
            values[i, j] = row[j]
