"""Family tables to PALM's exchangeability blocks, against hand counts and hcp2blocks + PALM."""

import pytest

from voxstats.exchangeability import ExchangeabilityTree, variance_groups
from voxstats.families import blocks_from_families

FAMILIES = {  # a made-up family table: MZ twins and their brother, DZ twins, three unrelated
    "subject": [101, 102, 103, 201, 202, 301, 401, 501],
    "mother": ["m1", "m1", "m1", "m2", "m2", "m3", "m4", "m5"],
    "father": ["f1", "f1", "f1", "f2", "f2", "f3", "f4", "f5"],
    "zygosity": ["MZ", "MZ", "NotTwin", "DZ", "NotMZ", "NotTwin", "NotTwin", "NotTwin"],
}


def test_family_table_tree():
    matrix = blocks_from_families(**FAMILIES)
    tree = ExchangeabilityTree.from_matrix(matrix)
    # MZ pair swaps (2), DZ pair swaps (2), the three unrelated subjects shuffle (3!)
    assert tree.count() == 2 * 2 * 6
    # whole families flip together; the three singletons and the DZ family are units too
    assert tree.n_flip_units == 5
    groups = variance_groups(tree)
    assert groups[0] == groups[1] != groups[2] and groups[3] == groups[4]
    assert groups[5] == groups[6] == groups[7]
    # a lone twin (co-twin absent) is a non-twin, and DZ twins may join their siblings
    lone = blocks_from_families([1, 2, 3], ["a", "a", "b"], ["c", "c", "d"], ["MZ", "NotTwin", "DZ"])
    assert ExchangeabilityTree.from_matrix(lone).count() == 2  # 1 and 2 are full siblings
    mixed = blocks_from_families([1, 2, 3], ["a"] * 3, ["c"] * 3, ["DZ", "DZ", "NotTwin"], dz_as_siblings=True)
    assert ExchangeabilityTree.from_matrix(mixed).count() == 6


# 15 subjects: two families of MZ twins + a sibling, DZ twins, three singletons, two pairs of
# full siblings. hcp2blocks (github.com/andersonwinkler/HCP) on this table, then PALM under GNU
# Octave: 768 permutations, 256 sign flips, variance groups as below (checked by hand too:
# 2 x 2 x 2 MZ families, 2 DZ, 3! singletons, 2 x 2 x 2 sibling pairs).
FAMILIES_15 = {
    "subject": [101, 102, 103, 201, 202, 301, 401, 501, 601, 602, 603, 701, 702, 801, 802],
    "mother": [1, 1, 1, 2, 2, 3, 4, 5, 6, 6, 6, 7, 7, 8, 8],
    "father": [11, 11, 11, 12, 12, 13, 14, 15, 16, 16, 16, 17, 17, 18, 18],
    "zygosity": ["MZ", "MZ", "NotTwin", "NotMZ", "NotMZ", "NotTwin", "NotTwin", "NotTwin", "MZ", "MZ",
                 "NotTwin", "NotTwin", "NotTwin", "NotTwin", "NotTwin"],
}
HCP2BLOCKS_VG = [5, 5, 4, 3, 3, 1, 1, 1, 5, 5, 4, 2, 2, 2, 2]


def _same_partition(a, b):
    pairs = set(zip(a, b))
    return len(pairs) == len(set(a)) == len(set(b))


def test_family_table_equals_hcp2blocks_through_palm():
    tree = ExchangeabilityTree.from_matrix(blocks_from_families(**FAMILIES_15))
    assert tree.count() == 768 == 2 * 2 * 2 * 2 * 6 * 2 * 2 * 2
    assert 2 ** tree.n_flip_units == 256
    assert _same_partition(variance_groups(tree), HCP2BLOCKS_VG)


def test_family_table_errors():
    with pytest.raises(ValueError, match=r"zygosity of subject 2 is 'triplet'"):
        blocks_from_families([1, 2], ["a", "a"], ["b", "b"], ["MZ", "triplet"])
    with pytest.raises(ValueError, match=r"subject identifiers must be unique"):
        blocks_from_families([1, 1], ["a", "a"], ["b", "b"], ["MZ", "MZ"])
