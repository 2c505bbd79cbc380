"""Exchangeability trees: counts and rearrangements against brute force and PALM's values."""

import itertools
import math
import pickle

import numpy as np
import pytest
from scipy import stats

from voxstats import permuted_glm
from voxstats.design import make_contrasts, make_design
from voxstats.exchangeability import ExchangeabilityTree, _Sampler, as_tree, variance_groups
from voxstats.glm import contrast_statistic
from voxstats.permutation import make_schedule

# Small trees with explicit leaves (PALM's -eb format). T5 and T6 omit the leaves.
TREES = {
    "T1": [[-1, 1, -1, 1], [-1, 1, -1, 2], [-1, 1, -2, 3], [-1, 1, -2, 4],
           [-1, 2, 1, 5], [-1, 2, 1, 6], [-1, 2, 2, 7], [-1, 2, 2, 8]],
    "T2": [[1, 1, 1, 1], [1, 1, 1, 2], [1, 1, 2, 3], [1, 1, 2, 4],
           [1, 2, 1, 5], [1, 2, 1, 6], [1, 2, 2, 7], [1, 2, 2, 8]],
    "T3": [[-1, 1, 1, 1, 1], [-1, 1, 1, 1, 2], [-1, 1, 2, 1, 3], [-1, 1, 2, 1, 4],
           [-1, 2, -3, 1, 5], [-1, 2, -3, 1, 6], [-1, 2, -3, 2, 7]],
    "T4": [[-1, 1, 1], [-1, 1, 2], [-1, 1, 3], [-1, 2, 4], [-1, 2, 5], [-1, 3, 6], [-1, 3, 7]],
    "T5": [[1, 1], [1, 1], [1, 2], [1, 2], [1, 3], [1, 3]],
    "T6": [[-1, 1], [-1, 1], [-1, 2], [-1, 2], [-1, 3], [-1, 3]],
    "T7": [[1, -1, 1], [1, -1, 2], [1, -2, 1], [1, -2, 2], [1, -3, 1], [1, -3, 2]],
}
# (tree, design labels or None, distinct permutations, sign-flip patterns): values printed by
# PALM (palm_reindex 'fixleaves', palm_tree, palm_maxshuf) under GNU Octave on these matrices
PALM_COUNTS = [
    ("T1", None, 16, 16), ("T1", [0, 1, 0, 1, 0, 1, 0, 1], 4, 16), ("T1", [0, 0, 1, 1, 0, 0, 1, 1], 4, 16),
    ("T1", [0, 0, 0, 0, 1, 1, 1, 1], 1, 16),
    ("T2", None, 128, 4), ("T2", [0, 1, 0, 1, 0, 1, 0, 1], 16, 4), ("T2", [0, 0, 1, 1, 0, 0, 1, 1], 4, 4),
    ("T2", [0, 0, 0, 0, 1, 1, 1, 1], 2, 4), ("T2", [0, 1, 1, 0, 0, 1, 1, 0], 16, 4),
    ("T3", None, 16, 8), ("T3", [0, 1, 0, 1, 0, 1, 0], 8, 8), ("T3", [0, 0, 0, 0, 1, 1, 1], 1, 8),
    ("T4", None, 24, 128), ("T4", [0, 1, 2, 0, 1, 0, 1], 24, 128), ("T4", [0, 0, 1, 1, 1, 0, 0], 3, 128),
    ("T5", None, 6, 8), ("T5", [0, 0, 1, 1, 0, 0], 3, 8), ("T5", [0, 1, 0, 1, 0, 1], 1, 8),
    ("T6", None, 1, 64),
    ("T7", None, 6, 8), ("T7", [0, 0, 1, 1, 0, 0], 3, 8), ("T7", [0, 1, 0, 1, 0, 1], 1, 8),
]
# palm_ptree2vg on the same trees
PALM_VG = {"T1": [1, 2, 1, 2, 3, 3, 3, 3], "T2": [1] * 8, "T3": [1, 1, 1, 1, 2, 2, 3],
           "T4": [1, 1, 1, 2, 2, 3, 3], "T5": [1, 2, 1, 2, 1, 2], "T6": [1, 2, 3, 4, 5, 6],
           "T7": [1, 2, 1, 2, 1, 2]}


