"""Cluster normalisation (randomise --twopass) against a float64 brute force over all 70 relabellings."""

import itertools
import sys

import numpy as np
import pytest
from scipy import ndimage

from voxstats import permuted_glm
from voxstats._reference import tfce_reference
from voxstats.twopass import fsl_percentile, quantum

randomise_module = sys.modules["voxstats.randomise"]
SHAPE = (5, 4, 3)


class _Schedule:
    def __init__(self, perms):
        self.permutations = np.asarray(perms, dtype=np.int64)
        self.signs = np.ones_like(self.permutations, dtype=np.int8)
        self.n_perm = self.n_possible = len(perms)
        self.exhaustive, self.permute, self.sign_flip = True, True, False
        self.rule = "the 70 relabellings of a 4+4 design"

    def rows(self, start, stop):
        return self.permutations[start:stop], self.signs[start:stop]


def _relabellings(n=8):
    group = np.repeat([True, False], n // 2)
    relabels = [np.isin(np.arange(n), m) for m in itertools.combinations(range(n), n // 2)]
    relabels.sort(key=lambda a: not np.array_equal(a, group))
    perms = []
    for a in relabels:  # design row i <- subject inv[i]; the data permutation is its inverse
        inv = np.empty(n, dtype=np.int64)
        inv[a], inv[~a] = np.arange(n // 2), np.arange(n // 2, n)
        perm = np.empty(n, dtype=np.int64)
        perm[inv] = np.arange(n)
        perms.append(perm)
    return relabels, perms


def _t(y, a):
    y1, y0 = y[a], y[~a]
    pooled = (((y1 - y1.mean(0)) ** 2).sum(0) + ((y0 - y0.mean(0)) ** 2).sum(0)) / (len(y) - 2)
    return (y1.mean(0) - y0.mean(0)) / np.sqrt(pooled * (1 / len(y1) + 1 / len(y0)))


def test_twopass_equals_randomise_algorithm_by_brute_force(smooth_noise, monkeypatch):
    rng = np.random.default_rng(4)
    n = 8
    y = smooth_noise(rng, SHAPE, n, sigma=0.8) * 2
    y[:4, :20] += 1.5
    x = np.column_stack([np.repeat([1.0, 0], 4), np.repeat([0.0, 1], 4)])
    relabels, perms = _relabellings(n)
    monkeypatch.setattr(randomise_module, "make_schedule", lambda *a, **k: _Schedule(perms))
    threshold = 1.0
    res = permuted_glm(y, x, [1, -1], mask=np.ones(SHAPE, bool), n_perm=70, two_sided=False, tfce=True,
                       cluster_threshold=threshold, twopass=True, rng=0)
    tp = res[0].twopass
    # brute force, as randomise's two passes (float64)
    t = np.array([_t(y, a) for a in relabels])
    structure = np.ones((3, 3, 3), bool)
    labels = [ndimage.label(m.reshape(SHAPE) >= threshold, structure)[0].ravel() for m in t]
    sizes = np.array([np.where(lab > 0, np.bincount(lab)[lab], 0) for lab in labels])
    tfce = np.array([tfce_reference(m.reshape(SHAPE), two_sided=False).ravel() for m in t])
    cluster_mean = np.divide(sizes.sum(0), (sizes > 0).sum(0), out=np.zeros(t.shape[1]),
                             where=(sizes > 0).sum(0) > 0)
    tfce_mean = np.divide(tfce.sum(0), (tfce != 0).sum(0), out=np.zeros(t.shape[1]), where=(tfce != 0).sum(0) > 0)
    tfce_mean = np.maximum(tfce_mean, np.sort(tfce_mean)[int(0.02 * tfce_mean.size)])
    np.testing.assert_array_equal(tp.cluster_sum, sizes.sum(0))
    np.testing.assert_array_equal(tp.cluster_samp, (sizes > 0).sum(0))
    np.testing.assert_allclose(tp.cluster_mean, cluster_mean, rtol=1e-12)
    np.testing.assert_allclose(tp.tfce_mean, tfce_mean, rtol=2e-5)
    clustern = np.zeros(t.shape)
    for r, lab in enumerate(labels):
        for k in range(1, lab.max() + 1):
            inside = lab == k
            clustern[r, inside] = inside.sum() / cluster_mean[inside].mean()
    tfcen = np.divide(tfce, tfce_mean, out=np.zeros(tfce.shape), where=tfce_mean != 0)
    np.testing.assert_allclose(tp.clustern, clustern[0], rtol=1e-6)
    np.testing.assert_allclose(tp.tfcen, tfcen[0], rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(tp.null_max_clustern, clustern.max(1), rtol=1e-6)
    for obs, null, p in ((clustern[0], clustern.max(1), tp.clustern_p_fwe),
                         (tfcen[0], tfcen.max(1), tp.tfcen_p_fwe)):
        np.testing.assert_array_equal(np.rint(p * 70), [np.sum(null >= o * (1 - 1e-4)) for o in obs])
    np.testing.assert_array_equal(np.rint(tp.tfcen_p * 70), np.sum(tfcen >= tfcen[0] * (1 - 1e-4), axis=0))
    assert (tp.clustern_p_fwe < 1).any() and tp.tfcen_p_fwe.min() < 0.5


def test_quantum_and_percentile():
    q = quantum(300.0, 5000)
    assert q == 2.0 ** (9 + 16 + 13 - 62)  # 2**-24: the worst-case total stays below 2**62
    assert quantum(0.0, 10) == 1.0
    assert fsl_percentile([5.0, 1, 3, 2, 4], 0.02) == 1.0 and fsl_percentile(np.arange(100.0), 0.5) == 50.0


def test_twopass_is_the_same_for_any_chunking(smooth_noise):
    rng = np.random.default_rng(5)
    y = smooth_noise(rng, SHAPE, 10, sigma=0.8)
    x = np.column_stack([np.ones(10), rng.normal(size=10)])
    kwargs = dict(mask=np.ones(SHAPE, bool), n_perm=60, tfce=True, cluster_threshold=1.0, twopass=True, rng=3,
                  two_sided=False)
    a = permuted_glm(y, x, [0, 1], chunk_size=7, **kwargs)[0].twopass
    b = permuted_glm(y, x, [0, 1], chunk_size=64, n_jobs=2, **kwargs)[0].twopass
    for name in ("tfce_sum", "tfce_mean", "cluster_mean", "null_max_tfcen", "null_max_clustern", "tfcen_p"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert permuted_glm(y, x, None, f_contrasts=[[[0, 1]]], **kwargs)[0].twopass is None  # t contrasts only
