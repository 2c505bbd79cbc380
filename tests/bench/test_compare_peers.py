"""bench/compare_peers.py and bench/_problem.py run on a tiny problem (not timed).

The TFCE values each peer reports are checked against independent references
written here with scipy.ndimage.label: the exact integral (one labelling per
distinct statistic value) and each stepped tool's own convention.
"""

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
cp = importlib.import_module("compare_peers")
problem = importlib.import_module("_problem")

STRUCT6 = ndimage.generate_binary_structure(3, 1)


# ---------------------------------------------------------------- references


def _sizes(sel):
    lab, _ = ndimage.label(sel, STRUCT6)
    return np.bincount(lab.ravel())[lab]


def exact_tfce(t3d, E=0.5, H=2.0):
    """Exact two-sided TFCE: e(h) is constant between distinct |t| values."""
    out = np.zeros(t3d.shape)
    for sign in (1.0, -1.0):
        x = sign * t3d.astype(np.float64)
        levels = np.unique(x[x > 0])
        prev = 0.0
        for v in levels:  # for h in (prev, v), {x > h} == {x >= v}
            sel = x >= v
            out[sel] += sign * _sizes(sel)[sel] ** E * (v ** (H + 1) - prev ** (H + 1)) / (H + 1)
            prev = v
    return out


