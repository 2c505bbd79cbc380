"""Exchangeability trees: which rearrangements of the subjects a permutation test may use.

A tree is given as PALM's multi-level exchangeability blocks (``-eb``): an
``(n_subjects, n_levels)`` integer matrix, one row per subject, the leftmost
column the highest level (one value for everyone: the root). At each level a
block's index tells how the blocks of the next level inside it are shuffled:

* positive: they are shuffled as whole blocks (each keeps its internal order,
  and is then shuffled inside as its own index says); whole blocks must have the
  same structure;
* negative: they stay in place; only what is inside them is shuffled.

The last column holds the leaves (one subject each). As in PALM, when the last
column repeats a value inside its block (``palm_reindex``'s ``fixleaves``),
the subjects sharing it are kept together in their order and a column of
leaves is appended.

Sign flips (independent and symmetric errors) follow PALM too: the children of
the highest whole-block nodes flip as units; below a node that is not under any
whole-block node, and whose children are subjects, each subject flips alone.

Counting
--------
Two rearrangements that give every subject the same design row give the same
statistic, so only distinct rearrangements of the design's rows count (PALM's
rule, and randomise's when there is no continuous covariate). Their number is
a product over whole-block nodes of multinomial coefficients of the node's
children grouped by *type*, where two subtrees have the same type when one can
be turned into the other by the moves the subtree allows (leaves: equal design
rows; whole-block node: equal multisets of children's types; within-block node:
equal sequences of children's types). This is exact; PALM groups children by
the multiset of their design rows instead, which agrees on usual trees but can
count too few when a within-block subtree holds the same rows in another
arrangement.

References
----------
Winkler AM, Webster MA, Vidaurre D, Nichols TE, Smith SM (2015). Multi-level
block permutation. NeuroImage 123:253-268. doi:10.1016/j.neuroimage.2015.05.092
"""

import logging
import math
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ExchangeabilityTree", "as_tree", "variance_groups"]


class _Node:
    """A node of the tree; leaves hold one subject. ``lo:hi`` is its range in leaf (DFS) order."""

    __slots__ = ("kind", "children", "lo", "hi", "subject", "depth", "path", "index")

    def __init__(self, kind, children, lo, hi, subject, depth, path):
        self.kind, self.children, self.lo, self.hi = kind, children, lo, hi
        self.subject, self.depth, self.path = subject, depth, path
        self.index = None  # preorder number, set once the tree is built (stable under pickling)

    @property
    def size(self):
        return self.hi - self.lo


def _fail(message):
    raise ValueError(f"exchangeability_blocks: {message}")


def _check_matrix(blocks):
    matrix = np.asarray(blocks)
    if matrix.ndim != 2 or 0 in matrix.shape:
        _fail(f"expected a non-empty (n_subjects, n_levels) matrix, got shape {matrix.shape}")
    if matrix.dtype.kind not in "iuf" or (matrix.dtype.kind == "f" and not np.all(np.isfinite(matrix))):
        _fail("expected integer block indices")
    if matrix.dtype.kind == "f" and np.any(matrix != np.round(matrix)):
        _fail("expected integer block indices, got fractions")
    matrix = matrix.astype(np.int64)
    if np.any(matrix == 0):
        _fail("block index 0 is neither positive (whole-block) nor negative (within-block); "
              "use non-zero indices as PALM does")
    if np.any(matrix[:, 0] != matrix[0, 0]):
        _fail("the first column (the highest level) must hold the same value for every subject")
    return matrix


