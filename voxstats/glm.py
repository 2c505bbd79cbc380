"""Ordinary least squares and the t and F statistics of contrasts.

Everything here is float64 and is the reference the permutation kernels are
checked against. Voxels whose data are constant (or all zero) get statistic 0.
"""

import logging
from dataclasses import dataclass

import numpy as np
from scipy import linalg, special

logger = logging.getLogger(__name__)

__all__ = ["EffectBasis", "contrast_statistic", "effect_basis", "f_to_z", "glm_estimates"]

_CHUNK = 4096  # voxels per chunk: bounds the float64 temporaries


@dataclass(frozen=True)
class EffectBasis:
    """Orthonormal bases of the tested and nuisance spaces of one contrast.

    The null hypothesis ``C @ beta = 0`` confines the fitted values to the span of
    ``M @ N`` (``N`` spans the null space of ``C``): that span is the nuisance
    space. The tested space is the rest of the span of ``M``; its dimension is the
    rank of ``C``. This is the partition of Winkler et al. (2014), Appendix A.

    Attributes
    ----------
    tested : (n_subjects, q) ndarray
        Orthonormal basis of the tested space. For a t contrast (q = 1) it points
        in the direction of a positive ``c @ beta``.
    nuisance : (n_subjects, r) ndarray
        Orthonormal basis of the nuisance space (r may be 0).
    df : int
        Residual degrees of freedom of the full model.
    kind : {'t', 'F'}
    """

    tested: np.ndarray
    nuisance: np.ndarray
    df: int
    kind: str

    @property
    def basis(self):
        """``[tested, nuisance]``: an orthonormal basis of the whole model space."""
        return np.hstack([self.tested, self.nuisance])

    @property
    def q(self):
        return self.tested.shape[1]

    def residualize(self, data, *, out=None):
        """Return ``R_z @ data``: data with the nuisance space projected out (chunked).

        Voxels whose data lie in the nuisance space up to rounding (constant
        voxels when the constant is nuisance) get exactly 0, so that no
        rearrangement of their rounding noise yields a statistic; the same
        criterion as :func:`contrast_statistic`'s degenerate voxels.
        """
        out = np.empty(data.shape, dtype=data.dtype) if out is None else out
        z = self.nuisance
        for start in range(0, data.shape[1], _CHUNK):
            block = np.asarray(data[:, start:start + _CHUNK], dtype=np.float64)
            if z.shape[1]:
                scale = np.einsum("ij,ij->j", block, block)
                block = block - z @ (z.T @ block)
                rss = np.einsum("ij,ij->j", block, block)
                block[:, ~(rss > 1e-20 * np.maximum(scale, 1e-300))] = 0.0
            out[:, start:start + _CHUNK] = block
        return out


def _orthonormal(matrix, *, rtol=1e-10):
    """Orthonormal basis of the column span of ``matrix`` (SVD based)."""
    if matrix.shape[1] == 0:
        return np.zeros((matrix.shape[0], 0))
    u, s, _ = linalg.svd(matrix, full_matrices=False)
    keep = s > rtol * max(s.max(), 1e-300)
    return u[:, keep]


def effect_basis(design, contrast):
    """Partition the model space of ``design`` for ``contrast``.

    Parameters
    ----------
    design : voxstats.design.Design
    contrast : voxstats.design.Contrast

    Returns
    -------
    EffectBasis
    """
    m, c = design.model(contrast.weights)
    pinv_xtx = linalg.pinv(m.T @ m)
    # Nuisance space: fitted values allowed under H0 (beta in the null space of C).
    null_c = linalg.null_space(c)
    nuisance = _orthonormal(m @ null_c)
    # Tested space: spanned by M (M'M)^+ C', orthogonal to the nuisance space.
    a = m @ pinv_xtx @ c.T
    a = a - nuisance @ (nuisance.T @ a)
    tested = _orthonormal(a)
    if tested.shape[1] != contrast.rank:
        raise ValueError(f"contrast '{contrast.name}': not estimable with this design")
    if contrast.kind == "t":
        tested = a / np.linalg.norm(a)
    return EffectBasis(tested=tested, nuisance=nuisance, df=design.df, kind=contrast.kind)