# --------------------------------------------------------------------------- brute force


def _blocks(matrix):
    """Per level, each subject's block (its path of indices) and its ordinal among its siblings."""
    n, levels = matrix.shape
    block, ordinal = [], []
    for c in range(levels):
        paths = [tuple(row[:c + 1]) for row in matrix]
        block.append(paths)
        siblings = {}
        for p in set(paths):
            siblings.setdefault(p[:-1], []).append(p[-1])
        ordinal.append([sorted(siblings[p[:-1]]).index(p[-1]) for p in paths])
    return block, ordinal


def _allowed(matrix, pi, block, ordinal):
    """Does ``pi`` (subject j receives subject pi[j]) respect the tree? Declarative check.

    The tree's rearrangements are its automorphisms: at every level the
    blocks map onto blocks (a bijection that respects the parent blocks),
    and the children of a block with a negative index keep their ordinal.
    """
    n, levels = matrix.shape
    for c in range(levels):
        image = {}
        for j in range(n):
            src, dst = block[c][pi[j]], block[c][j]
            if image.setdefault(dst, src) != src:
                return False
        if len(set(image.values())) != len(image):
            return False
        if c > 0:
            for j in range(n):  # children of within-block (negative) parents keep their place
                if matrix[j, c - 1] < 0 and ordinal[c][j] != ordinal[c][pi[j]]:
                    return False
    return True


def _explicit(matrix):
    """PALM's reading of a matrix whose last column repeats inside a block: those subjects stay
    together (negative index) and the leaves are appended (written here independently)."""
    matrix = np.array(matrix)
    rows = [tuple(r) for r in matrix]
    if len(set(rows)) == len(rows):
        return matrix
    shared = np.array([rows.count(r) > 1 for r in rows])
    fixed = matrix.copy()
    fixed[shared, -1] = -np.abs(fixed[shared, -1])
    return np.column_stack([fixed, np.arange(1, len(rows) + 1)])


def _brute_force(matrix):
    """Every permutation the tree allows (n! candidates), identity first."""
    matrix = _explicit(matrix)
    block, ordinal = _blocks(matrix)
    return [np.array(p) for p in itertools.permutations(range(matrix.shape[0]))
            if _allowed(matrix, p, block, ordinal)]


def _inverse(p):
    q = np.empty_like(p)
    q[p] = np.arange(p.size)
    return q


def _arrangements(perms, labels):
    """Distinct design arrangements seen by the statistic: labels[p^-1] for each row p."""
    return {tuple(labels[_inverse(np.asarray(p))]) for p in perms}


@pytest.fixture(scope="module")
def allowed():
    return {name: _brute_force(t) for name, t in TREES.items()}


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize("name, design, n_perms, n_flips", PALM_COUNTS)
def test_counts_equal_brute_force_and_palm(allowed, name, design, n_perms, n_flips):
    tree = ExchangeabilityTree.from_matrix(TREES[name])
    n = tree.n_subjects
    labels = np.arange(n) if design is None else np.array(design)
    brute = len(_arrangements(allowed[name], labels))
    assert tree.count(None if design is None else labels) == brute == n_perms
    assert 2 ** tree.n_flip_units == n_flips
    assert tree.count(labels, sign_flip=True) == n_perms * n_flips


