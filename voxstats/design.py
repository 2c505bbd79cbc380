"""Design matrices and contrasts, validated once on entry.

A design is a ``(n_subjects, n_regressors)`` matrix (NumPy array or pandas
DataFrame, whose column names are kept). A t contrast is a vector of weights
over the regressors; an F contrast is a matrix whose rows are t contrasts.
"""

import logging
import os
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Contrast", "Design", "make_contrasts", "make_design"]


@dataclass(frozen=True)
class Design:
    """A validated design matrix.

    Attributes
    ----------
    matrix : (n_subjects, n_regressors) ndarray of float64
    names : tuple of str
        Regressor names (DataFrame columns, or ``x0, x1, ...``).
    rank : int
        Rank of ``matrix``.
    demeaned : bool
        The regressors were demeaned (FSL randomise ``-D``): ``matrix`` holds
        the demeaned columns (a constant column becomes 0) and the model is fitted
        with an implicit intercept, so ``df = n_subjects - rank - 1``.
    """

    matrix: np.ndarray
    names: tuple
    rank: int
    demeaned: bool = False

    @property
    def n_subjects(self):
        return self.matrix.shape[0]

    @property
    def n_regressors(self):
        return self.matrix.shape[1]

    @property
    def df(self):
        """Residual degrees of freedom, n_subjects - rank (- 1 when demeaned)."""
        return self.n_subjects - self.rank - int(self.demeaned)

    def model(self, weights):
        """The matrix the model is fitted with, and ``weights`` to match.

        Parameters
        ----------
        weights : (q, n_regressors) ndarray
            Contrast weights.

        Returns
        -------
        matrix : (n_subjects, n_regressors[+1]) ndarray
            ``matrix``, with a column of ones appended when demeaned.
        weights : (q, n_regressors[+1]) ndarray
            The weights, with a 0 for that column.
        """
        if not self.demeaned:
            return self.matrix, weights
        ones = np.ones((self.n_subjects, 1))
        return np.hstack([self.matrix, ones]), np.hstack([weights, np.zeros((weights.shape[0], 1))])


@dataclass(frozen=True)
class Contrast:
    """A validated t (one row) or F (several rows) contrast.

    Attributes
    ----------
    name : str
    kind : {'t', 'F'}
    weights : (n_rows, n_regressors) ndarray of float64
    """

    name: str
    kind: str
    weights: np.ndarray

    @property
    def rank(self):
        """Rank of the weights: the F test's numerator degrees of freedom (1 for t)."""
        return int(np.linalg.matrix_rank(self.weights))


def make_design(design, *, demean=False, allow_rank_deficient=False):
    """Validate a design matrix and return a :class:`Design`.

    Parameters
    ----------
    design : (n_subjects, n_regressors) array-like, pandas.DataFrame, str or path
        The design. Column names of a DataFrame are kept as regressor names. A
        file name is read by :func:`voxstats.design_files.read_design` (FSL
        ``design.mat``, or CSV/TSV whose header names the regressors), as the
        command line reads ``-d``.
    demean : bool
        FSL randomise ``-D``: subtract the mean from every regressor (a
        constant column, such as an intercept, becomes 0 and cannot be tested)
        and fit with an implicit intercept, so that ``df = n - rank - 1`` as in
        randomise, which demeans the data too. A design whose non-constant
        columns become linearly dependent is an error that says so.
    allow_rank_deficient : bool
        Accept a design whose columns are linearly dependent; contrasts must then
        be estimable. By default a rank-deficient design is an error.

    Returns
    -------
    Design
    """
    if isinstance(design, Design):
        return design
    if _is_path(design, "design", "FSL design.mat or CSV/TSV"):
        from .design_files import read_design

        design = read_design(design)
    names = None
    if hasattr(design, "columns") and hasattr(design, "to_numpy"):
        names = tuple(str(c) for c in design.columns)
        try:
            matrix = design.to_numpy(dtype=float)
        except (TypeError, ValueError):
            bad = [str(c) for c in design.columns if design[c].dtype.kind not in "biuf"]
            raise ValueError(f"design: columns {bad} are not numeric; encode them as numbers first") from None
    else:
        try:
            matrix = np.array(design, dtype=float)
        except (TypeError, ValueError):
            raise ValueError("design: expected a numeric (n_subjects, n_regressors) array") from None
    if matrix.ndim == 1:
        matrix = matrix[:, np.newaxis]
    if matrix.ndim != 2:
        raise ValueError(f"design: expected a 2D (n_subjects, n_regressors) matrix, got shape {matrix.shape}")
    n, p = matrix.shape
    if names is None:
        names = tuple(f"x{i}" for i in range(p))
    if p == 0:
        raise ValueError("design: expected at least one regressor, got none")
    bad = ~np.isfinite(matrix)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"design: NaN or infinite value at row {row}, column '{names[col]}'")
    if n < p + 1:
        raise ValueError(f"design: {n} subjects is too few for {p} regressors; "
                         f"need at least {p + 1} (n_regressors + 1)")
    if demean:
        return _demeaned_design(matrix, names, allow_rank_deficient)
    rank = int(np.linalg.matrix_rank(matrix))
    if rank < p and not allow_rank_deficient:
        raise ValueError(f"design: rank-deficient design (rank {rank} < {p} regressors); "
                         f"linearly dependent columns: {_dependent(matrix, rank, names)}")
    if n - rank < 1:
        raise ValueError(f"design: no residual degrees of freedom ({n} subjects, rank {rank})")
    matrix.setflags(write=False)
    return Design(matrix=matrix, names=names, rank=rank, demeaned=bool(demean))


