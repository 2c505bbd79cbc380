"""Variance groups and FWE over contrasts against values recorded from PALM (Dec/2025, GNU Octave).

The data are written out below; PALM was run on the same numbers (3x2x1 NIfTI,
``-noniiclass -n 100000``, so every rearrangement was used) with ``-vg``,
``-corrcon``, ``-twotail`` and ``-savedof``. Findings, each a test:

* PALM's v and G maps equal ours (Winkler et al. 2014).
* For rank-1 contrasts PALM's degrees of freedom are a third of
  Welch-Satterthwaite's (``fastv`` in ``palm_core.m``); PALM's p-values, which
  it computes on z, are reproduced exactly by an independent reference that
  uses that third, and ours by the same reference with the paper's df.
* For rank > 1 (G) PALM follows the paper: its z, uncorrected and FWE p-values
  equal ours exactly.
"""

import itertools

import numpy as np
import pytest

from voxstats import permuted_glm
from voxstats.design import make_contrasts, make_design
from voxstats.glm import effect_basis
from voxstats.welch import g_to_z, welch_statistic

# S1: 3 + 4 subjects, cell means, variance groups = groups; contrasts [1, -1] and [-1, 1]
Y1 = [[0.0012, 0.2987, -0.2741, -0.8906, -0.4547, -0.9916], [0.0601, 1.3402, -0.4922, -0.6205, 0.4898, 0.3569],
      [0.1054, -0.9305, -0.0293, 0.6953, -1.3442, -0.4576], [-4.8037, -2.9686, -4.6252, 0.1947, -2.9023, 1.7138],
      [1.3703, 0.3392, -6.6503, -0.7161, 0.7545, 1.2399], [-3.6904, -0.5333, -2.0356, -1.5265, 4.0827, -1.5226],
      [0.8024, 3.5532, -0.8508, 0.5649, 1.2314, 1.0913]]
PALM_S1 = {  # -vg -corrcon (vox_vstat*_c1) and -vg -twotail (twotail_*)
    "v": [1.0480573208048538, 0.0923954018178386, 2.502157525033155, 0.14556840410018276, -0.8033659532995286,
          -1.2005440746770546],
    "dof": [1.0007471582068477, 1.4113534232225178, 1.0210268592530776, 1.5712266834081485, 1.2563044350294859,
            1.476010514827411],
    "uncp": [0.2857142857142857, 0.5142857142857142, 0.02857142857142857, 0.45714285714285713, 0.7714285714285715,
             0.9142857142857143],
    "fwep": [0.7142857142857143, 0.9714285714285714, 0.2571428571428571, 0.9714285714285714, 1.0, 1.0],
    "cfwep": [0.9714285714285714, 1.0, 0.45714285714285713, 1.0, 1.0, 1.0],
    "twotail_uncp": [0.42857142857142855, 1.0, 0.02857142857142857, 0.9142857142857143, 0.4857142857142857,
                     0.2571428571428571],
    "twotail_fwep": [0.9714285714285714, 1.0, 0.45714285714285713, 1.0, 1.0, 0.8857142857142857],
}
# S3: intercept + group (3 + 4) + 2 covariates, variance groups = groups, Freedman-Lane; t contrasts on each
# covariate and the F contrast on both; -corrcon with mixed ranks, so PALM adds -zstat (z maps)
Y3 = [[-1.8066, -2.1537, -0.4229, -1.0183, 0.0457, 2.1264], [-0.8386, -0.6308, 0.1985, 0.4861, -0.1833, -0.2128],
      [1.4021, 1.2196, -0.334, 0.6205, 0.7349, -0.3548], [0.6351, -2.1594, 2.4157, 0.4674, 0.2088, -1.492],
      [-0.5005, -5.1983, -3.0325, 0.7032, -5.5254, 1.9126], [-4.3685, 1.8886, -2.117, 1.9442, 0.3241, -3.8453],
      [2.3483, 2.8297, -0.9391, -1.4593, -1.1742, -3.2124]]
X3 = [[1.0, 0.0, -0.1973, -1.1141], [1.0, 0.0, -0.0115, -0.4436], [1.0, 0.0, 1.1661, 0.6531],
      [1.0, 1.0, -0.0241, 0.6684], [1.0, 1.0, -0.3399, 1.0521], [1.0, 1.0, -0.0054, 0.5834],
      [1.0, 1.0, -1.2909, 0.3467]]
PALM_S3 = {
    "zG": [0.7705163839560871, -2.395928410711416, -0.7086668172069601, 0.9474370476350844, -0.07306565605701083,
           -2.1092196060215977],
    "G_uncp": [0.36666666666666664, 0.9952380952380953, 0.852579365079365, 0.31626984126984126, 0.6470238095238096,
               0.983531746031746],
    "G_fwep": [0.9057539682539683, 1.0, 1.0, 0.8597222222222223, 0.9990079365079365, 1.0],
    "G_cfwep": [0.9591269841269842, 1.0, 1.0, 0.8972222222222223, 1.0, 1.0],
    "zv1": [-0.8516692206098098, -0.1055208780518013, 0.3966476209665095, 0.8442442808881545, 0.7019388759272426,
            -0.15428561848966418],
    "v1_uncp": [0.888095238095238, 0.5426587301587301, 0.3521825396825397, 0.1126984126984127, 0.16865079365079366,
                0.5791666666666667],
    "v1_fwep": [1.0, 1.0, 0.9436507936507936, 0.510515873015873, 0.6992063492063492, 1.0],
    "v1_cfwep": [1.0, 1.0, 0.9994047619047619, 0.9337301587301587, 0.9761904761904762, 1.0],
}
S1_GROUPS = np.repeat([0, 1], [3, 4])


