"""Variance groups in the permutation engine: v and G maps of rearranged data.

With more than one variance group (PALM ``-vg``), a t contrast is tested with
the Aspin-Welch v and an F contrast with the G statistic
(:mod:`voxstats.welch`), both converted to z with their voxel's degrees of
freedom before any comparison, maximum, TFCE or cluster (as PALM does). The
groups change the statistic, not the rearrangements.

For a group of rearrangements, one matrix product per block of voxels gives
the data's projections on the model basis and on its rows within each
variance group; another, on the squared data, each group's sum of squares; a
compiled kernel (:mod:`voxstats._welch_numba`) turns them into z while they are
in cache. As for t, a rearrangement moves the small basis, never the data.
"""

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _welch_numba, _zscore_numba
from .errors import ParameterError
from .glm import effect_basis
from .welch import auto_variance_groups, check_group_sizes, make_variance_groups, residual_dof
from .zscore import z_table

logger = logging.getLogger(__name__)

__all__ = ["WelchJob", "ZConverter", "df_range", "make_welch_job", "make_z_converter", "read_variance_groups",
           "resolve_variance_groups", "welch_maps"]

VOXEL_BLOCK = 1024  # voxels per matrix product: the projections of a group stay in cache


@dataclass(frozen=True)
class WelchJob:
    """What the kernels need to compute v or G for one contrast.

    Attributes
    ----------
    kind : {'v', 'G'}
    q : int
        Rank of the contrast.
    basis : (n_subjects, p) ndarray of float64
        Orthonormal basis of the model space, columns [constant?, nuisance,
        tested]; rows are bit-identical where the design rows are equal.
    drop_constant : bool
        The first column is the constant vector, it is nuisance and no
        rearrangement flips signs: the residualised data's projection on it is
        exactly 0 and is not computed.
    masks : (K, n_subjects) ndarray of float64
        Indicator of each variance group.
    gram : (K, p, p) ndarray of float64
        ``B_k' B_k`` over the rows of each group.
    d_r, sizes : (K,) ndarray of float64
        Residual degrees of freedom (``sum of diag(R)``) and size of each group.
    table : voxstats.zscore.ZTable
        z conversion for the contrast's range of degrees of freedom.
    dtype : numpy dtype
        Precision of the matrix products: float64 when two subjects share
        both their design row and their variance group (then distinct
        rearrangements can give statistics that are equal in exact
        arithmetic, and float64 products rounded to float32 keep them equal),
        float32 otherwise (no such ties exist; twice as fast).
    two : tuple or None
        Two groups and a rank-1 contrast: the constants of the closed form
        (:func:`voxstats._welch_numba.welch_z_two`): Q_1 over the projected
        coordinates, the coefficients of the eigenvalues 0 and 1 of Q_2, the
        other eigenvalues and their coefficients.
    """

    kind: str
    q: int
    basis: np.ndarray
    drop_constant: bool
    masks: np.ndarray
    gram: np.ndarray
    d_r: np.ndarray
    sizes: np.ndarray
    table: object
    dtype: object = np.float64
    two: tuple | None = None

    @property
    def n_groups(self):
        return self.masks.shape[0]

    @property
    def width(self):
        """Basis columns projected."""
        return self.basis.shape[1] - int(self.drop_constant)


