"""numba kernel of the v and G statistics of rearranged data, from projections.

For one rearrangement ``Y*`` of the residualised data and an orthonormal basis
``B`` of the model space (columns ordered [constant?, nuisance, tested], p in
all), the kernel receives per voxel

* ``g = B' Y*`` (the last ``width`` coordinates; a leading constant column left
  out is exactly 0),
* ``h_k = B_k' Y*_k`` for the groups k < K - 1 (rows of B and Y* of group k),
* ``u_k = |Y*_k|^2`` for the groups k < K - 1, and ``|Y*|^2``.

Group k's residual sum of squares is then ``u_k - 2 h_k'g + g' Q_k g`` with
``Q_k = B_k' B_k`` (the last group's is the total RSS minus the others), its
weight ``w_k = dR_k / RSS_k``, and with ``A = B' W B = sum_k w_k Q_k`` the tested
coordinates' covariance is ``[A^-1]_TT``, whose inverse is ``L_T L_T'`` for the
trailing (tested) block of the Cholesky factor of A. So

    v = g_T * L_TT                    (rank 1)
    G = |L_T' g_T|^2 / (Lambda s)    (rank s)

the statistic of Winkler et al. (2014) in the basis B (it is invariant to the
parametrisation). The z score of v or G with its voxel's degrees of freedom
is written out (float32). The twin is :func:`voxstats.welch.welch_statistic`.
"""

import math

import numpy as np

from ._numba import JIT, njit
from ._zscore_numba import convert_many, coordinate


@njit(nogil=True, **JIT)
def welch_z(proj, usq, sum_sq, width, gram, d_r, sizes, q, as_f, zargs_df1, zkind, table, x0, hx, c0, hc,
            log_df, out):
    """z maps of v or G for a group of rearrangements (see the module notes).

    Parameters
    ----------
    proj : (n_maps * width * K, n_vox) float64
        Per map: ``g`` (width rows), then ``h_0 .. h_{K-2}`` (width rows each).
    usq : (n_maps * (K - 1), n_vox) float64
        Per map: ``u_0 .. u_{K-2}``.
    sum_sq : (n_vox,) float64
    width : int
        Basis coordinates projected (p or p - 1).
    gram : (K, p, p) float64
        ``Q_k``.
    d_r, sizes : (K,) float64
        Residual degrees of freedom and number of subjects of each group.
    q : int
        Rank of the contrast (the last q coordinates are tested).
    as_f : bool
        An F contrast: G (= v**2 when q = 1) rather than the signed v.
    zargs_df1, zkind, table, x0, hx, c0, hc, log_df
        The z conversion (:func:`voxstats._zscore_numba.to_z`).
    out : (n_maps, n_vox) float32
        z; 0 where the total or a group's residual sum of squares vanishes.
    """
    n_groups = gram.shape[0]
    p = gram.shape[1]
    off = p - width
    n_maps, n_vox = out.shape
    m = width * n_groups
    g = np.zeros(p)
    rss = np.empty(n_groups)
    a = np.empty((p, p))
    stats = np.empty(n_vox)
    dfs = np.empty(n_vox)
    z = np.empty(n_vox)
    for b in range(n_maps):
        base = b * m
        for v in range(n_vox):
            stats[v] = 0.0
            dfs[v] = c0
            ss = sum_sq[v]
            norm = 0.0
            for k in range(width):
                x = proj[base + k, v]
                g[off + k] = x
                norm += x * x
            total = ss - norm
            if not (total > 1e-12 * ss and ss > 0.0):
                continue
            rest = total
            bad = False
            for grp in range(n_groups - 1):
                row = base + width * (grp + 1)
                cross = 0.0
                for k in range(width):
                    cross += proj[row + k, v] * g[off + k]
                quad = 0.0
                for i in range(off, p):
                    gi = g[i]
                    acc = 0.0
                    for j in range(off, p):
                        acc += gram[grp, i, j] * g[j]
                    quad += gi * acc
                r = usq[b * (n_groups - 1) + grp, v] - 2.0 * cross + quad
                rss[grp] = r
                rest -= r
                if not r > 1e-12 * ss:
                    bad = True
            rss[n_groups - 1] = rest
            if bad or not rest > 1e-12 * ss:
                continue
            # weights, Welch's sum and A = sum_k w_k Q_k (lower triangle)
            trace = 0.0
            for grp in range(n_groups):
                rss[grp] = d_r[grp] / rss[grp]  # now the weight w_k
                trace += sizes[grp] * rss[grp]
            big_s = 0.0
            for grp in range(n_groups):
                e = 1.0 - sizes[grp] * rss[grp] / trace
                big_s += e * e / d_r[grp]
            for i in range(p):
                for j in range(i + 1):
                    acc = 0.0
                    for grp in range(n_groups):
                        acc += rss[grp] * gram[grp, i, j]
                    a[i, j] = acc
            # Cholesky factor in place (lower triangle)
            for j in range(p):
                d = a[j, j]
                for k in range(j):
                    d -= a[j, k] * a[j, k]
                d = math.sqrt(d)
                a[j, j] = d
                for i in range(j + 1, p):
                    acc = a[i, j]
                    for k in range(j):
                        acc -= a[i, k] * a[j, k]
                    a[i, j] = acc / d
            if q == 1 and not as_f:
                stat = g[p - 1] * a[p - 1, p - 1]
                nu = 1.0 / big_s
            else:
                # |L_T' g_T|^2 with L_T the trailing q x q block
                quad = 0.0
                t0 = p - q
                for j in range(t0, p):
                    acc = 0.0
                    for i in range(j, p):
                        acc += a[i, j] * g[i]
                    quad += acc * acc
                lam = 1.0 + 2.0 * (q - 1) / (q * (q + 2.0)) * big_s
                stat = quad / (lam * q)
                nu = q * (q + 2.0) / (3.0 * big_s)
            stats[v] = stat
            dfs[v] = coordinate(nu, log_df)
        convert_many(stats, dfs, zargs_df1, zkind, table, x0, hx, c0, hc, log_df, z)
        for v in range(n_vox):
            out[b, v] = z[v]