@pytest.mark.parametrize("name, design", [(name, d) for name, d, _, _ in PALM_COUNTS])
def test_exhaustive_schedule_lists_each_distinct_arrangement_once(allowed, name, design):
    n = len(TREES[name])
    labels = np.arange(n) if design is None else np.array(design)
    schedule = make_schedule(n, 0, exchangeability_blocks=np.array(TREES[name]),
                             design=None if design is None else labels[:, None], rng=0)
    perms, signs = schedule.rows(0, schedule.n_perm)
    assert schedule.exhaustive and schedule.method == "enumerate"
    np.testing.assert_array_equal(perms[0], np.arange(n))
    np.testing.assert_array_equal(signs, 1)
    legal = {tuple(p) for p in allowed[name]}
    assert all(tuple(p) in legal for p in perms)
    seen = [tuple(labels[_inverse(p)]) for p in perms]
    assert len(set(seen)) == len(seen) == schedule.n_possible  # distinct, and all of them
    assert set(seen) == _arrangements(allowed[name], labels)


@pytest.mark.parametrize("name", sorted(TREES))
def test_variance_groups_equal_palm(name):
    np.testing.assert_array_equal(variance_groups(np.array(TREES[name])), PALM_VG[name])
    # what variance_groups='auto' (-vg auto) uses with a multi-level tree
    from voxstats.welch import auto_variance_groups

    np.testing.assert_array_equal(auto_variance_groups(np.array(TREES[name])) + 1, PALM_VG[name])
    tree = ExchangeabilityTree.from_matrix(TREES[name])
    np.testing.assert_array_equal(auto_variance_groups(tree) + 1, PALM_VG[name])


def test_sign_flip_units_follow_the_highest_whole_block():
    tree = ExchangeabilityTree.from_matrix(TREES["T1"])
    # blocks 1 and 2 move their children as wholes: the four pairs flip as units
    units = tree.flip_units
    assert [len(set(units[i:i + 2])) for i in range(0, 8, 2)] == [1, 1, 1, 1]
    assert len(set(units)) == 4
    schedule = make_schedule(8, 0, exchangeability_blocks=np.array(TREES["T1"]), permute=False,
                             sign_flip=True, rng=0)
    _, signs = schedule.rows(0, schedule.n_perm)
    assert schedule.n_perm == 16 and len({tuple(s) for s in signs}) == 16
    assert np.all(signs[:, ::2] == signs[:, 1::2])


def test_exact_count_where_multisets_are_not_enough():
    # whole-block swap of two fixed-order blocks holding the same rows in another order:
    # PALM's multiset rule would count 1 arrangement; the swap gives a second one
    matrix = [[1, -1, 1], [1, -1, 2], [1, -2, 1], [1, -2, 2]]
    labels = np.array([0, 1, 1, 0])
    brute = _arrangements(_brute_force(matrix), labels)
    assert len(brute) == 2
    assert ExchangeabilityTree.from_matrix(matrix).count(labels) == 2


def test_large_counts_are_exact():
    # 240 subjects in two groups, free: C(240, 120); 12 blocks of 20 within: (20! / (10! 10!))^12
    labels = np.repeat([0, 1], 120)
    assert as_tree(None, 240).count(labels) == math.comb(240, 120)
    blocks = np.repeat(np.arange(12), 20)
    labels = np.tile(np.repeat([0, 1], 10), 12)
    assert as_tree(blocks, 240).count(labels) == math.comb(20, 10) ** 12
    assert as_tree(blocks, 240).count(labels, sign_flip=True) == math.comb(20, 10) ** 12 * 2 ** 240


# --------------------------------------------------------------------------- random draws


def test_sampler_is_uniform_over_the_group(allowed):
    tree = ExchangeabilityTree.from_matrix(TREES["T1"])
    draws = _Sampler(tree).draw(np.random.default_rng(3), 16_000)
    order = tree._order
    perms = np.empty_like(draws)
    perms[:, order] = order[draws]
    legal = {tuple(p): i for i, p in enumerate(allowed["T1"])}
    assert all(tuple(p) in legal for p in perms)
    counts = np.bincount([legal[tuple(p)] for p in perms], minlength=len(legal))
    assert stats.chisquare(counts).pvalue > 1e-3
    # so uniform over distinct design arrangements too: each has as many group elements (a coset)
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    classes = {}
    seen = np.bincount([classes.setdefault(tuple(labels[_inverse(p)]), len(classes)) for p in perms])
    assert len(classes) == 4 and stats.chisquare(seen).pvalue > 1e-3