def read_variance_groups(path):
    """Read a variance-groups file (PALM ``-vg``): one label per subject.

    Accepts PALM's files (CSV without a header, one integer per line), FSL
    VEST files (``/NumWaves 1``, ``/Matrix``) and plain text with one label
    per line. A first line that is not a number above lines of numbers is a
    header (a one-column table). Labels may also be words (then without a
    header line); numeric labels are read as numbers.

    Raises
    ------
    ValueError
        Naming the file and line, for a missing file or a line with more than
        one label.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file does not exist")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: expected a text file with one variance group label per line") from None
    labels, numbered = [], []
    in_matrix = not any(line.strip().startswith("/Matrix") for line in lines)
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if line.startswith("/Matrix"):
            in_matrix = True
            continue
        if not line or line.startswith(("#", "/")) or not in_matrix:
            continue
        fields = [f for f in re.split(r"[,\t ]+", line) if f]
        if len(fields) != 1:
            raise ValueError(f"{path}, line {lineno}: expected one variance group label per line, "
                             f"got {len(fields)}")
        labels.append(fields[0])
        numbered.append(lineno)

    def number(token):
        try:
            value = float(token)
        except ValueError:
            return None
        return int(value) if value == int(value) else value

    values = [number(v) for v in labels]
    if values and values[0] is None and all(v is not None for v in values[1:]):
        values, labels = values[1:], labels[1:]  # a header
    if not labels:
        raise ValueError(f"{path}: expected one variance group label per line, got none")
    if all(v is not None for v in values):
        return np.array(values)
    return np.array(labels)


def resolve_variance_groups(variance_groups, n_subjects, *, exchangeability_blocks=None, whole_blocks=False):
    """The variance groups of a run, or None when there is only one.

    Parameters
    ----------
    variance_groups : None, 'auto' or (n_subjects,) array-like
        Labels, or 'auto' for PALM's groups derived from the exchangeability
        blocks (:func:`voxstats.welch.auto_variance_groups`; one group without
        blocks).
    n_subjects : int
    exchangeability_blocks : (n_subjects,) array-like, optional
    whole_blocks : bool

    Returns
    -------
    voxstats.welch.VarianceGroups or None

    Raises
    ------
    voxstats.errors.ParameterError
        ``variance_groups``: not 'auto' nor one label per subject, or groups of
        a single subject (:func:`voxstats.welch.check_group_sizes`; e.g.
        labels 1..n, or 'auto' from blocks of one subject each). v and G
        need at least 2 subjects per group. PALM only warns about such groups
        and suggests ``-removevgbysize 1`` (drop their subjects); voxstats
        refuses them, so that no entry point computes a meaningless v.
    """
    if variance_groups is None:
        return None
    source = ""
    if isinstance(variance_groups, str):
        if variance_groups != "auto":
            raise ParameterError("variance_groups", "expected None, 'auto' or one label per subject, "
                                 f"got {variance_groups!r}")
        if exchangeability_blocks is None:
            logger.info("variance_groups='auto' without exchangeability blocks: one variance group")
            return None
        variance_groups = auto_variance_groups(exchangeability_blocks, whole_blocks=whole_blocks)
        source = " (derived from the exchangeability blocks by 'auto')"
    groups = make_variance_groups(variance_groups, n_subjects)
    check_group_sizes(groups, source=source)
    if groups.n_groups < 2:
        logger.info("One variance group: the statistics are t and F")
        return None
    return groups


def df_range(d_r, q):
    """Bounds [min, max] of the G statistic's nu2 = q (q + 2) / (3 S) over all group variances.

    S = sum_k (1 - f_k)^2 / dR_k with f on the simplex: its maximum is at a
    vertex, max_h sum_{k != h} 1 / dR_k; its minimum is at least
    (K - 1)^2 / sum_k dR_k (Cauchy-Schwarz).
    """
    d_r = np.asarray(d_r, dtype=np.float64)
    inv = 1.0 / d_r
    s_max = float(np.max(inv.sum() - inv))
    s_min = (d_r.size - 1) ** 2 / float(d_r.sum())
    scale = q * (q + 2) / 3.0
    return scale / s_max, scale / s_min


def _ordered_basis(tested, nuisance):
    """[constant?, nuisance without it, tested] and whether the constant leads."""
    n = tested.shape[0]
    constant = np.full(n, 1 / np.sqrt(n))
    if nuisance.shape[1] == 0 or np.linalg.norm(constant - nuisance @ (nuisance.T @ constant)) > 1e-8:
        return np.hstack([nuisance, tested]), False
    rest = nuisance - np.outer(constant, constant @ nuisance)
    u, s, _ = np.linalg.svd(rest, full_matrices=False)
    rest = u[:, s > 0.5]  # nuisance is orthonormal: kept directions have singular value 1
    return np.hstack([constant[:, np.newaxis], rest, tested]), True


def make_welch_job(design, contrast, groups, *, sign_flip=False):
    """Prepare v (t contrast) or G (F contrast) for the engine.

    Parameters
    ----------
    design : voxstats.design.Design
    contrast : voxstats.design.Contrast
    groups : voxstats.welch.VarianceGroups or (n_subjects,) array-like
        At least two groups.
    sign_flip : bool
        Whether the schedule flips signs (then the constant is projected too).

    Returns
    -------
    WelchJob
    """
    groups = make_variance_groups(groups, design.n_subjects)
    if groups.n_groups < 2:
        raise ParameterError("variance_groups", "v and G need at least two variance groups")
    check_group_sizes(groups)
    eb = effect_basis(design, contrast)
    basis, leads = _ordered_basis(eb.tested, eb.nuisance)
    # equal design rows get bit-identical basis rows, so relabelling them ties exactly
    _, first, inverse = np.unique(design.matrix, axis=0, return_index=True, return_inverse=True)
    basis = np.ascontiguousarray(basis[first[np.ravel(inverse)]])
    masks = (groups.codes[np.newaxis, :] == np.arange(groups.n_groups)[:, np.newaxis]).astype(np.float64)
    gram = np.einsum("kn,ni,nj->kij", masks, basis, basis)
    d_r = residual_dof(design.matrix, groups)
    q = eb.q
    kind = "v" if contrast.kind == "t" else "G"
    lo, hi = df_range(d_r, q)
    table = z_table("t" if kind == "v" else "F", q, lo, hi)
    for array in (basis, masks, gram, d_r):
        array.setflags(write=False)
    drop = bool(leads and not sign_flip)
    two = _two_group_constants(gram, drop) if groups.n_groups == 2 and q == 1 else None
    rows = np.column_stack([design.matrix, groups.codes])
    repeated = np.unique(rows, axis=0).shape[0] < rows.shape[0]
    return WelchJob(kind=kind, q=q, basis=basis, drop_constant=drop, masks=masks, gram=gram, d_r=d_r,
                    sizes=groups.sizes.astype(np.float64), table=table,
                    dtype=np.float64 if repeated or sign_flip else np.float32, two=two)


def _two_group_constants(gram, drop):
    """Constants of the two-group, rank-1 closed form (see :class:`WelchJob`)."""
    lam, vectors = np.linalg.eigh(gram[1])
    coef = vectors[-1] ** 2  # squared tested component of each eigenvector
    low, high = lam < 1e-10, lam > 1 - 1e-10
    general = ~(low | high)
    q1 = np.ascontiguousarray(gram[0][int(drop):, int(drop):])
    return (q1, float(coef[low].sum()), float(coef[high].sum()), np.ascontiguousarray(lam[general]),
            np.ascontiguousarray(coef[general]))


def _rows(welch, perms, signs):
    """The rearranged basis rows: projections (k * width * K, n) and group masks (k * (K - 1), n)."""
    k, n = perms.shape
    start = int(welch.drop_constant)
    n_groups = welch.n_groups
    proj_rows, mask_rows = [], []
    for b in range(k):
        inverse = np.empty(n, dtype=np.int64)
        inverse[perms[b]] = np.arange(n)
        rows = (welch.basis[:, start:] * signs[b][:, np.newaxis])[inverse].T  # (width, n)
        masks = welch.masks[:, inverse]  # (K, n)
        proj_rows.append(rows)
        for grp in range(n_groups - 1):
            proj_rows.append(rows * masks[grp])
        mask_rows.append(masks[:-1])
    return (np.ascontiguousarray(np.vstack(proj_rows), dtype=welch.dtype),
            np.ascontiguousarray(np.vstack(mask_rows), dtype=welch.dtype))


def welch_maps(welch, data, sum_sq, perms, signs, pool, out):
    """z maps of v or G for rearrangements ``perms``/``signs`` into ``out`` (k, n_voxels) float32.

    ``data`` is the (n_subjects, n_voxels) float32 residualised data and
    ``sum_sq`` its column sums of squares. Voxels are taken in fixed blocks
    (one thread each when ``pool`` is a thread pool). Statistics are float64,
    rounded to float32 at the end; products are float64 when rearrangements
    can tie in exact arithmetic (relabellings of equal design rows within one
    variance group, or the sign-symmetric relabellings of a balanced design),
    so that they give equal z, and float32 otherwise (``welch.dtype``).
    """
    a, m = _rows(welch, perms, signs)
    n_vox = data.shape[1]
    zargs = welch.table.arguments()

    def block(start):
        stop = min(start + VOXEL_BLOCK, n_vox)
        y = data[:, start:stop].astype(welch.dtype, copy=False)
        proj = a @ y
        usq = m @ (y * y)
        if welch.two is not None:
            d_r, sizes = welch.d_r, welch.sizes
            _welch_numba.welch_z_two(proj, usq, sum_sq[start:stop], welch.width, *welch.two, d_r[0], d_r[1],
                                     sizes[0], sizes[1], welch.kind == "G", *zargs, out[:, start:stop])
        else:
            _welch_numba.welch_z(proj, usq, sum_sq[start:stop], welch.width, welch.gram, welch.d_r,
                                 welch.sizes, welch.q, welch.kind == "G", *zargs, out[:, start:stop])

    starts = range(0, n_vox, VOXEL_BLOCK)
    if pool is None:
        for s in starts:
            block(s)
    else:
        list(pool.map(block, starts))


@dataclass(frozen=True)
class ZConverter:
    """Turns t (kind 't') or F maps with fixed degrees of freedom into z, in place.

    Attributes
    ----------
    df1 : int
    df2 : float
    table : voxstats.zscore.ZTable
    """

    df1: int
    df2: float
    table: object

    def convert(self, block):
        """Replace a (k, n) float32 block of statistics by their z scores (0 stays 0)."""
        _, code, values, x0, hx, c0, hc, log_df = self.table.arguments()
        _zscore_numba.to_z_block(block, float(self.df1), float(self.df2), code, values, x0, hx, c0, hc, log_df)


def make_z_converter(kind, df1, df2):
    """z conversion for a t (``kind`` 't', df1 = 1) or F (``kind`` 'F') contrast with ``df2`` df."""
    return ZConverter(df1=int(df1), df2=float(df2), table=z_table(kind, df1, df2, df2))