def _is_path(value, label=None, kind=None):
    """True for a file name; with ``label``, a missing file is an error naming the parameter."""
    if not isinstance(value, (str, os.PathLike)):
        return False
    if label is not None and not os.path.isfile(value):
        raise ValueError(f"{label}: no such file {str(value)!r} (a string names a file: {kind})")
    return True


def _dependent(matrix, rank, names):
    null = np.linalg.svd(matrix)[2][rank:]
    return [names[j] for j in np.flatnonzero(np.abs(null).max(axis=0) > 1e-8)]


def _demeaned_design(matrix, names, allow_rank_deficient):
    """FSL randomise's ``-D``: demeaned regressors, an implicit intercept, df one less.

    randomise demeans the data and every EV (a constant EV becomes 0 and drops
    out) and takes ``df = n - rank - 1``. Fitting the demeaned EVs together
    with a column of ones gives the same statistics without touching the data.
    """
    n, p = matrix.shape
    constant = np.ptp(matrix, axis=0) == 0
    demeaned = np.where(constant, 0.0, matrix - matrix.mean(axis=0))
    if constant.all():
        raise ValueError(f"design: every column ({list(names)}) is constant, so demeaning "
                         "(demean=True, randomise -D) leaves nothing to test")
    kept = demeaned[:, ~constant]
    rank = int(np.linalg.matrix_rank(kept))
    if rank < kept.shape[1] and not allow_rank_deficient:
        kept_names = [nm for nm, c in zip(names, constant) if not c]
        original = int(np.linalg.matrix_rank(matrix[:, ~constant]))
        why = ("becomes rank-deficient under demeaning (demean=True, randomise -D); "
               "drop -D or a column" if original == kept.shape[1] else "is rank-deficient")
        raise ValueError(f"design: {why} (rank {rank} < {kept.shape[1]} non-constant regressors); "
                         f"linearly dependent columns: {_dependent(kept, rank, kept_names)}")
    if n - rank - 1 < 1:
        raise ValueError(f"design: no residual degrees of freedom ({n} subjects, rank {rank} "
                         "plus the intercept implied by demeaning)")
    demeaned.setflags(write=False)
    return Design(matrix=demeaned, names=names, rank=rank, demeaned=True)


def _as_weights(value, design, label):
    if isinstance(value, dict):
        unknown = [k for k in value if k not in design.names]
        if unknown:
            raise ValueError(f"{label}: unknown regressor names {unknown}; design has {list(design.names)}")
        row = np.zeros(design.n_regressors)
        for key, weight in value.items():
            row[design.names.index(key)] = float(weight)
        return row[np.newaxis]
    try:
        weights = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{label}: expected numeric weights, got {value!r}") from None
    if weights.ndim == 1:
        weights = weights[np.newaxis]
    if weights.ndim != 2:
        raise ValueError(f"{label}: expected a vector or a matrix of weights, got shape {weights.shape}")
    return weights


