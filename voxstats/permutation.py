"""Permutation and sign-flipping schedules, generated on demand from the seed and the row index.

A schedule is a sequence of rearrangements of the subjects: row ``i`` says that
the permuted data's subject ``j`` is the original subject ``perms[i, j]``,
multiplied by ``signs[i, j]``. Row 0 is always the identity, so the unpermuted
data belong to the null distribution. Rows are never stored: :meth:`rows`
computes any range from the seed and the row indices alone (a counter-based
generator), so memory does not grow with the number of permutations, and any
chunk can be produced anywhere (a thread, a Dask worker, a resumed run) with
the same null whatever the chunking.

Which rearrangements exist is decided by an exchangeability tree
(:mod:`voxstats.exchangeability`) and the design: only distinct
rearrangements of the design's rows count (PALM's rule). Three ways to list
them, chosen from the number ``N`` of distinct rearrangements:

``enumerate``
    ``n_perm`` is 0 or at least ``N``: every distinct rearrangement once
    (exhaustive), by unranking ``0 .. N - 1``.
``shuffle``
    ``N <= 2**62``: a keyed pseudo-random bijection of ``[0, N - 1)`` (a Feistel
    network with cycle walking) picks the ranks, so the random draws are
    distinct (without replacement) and uniform over distinct rearrangements.
``sample``
    ``N > 2**62``: independent uniform draws from the tree's group. Each
    distinct rearrangement is reached by the same number of group elements (a
    coset of the design's stabiliser), so draws are uniform over distinct
    rearrangements too; a repeat has probability below ``n_perm**2 / 2**63``
    (randomise likewise ignores repeats of huge spaces). Draws come in
    blocks of 32 rows from NumPy's Philox generator keyed by the seed, with
    the block number as its counter.
"""

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np

from .exchangeability import ExchangeabilityTree, _Arrangements, _Sampler, as_tree, row_classes

logger = logging.getLogger(__name__)

__all__ = ["PermutationSchedule", "make_schedule"]

GENERATOR = "voxstats-schedule-2"  # change when any row of any schedule changes
_SHUFFLE_LIMIT = 2 ** 62
_BLOCK = 32  # rows per Philox counter value in 'sample' mode (the engine's group)
_ROUNDS = 8  # Feistel rounds
_MATERIALISE_LIMIT = 50_000_000  # values of .permutations / .signs (400 MB of int64)
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
FEW_REARRANGEMENTS = 20  # below this, 1 / n_possible > 0.05: no p-value can reach 0.05
MANY_REARRANGEMENTS = 1_000_000  # an exhaustive enumeration beyond this is warned about


def _mix64(x):
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _feistel(x, domain, round_keys):
    """A keyed bijection of [0, domain) (balanced Feistel network, cycle walking), on uint64 arrays."""
    bits = max(2, int(domain - 1).bit_length())
    half = (bits + 1) // 2
    mask = np.uint64((1 << half) - 1)
    shift = np.uint64(half)
    x = x.astype(np.uint64)
    todo = np.ones(x.shape, dtype=bool)
    limit = np.uint64(domain)
    with np.errstate(over="ignore"):
        while todo.any():
            left, right = x[todo] >> shift, x[todo] & mask
            for key in round_keys:
                left, right = right, left ^ (_mix64(right ^ key) & mask)
            x[todo] = (left << shift) | right
            todo &= x >= limit
    return x