@njit(nogil=True, **JIT)
def welch_z_two(proj, usq, sum_sq, width, q1, c0, c1, lam, coef, d1, d2, n1, n2, as_f, zargs_df1, zkind, table,
                x0, hx, c0_table, hc, log_df, out):
    """:func:`welch_z` for two variance groups and a rank-1 contrast, in closed form.

    With ``B'B = I``, ``A = w1 Q_1 + w2 Q_2 = w1 I + (w2 - w1) Q_2``; with the
    eigenvalues ``lam_k`` of ``Q_2`` and ``a_k`` the squared tested components
    of its eigenvectors, ``[A^-1]_TT = sum_k a_k / (w1 (1 - lam_k) + w2 lam_k)``
    (``c0`` and ``c1`` collect the terms with lam = 0 and 1, ``lam``/``coef`` the
    others) and v = g_T / sqrt([A^-1]_TT). Welch's nu = 1 / (f2^2/d1 + f1^2/d2)
    with f_k = n_k w_k / (n1 w1 + n2 w2). ``q1`` is Q_1 over the projected
    coordinates; the tested coordinate is the last. Each map is computed in
    passes over the voxels that the compiler vectorises, then converted to z.
    """
    n_maps, n_vox = out.shape
    m = 2 * width
    inv_d1 = 1.0 / d1
    inv_d2 = 1.0 / d2
    n_gen = lam.shape[0]
    r1 = np.empty(n_vox)
    r2 = np.empty(n_vox)
    quad = np.empty(n_vox)
    s = np.empty(n_vox)
    stat = np.empty(n_vox)
    coords = np.empty(n_vox)
    for b in range(n_maps):
        base = b * m
        u = usq[b]
        for v in range(n_vox):
            r1[v] = u[v]
            r2[v] = sum_sq[v] - u[v]  # group 2's sum of squares, less its fit below
        for i in range(width):
            gi = proj[base + i]
            hi = proj[base + width + i]
            for v in range(n_vox):
                # |g|^2 = sum over both groups; -2 h_k.g per group (h_2 = g - h_1)
                r1[v] -= 2.0 * hi[v] * gi[v]
                r2[v] -= 2.0 * (gi[v] - hi[v]) * gi[v] - gi[v] * gi[v]
            quad[:] = 0.0
            for j in range(width):
                qij = q1[i, j]
                gj = proj[base + j]
                for v in range(n_vox):
                    quad[v] += qij * gj[v]
            for v in range(n_vox):
                # g'Q_1 g, and g'Q_2 g = |g|^2 - g'Q_1 g
                r1[v] += gi[v] * quad[v]
                r2[v] -= gi[v] * quad[v]
        for v in range(n_vox):
            s[v] = (c0 * inv_d1) * r1[v] + (c1 * inv_d2) * r2[v]
        for k in range(n_gen):
            alpha = d1 * (1.0 - lam[k])
            beta = d2 * lam[k]
            ck = coef[k]
            for v in range(n_vox):
                s[v] += ck * r1[v] * r2[v] / (alpha * r2[v] + beta * r1[v])
        g_t = proj[base + width - 1]
        for v in range(n_vox):
            a = n1 * d1 * r2[v]
            c = n2 * d2 * r1[v]
            t = a + c
            inv_nu = (c * c * inv_d1 + a * a * inv_d2) / (t * t)  # 1 / Welch's nu
            floor = 1e-12 * sum_sq[v]
            ok = (r1[v] > floor) & (r2[v] > floor)
            value = g_t[v] * g_t[v] / s[v] if as_f else g_t[v] / math.sqrt(s[v])
            stat[v] = value if ok else 0.0
            coords[v] = (-math.log(inv_nu) if log_df else inv_nu) if ok else c0_table
        convert_many(stat, coords, zargs_df1, zkind, table, x0, hx, c0_table, hc, log_df, out[b])
