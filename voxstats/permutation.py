"""Permutation and sign-flipping schedules, drawn whole before any work starts.

A schedule is a list of rearrangements of the subjects: row ``i`` says that the
permuted data's subject ``j`` is the original subject ``permutations[i, j]``,
multiplied by ``signs[i, j]``. The first row is always the identity, so the
unpermuted data belong to the null distribution. Because the whole schedule
comes from one generator before it is split into chunks, the null distribution
is the same for any number of threads, chunk size or executor.
"""

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["PermutationSchedule", "make_schedule"]


@dataclass(frozen=True)
class PermutationSchedule:
    """Rearrangements of the subjects, identity first.

    Attributes
    ----------
    permutations : (n_perm, n_subjects) ndarray of int64
    signs : (n_perm, n_subjects) ndarray of int8
        All ones when there is no sign flipping.
    exhaustive : bool
        True when every possible rearrangement is listed once.
    n_possible : int
        Number of distinct rearrangements the scheme allows.
    permute, sign_flip : bool
    """

    permutations: np.ndarray
    signs: np.ndarray
    exhaustive: bool
    n_possible: int
    permute: bool
    sign_flip: bool

    @property
    def n_perm(self):
        return self.permutations.shape[0]

    def rows(self, start, stop):
        """Rearrangements ``start`` to ``stop - 1`` (a chunk of the schedule)."""
        return self.permutations[start:stop], self.signs[start:stop]


def _check_blocks(blocks, n, whole_blocks):
    if blocks is None:
        return None
    blocks = np.asarray(blocks)
    if blocks.ndim != 1 or blocks.shape[0] != n:
        raise ValueError(f"exchangeability_blocks: expected one block label per subject ({n}), "
                         f"got shape {blocks.shape}")
    labels, groups = np.unique(blocks, return_inverse=True)
    members = [np.flatnonzero(groups == g) for g in range(labels.size)]
    if whole_blocks:
        sizes = {m.size for m in members}
        if len(sizes) != 1:
            raise ValueError("exchangeability_blocks: whole-block permutation needs blocks of equal size, "
                             f"got sizes {sorted(m.size for m in members)}")
    return members


def _count(n, members, permute, sign_flip, whole_blocks):
    units = n if members is None else (len(members) if whole_blocks else n)
    total = 1
    if permute:
        if members is None:
            total *= math.factorial(n)
        elif whole_blocks:
            total *= math.factorial(len(members))
        else:
            total *= math.prod(math.factorial(m.size) for m in members)
    if sign_flip:
        total *= 2 ** units
    return total


def _all_permutations(n, members, whole_blocks):
    if members is None:
        yield from (np.array(p) for p in itertools.permutations(range(n)))
    elif whole_blocks:
        for order in itertools.permutations(range(len(members))):
            out = np.empty(n, dtype=np.int64)
            for dst, src in zip(members, order):
                out[dst] = members[src]
            yield out
    else:
        for parts in itertools.product(*(itertools.permutations(m) for m in members)):
            out = np.empty(n, dtype=np.int64)
            for dst, src in zip(members, parts):
                out[dst] = src
            yield out


def _all_signs(n, members, whole_blocks):
    units = n if not (members is not None and whole_blocks) else len(members)
    for bits in itertools.product((1, -1), repeat=units):
        if members is not None and whole_blocks:
            out = np.empty(n, dtype=np.int8)
            for m, s in zip(members, bits):
                out[m] = s
            yield out
        else:
            yield np.array(bits, dtype=np.int8)


def _random_permutation(rng, n, members, whole_blocks):
    if members is None:
        return rng.permutation(n)
    out = np.empty(n, dtype=np.int64)
    if whole_blocks:
        order = rng.permutation(len(members))
        for dst, src in zip(members, order):
            out[dst] = members[src]
    else:
        for m in members:
            out[m] = rng.permutation(m)
    return out


def _random_signs(rng, n, members, whole_blocks):
    if members is not None and whole_blocks:
        unit = rng.choice(np.array([1, -1], dtype=np.int8), size=len(members))
        out = np.empty(n, dtype=np.int8)
        for m, s in zip(members, unit):
            out[m] = s
        return out
    return rng.choice(np.array([1, -1], dtype=np.int8), size=n)


def make_schedule(n_subjects, n_perm, *, permute=True, sign_flip=False, exchangeability_blocks=None,
                  whole_blocks=False, rng=None):
    """Draw (or enumerate) the rearrangements of a permutation test.

    Parameters
    ----------
    n_subjects : int
    n_perm : int
        Number of rearrangements wanted, the identity included.
    permute : bool
        Shuffle subjects (within or across exchangeability blocks).
    sign_flip : bool
        Flip signs (one-sample tests; needs symmetric errors).
    exchangeability_blocks : (n_subjects,) array-like, optional
        Block label of each subject.
    whole_blocks : bool
        Move whole blocks as units (keeping the order inside each block) instead
        of shuffling within blocks.
    rng : int, numpy.random.Generator or None

    Returns
    -------
    PermutationSchedule
        Every distinct rearrangement (exhaustive) when there are no more than
        ``n_perm`` of them; otherwise the identity and ``n_perm - 1`` distinct
        random ones.
    """
    if not permute and not sign_flip:
        raise ValueError("make_schedule: at least one of 'permute' and 'sign_flip' must be True")
    if not isinstance(n_perm, (int, np.integer)) or n_perm < 1:
        raise ValueError(f"Invalid value for the 'n_perm' parameter: expected an integer >= 1, got {n_perm!r}")
    n_perm = int(n_perm)
    members = _check_blocks(exchangeability_blocks, n_subjects, whole_blocks)
    if members is None and whole_blocks:
        raise ValueError("whole_blocks=True needs exchangeability_blocks")
    rng = np.random.default_rng(rng)
    n_possible = _count(n_subjects, members, permute, sign_flip, whole_blocks)
    identity = (np.arange(n_subjects), np.ones(n_subjects, dtype=np.int8))
    if n_possible <= n_perm:
        perms = list(_all_permutations(n_subjects, members, whole_blocks)) if permute else [identity[0]]
        signs = list(_all_signs(n_subjects, members, whole_blocks)) if sign_flip else [identity[1]]
        rows = [(p, s) for p in perms for s in signs]  # identity first: both generators start with it
        logger.info("Exhaustive enumeration of all %d rearrangements", n_possible)
        exhaustive = True
    else:
        rows = [identity]
        seen = {identity[0].tobytes() + identity[1].tobytes()}
        attempts = 0
        while len(rows) < n_perm:
            p = _random_permutation(rng, n_subjects, members, whole_blocks) if permute else identity[0]
            s = _random_signs(rng, n_subjects, members, whole_blocks) if sign_flip else identity[1]
            key = p.tobytes() + s.tobytes()
            attempts += 1
            if key in seen and attempts < 100 * n_perm:
                continue
            seen.add(key)
            rows.append((p, s))
        exhaustive = False
    permutations = np.array([r[0] for r in rows], dtype=np.int64)
    signs = np.array([r[1] for r in rows], dtype=np.int8)
    permutations.setflags(write=False)
    signs.setflags(write=False)
    return PermutationSchedule(permutations=permutations, signs=signs, exhaustive=exhaustive,
                               n_possible=n_possible, permute=bool(permute), sign_flip=bool(sign_flip))