@dataclass(frozen=True, eq=False)
class PermutationSchedule:
    """Rearrangements of the subjects, identity first, computed on demand.

    Attributes
    ----------
    n_perm : int
        Number of rearrangements, the identity included.
    exhaustive : bool
        True when every distinct rearrangement is listed once.
    n_possible : int
        Number of distinct rearrangements the scheme allows (exact).
    permute, sign_flip : bool
    tree : ExchangeabilityTree
    method : {'enumerate', 'shuffle', 'sample'}
    key : tuple of int
        The generator's key, derived from the seed.
    """

    n_perm: int
    exhaustive: bool
    n_possible: int
    permute: bool
    sign_flip: bool
    tree: ExchangeabilityTree
    method: str
    key: tuple
    labels: np.ndarray = field(repr=False)
    _arrangements: object = field(repr=False, default=None)
    _sampler: object = field(repr=False, default=None)
    _identity: int = field(repr=False, default=0)

    @property
    def n_subjects(self):
        return self.tree.n_subjects

    @property
    def rule(self):
        """What is enumerated or drawn, in words (recorded in results)."""
        shape = self.tree.describe()
        where = {"free": "", "within blocks": " within exchangeability blocks",
                 "whole blocks": " of whole exchangeability blocks",
                 "multi-level": " allowed by a multi-level exchangeability tree"}[shape]
        parts = []
        if self.permute:
            parts.append(f"distinct rearrangements of the design's rows{where} (PALM's rule)")
        if self.sign_flip:
            unit = {"free": "of single subjects", "within blocks": "of single subjects",
                    "whole blocks": "of whole blocks", "multi-level": "as the tree allows"}[shape]
            parts.append(f"sign flips {unit}")
        return " x ".join(parts)

    def definition(self):
        """Everything the rows depend on, as a JSON-able dict (for fingerprints)."""
        digest = hashlib.blake2b(digest_size=16)
        for array in (self.tree.matrix, self.labels):
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return {"generator": GENERATOR, "method": self.method, "key": [int(k) for k in self.key],
                "n_perm": int(self.n_perm), "n_possible": str(self.n_possible),
                "permute": self.permute, "sign_flip": self.sign_flip, "tree_and_design": digest.hexdigest()}

    def rows(self, start, stop):
        """Rearrangements ``start`` to ``stop - 1``.

        Returns
        -------
        perms : (stop - start, n_subjects) ndarray of int64
        signs : (stop - start, n_subjects) ndarray of int8
        """
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.n_perm:
            raise IndexError(f"rows {start}..{stop} outside the schedule's 0..{self.n_perm}")
        if self.method == "sample":
            tau, bits = self._sampled(start, stop)
        else:
            tau, bits = self._ranked(np.arange(start, stop, dtype=np.int64))
        return self._to_subjects(tau, bits)

    def _ranked(self, index):
        """Leaf-order maps and flip bits of rows ``index`` by rank (enumerate / shuffle)."""
        j = index - 1  # row i >= 1 takes the j-th rank other than the identity's
        others = self.n_possible - 1
        if self.method == "shuffle" and others > 1:
            round_keys = np.array(self.key[2:], dtype=np.uint64)
            j = np.where(j >= 0, _feistel(np.maximum(j, 0), others, round_keys).astype(np.int64), -1)
        rank = np.where(j < 0, self._identity, j + (j >= self._identity))
        units = self.tree.n_flip_units if self.sign_flip else 0
        code, perm_rank = rank & ((1 << units) - 1), rank >> units
        if self.permute:
            tau = self._arrangements.unrank(perm_rank)
        else:
            tau = np.broadcast_to(np.arange(self.n_subjects, dtype=np.int64), (index.size, self.n_subjects))
        bits = (code[:, np.newaxis] >> np.arange(units, dtype=np.int64)) & 1
        return tau, bits.astype(np.int8)

    def _sampled(self, start, stop):
        """Leaf-order maps and flip bits by independent draws, 32 rows per Philox counter."""
        units = self.tree.n_flip_units if self.sign_flip else 0
        taus, bits = [], []
        for block in range(start // _BLOCK, (stop - 1) // _BLOCK + 1 if stop > start else start // _BLOCK):
            generator = np.random.Generator(np.random.Philox(key=np.array(self.key[:2], dtype=np.uint64),
                                                             counter=np.array([0, block, 0, 0], dtype=np.uint64)))
            if self.permute:
                tau = self._sampler.draw(generator, _BLOCK)
            else:
                tau = np.broadcast_to(np.arange(self.n_subjects, dtype=np.int64), (_BLOCK, self.n_subjects))
            flips = generator.integers(0, 2, size=(_BLOCK, units), dtype=np.int8)
            lo, hi = max(start - block * _BLOCK, 0), min(stop - block * _BLOCK, _BLOCK)
            tau, flips = tau[lo:hi].copy(), flips[lo:hi]
            if block == 0 and lo == 0:  # row 0 is the identity
                tau[0] = np.arange(self.n_subjects)
                flips[0] = 0
            taus.append(tau)
            bits.append(flips)
        if not taus:
            return np.empty((0, self.n_subjects), dtype=np.int64), np.empty((0, units), dtype=np.int8)
        return np.concatenate(taus), np.concatenate(bits)

    def _to_subjects(self, tau, bits):
        """Subject-indexed rows of leaf-order maps ``tau`` and flip bits.

        The statistic of ``y*_j = y[p_j]`` with design ``X`` is that of ``y``
        with design ``X[p^-1]``, so two rows are equivalent when their inverses
        rearrange the design's rows alike. ``tau`` enumerates distinct
        ``X[tau]``; the row is its inverse (in the same group), whose
        ``X[p^-1] = X[tau]`` are then distinct.
        """
        order = self.tree._order
        inverse = np.empty(tau.shape, dtype=np.int64)
        np.put_along_axis(inverse, tau, np.arange(tau.shape[1], dtype=np.int64)[np.newaxis], axis=1)
        perms = np.empty(tau.shape, dtype=np.int64)
        perms[:, order] = order[inverse]
        signs = np.ones(tau.shape, dtype=np.int8)
        if self.sign_flip and bits.shape[1]:
            units = self.tree.flip_units
            flipped = units >= 0
            signs[:, flipped] = 1 - 2 * bits[:, units[flipped]]
        return perms, signs

    def _all_rows(self):
        if self.n_perm * self.n_subjects > _MATERIALISE_LIMIT:
            raise ValueError(f"schedule: {self.n_perm} rows of {self.n_subjects} subjects are too many to "
                             "materialise; read ranges with rows(start, stop)")
        return self.rows(0, self.n_perm)

    @property
    def permutations(self):
        """All rows' permutations, (n_perm, n_subjects) int64: materialised, for small schedules."""
        return self._all_rows()[0]

    @property
    def signs(self):
        """All rows' signs, (n_perm, n_subjects) int8: materialised, for small schedules."""
        return self._all_rows()[1]


def _key(rng):
    """64-bit words derived from ``rng``: two Philox key words, then the Feistel round keys."""
    words = np.random.default_rng(rng).integers(0, 2 ** 63, size=2, dtype=np.int64)
    sequence = np.random.SeedSequence([int(w) for w in words])
    state = sequence.generate_state(2 + _ROUNDS, dtype=np.uint64)
    return tuple(int(w) for w in state)


def _warn_about_count(n_possible, exhaustive, labels):
    """Log a warning when the rearrangements are too few for p <= 0.05, or too many to enumerate in good time."""
    if n_possible < FEW_REARRANGEMENTS:
        what = "rearrangement exists" if n_possible == 1 else "distinct rearrangements exist"
        logger.warning("only %d %s under this design and exchangeability structure: the smallest attainable "
                       "p-value is 1/%d = %.3g, so no p-value can reach 0.05 (that needs at least %d)",
                       n_possible, what, n_possible, 1 / n_possible, FEW_REARRANGEMENTS)
    elif exhaustive and n_possible > MANY_REARRANGEMENTS:
        why = ""
        if labels is not None and np.unique(labels).size == labels.size:
            why = (" (every subject's design row is distinct, e.g. with a continuous covariate, so every "
                   "ordering counts)")
        logger.warning("exhaustive enumeration of all %d distinct rearrangements%s: this may take very long; "
                       "give a number of permutations (n_perm, randomise's -n N) for a random subset, "
                       "e.g. 5000", n_possible, why)


def make_schedule(n_subjects, n_perm, *, permute=True, sign_flip=False, exchangeability_blocks=None,
                  whole_blocks=False, design=None, rng=None):
    """The rearrangements of a permutation test, enumerated or drawn on demand.

    Parameters
    ----------
    n_subjects : int
    n_perm : int
        Number of rearrangements wanted, the identity included; 0 means all
        distinct rearrangements (randomise ``-n 0``). At or above their number,
        all are enumerated.
    permute : bool
        Shuffle subjects (as the exchangeability tree allows).
    sign_flip : bool
        Flip signs (independent and symmetric errors).
    exchangeability_blocks : (n_subjects,) or (n_subjects, n_levels) array-like or ExchangeabilityTree, optional
        One block label per subject (single level, within blocks or, with
        ``whole_blocks``, whole blocks), PALM's multi-level ``-eb`` matrix, or
        a tree (see :func:`voxstats.exchangeability.as_tree`).
    whole_blocks : bool
        Single-level blocks move as wholes, keeping their order.
    design : (n_subjects, n_regressors) array-like or Design, optional
        Subjects with equal rows are interchangeable: only distinct
        rearrangements of the rows are counted and listed. None: every
        subject distinct.
    rng : int, numpy.random.Generator or None
        Seed. An int and ``numpy.random.default_rng`` of it give the same schedule.

    Returns
    -------
    PermutationSchedule
        Identity first. Exhaustive when ``n_perm`` is 0 or at least the number
        of distinct rearrangements; otherwise the identity and ``n_perm - 1``
        random ones, uniform over distinct rearrangements (see the module notes).

    Raises
    ------
    ValueError
        Bad ``n_perm``, neither ``permute`` nor ``sign_flip``, bad blocks, or
        ``n_perm=0`` when the rearrangements are too many to enumerate (> 2**62).

    Notes
    -----
    Logs a warning when fewer than 20 distinct rearrangements exist (the
    smallest attainable p-value, 1 / ``n_possible``, is then above 0.05), and
    when an exhaustive enumeration exceeds 1,000,000 rearrangements (e.g.
    ``n_perm=0`` with a continuous covariate: 12! = 479,001,600 for 12
    subjects, where randomise, counting the tested regressor's relabellings
    only, would enumerate C(12, 6) = 924 for two groups of 6).
    """
    if not permute and not sign_flip:
        raise ValueError("make_schedule: at least one of 'permute' and 'sign_flip' must be True")
    if isinstance(n_perm, bool) or not isinstance(n_perm, (int, np.integer)) or n_perm < 0:
        raise ValueError("Invalid value for the 'n_perm' parameter: expected an integer >= 0 "
                         f"(0 for all distinct rearrangements), got {n_perm!r}")
    n_perm = int(n_perm)
    tree = as_tree(exchangeability_blocks, n_subjects, whole_blocks=whole_blocks)
    labels = row_classes(design, n_subjects) if permute else np.zeros(n_subjects, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    labels.setflags(write=False)
    arrangements = _Arrangements(tree, labels) if permute else None
    n_possible = (arrangements.count if permute else 1) * (2 ** tree.n_flip_units if sign_flip else 1)
    exhaustive = n_perm == 0 or n_perm >= n_possible
    if exhaustive and n_possible > _SHUFFLE_LIMIT:
        raise ValueError(f"Invalid value for the 'n_perm' parameter: 0 asks for all {n_possible:.3e} "
                         "distinct rearrangements, too many to enumerate; give a number")
    method = "enumerate" if exhaustive else ("shuffle" if n_possible <= _SHUFFLE_LIMIT else "sample")
    key = _key(rng)
    identity = 0
    if method != "sample":
        units = tree.n_flip_units if sign_flip else 0
        identity = (arrangements.identity_rank() if permute else 0) << units
    if exhaustive:
        logger.info("Exhaustive enumeration of all %d distinct rearrangements", n_possible)
    _warn_about_count(n_possible, exhaustive, labels if permute else None)
    return PermutationSchedule(
        n_perm=n_possible if exhaustive else n_perm, exhaustive=exhaustive, n_possible=n_possible,
        permute=bool(permute), sign_flip=bool(sign_flip), tree=tree, method=method, key=key,
        labels=labels, _arrangements=arrangements,
        _sampler=_Sampler(tree) if method == "sample" and permute else None, _identity=identity)