def _z_maps(y, x, contrast, groups, perms, *, df_scale=1.0, two_sided=False):
    """z of v or G for every rearrangement (Freedman-Lane), float64, v's df times ``df_scale``."""
    design = make_design(x)
    nuisance = effect_basis(design, contrast).nuisance
    fitted = nuisance @ (nuisance.T @ y)
    # every rearrangement's data side by side: one call for all of them
    stacked = np.hstack([(y - fitted)[perm] + fitted for perm in perms])
    stat, df2 = welch_statistic(stacked, design, contrast, groups)
    z = g_to_z(stat, contrast.rank, df2 * (df_scale if contrast.kind == "t" else 1.0), kind=contrast.kind)
    z = z.reshape(len(perms), y.shape[1])
    return np.abs(z) if two_sided and contrast.kind == "t" else z


def _p(maps, null):
    tie = maps[0] - 1e-9 * np.abs(maps[0])  # equal in exact arithmetic counts as >=
    return np.mean(maps >= tie, axis=0), np.mean(null[:, None] >= tie, axis=0)


def _relabellings(groups):
    """Each distinct relabelling of the groups once (PALM's 35 shufflings of a 3 + 4 design)."""
    n = groups.size
    for first in itertools.combinations(range(n), int(np.sum(groups == 0))):
        rest = [i for i in range(n) if i not in first]
        yield np.array(list(first) + rest)


def test_v_and_its_degrees_of_freedom():
    x = np.column_stack([1 - S1_GROUPS, S1_GROUPS])
    v, df2 = welch_statistic(np.array(Y1), x, [[1, -1]], S1_GROUPS)
    np.testing.assert_allclose(v, PALM_S1["v"], rtol=1e-10)
    np.testing.assert_allclose(df2, 3 * np.array(PALM_S1["dof"]), rtol=1e-10)  # PALM's df: a third


@pytest.mark.parametrize("two_sided", [False, True])
def test_rank_one_p_values_differ_from_palm_only_by_its_df(two_sided):
    y, x = np.array(Y1), np.column_stack([1 - S1_GROUPS, S1_GROUPS])
    design = make_design(x)
    cons = make_contrasts([[1, -1], [-1, 1]], design)
    perms = list(_relabellings(S1_GROUPS))
    res = permuted_glm(y, x, [[1, -1], [-1, 1]], variance_groups=S1_GROUPS, n_perm=10**6, rng=0,
                       two_sided=two_sided, correct_across_contrasts=True)
    key = "twotail_" if two_sided else ""
    for scale, check in ((1 / 3, "palm"), (1.0, "ours")):
        maps = [_z_maps(y, x, c, S1_GROUPS, perms, df_scale=scale, two_sided=two_sided) for c in cons]
        combined = np.maximum(maps[0].max(axis=1), maps[1].max(axis=1))
        p, p_fwe = _p(maps[0], maps[0].max(axis=1))
        _, p_cfwe = _p(maps[0], combined)
        if check == "palm":
            np.testing.assert_array_equal(p, PALM_S1[key + "uncp"])
            np.testing.assert_array_equal(p_fwe, PALM_S1[key + "fwep"])
            if not two_sided:
                np.testing.assert_array_equal(p_cfwe, PALM_S1["cfwep"])
        else:
            np.testing.assert_array_equal(res[0].p, p)
            np.testing.assert_array_equal(res[0].p_fwe, p_fwe)
            np.testing.assert_array_equal(res[0].p_cfwe, p_cfwe)
    assert np.any(res[0].p != PALM_S1[key + "uncp"])  # the df matter


def test_g_with_nuisance_equals_palm_and_corrcon_mixes_ranks():
    y, x = np.array(Y3), np.array(X3)
    groups = S1_GROUPS
    t_cons, f_cons = [[0, 0, 1, 0], [0, 0, 0, 1]], [[[0, 0, 1, 0], [0, 0, 0, 1]]]
    res = permuted_glm(y, x, t_cons, f_contrasts=f_cons, variance_groups=groups, n_perm=10**6, rng=0,
                       two_sided=False, correct_across_contrasts=True)
    assert res.exhaustive and res.n_perm == 5040 and [c.kind for c in res.contrasts] == ["v", "v", "G"]
    g = res[2]
    np.testing.assert_allclose(g.z, PALM_S3["zG"], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(g.p, PALM_S3["G_uncp"])
    np.testing.assert_array_equal(g.p_fwe, PALM_S3["G_fwep"])
    # v: PALM's z and p-values follow from its third of the df
    design = make_design(x)
    cons = make_contrasts(t_cons, design, f_contrasts=f_cons)
    perms = [np.array(p) for p in itertools.permutations(range(7))]
    np.testing.assert_allclose(g_to_z(res[0].stat, 1, res[0].df2 / 3), PALM_S3["zv1"], rtol=1e-9, atol=1e-12)
    for scale in (1 / 3, 1.0):
        maps = [_z_maps(y, x, c, groups, perms, df_scale=scale) for c in cons]
        combined = np.max([m.max(axis=1) for m in maps], axis=0)
        p, p_fwe = _p(maps[0], maps[0].max(axis=1))
        _, v_cfwe = _p(maps[0], combined)
        _, g_cfwe = _p(maps[2], combined)
        if scale < 1:
            np.testing.assert_array_equal(np.r_[p, p_fwe, v_cfwe, g_cfwe],
                                          np.r_[PALM_S3["v1_uncp"], PALM_S3["v1_fwep"], PALM_S3["v1_cfwep"],
                                                PALM_S3["G_cfwep"]])
        else:
            np.testing.assert_array_equal(np.r_[res[0].p, res[0].p_fwe, res[0].p_cfwe, g.p_cfwe],
                                          np.r_[p, p_fwe, v_cfwe, g_cfwe])
