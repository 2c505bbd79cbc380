"""Design matrices and contrasts, validated once on entry.

A design is a ``(n_subjects, n_regressors)`` matrix (NumPy array or pandas
DataFrame, whose column names are kept). A t contrast is a vector of weights
over the regressors; an F contrast is a matrix whose rows are t contrasts.
"""

import logging
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
    demeaned : bool
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
        """Residual degrees of freedom, n_subjects - rank."""
        return self.n_subjects - self.rank


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
        return self.weights.shape[0]


def make_design(design, *, demean=False, allow_rank_deficient=False):
    """Validate a design matrix and return a :class:`Design`.

    Parameters
    ----------
    design : (n_subjects, n_regressors) array-like or pandas.DataFrame
        The design. Column names of a DataFrame are kept as regressor names.
    demean : bool
        Subtract the mean from every regressor (FSL randomise ``-D``). Constant
        columns (an intercept) are left unchanged.
    allow_rank_deficient : bool
        Accept a design whose columns are linearly dependent; contrasts must then
        be estimable. By default a rank-deficient design is an error.

    Returns
    -------
    Design
    """
    if isinstance(design, Design):
        return design
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
        constant = np.ptp(matrix, axis=0) == 0
        matrix = matrix - np.where(constant, 0.0, matrix.mean(axis=0))
    rank = int(np.linalg.matrix_rank(matrix))
    if rank < p and not allow_rank_deficient:
        null = np.linalg.svd(matrix)[2][rank:]
        involved = [names[j] for j in np.flatnonzero(np.abs(null).max(axis=0) > 1e-8)]
        raise ValueError(f"design: rank-deficient design (rank {rank} < {p} regressors); "
                         f"linearly dependent columns: {involved}")
    if n - rank < 1:
        raise ValueError(f"design: no residual degrees of freedom ({n} subjects, rank {rank})")
    matrix.setflags(write=False)
    return Design(matrix=matrix, names=names, rank=rank, demeaned=bool(demean))


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
    if np.linalg.matrix_rank(weights) < weights.shape[0]:
        raise ValueError(f"{label}: its {weights.shape[0]} rows are linearly dependent")
    # Estimable: each row lies in the row space of the design.
    _, s, vt = np.linalg.svd(design.matrix, full_matrices=True)
    null_space = vt[design.rank:]
    if null_space.size and np.abs(weights @ null_space.T).max() > 1e-8 * max(1.0, np.abs(weights).max()):
        raise ValueError(f"{label}: not estimable with this design (it weights a combination of "
                         "regressors that the design cannot separate)")


def make_contrasts(contrasts, design, *, f_contrasts=None):
    """Validate t and F contrasts against a design.

    Parameters
    ----------
    contrasts : array-like, dict or None
        t contrasts: one vector, a ``(k, n_regressors)`` matrix (one row per
        contrast), or a dict ``{name: vector}``. With a DataFrame design a vector
        may be a dict ``{column: weight}``.
    design : Design
    f_contrasts : dict, list or None
        F contrasts: ``{name: (q, n_regressors) matrix}`` or a list of matrices.

    Returns
    -------
    tuple of Contrast
        t contrasts first (named ``tstat1, tstat2, ...`` unless named), then F
        contrasts (``fstat1, ...``).
    """
    result = []
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
    if f_contrasts is not None:
        items = (list(f_contrasts.items()) if isinstance(f_contrasts, dict)
                 else [(f"fstat{i + 1}", m) for i, m in enumerate(f_contrasts)])
        for name, value in items:
            weights = _as_weights(value, design, f"F contrast '{name}'")
            _check_contrast(weights, design, f"F contrast '{name}'")
            result.append(Contrast(name=str(name), kind="F", weights=weights))
    if not result:
        raise ValueError("contrasts: expected at least one t or F contrast, got none")
    names = [c.name for c in result]
    if len(set(names)) != len(names):
        raise ValueError(f"contrasts: duplicate names {names}")
    return tuple(result)