def _check_contrast(weights, design, label):
    p = design.n_regressors
    if weights.shape[1] != p:
        raise ValueError(f"{label}: has {weights.shape[1]} weights but the design has {p} regressors "
                         f"({list(design.names)})")
    if not np.all(np.isfinite(weights)):
        raise ValueError(f"{label}: NaN or infinite weight")
    if not np.any(weights):
        raise ValueError(f"{label}: all weights are zero")
    # Estimable: each row lies in the row space of the design.
    _, s, vt = np.linalg.svd(design.matrix, full_matrices=True)
    null_space = vt[design.rank:]
    if null_space.size and np.abs(weights @ null_space.T).max() > 1e-8 * max(1.0, np.abs(weights).max()):
        zeroed = [design.names[j] for j in np.flatnonzero(~design.matrix.any(axis=0)) if np.any(weights[:, j])]
        if design.demeaned and zeroed:
            raise ValueError(f"{label}: weights {zeroed}, which demeaning (demean=True, randomise -D) "
                             "turns into a column of zeros; drop -D or that weight")
        raise ValueError(f"{label}: not estimable with this design (it weights a combination of "
                         "regressors that the design cannot separate)")


def make_contrasts(contrasts, design, *, f_contrasts=None):
    """Validate t and F contrasts against a design.

    Parameters
    ----------
    contrasts : array-like, dict, str, path or None
        t contrasts: one vector, a ``(k, n_regressors)`` matrix (one row per
        contrast), or a dict ``{name: vector}``. With a DataFrame design a vector
        may be a dict ``{column: weight}``. A file name is read by
        :func:`voxstats.design_files.read_contrasts` (FSL ``design.con``, or
        CSV/TSV whose header names the design's columns), as ``-t``.
    design : Design
    f_contrasts : dict, list, str, path or None
        F contrasts: ``{name: (k, n_regressors) matrix}`` or a list of matrices.
        Rows may be linearly dependent (as in randomise): the F test is on
        their row space, with as many numerator degrees of freedom as its rank.
        A file name is read by :func:`voxstats.design_files.read_f_contrasts`
        (FSL ``design.fts``, or CSV/TSV naming t contrasts), as ``-f``: each F
        contrast stacks the t contrasts it selects.

    Returns
    -------
    tuple of Contrast
        t contrasts first (named ``tstat1, tstat2, ...`` unless named), then F
        contrasts (``fstat1, ...``).
    """
    result = []
    if _is_path(contrasts, "contrasts", "FSL design.con or CSV/TSV"):
        from .design_files import read_contrasts

        contrasts = read_contrasts(contrasts, design_columns=list(design.names))
    if contrasts is not None:
        # a dict of scalars keyed by column names is one contrast {column: weight};
        # any other dict maps contrast names to contrasts
        single = isinstance(contrasts, dict) and all(
            k in design.names and np.ndim(v) == 0 for k, v in contrasts.items())
        if isinstance(contrasts, dict) and not single:
            items = list(contrasts.items())
        else:
            weights = _as_weights(contrasts, design, "contrasts")
            items = [(f"tstat{i + 1}", row) for i, row in enumerate(weights)]
        for name, value in items:
            weights = _as_weights(value, design, f"contrast '{name}'")
            if weights.shape[0] != 1:
                raise ValueError(f"contrast '{name}': a t contrast is one row of weights, "
                                 f"got {weights.shape[0]} rows (use f_contrasts for F tests)")
            _check_contrast(weights, design, f"contrast '{name}'")
            result.append(Contrast(name=str(name), kind="t", weights=weights))
    if _is_path(f_contrasts, "f_contrasts", "FSL design.fts or CSV/TSV"):
        from .design_files import read_f_contrasts

        f_contrasts = read_f_contrasts(f_contrasts, t_contrasts={c.name: c.weights[0] for c in result})
    if f_contrasts is not None:
        items = (list(f_contrasts.items()) if isinstance(f_contrasts, dict)
                 else [(f"fstat{i + 1}", m) for i, m in enumerate(f_contrasts)])
        for name, value in items:
            weights = _as_weights(value, design, f"F contrast '{name}'")
            _check_contrast(weights, design, f"F contrast '{name}'")
            contrast = Contrast(name=str(name), kind="F", weights=weights)
            if contrast.rank < weights.shape[0]:
                logger.warning("F contrast '%s': its %d rows have rank %d; F is divided by the rank (its "
                               "numerator df). FSL randomise divides by the number of rows: its fstat is "
                               "%d/%d of this one (p-values of the statistic are the same)", name,
                               weights.shape[0], contrast.rank, contrast.rank, weights.shape[0])
            result.append(contrast)
    if not result:
        raise ValueError("contrasts: expected at least one t or F contrast, got none")
    names = [c.name for c in result]
    if len(set(names)) != len(names):
        raise ValueError(f"contrasts: duplicate names {names}")
    return tuple(result)