def test_random_rows_are_distinct_and_legal(allowed):
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    tree = np.array(TREES["T2"])
    schedule = make_schedule(8, 12, exchangeability_blocks=tree, design=labels[:, None], rng=1)
    assert schedule.method == "shuffle" and schedule.n_possible == 16
    perms, _ = schedule.rows(0, 12)
    legal = {tuple(p) for p in allowed["T2"]}
    assert all(tuple(p) in legal for p in perms)
    assert len({tuple(labels[_inverse(p)]) for p in perms}) == 12


# --------------------------------------------------------------------------- input forms and errors


def test_vector_and_matrix_forms_agree():
    blocks = np.array([2, 2, 7, 7, 7, 9])
    within = as_tree(blocks, 6)
    assert within.describe() == "within blocks" and within.count() == 2 * 6
    matrix = np.column_stack([-np.ones(6, int), blocks, np.arange(1, 7)])
    assert ExchangeabilityTree.from_matrix(matrix).count() == 12
    assert ExchangeabilityTree.from_matrix(blocks[:, None]).count() == 12  # PALM's one column
    whole = as_tree(np.repeat([3, 1, 2], 2), 6, whole_blocks=True)
    assert whole.describe() == "whole blocks" and whole.count() == 6 and whole.n_flip_units == 3
    assert as_tree(None, 5).describe() == "free" and as_tree(None, 5).count() == 120
    tree = ExchangeabilityTree.from_matrix(TREES["T3"])
    assert as_tree(tree, 7) is tree


@pytest.mark.parametrize("matrix, match", [
    ([[1, 1], [1, 0]], r"block index 0 is neither positive"),
    ([[1, 1], [2, 2]], r"the first column \(the highest level\) must hold the same value"),
    ([[1, 1.5], [1, 2]], r"expected integer block indices, got fractions"),
    ([[1, -1, 1], [1, -1, 2], [1, -2, 3]], r"the blocks inside block \[1\] \(level 1\) are shuffled as whole "
                                           r"blocks \(positive index\) but have different sizes \[1, 2\]"),
    ([[1, 1, 1], [1, 1, 2], [1, -2, 3], [1, -2, 4]], r"the blocks inside block \[1\] .* different structures"),
])
def test_bad_trees(matrix, match):
    with pytest.raises(ValueError, match=r"^exchangeability_blocks: " + match):
        ExchangeabilityTree.from_matrix(np.array(matrix))


def test_tree_and_blocks_are_one_option():
    x = np.column_stack([np.ones(8), np.repeat([0.0, 1.0], 4)])
    y = np.random.default_rng(0).standard_normal((8, 3))
    with pytest.raises(ValueError, match="^exchangeability_tree and exchangeability_blocks: give one of them"):
        permuted_glm(y, x, [0, 1], exchangeability_blocks=np.ones(8), exchangeability_tree=np.array(TREES["T2"]))
    with pytest.raises(ValueError, match="^exchangeability_tree: no such file 'nowhere.csv'"):
        permuted_glm(y, x, [0, 1], exchangeability_tree="nowhere.csv")


def test_tree_errors_in_context():
    with pytest.raises(ValueError, match=r"the tree has 7 subjects, the data 8"):
        as_tree(np.array(TREES["T3"]), 8)
    with pytest.raises(ValueError, match=r"do not combine it with whole_blocks=True"):
        as_tree(np.array(TREES["T3"]), 7, whole_blocks=True)


