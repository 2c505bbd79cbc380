"""Statistics robust to unequal variances: Aspin-Welch v and the G statistic, in float64.

With variance groups (PALM ``-vg``) each group of subjects has its own error
variance. A t contrast is then tested with the Aspin-Welch v and an F contrast
of rank s with the G statistic of Winkler et al. (2014), which reduces to
Welch's (1951) heteroscedastic F for one-way designs. Everything here is the
slow, obviously correct reference that the permutation kernels
(:mod:`voxstats.variance_groups`) are checked against.

Definitions (Winkler et al. 2014, Eqs. 6-7): with the OLS fit
``psi = pinv(M) Y``, residuals ``e``, the residual-forming matrix
``R = I - M pinv(M)`` and, per variance group g,
``dR_g = sum_{n in g} R_nn`` and ``w_g = dR_g / sum_{n in g} e_n**2``
(the reciprocal of the group's variance estimate), ``W = diag(w_g(n))`` and

    G = (C psi)' (C (M'WM)^-1 C')^-1 (C psi) / (Lambda s)
    Lambda = 1 + 2 (s - 1) / (s (s + 2)) * S
    S = sum_g (1 / dR_g) (1 - n_g w_g / trace W)**2

G follows approximately an F(s, nu) distribution with
``nu = s (s + 2) / (3 S)``, which is the paper's ``2 (s - 1) / (3 (Lambda - 1))``
for s > 1 and its limit for s = 1. For s = 1, ``v = C psi / sqrt(C (M'WM)^-1 C')``
is signed, ``G = v**2`` and nu = 1 / S is the Welch-Satterthwaite degrees of
freedom: for two groups v and nu are exactly Welch's t test
(``scipy.stats.ttest_ind(equal_var=False)``).

PALM's rank-1 code (``fastv`` in ``palm_core.m``, checked on PALM's Dec/2025
release) uses ``nu = 1 / (3 S)``, a third of this value (the rank > 1
expression without the division by s (s + 2) = 3); its v maps equal ours but
its z (and hence TFCE, cluster and permutation p-values, which PALM computes on
z) differ. voxstats follows the paper and Welch.

References
----------
Winkler AM, Ridgway GR, Webster MA, Smith SM, Nichols TE (2014). Permutation
inference for the general linear model. NeuroImage 92:381-397,
doi:10.1016/j.neuroimage.2014.01.060.
Welch BL (1951). On the comparison of several mean values: an alternative
approach. Biometrika 38:330-336, doi:10.2307/2332579.
Aspin AA, Welch BL (1949). Tables for use in comparisons whose accuracy
involves two variances, separately estimated. Biometrika 36:290-296,
doi:10.2307/2332668.
"""

import logging
from dataclasses import dataclass

import numpy as np
from scipy import linalg, special, stats

from .errors import ParameterError

logger = logging.getLogger(__name__)

__all__ = ["VarianceGroups", "auto_variance_groups", "check_group_sizes", "g_to_z", "make_variance_groups",
           "welch_statistic"]

_CHUNK = 4096  # voxels per chunk: bounds the float64 temporaries


@dataclass(frozen=True)
class VarianceGroups:
    """Validated variance groups.

    Attributes
    ----------
    codes : (n_subjects,) ndarray of int64
        Group index of each subject, 0 .. n_groups - 1 in order of first label.
    labels : tuple
        The user's label of each group.
    """

    codes: np.ndarray
    labels: tuple

    @property
    def n_groups(self):
        return len(self.labels)

    @property
    def sizes(self):
        return np.bincount(self.codes, minlength=self.n_groups)


def make_variance_groups(groups, n_subjects, *, name="variance_groups"):
    """Validate variance-group labels: one label per subject, any hashable values.

    Parameters
    ----------
    groups : (n_subjects,) array-like
    n_subjects : int
    name : str
        Parameter or flag named in error messages.

    Returns
    -------
    VarianceGroups

    Raises
    ------
    voxstats.errors.ParameterError
        Wrong length, or missing (NaN) labels.
    """
    if isinstance(groups, VarianceGroups):
        if groups.codes.shape != (n_subjects,):
            raise ParameterError(name, f"expected one label per subject ({n_subjects}), got {groups.codes.size}")
        return groups
    values = np.asarray(groups)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or values.shape[0] != n_subjects:
        raise ParameterError(name, f"expected one label per subject ({n_subjects}), got shape {values.shape}")
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise ParameterError(name, "contains NaN or infinite labels")
    _, first, codes = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # number groups by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    codes = rank[np.ravel(codes)].astype(np.int64)
    labels = tuple(values[np.sort(first)].tolist())
    codes.setflags(write=False)
    return VarianceGroups(codes=codes, labels=labels)


