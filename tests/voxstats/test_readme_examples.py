"""README's voxstats examples run as written and their stated outputs are true.

The family-table example and its variance-groups sequel (PALM's designs) are
executed from README.md; the values their comments state are checked against
counts made here by hand from the example's own table and design.
"""

import itertools
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_block(containing):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"{len(found)} README python blocks contain {containing!r}"
    return found[0]


def _distinct(values):
    """Distinct orders of a few values (hand count: n! / multiplicities!)."""
    return len(set(itertools.permutations(values)))


def test_family_and_variance_group_examples_run_and_state_true_values():
    import pytest

    import voxstats
    from voxstats.errors import ParameterError

    families = _python_block("blocks_from_families(")
    vg = _python_block("variance_groups=groups")
    ns = {}
    exec(compile(families, "README family example", "exec"), ns)   # defines data, design, eb
    assert {"data", "design", "eb"} <= set(ns)
    # tree.count(): 2 x 2 x 3! as its comment says, computed by hand
    assert "tree.count()        # 24 = 2 (MZ twins swap) x 2 (DZ twins swap) x 3!" in families
    assert ns["tree"].count() == 2 * 2 * 6 == 24
    # PALM's automatic groups by hand: MZ pair (swap) 1, their sibling (in place) 2, DZ pair 3, unrelated 4
    stated = re.search(r"groups = variance_groups\(eb\)\s+# \[([\d ]+)\]", vg).group(1)
    from voxstats.exchangeability import variance_groups

    np.testing.assert_array_equal(variance_groups(ns["eb"]), [int(c) for c in stated.split()])
    np.testing.assert_array_equal(variance_groups(ns["eb"]), [1, 1, 2, 3, 3, 4, 4, 4])
    # "auto" keeps the sibling's group of one: refused, as README says
    with pytest.raises(ParameterError, match=r"variance groups of one subject: \d+ \(subject 3\)"):
        voxstats.permuted_glm(ns["data"], ns["design"], [0, 1], exchangeability_blocks=ns["eb"],
                              variance_groups="auto", n_perm=0)
    exec(compile(vg, "README variance groups example", "exec"), ns)
    res = ns["res"]
    kind, n_perm = re.search(r"res\[0\]\.kind, res\.n_perm\s+# '(\w)', (\d+)", vg).groups()
    assert res[0].kind == kind == "v"
    # distinct (design row, variance group) rearrangements, counted per block by hand:
    # MZ pair (subjects 0, 1), DZ pair (3, 4), the three unrelated (5, 6, 7) shuffle within
    # themselves; subject 2 (the MZ twins' sibling) stays.
    rows = [tuple(r) for r in np.asarray(ns["design"])]
    expected = (_distinct(rows[0:2]) * _distinct(rows[3:5]) * _distinct(rows[5:8]))
    assert res.n_perm == int(n_perm) == expected == 6


def test_continuous_regressor_makes_every_rearrangement_distinct():
    """What README says of a continuous regressor: all 24 of the tree's rearrangements."""
    import voxstats

    ns = {}
    exec(compile(_python_block("blocks_from_families("), "README family example", "exec"), ns)
    exec(compile(_python_block("variance_groups=groups"), "README variance groups example", "exec"), ns)
    age = np.random.default_rng(1).uniform(20, 60, 8)
    design = np.column_stack([np.ones(8), age])
    res = voxstats.permuted_glm(ns["data"], design, [0, 1], exchangeability_blocks=ns["eb"],
                                variance_groups=ns["groups"], n_perm=0)
    assert "`res.n_perm` is then 24" in README.read_text()
    assert res.n_perm == ns["tree"].count() == 24