def test_tree_survives_pickling():
    schedule = make_schedule(8, 0, exchangeability_blocks=np.array(TREES["T2"]), rng=0)
    copy = pickle.loads(pickle.dumps(schedule))
    for a, b in zip(schedule.rows(5, 90), copy.rows(5, 90)):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- exact p-values


@pytest.mark.parametrize("given", ["blocks", "tree_matrix", "tree", "tree_file"])
def test_exhaustive_p_is_exact_on_a_multilevel_tree(allowed, given, tmp_path):
    """p over the tree's distinct arrangements equals p over every allowed permutation (float64).

    The tree given as ``exchangeability_blocks`` or, by its PALM name,
    ``exchangeability_tree`` (a matrix, a tree, or PALM's -eb CSV).
    """
    matrix = np.array(TREES["T2"])
    csv = tmp_path / "eb.csv"
    csv.write_text("".join(",".join(str(int(v)) for v in row) + "\n" for row in matrix))
    how = {"blocks": {"exchangeability_blocks": matrix}, "tree_matrix": {"exchangeability_tree": matrix},
           "tree": {"exchangeability_tree": ExchangeabilityTree.from_matrix(matrix)},
           "tree_file": {"exchangeability_tree": str(csv)}}[given]
    rng = np.random.default_rng(8)
    n = 8
    group = np.array([0, 1, 0, 1, 1, 0, 1, 0], dtype=float)
    x = np.column_stack([np.ones(n), group])
    y = rng.standard_normal((n, 5))
    y[:, 0] += 2 * group
    res = permuted_glm(y, x, [0, 1], n_perm=0, rng=0, **how)
    design = make_design(x)
    (con,) = make_contrasts([0, 1], design)
    perms = allowed["T2"]
    assert res.exhaustive and res.n_perm == ExchangeabilityTree.from_matrix(TREES["T2"]).count(group)
    assert res.n_perm < len(perms) and "multi-level" in res.enumeration
    t = np.abs([contrast_statistic(y[p], design, con)[0] for p in perms])
    tol = 1e-6 * t[0]
    p_brute = (t >= t[0] - tol).sum(axis=0) / len(perms)
    p_fwe_brute = np.array([(t.max(axis=1) >= o - e).sum() for o, e in zip(t[0], tol)]) / len(perms)
    np.testing.assert_allclose(res[0].p, p_brute, rtol=1e-12)
    np.testing.assert_allclose(res[0].p_fwe, p_fwe_brute, rtol=1e-12)


def test_exhaustive_p_equals_palm_on_an_eb_file():
    """PALM (-eb with tree T2, -n 0, one-sided t) under GNU Octave on these data: 16 shufflings;
    uncorrected and FWE p (times 16) as below, voxel by voxel."""
    rng = np.random.default_rng(3)
    group = np.array([1, 0, 1, 0, 0, 1, 0, 1.0])
    volume = rng.standard_normal((3, 3, 3, 8)).astype(np.float32) + 10
    volume[0] += 1.5 * group
    res = permuted_glm(volume.reshape(-1, 8).T.astype(np.float64), np.column_stack([group, 1 - group]), [1, -1],
                       exchangeability_blocks=np.array(TREES["T2"]), n_perm=0, two_sided=False, rng=0)
    palm_uncp = [1, 5, 1, 1, 1, 1, 1, 1, 1, 6, 11, 6, 6, 8, 11, 16, 5, 8, 14, 4, 2, 16, 13, 4, 1, 1, 12]
    palm_fwep = [1, 16, 1, 2, 8, 7, 7, 1, 15, 16, 16, 16, 16, 16, 16, 16, 16, 16, 16, 15, 15, 16, 16, 16, 15, 6, 16]
    assert res.n_perm == 16
    np.testing.assert_array_equal(np.round(res[0].p * 16), palm_uncp)
    np.testing.assert_array_equal(np.round(res[0].p_fwe * 16), palm_fwep)