def _fix_leaves(matrix):
    """PALM's 'fixleaves': subjects sharing a last-level block stay together; append the leaves."""
    _, inverse, counts = np.unique(matrix, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    shared = counts[inverse] > 1
    if not shared.any():
        return matrix
    logger.info("exchangeability_blocks: subjects sharing a last-level block stay together in their "
                    "order (PALM's rule); give each subject its own last-column index to shuffle them")
    fixed = matrix.copy()
    fixed[shared, -1] = -np.abs(fixed[shared, -1])
    return np.column_stack([fixed, np.arange(1, matrix.shape[0] + 1)])


@dataclass(frozen=True, eq=False)
class ExchangeabilityTree:
    """A multi-level exchangeability tree (PALM's ``-eb``).

    Build one with :meth:`from_matrix` (PALM's block matrix), :meth:`from_blocks`
    (one block label per subject, randomise's ``-e``), or :func:`as_tree`.

    Attributes
    ----------
    matrix : (n_subjects, n_levels) ndarray of int64
        The block matrix as used: PALM's signs, leaves appended when needed.
    flip_units : (n_subjects,) ndarray of int64
        The unit each subject's sign flips with (-1: never flipped).
    """

    matrix: np.ndarray
    flip_units: np.ndarray = field(init=False, repr=False)
    _root: _Node = field(init=False, repr=False)
    _order: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        matrix = np.array(self.matrix, dtype=np.int64)
        matrix.setflags(write=False)
        object.__setattr__(self, "matrix", matrix)
        order = []
        root = self._build(np.arange(matrix.shape[0]), 0, order, ())
        self._check_shapes(root)
        object.__setattr__(self, "_root", root)
        for index, node in enumerate(self.nodes()):
            node.index = index
        order = np.array(order, dtype=np.int64)
        order.setflags(write=False)
        object.__setattr__(self, "_order", order)
        units = np.full(matrix.shape[0], -1, dtype=np.int64)
        self._assign_units(root, False, units, [0])
        units.setflags(write=False)
        object.__setattr__(self, "flip_units", units)

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_matrix(cls, blocks):
        """Tree of a PALM ``-eb`` matrix (several columns; signs as PALM reads them).

        Raises
        ------
        ValueError
            Zero or fractional indices, a first column that is not constant,
            whole blocks of different size or structure.
        """
        matrix = np.asarray(blocks)
        if matrix.ndim == 2 and matrix.shape[1] == 1:  # PALM's legacy single column: within blocks
            return cls.from_blocks(matrix[:, 0])
        return cls(_fix_leaves(_check_matrix(matrix)))

    @classmethod
    def from_blocks(cls, blocks, *, whole_blocks=False):
        """Single-level tree of one block label per subject (randomise ``-e``, PALM one-column ``-eb``).

        Within-block shuffling by default; ``whole_blocks`` moves whole blocks,
        keeping each block's order (randomise ``--permuteBlocks``, PALM ``-whole``).
        """
        blocks = np.asarray(blocks)
        if blocks.ndim != 1:
            _fail(f"expected one block label per subject, got shape {blocks.shape}")
        labels, index, sizes = np.unique(blocks, return_inverse=True, return_counts=True)
        index = index.reshape(-1) + 1
        n = blocks.shape[0]
        if whole_blocks:
            if len(set(sizes)) != 1:
                _fail(f"whole-block permutation needs blocks of equal size, got sizes {sorted(sizes.tolist())}")
            matrix = np.column_stack([np.ones(n), -index, np.arange(1, n + 1)])
        else:
            matrix = np.column_stack([-np.ones(n), index, np.arange(1, n + 1)])
        return cls(matrix.astype(np.int64))

    @classmethod
    def free(cls, n_subjects):
        """Every subject exchangeable with every other (no blocks)."""
        return cls(np.column_stack([np.ones(n_subjects), np.arange(1, n_subjects + 1)]).astype(np.int64))

    def _build(self, rows, col, order, path):
        value = int(self.matrix[rows[0], col])
        if col == self.matrix.shape[1] - 1:
            if rows.size != 1:  # cannot happen after _fix_leaves
                _fail(f"last-level block {path + (value,)} holds {rows.size} subjects")
            order.append(int(rows[0]))
            return _Node("leaf", (), len(order) - 1, len(order), int(rows[0]), col, path + (value,))
        lo = len(order)
        values = self.matrix[rows, col + 1]
        children = tuple(self._build(rows[values == v], col + 1, order, path + (value,))
                         for v in np.unique(values))
        return _Node("whole" if value > 0 else "within", children, lo, len(order), None, col, path + (value,))

    @staticmethod
    def _shape(node, memo):
        key = (node.kind, tuple(ExchangeabilityTree._shape(c, memo) for c in node.children))
        return memo.setdefault(key, len(memo))

    def _check_shapes(self, root):
        memo = {}

        def visit(node):
            shapes = [self._shape(c, memo) for c in node.children]
            if node.kind == "whole" and len(set(shapes)) > 1:
                sizes = [c.size for c in node.children]
                what = f"sizes {sizes}" if len(set(sizes)) > 1 else "structures"
                _fail(f"the blocks inside block {list(node.path)} (level {node.depth + 1}) are shuffled as "
                      f"whole blocks (positive index) but have different {what}")
            for c in node.children:
                visit(c)

        visit(root)

    def _assign_units(self, node, under_whole, units, counter):
        """PALM's sign-flip units (palm_tree's flip bookkeeping)."""
        if node.kind == "leaf":
            return
        leaf_children = node.children[0].kind == "leaf"
        is_root = node.depth == 0
        flips_here = (not under_whole) and (node.kind == "whole" or (leaf_children and not is_root))
        if flips_here:
            for c in node.children:
                units[self._order[c.lo:c.hi]] = counter[0]
                counter[0] += 1
            return
        for c in node.children:
            self._assign_units(c, under_whole or node.kind == "whole", units, counter)

    # ---------------------------------------------------------------- properties

    @property
    def n_subjects(self):
        return self.matrix.shape[0]

    @property
    def n_flip_units(self):
        """Number of independent sign-flip units (2**n_flip_units sign patterns)."""
        return int(self.flip_units.max()) + 1 if self.flip_units.size else 0

    def nodes(self):
        """Every node, parents before children (depth-first)."""
        stack = [self._root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def describe(self):
        """Short text: 'free', 'within blocks', 'whole blocks' or 'multi-level'."""
        root = self._root
        if root.kind == "whole" and all(c.kind == "leaf" for c in root.children):
            return "free"
        if self.matrix.shape[1] == 3 and all(c.children[0].kind == "leaf" for c in root.children):
            inner = {c.kind for c in root.children}
            if root.kind == "within" and inner == {"whole"}:
                return "within blocks"
            if root.kind == "whole" and inner == {"within"}:
                return "whole blocks"
        return "multi-level"

    def count(self, design=None, *, permute=True, sign_flip=False):
        """Number of distinct rearrangements the tree allows.

        Parameters
        ----------
        design : (n_subjects, n_regressors) array-like, optional
            Subjects with equal rows are interchangeable (PALM's rule). None:
            every subject distinct.
        permute, sign_flip : bool

        Returns
        -------
        int
            Exact (a Python int, however large).
        """
        total = _Arrangements(self, row_classes(design, self.n_subjects)).count if permute else 1
        return total * (2 ** self.n_flip_units if sign_flip else 1)


def row_classes(design, n_subjects):
    """(n_subjects,) labels: the first subject with the same design row (``arange`` if None).

    Only the partition into equal rows matters, so the labels do not change
    with the rows' values.
    """
    if design is None:
        return np.arange(n_subjects)
    matrix = np.asarray(getattr(design, "matrix", design), dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, np.newaxis]
    if matrix.shape[0] != n_subjects:
        raise ValueError(f"design: expected {n_subjects} rows (one per subject), got {matrix.shape[0]}")
    _, first, inverse = np.unique(matrix, axis=0, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


def as_tree(exchangeability_blocks, n_subjects, *, whole_blocks=False):
    """An ExchangeabilityTree from None, a 1-D block vector, a PALM matrix or a tree.

    A 1-D vector (or a one-column matrix) is a single level, shuffled within
    blocks, or as whole blocks with ``whole_blocks``; a matrix with several
    columns is PALM's multi-level format, whose signs say how each level is
    shuffled (``whole_blocks`` must then be False).
    """
    if exchangeability_blocks is None:
        if whole_blocks:
            raise ValueError("whole_blocks=True needs exchangeability_blocks")
        return ExchangeabilityTree.free(n_subjects)
    if isinstance(exchangeability_blocks, ExchangeabilityTree):
        tree = exchangeability_blocks
    else:
        blocks = np.asarray(exchangeability_blocks)
        if blocks.ndim == 2 and blocks.shape[1] == 1:
            blocks = blocks[:, 0]
        if blocks.ndim == 1:
            if blocks.shape[0] != n_subjects:
                _fail(f"expected one block label per subject ({n_subjects}), got shape {blocks.shape}")
            return ExchangeabilityTree.from_blocks(blocks, whole_blocks=whole_blocks)
        tree = ExchangeabilityTree.from_matrix(blocks)
    if whole_blocks:
        raise ValueError("whole_blocks: a multi-level exchangeability tree says itself which levels move "
                         "as whole blocks (positive indices); do not combine it with whole_blocks=True")
    if tree.n_subjects != n_subjects:
        _fail(f"the tree has {tree.n_subjects} subjects, the data {n_subjects}")
    return tree


def variance_groups(tree):
    """PALM's automatic variance groups (``-vg auto``) of an exchangeability tree.

    Subjects that the tree can exchange share a group: the leaves of a
    whole-block node share one group, leaves that stay in place get one each,
    and whole blocks repeat the groups of their first block position by
    position (PALM's ``palm_ptree2vg``).

    Parameters
    ----------
    tree : ExchangeabilityTree or array-like
        A tree, or anything :func:`as_tree` accepts.

    Returns
    -------
    (n_subjects,) ndarray of int
        Group labels 1..k, numbered in order of first appearance.
    """
    if not isinstance(tree, ExchangeabilityTree):
        tree = as_tree(tree, np.asarray(tree).shape[0])
    groups = np.zeros(tree.n_subjects, dtype=np.int64)
    counter = [0]

    def pick(node):  # groups of node's leaves, in leaf order
        if node.children[0].kind == "leaf":
            if node.kind == "within":
                out = counter[0] + np.arange(len(node.children))
                counter[0] += len(node.children)
                return out
            counter[0] += 1
            return np.full(len(node.children), counter[0] - 1)
        if node.kind == "within":
            return np.concatenate([pick(c) for c in node.children])
        return np.tile(pick(node.children[0]), len(node.children))

    groups[tree._order] = pick(tree._root)
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse.reshape(-1)] + 1


# ------------------------------------------------------------------------- arrangements


def _multinomial(counts):
    total, out = 0, 1
    for c in counts:
        total += c
        out *= math.comb(total, c)
    return out


class _Arrangements:
    """Distinct rearrangements of a tree given design-row classes: count, rank, unrank.

    A rank in ``[0, count)`` decodes, at each whole-block node, into the
    sequence of its children's types (a multiset permutation) and, for every
    child in its original order, that child's own rank (mixed radix). The
    j-th occurrence of a type takes the j-th child of that type, so the
    identity has a rank like any other rearrangement.
    """

    def __init__(self, tree, labels):
        self.tree = tree
        self.types, self.counts, self.info = {}, {}, {}
        memo = {}
        for node in reversed(list(tree.nodes())):  # children before parents
            if node.kind == "leaf":
                key = ("leaf", int(labels[node.subject]))
                count = 1
            else:
                kids = [self.types[c.index] for c in node.children]
                key = (node.kind, tuple(sorted(kids)) if node.kind == "whole" else tuple(kids))
                count = math.prod(self.counts[c.index] for c in node.children)
                if node.kind == "whole" and len(node.children) > 1:
                    distinct = sorted(set(kids))
                    multiplicity = [kids.count(t) for t in distinct]
                    multi = _multinomial(multiplicity)
                    if multi > 1:
                        of_type = [np.array([i for i, t in enumerate(kids) if t == u]) for u in distinct]
                        position = [distinct.index(t) for t in kids]
                        self.info[node.index] = (multi, multiplicity, of_type, position)
                        count *= multi
            self.types[node.index] = memo.setdefault(key, len(memo))
            self.counts[node.index] = count
        self.count = self.counts[tree._root.index]

    def identity_rank(self):
        def rank(node):
            if node.kind == "leaf":
                return 0
            inner = 0
            for c in node.children:
                inner = inner * self.counts[c.index] + rank(c)
            if node.index not in self.info:
                return inner
            multi, multiplicity, _, position = self.info[node.index]
            remaining, m_total, a = list(multiplicity), multi, 0
            k = len(position)
            for pos, t in enumerate(position):
                m = k - pos
                a += sum(m_total * remaining[u] // m for u in range(t))
                m_total = m_total * remaining[t] // m
                remaining[t] -= 1
            return a * math.prod(self.counts[c.index] for c in node.children) + inner

        return rank(self.tree._root)

    def unrank(self, ranks):
        """(k, n) leaf-order maps (destination position -> source position) of int64 ranks < 2**62."""
        ranks = np.asarray(ranks, dtype=np.int64)
        return self._rel(self.tree._root, ranks)

    def _rel(self, node, r):
        rows = r.shape[0]
        if node.kind == "leaf" or self.counts[node.index] == 1:
            return np.broadcast_to(np.arange(node.size, dtype=np.int64), (rows, node.size))
        children = node.children
        inner_total = math.prod(self.counts[c.index] for c in children)
        info = self.info.get(node.index)
        if info is not None:
            a, b = np.divmod(r, np.int64(inner_total))
        else:
            b = r
        rels, radix = [None] * len(children), 1
        for i in range(len(children) - 1, -1, -1):
            if children[i].kind == "leaf":  # nothing inside to rearrange
                break
            cnt = self.counts[children[i].index]
            digit = (b // np.int64(radix)) % np.int64(cnt) if cnt > 1 else np.zeros(rows, dtype=np.int64)
            rels[i] = self._rel(children[i], digit)
            radix *= cnt
        if info is None:
            return np.concatenate([rel + (c.lo - node.lo) for rel, c in zip(rels, children)], axis=1)
        multi, multiplicity, of_type, _ = info
        sequence = _unrank_multiset(a, multiplicity, multi)
        source = np.empty_like(sequence)
        for t, kids in enumerate(of_type):
            mask = sequence == t
            occurrence = np.cumsum(mask, axis=1) - 1
            source[mask] = kids[occurrence[mask]]
        if children[0].kind == "leaf":
            return source
        m = children[0].size
        stacked = np.stack(rels, axis=1)  # (rows, k, m)
        moved = stacked[np.arange(rows)[:, np.newaxis], source] + source[:, :, np.newaxis] * m
        return moved.reshape(rows, -1)


def _unrank_multiset(a, multiplicity, total):
    """Multiset permutations of rank ``a`` (lexicographic over type indices): (rows, k) int64."""
    rows, k = a.shape[0], sum(multiplicity)
    remaining = np.tile(np.array(multiplicity, dtype=np.int64), (rows, 1))
    current = np.full(rows, total, dtype=np.int64)
    a = a.copy()
    out = np.empty((rows, k), dtype=np.int64)
    index = np.arange(rows)
    for pos in range(k):
        m = k - pos
        q, rem = np.divmod(current, m)
        # sequences that start with each type: current * remaining / m, exact and without overflow
        block = q[:, np.newaxis] * remaining + (rem[:, np.newaxis] * remaining) // m
        cumulative = np.cumsum(block, axis=1)
        choice = (a[:, np.newaxis] >= cumulative).sum(axis=1)
        a -= np.where(choice > 0, cumulative[index, np.maximum(choice - 1, 0)], 0)
        current = block[index, choice]
        remaining[index, choice] -= 1
        out[:, pos] = choice
    return out


class _Sampler:
    """Uniform random elements of the tree's group, vectorised over rows.

    Each whole-block node's children are ordered by uniform random keys (one
    argsort for all nodes); nodes are applied top-down in destination
    coordinates, which composes a uniform element of the wreath products.
    A key is one int64: the node's rank (high bits), random bits, and the
    slot's index (low bits), so keys are unique and any sort algorithm gives
    the same order on every platform; ties of the random bits (probability
    below k**2 / 2**40 for a node of k children) fall back to the slots' order.
    """

    def __init__(self, tree):
        self.n = tree.n_subjects
        movable = [node for node in tree.nodes() if node.kind == "whole" and len(node.children) > 1]
        offsets, start = {}, 0
        node_rank, slot_local = [], []
        for rank, node in enumerate(movable):
            offsets[node.index] = start
            node_rank += [rank] * len(node.children)
            slot_local += list(range(len(node.children)))
            start += len(node.children)
        self.n_slots = start
        rank_bits = max(len(movable) - 1, 1).bit_length()
        self.slot_bits = max(max(slot_local, default=1), 1).bit_length()
        self.random_bits = 63 - rank_bits - self.slot_bits
        if self.random_bits < 40:
            raise ValueError(f"exchangeability tree too large to sample ({len(movable)} shuffled blocks)")
        self.slot_base = ((np.array(node_rank, dtype=np.int64) << np.int64(63 - rank_bits))
                          | np.array(slot_local, dtype=np.int64))
        self.levels = []
        for depth in sorted({node.depth for node in movable}):
            pos, lo, size, inner, slot, offset = [], [], [], [], [], []
            for node in movable:
                if node.depth != depth:
                    continue
                m = node.children[0].size
                p = np.arange(node.lo, node.hi)
                pos.append(p)
                lo.append(np.full(p.size, node.lo))
                size.append(np.full(p.size, m))
                inner.append((p - node.lo) % m)
                slot.append(offsets[node.index] + (p - node.lo) // m)
                offset.append(np.full(p.size, offsets[node.index]))
            self.levels.append(tuple(np.concatenate(x).astype(np.int64)
                                     for x in (pos, lo, size, inner, slot, offset)))

    def draw(self, generator, rows):
        """(rows, n) leaf-order maps; draws generator.integers once, (rows, n_slots) values."""
        tau = np.broadcast_to(np.arange(self.n, dtype=np.int64), (rows, self.n))
        if not self.n_slots:
            return tau.copy()
        bits = generator.integers(0, 1 << self.random_bits, size=(rows, self.n_slots), dtype=np.int64)
        sigma = np.argsort(self.slot_base | (bits << np.int64(self.slot_bits)), axis=1)
        for pos, lo, size, inner, slot, offset in self.levels:
            index = np.broadcast_to(np.arange(self.n, dtype=np.int64), (rows, self.n)).copy()
            index[:, pos] = lo + (sigma[:, slot] - offset) * size + inner
            tau = np.take_along_axis(tau, index, axis=1)
        return tau