def contrast_statistic(data, design, contrast):
    """t or F statistic of ``contrast`` at every voxel, by OLS in float64.

    Parameters
    ----------
    data : (n_subjects, n_voxels) array-like
    design : voxstats.design.Design
    contrast : voxstats.design.Contrast

    Returns
    -------
    stat : (n_voxels,) ndarray of float64
        t values for a t contrast, F values for an F contrast; 0 where the
        residual variance is zero (constant voxels).
    df : int
        Residual degrees of freedom.

    Notes
    -----
    ``beta = pinv(M) Y``, ``sigma^2 = RSS / (n - rank M)``,
    ``t = c beta / sqrt(sigma^2 c (M'M)^+ c')`` and
    ``F = (C beta)' (C (M'M)^+ C')^{-1} (C beta) / (q sigma^2)``, as in statsmodels'
    ``t_test`` and ``f_test``. A demeaned design (randomise ``-D``) is fitted
    with an implicit intercept: the statistics of randomise's demeaned data
    on the demeaned design, with ``df = n - rank - 1``.
    """
    m, c = design.model(contrast.weights)
    n, n_vox = data.shape
    if n != design.n_subjects:
        raise ValueError(f"data has {n} subjects (rows) but the design has {design.n_subjects}")
    pinv_m = linalg.pinv(m)
    pinv_xtx = linalg.pinv(m.T @ m)
    middle = linalg.pinv(c @ pinv_xtx @ c.T)  # pinv: the rows may be dependent (rank q)
    q = contrast.rank
    df = design.df
    stat = np.zeros(n_vox)
    for start in range(0, n_vox, _CHUNK):
        y = np.asarray(data[:, start:start + _CHUNK], dtype=np.float64)
        beta = pinv_m @ y
        resid = y - m @ beta
        rss = np.einsum("ij,ij->j", resid, resid)
        sigma2 = rss / df
        effect = c @ beta
        with np.errstate(divide="ignore", invalid="ignore"):
            if contrast.kind == "t":
                value = effect[0] / np.sqrt(sigma2 * (c @ pinv_xtx @ c.T)[0, 0])
            else:
                value = np.einsum("iv,ij,jv->v", effect, middle, effect) / (q * sigma2)
        scale = np.einsum("ij,ij->j", y, y)
        degenerate = ~(rss > 1e-20 * np.maximum(scale, 1e-300)) | ~np.isfinite(value)
        value[degenerate] = 0.0
        stat[start:start + y.shape[1]] = value
    return stat, df


def f_to_z(f, df1, df2):
    """Convert F statistics to z scores with the same upper-tail probability.

    Uses the log survival function so that large F values do not saturate.
    """
    f = np.asarray(f, dtype=np.float64)
    logp = np.log(np.clip(special.fdtrc(df1, df2, np.maximum(f, 0.0)), 1e-300, 1.0))
    small = logp < np.log(1e-290)
    if np.any(small):
        from scipy import stats
        logp[small] = stats.f.logsf(f[small], df1, df2)
    z = -special.ndtri_exp(logp)
    z[f <= 0] = 0.0
    return z


def glm_estimates(data, design, t_contrasts):
    """Parameter estimates, COPEs, VARCOPEs and residual variance, as randomise ``--glm_output``.

    Parameters
    ----------
    data : (n_subjects, n_voxels) array-like
    design : voxstats.design.Design
    t_contrasts : sequence of voxstats.design.Contrast
        The t contrasts (one row each).

    Returns
    -------
    pe : (n_regressors, n_voxels) ndarray of float32
        ``pinv(X) @ Y`` (with ``-D``, X and Y demeaned; a constant EV gets 0).
    cope : (n_t, n_voxels) ndarray of float32
        ``c @ pe``.
    varcope : (n_t, n_voxels) ndarray of float32
        ``c pinv(X) pinv(X)' c' * sigmasqr``.
    sigmasqr : (n_voxels,) ndarray of float32
        RSS / (n - rank X). randomise divides by ``n - rank X`` here even with
        ``-D`` (its permutation statistics use one less); so does this.
    """
    m = design.matrix
    pinv_m = linalg.pinv(m)
    dof = design.n_subjects - design.rank
    c = np.vstack([con.weights for con in t_contrasts]) if len(t_contrasts) else np.zeros((0, m.shape[1]))
    scale = np.einsum("ij,ij->i", c @ pinv_m, c @ pinv_m)
    n_vox = data.shape[1]
    pe = np.empty((m.shape[1], n_vox), dtype=np.float32)
    cope = np.empty((c.shape[0], n_vox), dtype=np.float32)
    varcope = np.empty((c.shape[0], n_vox), dtype=np.float32)
    sigmasqr = np.empty(n_vox, dtype=np.float32)
    for start in range(0, n_vox, _CHUNK):
        y = np.asarray(data[:, start:start + _CHUNK], dtype=np.float64)
        if design.demeaned:
            y = y - y.mean(axis=0)
        beta = pinv_m @ y
        resid = y - m @ beta
        s2 = np.einsum("ij,ij->j", resid, resid) / dof
        stop = start + y.shape[1]
        pe[:, start:stop] = beta
        cope[:, start:stop] = c @ beta
        varcope[:, start:stop] = scale[:, np.newaxis] * s2
        sigmasqr[start:stop] = s2
    return pe, cope, varcope, sigmasqr
