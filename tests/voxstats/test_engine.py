"""voxstats.engine: how work is dealt to threads changes no number."""

import importlib

import numpy as np
import pytest

from voxstats import engine, permuted_glm


@pytest.mark.parametrize("tfce_mode", ["exact", "fsl"])
def test_bit_identical_whatever_threads_tasks_and_chunks(smooth_noise, monkeypatch, tfce_mode):
    rng = np.random.default_rng(8)
    shape, n = (9, 8, 7), 14
    x = np.column_stack([np.ones(n), np.repeat([0.0, 1.0], n // 2), rng.standard_normal(n)])
    y = smooth_noise(rng, shape, n, sigma=1.0) * 2 + 0.5 * np.outer(x[:, 1], np.ones(np.prod(shape)))
    options = dict(mask=np.ones(shape, bool), n_perm=40, tfce=True, tfce_mode=tfce_mode, cluster_threshold=1.0,
                   rng=5)

    def fields(res):
        c = res[0]
        return [c.null_max, c.null_max_tfce, c.null_max_extent, c.null_max_mass, c.p, c.tfce_p, c.tfce]

    serial = fields(permuted_glm(y, x, [0, 1, 0], n_jobs=1, **options))
    # tiny tasks, so that every kernel's work is split between the threads
    tfce_module = importlib.import_module("voxstats.tfce")
    monkeypatch.setattr(tfce_module, "_TASK_VOXELS", 1)
    monkeypatch.setattr(engine, "EXCEEDANCE_BLOCK", 37)
    monkeypatch.setattr(engine, "TASK_VOXELS", 1)
    for n_jobs, chunk_size in ((2, None), (2, 7), (3, 13)):
        got = fields(permuted_glm(y, x, [0, 1, 0], n_jobs=n_jobs, chunk_size=chunk_size, **options))
        for a, b in zip(got, serial):
            np.testing.assert_array_equal(a, b)
    assert np.any(serial[2] > 0) and np.all(np.isfinite(serial[1]))