def stepped_tfce(t3d, thresholds, *, strict, times_dh, E=0.5, H=2.0):
    """Two-sided stepped TFCE; ``times_dh`` multiplies by the step below h."""
    out = np.zeros(t3d.shape)
    for sign in (1.0, -1.0):
        x = sign * t3d.astype(np.float64)
        prev = 0.0
        for h in thresholds:
            sel = (x > h) if strict else ((x >= h) & (x != 0))
            w = (h - prev) if times_dh else 1.0
            out[sel] += sign * _sizes(sel)[sel] ** E * h**H * w
            prev = h
    return out


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    rc = cp.main(["--tiny", "--threads", "1", "--repeats", "1", "--n-perm", "4",
                  "--out", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def tiny_tmap():
    prob = problem.make_problem(12, box=6, effect=2.0, rng=0)
    t3d = np.zeros(prob["mask"].shape, dtype=np.float32)
    t3d[prob["mask"]] = cp.glm_t(prob["data"].astype(np.float64), prob["design"],
                                 prob["contrast"])
    return t3d


# ---------------------------------------------------------------- the script


@pytest.mark.slow
def test_tiny_run_reports_every_installed_peer(tiny_report):
    rep = tiny_report
    assert rep["machine"]["cores"] >= 1 and rep["machine"]["cpu_model"]
    assert set(rep["skipped"]) | {
        name for name in cp.PEERS if name not in rep["skipped"]
    } == set(cp.PEERS)
    (prob,) = rep["problems"]
    assert prob["n_subjects"] == 12 and prob["n_voxels"] > 1000
    ran = [n for n in cp.PEERS if n not in rep["skipped"]]
    assert sorted(prob["timing"]["1"]) == sorted(ran)
    for name, rec in prob["timing"]["1"].items():
        run = rec["runs"][0]
        assert run["k_hi"] > run["k_lo"] >= 0
        assert np.isfinite(rec["per_perm_s"])
        assert rec["per_perm_s"] == pytest.approx(
            (run["s_hi"] - run["s_lo"]) / (run["k_hi"] - run["k_lo"]))
        assert rec["samples_s"] == [pytest.approx(rec["per_perm_s"])]
        assert run["cpu_hi"] >= 0 and run["cpu_lo"] >= 0
        assert np.isfinite(rec["cpu_per_perm_s"])
    for name, mem in prob["memory"]["1"].items():
        assert "error" not in mem, (name, mem)
        assert mem["peak_self_mb"] >= mem["rss_after_load_mb"] > 10
        assert mem["peak_tree_rss_mb"] is None or mem["peak_tree_rss_mb"] > 10


@pytest.mark.slow
def test_tiny_run_tfce_values_match_independent_references(tiny_report, tiny_tmap):
    tp = tiny_report["problems"][0]["tfce_pass"]
    t3d = tiny_tmap
    peak, edge = (tuple(tp["voxels"][k]) for k in ("peak", "edge"))
    assert t3d[peak] == pytest.approx(tp["t_at"]["peak"], rel=1e-6)
    assert t3d[peak] == t3d.max()
    assert t3d[edge] > 0  # the planted effect is strong in the tiny problem
    exact = exact_tfce(t3d)
    m = float(np.abs(t3d).max())
    assert tp["delta"] == pytest.approx(m / 100, rel=1e-6)
    nilearn_ref = stepped_tfce(t3d, np.linspace(0, m, 101)[1:], strict=False,
                               times_dh=False)
    mne_ref = stepped_tfce(t3d, np.arange(0, m, cp.MNE_STEP), strict=True,
                           times_dh=True)
    # FSL: h = 0, dh, 2 dh, ... accumulated in float (h += dh) with dh = float(max|t| / 100),
    # > h, not times dh; the volume's outermost layer is left out
    step, h, fsl_thresholds = np.float32(m / 100), np.float32(0), []
    while h < np.float32(np.float32(m) + step):
        fsl_thresholds.append(float(h))
        h = np.float32(h + step)
    inner = np.zeros_like(t3d)
    inner[1:-1, 1:-1, 1:-1] = t3d[1:-1, 1:-1, 1:-1]
    fsl_ref = stepped_tfce(inner, fsl_thresholds, strict=True, times_dh=False)
    refs = {"voxstats exact": (exact, 1e-4), "tfce": (exact, 1e-4),
            "nilearn": (nilearn_ref, 1e-9), "mne": (mne_ref, 1e-9),
            "voxstats fsl": (fsl_ref, 1e-6)}
    res = tp["results"]
    for label in res:
        ref, rtol = refs[label]
        for where, vox in (("peak", peak), ("edge", edge)):
            assert res[label][where] == pytest.approx(ref[vox], rel=rtol), label
    if "voxstats fsl" in res:
        rec = res["voxstats fsl"]
        # FSL's limit as the step shrinks: the exact TFCE of the map without its border
        assert rec["peak_times_delta"] == pytest.approx(exact_tfce(inner)[peak], rel=0.05)
        assert rec["peak_rel_diff_vs_exact"] == pytest.approx(
            rec["peak"] / res["voxstats exact"]["peak"] - 1)
    # stepped sums converge to the exact integral (nilearn after times delta)
    assert nilearn_ref[peak] * m / 100 == pytest.approx(exact[peak], rel=0.05)
    assert mne_ref[peak] == pytest.approx(exact[peak], rel=0.25)


def test_missing_peer_is_skipped_with_a_note(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tfce", None)  # import tfce -> ImportError
    out = tmp_path / "r.json"
    rc = cp.main(["--tiny", "--peers", "tfce", "--threads", "1", "--repeats", "1",
                  "--no-memory", "--out", str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert "not installed" in rep["skipped"]["tfce"]
    assert rep["problems"][0]["timing"]["1"] == {}
    assert "skipped tfce" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


@pytest.mark.parametrize("argv, message", [
    (["--peers", "voxstats,spm"], "Invalid value for the '--peers' parameter. "
     "Allowed values are voxstats, tfce, mne, nilearn, but got 'spm' instead."),
    (["--threads", "0"], "expected comma-separated positive integers"),
])
def test_bad_options_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cp.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_n_perm(capsys):
    assert cp.main(["--n-perm", "1"]) == 2
    assert "Invalid value for the '--n-perm' parameter" in capsys.readouterr().err


def test_targets_are_checked_and_misses_quantified():
    prob = {"timing": {"2": {"voxstats": {"per_perm_s": 0.02},
                             "tfce": {"per_perm_s": 0.1},
                             "nilearn": {"per_perm_s": 6.0}}}}
    prob["memory"] = {"2": {"voxstats": {"peak_tree_rss_mb": 600.0},
                            "tfce": {"peak_tree_rss_mb": 500.0},
                            "nilearn": {"peak_tree_rss_mb": None,
                                        "peak_self_mb": 1200.0}}}
    tfce_t, nilearn_t = cp.check_targets(prob, threads=2)
    assert tfce_t["speedup"] == pytest.approx(5.0) and not tfce_t["met"]
    assert "MISSED by 3.00x" in tfce_t["text"] and "(HIGHER)" in tfce_t["text"]
    assert tfce_t["memory_ratio"] == pytest.approx(1.2)
    assert nilearn_t["speedup"] == pytest.approx(300.0) and nilearn_t["met"]
    assert nilearn_t["memory_ratio"] == pytest.approx(0.5)
    assert cp.check_targets(prob, threads=1) == []


def test_a_wall_slope_below_cpu_over_threads_is_reported_unreliable():
    # the 2026-11-30 run at --n-perm 100: 6.7 ms wall per permutation for 17.8 ms of CPU on 2 threads
    prob = {"timing": {"2": {"voxstats": {"per_perm_s": 0.0067, "cpu_per_perm_s": 0.0178},
                             "randomise": {"per_perm_s": 1.73}}}}
    (rand,) = cp.check_targets(prob, threads=2)
    assert rand["unreliable"] and not rand["met"] and rand["speedup"] > 200
    assert "UNRELIABLE" in rand["text"] and "MET" not in rand["text"]
    prob["timing"]["2"]["voxstats"]["per_perm_s"] = 0.0120   # 0.0120 * 2 >= 0.9 * 0.0178
    (rand,) = cp.check_targets(prob, threads=2)
    assert not rand["unreliable"] and not rand["met"] and "MISSED by 1.39x" in rand["text"]


# ---------------------------------------------------------------- helpers


def test_grid_adjacency_components_match_ndimage_label():
    rng = np.random.default_rng(3)
    mask = rng.random((9, 8, 7)) < 0.45
    adj = cp.grid_adjacency(mask)
    from scipy.sparse.csgraph import connected_components

    n_comp, labels = connected_components(adj.tocsr(), directed=False)
    lab, n_lab = ndimage.label(mask, STRUCT6)
    assert n_comp == n_lab
    # same partition: each ndimage label maps to exactly one graph component
    pairs = set(zip(lab[mask].tolist(), labels.tolist()))
    assert len(pairs) == n_lab
    full = cp.grid_adjacency(np.ones((3, 3, 3), bool))
    assert full.nnz == 2 * 54 and (full != full.T).nnz == 0


def test_glm_t_matches_statsmodels_and_freedman_lane_identity():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(0)
    n = 30
    design = np.column_stack([np.ones(n), np.repeat([0.0, 1.0], n // 2),
                              rng.uniform(20, 60, n), rng.integers(0, 2, n)])
    data = rng.standard_normal((n, 5)) + design[:, [1]] * 0.8
    c = np.array([0.0, 1.0, 0.0, 0.0])
    t = cp.glm_t(data, design, c)
    for j in range(5):
        assert t[j] == pytest.approx(sm.OLS(data[:, j], design).fit().tvalues[1],
                                     rel=1e-10)
    # the statistic of R_z Y under the full model equals that of Y
    resid = cp.residualise(data, design, c)
    np.testing.assert_allclose(cp.glm_t(resid, design, c), t, rtol=1e-10)


# ---------------------------------------------------------------- the problem


def test_make_problem_full_mask_shapes_and_seed():
    p = problem.make_problem(6, rng=5)
    assert p["mask"].shape == (99, 117, 95) and p["mask"].sum() == 235_375
    assert p["data"].shape == (6, 235_375) and p["data"].dtype == np.float32
    assert p["design"].shape == (6, 4) and p["design"].dtype == np.float64
    np.testing.assert_array_equal(p["design"][:, 0], 1.0)
    np.testing.assert_array_equal(p["design"][:, 1], [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(p["contrast"], [0, 1, 0, 0])
    assert p["effect_map"].max() == pytest.approx(1.0)
    q = problem.make_problem(6, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(p["data"], q["data"])


def test_make_problem_noise_has_unit_variance_and_the_stated_smoothness():
    p = problem.make_problem(8, effect=0.0, rng=1)
    data = p["data"] - p["data"].mean(0)
    # age slope adds little variance; the noise is rescaled to unit variance
    assert data.var(0, ddof=1).mean() == pytest.approx(1.0, abs=0.05)
    vol = np.zeros((8,) + p["mask"].shape, dtype=np.float32)
    vol[:, p["mask"]] = p["data"]
    core = ndimage.binary_erosion(p["mask"], iterations=2)
    a, b = vol[:, :-1][:, core[:-1] & core[1:]], vol[:, 1:][:, core[:-1] & core[1:]]
    lag1 = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    sigma = 6.0 / np.sqrt(8 * np.log(2)) / 2.0  # voxels
    assert lag1 == pytest.approx(np.exp(-1 / (4 * sigma**2)), abs=0.03)


def test_make_problem_planted_effect_and_crop():
    p = problem.make_problem(40, box=5, effect=3.0, rng=2)
    assert p["mask"].shape == (11, 11, 11)
    c = tuple(p["effect_center"])
    assert c == (5, 5, 5)
    world = p["affine"] @ np.r_[c, 1.0]
    np.testing.assert_allclose(world[:3], problem.EFFECT_CENTER_MM, atol=2.0)
    idx = np.flatnonzero(p["mask"].ravel() == 1)
    centre = int(np.searchsorted(idx, np.ravel_multi_index(c, p["mask"].shape)))
    diff = p["data"][20:, centre].mean() - p["data"][:20, centre].mean()
    assert diff == pytest.approx(3.0, abs=1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(resolution=3), "Invalid value for the 'resolution' parameter"),
    (dict(n_subjects=2), "Invalid value for the 'n_subjects' parameter"),
    (dict(smoothness_mm=-1.0), "Invalid value for the 'smoothness_mm' parameter"),
    (dict(rng="x"), "Invalid value for the 'rng' parameter"),
])
def test_make_problem_bad_input(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        problem.make_problem(**kwargs)