def auto_variance_groups(exchangeability_blocks, *, whole_blocks=False):
    """PALM's ``-vg auto`` for one level of exchangeability blocks.

    Within-block shuffling: each block is a variance group. Whole-block
    shuffling: the k-th subject of every block (in the order of the data)
    forms group k, since whole blocks exchange their k-th members
    (PALM's documentation, "Exchangeability blocks"; ``palm_ptree2vg``).

    Parameters
    ----------
    exchangeability_blocks : (n_subjects,) array-like, (n_subjects, n_levels) or ExchangeabilityTree
        Block label of each subject; a multi-level PALM matrix or a tree is
        handed to :func:`voxstats.exchangeability.variance_groups`.
    whole_blocks : bool

    Returns
    -------
    (n_subjects,) ndarray of int64
    """
    from .exchangeability import ExchangeabilityTree, variance_groups

    if isinstance(exchangeability_blocks, ExchangeabilityTree) or np.ndim(exchangeability_blocks) == 2:
        # a multi-level tree (PALM -eb): palm_ptree2vg's groups, numbered from 0
        return variance_groups(exchangeability_blocks) - 1
    blocks = np.asarray(exchangeability_blocks)
    if blocks.ndim != 1:
        raise ValueError(f"exchangeability_blocks: expected one label per subject, got shape {blocks.shape}")
    _, codes = np.unique(blocks, return_inverse=True)
    codes = np.ravel(codes)
    if not whole_blocks:
        return codes.astype(np.int64)
    position = np.zeros(codes.size, dtype=np.int64)
    seen = np.zeros(codes.max() + 1, dtype=np.int64)
    for i, b in enumerate(codes):
        position[i] = seen[b]
        seen[b] += 1
    return position


def check_group_sizes(groups, *, name="variance_groups", source=""):
    """Refuse variance groups of one subject: v and G need two or more per group.

    A group's variance is estimated from its own residuals; with one subject
    that estimate is a single squared residual with less than one degree of
    freedom (``dR_g = 1 - h_nn``), and v, G and their degrees of freedom are
    then meaningless (e.g. v = 47.8 where t = 9.5).

    Parameters
    ----------
    groups : VarianceGroups
    name : str
        Parameter or flag named in the message.
    source : str
        Where the groups came from, appended to the message (e.g.
        ``" (derived from the exchangeability blocks)"``).

    Raises
    ------
    voxstats.errors.ParameterError
        Naming the groups of size one by label and subject (1-based), the
        first ten of them.

    Notes
    -----
    PALM (``palm_takeargs.m``) only warns "There are variance groups with
    just one observation" and suggests ``-removevgbysize 1``, which drops
    those subjects from data and design (it does so itself with ``-vgdemean``
    or ``-ev4vg``). voxstats refuses instead: drop or merge such subjects
    explicitly.
    """
    if groups.n_groups < 2:
        return
    small = np.flatnonzero(groups.sizes < 2)
    if small.size == 0:
        return
    subject = {g: int(np.flatnonzero(groups.codes == g)[0]) + 1 for g in small[:10]}
    shown = ", ".join(f"{groups.labels[g]} (subject {subject[g]})" for g in small[:10])
    if small.size > 10:
        shown += f", ... ({small.size} groups)"
    raise ParameterError(name, f"variance groups of one subject: {shown}{source}; v and G need at least 2 "
                         "subjects per group (a group's variance is undefined with one): merge or drop them")


def residual_dof(design, groups):
    """``dR_g``: the sum of the residual-forming matrix' diagonal over each group.

    Parameters
    ----------
    design : (n_subjects, n_regressors) ndarray
    groups : VarianceGroups

    Raises
    ------
    voxstats.errors.ParameterError
        A group whose residuals are fixed by the design (``dR_g`` ~ 0), e.g. a
        group of one subject that has a regressor of its own.
    """
    m = np.asarray(design, dtype=np.float64)
    hat_diag = np.einsum("ij,ji->i", m, linalg.pinv(m))
    d_r = np.bincount(groups.codes, weights=1.0 - hat_diag, minlength=groups.n_groups)
    bad = [groups.labels[g] for g in np.flatnonzero(d_r < 1e-8)]
    if bad:
        raise ParameterError("variance_groups", f"groups {bad} have no residual degrees of freedom under this "
                             "design (their variance cannot be estimated); merge them with other groups")
    return d_r


def _contrast_weights(contrast):
    weights = np.atleast_2d(np.asarray(getattr(contrast, "weights", contrast), dtype=np.float64))
    return weights


def welch_statistic(data, design, contrast, groups):
    """v (t contrast) or G (F contrast) at every voxel, by the paper's formulas in float64.

    Parameters
    ----------
    data : (n_subjects, n_voxels) array-like
    design : voxstats.design.Design or (n_subjects, n_regressors) array-like
    contrast : voxstats.design.Contrast or (s, n_regressors) array-like
        A Contrast of kind 'F' gives G even for rank 1 (G = v**2); weights
        give v for one row and G for several.
    groups : VarianceGroups or (n_subjects,) array-like

    Returns
    -------
    stat : (n_voxels,) ndarray of float64
        Signed v (t contrast), or G; 0 where the residuals of any group
        vanish (constant voxels).
    df2 : (n_voxels,) ndarray of float64
        nu = s (s + 2) / (3 S) (see the module notes); 1 where stat is 0.
    """
    m = np.asarray(getattr(design, "matrix", design), dtype=np.float64)
    c = _contrast_weights(contrast)
    n, _ = m.shape
    groups = make_variance_groups(groups, n)
    check_group_sizes(groups)
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[0] != n:
        raise ValueError(f"data: expected shape (n_subjects={n}, n_voxels), got {data.shape}")
    s = c.shape[0]
    as_f = s > 1 or getattr(contrast, "kind", "t") == "F"
    pinv_m = linalg.pinv(m)
    d_r = residual_dof(m, groups)
    sizes = groups.sizes.astype(np.float64)
    onehot = (groups.codes[:, np.newaxis] == np.arange(groups.n_groups)).astype(np.float64)  # (n, G)
    # M' W M = sum_g w_g M_g' M_g
    gram = np.einsum("ig,ij,ik->gjk", onehot, m, m)
    n_vox = data.shape[1]
    stat = np.zeros(n_vox)
    df2 = np.ones(n_vox)
    for start in range(0, n_vox, _CHUNK):
        y = np.asarray(data[:, start:start + _CHUNK], dtype=np.float64)
        psi = pinv_m @ y
        resid = y - m @ psi
        rss_g = onehot.T @ resid**2  # (G, v)
        scale = np.einsum("ij,ij->j", y, y)
        ok = np.all(rss_g > 1e-20 * np.maximum(scale, 1e-300), axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = d_r[:, np.newaxis] / rss_g  # (G, v)
        w[:, ~ok] = 1.0
        frac = sizes[:, np.newaxis] * w / (sizes @ w)
        big_s = np.sum((1.0 - frac) ** 2 / d_r[:, np.newaxis], axis=0)
        lam = 1.0 + 2.0 * (s - 1) / (s * (s + 2)) * big_s
        mwm = np.einsum("gv,gjk->vjk", w, gram)
        cov = c @ np.linalg.inv(mwm) @ c.T  # (v, s, s)
        effect = (c @ psi).T  # (v, s)
        if not as_f:
            value = effect[:, 0] / np.sqrt(cov[:, 0, 0])
        else:
            value = np.einsum("vi,vi->v", effect, np.linalg.solve(cov, effect[:, :, np.newaxis])[:, :, 0])
            value = value / (lam * s)
        with np.errstate(divide="ignore"):
            nu = s * (s + 2) / (3.0 * big_s)  # inf with one group (G is then F)
        value[~ok] = 0.0
        nu[~ok] = 1.0
        stat[start:start + y.shape[1]] = value
        df2[start:start + y.shape[1]] = nu
    return stat, df2


def g_to_z(stat, df1, df2, *, kind=None):
    """z score with the same cumulative probability as v or G.

    v (kind 't') is referred to Student's t with ``df2`` degrees of freedom
    (z has v's sign); G (kind 'F') to F(df1, df2), through its upper tail
    above the median and its lower tail below it (so small G give negative
    z), as PALM's ``palm_gtoz``. Log-probabilities keep large statistics from
    saturating. SciPy's distributions; the reference of :mod:`voxstats.zscore`.

    Parameters
    ----------
    stat : array-like
    df1 : int
    df2 : float or array-like
        Broadcast against ``stat``; real values > 0.
    kind : {'t', 'F'}, optional
        Default 't' when df1 is 1, 'F' otherwise.

    Returns
    -------
    ndarray of float64
    """
    stat = np.asarray(stat, dtype=np.float64)
    df2 = np.broadcast_to(np.asarray(df2, dtype=np.float64), stat.shape)
    if (kind or ("t" if df1 == 1 else "F")) == "t":
        logp = stats.t.logsf(np.abs(stat), df2)
        return -special.ndtri_exp(logp) * np.sign(stat)
    x = np.maximum(stat, 0.0)
    upper = stats.f.logsf(x, df1, df2)
    lower = stats.f.logcdf(x, df1, df2)
    with np.errstate(divide="ignore"):
        z = np.where(upper < np.log(0.5), -special.ndtri_exp(np.minimum(upper, 0.0)),
                     special.ndtri_exp(np.minimum(lower, 0.0)))
    return z
