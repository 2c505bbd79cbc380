"""The drivers: randomise on NIfTI files, permuted_glm on matrices, reproducibility, bad input."""

import dataclasses

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from voxstats import engine, make_schedule, permuted_glm, randomise, tfce
from voxstats._reference import tfce_reference
from voxstats.design import make_contrasts, make_design
from voxstats.glm import contrast_statistic, f_to_z
from voxstats.randomise import make_job

SHAPE = (7, 6, 5)
AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


@pytest.fixture
def problem(smooth_noise, design_with_nuisance):
    """Volumes (x, y, z, n) with a zero border, design, and the in-brain mask."""
    rng = np.random.default_rng(42)
    n = 12
    x = design_with_nuisance(rng, n)
    noise = smooth_noise(rng, SHAPE, n, sigma=1.0).reshape((n,) + SHAPE)
    data = 10.0 + noise * 3 + 0.6 * x[:, 1, None, None, None] * (np.arange(SHAPE[0]) < 3)[None, :, None, None]
    mask = np.zeros(SHAPE, bool)
    mask[1:-1, 1:-1, :] = True
    data = np.where(mask, data, 0.0).astype(np.float32)
    return np.moveaxis(data, 0, -1), x, mask


def _write(tmp_path, volumes, affine=AFFINE):
    paths = []
    for i in range(volumes.shape[-1]):
        path = tmp_path / f"sub-{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(volumes[..., i], affine), path)
        paths.append(str(path))
    return paths


OPTIONS = dict(n_perm=60, tfce=True, cluster_threshold=2.0, rng=7)


def _assert_same(a, b):
    for ca, cb in zip(a.contrasts, b.contrasts, strict=True):
        for f in dataclasses.fields(ca):
            va, vb = getattr(ca, f.name), getattr(cb, f.name)
            if isinstance(va, np.ndarray):
                np.testing.assert_array_equal(va, vb, err_msg=f.name)
            else:
                assert va == vb, f.name


def test_randomise_files_equal_permuted_glm_on_the_matrix(tmp_path, problem):
    volumes, x, mask = problem
    paths = _write(tmp_path, volumes)
    four_d = tmp_path / "all.nii.gz"
    nib.save(nib.Nifti1Image(volumes, AFFINE), four_d)
    from_list = randomise(paths, x, [0, 1, 0, 0], **OPTIONS)
    from_4d = randomise(str(four_d), x, [0, 1, 0, 0], **OPTIONS)
    matrix = np.moveaxis(volumes, -1, 0)[:, mask]
    from_matrix = permuted_glm(matrix, x, [0, 1, 0, 0], mask=mask, **OPTIONS)
    # default mask: voxels non-zero and finite in every subject
    np.testing.assert_array_equal(np.asarray(from_list.mask_img.dataobj) != 0, mask)
    np.testing.assert_array_equal(from_list.mask_img.affine, AFFINE)
    _assert_same(from_list, from_matrix)
    _assert_same(from_4d, from_matrix)
    assert from_matrix.mask_img is None
    # an explicit mask file restricts the analysis
    small = mask.copy()
    small[:, :, 0] = False
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(small.astype(np.uint8), AFFINE), mask_path)
    masked = randomise(paths, x, [0, 1, 0, 0], mask_img=mask_path, n_perm=20, rng=1)
    assert masked[0].stat.size == small.sum()
    np.testing.assert_array_equal(masked[0].stat,
                                  permuted_glm(np.moveaxis(volumes, -1, 0)[:, small], x, [0, 1, 0, 0],
                                               n_perm=20, rng=1)[0].stat)


def test_to_img_round_trip(problem):
    volumes, x, mask = problem
    imgs = [nib.Nifti1Image(volumes[..., i], AFFINE) for i in range(volumes.shape[-1])]
    res = randomise(imgs, x, {"cov": [0, 1, 0, 0]}, n_perm=10, rng=0)
    img = res.to_img(res["cov"].stat)
    assert img.shape == SHAPE
    np.testing.assert_array_equal(img.affine, AFFINE)
    data = img.get_fdata()
    np.testing.assert_allclose(data[mask], res["cov"].stat, rtol=1e-6)
    assert np.all(data[~mask] == 0)
    with pytest.raises(ValueError, match=rf"values: expected shape \({mask.sum()},\), got \(3,\)"):
        res.to_img(np.zeros(3))
    matrix_res = permuted_glm(np.moveaxis(volumes, -1, 0)[:, mask], x, [0, 1, 0, 0], n_perm=10, rng=0)
    with pytest.raises(ValueError, match=r"to_img needs a mask image; this result comes from a data matrix"):
        matrix_res.to_img(matrix_res[0].stat)


def test_result_structure(problem):
    volumes, x, mask = problem
    frame = pd.DataFrame(x, columns=["intercept", "age", "iq", "group"])
    data = np.moveaxis(volumes, -1, 0)[:, mask]
    res = permuted_glm(data, frame, {"age+": {"age": 1}, "age-": {"age": -1}},
                       f_contrasts={"any": [[0, 1, 0, 0], [0, 0, 1, 0]]}, n_perm=25, rng=0)
    assert [c.name for c in res.contrasts] == ["age+", "age-", "any"]
    assert [c.kind for c in res.contrasts] == ["t", "t", "F"]
    assert res.design_names == ("intercept", "age", "iq", "group")
    assert res["age-"] is res[1] and res.df == 12 - 4 and res.n_perm == 25 and not res.exhaustive
    assert res.scheme == "freedman-lane"
    with pytest.raises(KeyError, match=r"no contrast named 'nope'"):
        res["nope"]
    c = res[0]
    for name in ("tfce", "tfce_p", "tfce_p_fwe", "null_max_tfce", "cluster_extent_p_fwe",
                 "cluster_mass_p_fwe", "null_max_extent", "p_fwe_tail"):
        assert getattr(c, name) is None, name
    assert c.stat.shape == c.p.shape == c.p_fwe.shape == c.p_fdr.shape == (mask.sum(),)
    assert c.null_max.shape == (25,)
    # observed stat is the float64 OLS
    design = make_design(frame)
    np.testing.assert_allclose(c.stat, contrast_statistic(data, design, make_contrasts([0, 1, 0, 0], design)[0])[0])
    np.testing.assert_allclose(res[1].stat, -c.stat)
    np.testing.assert_array_equal(res[1].p, c.p)  # two-sided: same p for opposite contrasts
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.n_perm = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.p = None


def test_schemes(problem):
    volumes, x, mask = problem
    data = np.moveaxis(volumes, -1, 0)[:, mask]
    assert permuted_glm(data, np.ones((12, 1)), [1], n_perm=10, rng=0).scheme == "sign-flip"
    assert permuted_glm(data, x, [0, 1, 0, 0], n_perm=10, sign_flip=True, rng=0).scheme == "sign-flip"
    both = permuted_glm(data, x, [0, 1, 0, 0], n_perm=10, sign_flip=True, permute=True, rng=0)
    assert both.scheme == "freedman-lane+sign-flip"
    assert permuted_glm(data, x[:, 1:2], [1], n_perm=10, rng=0).scheme == "permutation"


@pytest.mark.parametrize("extra", [dict(), dict(sign_flip=True, permute=True, tfce_mode="fsl"),
                                   dict(exchangeability_blocks=np.repeat([0, 1, 2], 4))])
def test_same_null_for_any_threads_and_chunks(problem, extra):
    volumes, x, mask = problem
    data = np.moveaxis(volumes, -1, 0)[:, mask]
    kwargs = dict(mask=mask, n_perm=70, tfce=True, cluster_threshold=1.5, rng=11,
                  f_contrasts=[[[0, 1, 0, 0], [0, 0, 1, 0]]], **extra)
    runs = [permuted_glm(data, x, [0, 1, 0, 0], n_jobs=n_jobs, chunk_size=chunk, **kwargs)
            for n_jobs, chunk in ((1, None), (2, None), (1, 1), (2, 7), (1, 64))]
    for run in runs[1:]:
        _assert_same(runs[0], run)
        for c0, c in zip(runs[0].contrasts, run.contrasts):
            assert np.array_equal(c0.null_max, c.null_max)
            assert np.array_equal(c0.null_max_tfce, c.null_max_tfce)
            assert np.array_equal(c0.p, c.p) and np.array_equal(c0.tfce_p, c.tfce_p)
    # a different seed gives a different null
    other = permuted_glm(data, x, [0, 1, 0, 0], **{**kwargs, "rng": 12})
    assert not np.array_equal(other[0].null_max, runs[0][0].null_max)
    # the identity comes first whatever the seed
    assert other[0].null_max[0] == runs[0][0].null_max[0]


@pytest.mark.parametrize("mode,connectivity", [("exact", 6), ("fsl", 6), ("exact", 26)])
def test_tfce_null_maxima_match_reference(problem, mode, connectivity):
    volumes, x, mask = problem
    data = np.moveaxis(volumes, -1, 0)[:, mask]
    res = permuted_glm(data, x, [0, 1, 0, 0], mask=mask, n_perm=12, tfce=True, tfce_mode=mode,
                       connectivity=connectivity, rng=5)
    c = res[0]
    design = make_design(x)
    (con,) = make_contrasts([0, 1, 0, 0], design)
    maps = engine.statistics(make_job(data, design, con, None), make_schedule(12, 12, rng=5), 0, 12)
    dh = None
    if mode == "fsl":
        dh = float(np.abs(maps[0]).max()) / 100
        assert c.tfce_dh == pytest.approx(dh, rel=1e-6)
    else:
        assert c.tfce_dh is None
    for i in range(12):
        volume = np.zeros(SHAPE)
        volume[mask] = maps[i]
        ref = tfce_reference(volume, connectivity=connectivity, mode=mode, dh=dh)
        assert c.null_max_tfce[i] == pytest.approx(np.abs(ref).max(), rel=1e-5)
        if i == 0:
            np.testing.assert_allclose(c.tfce, ref[mask], rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_f_contrast_tfce_uses_z(problem):
    volumes, x, mask = problem
    data = np.moveaxis(volumes, -1, 0)[:, mask]
    res = permuted_glm(data, x, None, f_contrasts={"f": [[0, 1, 0, 0], [0, 0, 1, 0]]}, mask=mask,
                       n_perm=10, tfce=True, rng=0)
    c = res["f"]
    z = f_to_z(c.stat, 2, res.df)
    want = tfce(_volume(z, mask), two_sided=False)[mask]
    np.testing.assert_allclose(c.tfce, want, rtol=1e-4, atol=1e-4 * want.max())
    assert np.all(c.tfce >= 0)


def _volume(values, mask):
    out = np.zeros(mask.shape)
    out[mask] = values
    return out


def test_sparse_adjacency_driver(rng):
    n_nodes = 40
    chain = sparse.diags([np.ones(n_nodes - 1)], [1], shape=(n_nodes, n_nodes))
    n = 10
    x = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
    data = rng.standard_normal((n, n_nodes)) + np.outer(x[:, 1], np.r_[np.ones(10), np.zeros(30)])
    res = permuted_glm(data, x, [0, 1, 0], adjacency=chain, n_perm=20, tfce=True, rng=0)
    observed = engine.statistics(make_job(data, make_design(x), make_contrasts([0, 1, 0], make_design(x))[0], None),
                                 make_schedule(n, 20, rng=0), 0, 1)[0]
    np.testing.assert_allclose(res[0].tfce, tfce(observed.astype(np.float64), connectivity=chain), rtol=1e-5)


def test_input_data_not_modified(problem):
    volumes, x, mask = problem
    data = np.moveaxis(volumes, -1, 0)[:, mask].copy()
    copy, x_copy = data.copy(), x.copy()
    permuted_glm(data, x, [0, 1, 0, 0], mask=mask, n_perm=10, tfce=True, rng=0, demean=True)
    np.testing.assert_array_equal(data, copy)
    np.testing.assert_array_equal(x, x_copy)


# --- bad input ------------------------------------------------------------------------------


def test_mismatched_image_spaces_name_both_files(tmp_path, problem):
    volumes, x, mask = problem
    paths = _write(tmp_path, volumes)
    shifted = AFFINE.copy()
    shifted[0, 3] += 2
    odd = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(volumes[..., 3], shifted), odd)
    bad = paths[:3] + [str(odd)] + paths[4:]
    with pytest.raises(ValueError, match=rf"{paths[0]} and {odd} are not in the same space: affines differ"):
        randomise(bad, x, [0, 1, 0, 0], n_perm=10)
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(volumes[:-1, :, :, 3], AFFINE), small)
    with pytest.raises(ValueError, match=rf"{paths[0]} and {small} are not in the same space: shapes"):
        randomise(paths[:3] + [str(small)] + paths[4:], x, [0, 1, 0, 0], n_perm=10)
    mask_path = tmp_path / "mask_shifted.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), shifted), mask_path)
    with pytest.raises(ValueError, match=rf"{mask_path} and {paths[0]} are not in the same space"):
        randomise(paths, x, [0, 1, 0, 0], mask_img=mask_path, n_perm=10)


def test_bad_images(tmp_path, problem):
    volumes, x, mask = problem
    with_nan = volumes.copy()
    with_nan[3, 3, 2, 5] = np.nan
    paths = _write(tmp_path, with_nan)
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), AFFINE), mask_path)
    with pytest.raises(ValueError, match=rf"{paths[5]}: NaN or infinite values inside the mask"):
        randomise(paths, x, [0, 1, 0, 0], mask_img=mask_path, n_perm=10)
    # without a mask the NaN voxel is simply left out
    res = randomise(paths, x, [0, 1, 0, 0], n_perm=10, rng=0)
    assert res[0].stat.size == mask.sum() - 1
    empty = np.zeros_like(volumes)
    with pytest.raises(ValueError, match=r"imgs: no voxel is finite in every subject and not constant"):
        randomise([nib.Nifti1Image(empty[..., i], AFFINE) for i in range(12)], x, [0, 1, 0, 0], n_perm=10)
    with pytest.raises(ValueError, match=r"imgs: expected at least 2 subjects, got 1"):
        randomise([paths[0]], x[:1], [1, 0, 0, 0], n_perm=10)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'mask' \(use mask_img\)"):
        randomise(paths, x, [0, 1, 0, 0], mask=mask)
    with pytest.raises(FileNotFoundError, match=r"file not found"):
        randomise([str(tmp_path / "missing.nii.gz")] + paths[1:], x, [0, 1, 0, 0])
    with pytest.raises(ValueError, match=r"design: 12 subjects .*|data: expected shape \(n_subjects=11"):
        randomise(paths, x[:11], [0, 1, 0, 0], n_perm=10)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(connectivity=5, tfce=True), ValueError, r"'connectivity' parameter in 3D\. Allowed values are 6, 18, 26"),
    (dict(tfce=True, tfce_mode="smith"), ValueError, r"Invalid value for the 'mode' parameter"),
    (dict(tfce=True, tfce_E=-0.5), ValueError, r"'E' parameter: expected a finite number >= 0"),
    (dict(tfce=True, tfce_mode="fsl", tfce_dh=0), ValueError, r"'dh' parameter: expected a step > 0"),
    (dict(two_sided="yes"), ValueError, r"Invalid value for the 'two_sided' parameter"),
    (dict(cluster_threshold=-1.0), ValueError, r"'cluster_threshold' parameter: expected a number > 0"),
    (dict(cluster_mass_threshold=0.0), ValueError, r"'cluster_mass_threshold' parameter: expected a number > 0"),
    (dict(chunk_size=0), ValueError, r"'chunk_size' parameter: expected >= 1, got 0"),
    (dict(n_jobs=0), ValueError, r"Invalid value for the 'n_jobs' parameter"),
    (dict(n_jobs="2"), TypeError, r"n_jobs must be an integer"),
    (dict(n_perm=-1), ValueError, r"'n_perm' parameter: expected an integer >= 0 \(0 for all distinct rearrangements\)"),
    (dict(permute=False), ValueError, r"permute=False needs sign_flip=True"),
    (dict(exchangeability_blocks=[0, 1]), ValueError, r"exchangeability_blocks: expected one block label"),
])
def test_bad_options(problem, kwargs, error, match):
    volumes, x, mask = problem
    data = np.moveaxis(volumes, -1, 0)[:, mask]
    kwargs = {"mask": mask, "n_perm": 10, **kwargs}
    with pytest.raises(error, match=match):
        permuted_glm(data, x, [0, 1, 0, 0], **kwargs)


def test_bad_data(problem):
    volumes, x, mask = problem
    data = np.moveaxis(volumes, -1, 0)[:, mask].astype(np.float64)
    nan = data.copy()
    nan[2, 5] = np.nan
    with pytest.raises(ValueError, match=r"data: contains NaN or infinite values"):
        permuted_glm(nan, x, [0, 1, 0, 0])
    with pytest.raises(ValueError, match=r"data: expected shape \(n_subjects=12, n_voxels\), got \(11, "):
        permuted_glm(data[:11], x, [0, 1, 0, 0])
    with pytest.raises(ValueError, match=r"TFCE and cluster inference need the voxels' neighbourhood"):
        permuted_glm(data, x, [0, 1, 0, 0], tfce=True)
    with pytest.raises(ValueError, match=rf"mask: has {mask.sum() + 1} voxels but the data have {mask.sum()}"):
        bigger = mask.copy()
        bigger[0, 0, 0] = True
        permuted_glm(data, x, [0, 1, 0, 0], mask=bigger, tfce=True)
    with pytest.raises(ValueError, match=r"Give either 'mask' or 'adjacency', not both"):
        permuted_glm(data, x, [0, 1, 0, 0], mask=mask, adjacency=sparse.eye(data.shape[1]), tfce=True)
    with pytest.raises(ValueError, match=r"every subject has the same row, so permutations change nothing"):
        permuted_glm(data, np.ones((12, 1)), [1], permute=True)
    with pytest.raises(ValueError, match=r"contrast 'tstat1': has 3 weights but the design has 4"):
        permuted_glm(data, x, [0, 1, 0])
    x_nan = x.copy()
    x_nan[4, 2] = np.inf
    with pytest.raises(ValueError, match=r"design: NaN or infinite value at row 4, column 'x2'"):
        permuted_glm(data, x_nan, [0, 1, 0, 0])
    with pytest.raises(ValueError, match=r"design: rank-deficient design"):
        permuted_glm(data, np.column_stack([x, x[:, 1] * 2]), [0, 1, 0, 0, 0])


def test_copy_false_overwrites_float32_data_with_identical_results():
    rng = np.random.default_rng(11)
    mask = np.ones((6, 5, 4), dtype=bool)
    n = 12
    design = np.column_stack([np.ones(n), np.repeat([0.0, 1.0], n // 2), rng.normal(size=n)])
    data = (rng.normal(size=(n, mask.sum())) + 10).astype(np.float32)
    original = data.copy()
    kwargs = dict(f_contrasts=[[[0, 1, 0], [0, 0, 1]]], mask=mask, n_perm=50, tfce=True, rng=3)
    reference = permuted_glm(original.copy(), design, [0, 1, 0], **kwargs)
    result = permuted_glm(data, design, [0, 1, 0], copy=False, **kwargs)
    for a, b in zip(reference.contrasts, result.contrasts):
        np.testing.assert_array_equal(a.null_max_tfce, b.null_max_tfce)
        np.testing.assert_array_equal(a.tfce_p, b.tfce_p)
        np.testing.assert_allclose(a.stat, b.stat, rtol=1e-12)
    # the last (F) contrast residualised the matrix in place: the group and covariate
    # effects are still there, the intercept's mean is gone
    assert not np.array_equal(data, original)
    np.testing.assert_allclose(data.mean(axis=0), 0, atol=1e-4)
    # float64 input is never overwritten
    data64 = original.astype(np.float64)
    permuted_glm(data64, design, [0, 1, 0], copy=False, mask=mask, n_perm=10, rng=0)
    np.testing.assert_array_equal(data64, original.astype(np.float64))


# --- issue 14: what a result says about itself -------------------------------------------------


def test_tail_is_named_in_the_result_and_the_summary(problem):
    volumes, x, mask = problem
    data = np.moveaxis(volumes, -1, 0)[:, mask]
    both = permuted_glm(data, x, {"cov+": [0, 1, 0, 0]}, f_contrasts={"F": [[0, 1, 0, 0]]}, n_perm=20, rng=0)
    one = permuted_glm(data, x, {"cov+": [0, 1, 0, 0]}, n_perm=20, rng=0, two_sided=False)
    assert both["cov+"].tail == "two-sided" and one["cov+"].tail == "greater" and both["F"].tail == "greater"
    # opposite contrasts: the same two-sided p, but one-sided p that differ
    neg = permuted_glm(data, x, {"cov-": [0, -1, 0, 0]}, n_perm=20, rng=0, two_sided=False)
    assert not np.array_equal(one[0].p, neg[0].p)
    lines = both.summary().splitlines()
    assert "tail" in lines[1] and lines[2].split()[:3] == ["cov+", "t", "two-sided"]
    assert lines[3].split()[:3] == ["F", "F", "greater"]
    assert one.summary().splitlines()[2].split()[2] == "greater"
    top = np.abs(both["cov+"].stat).max()
    assert f"{top:.4g}" in lines[2] and str(int(np.sum(both["cov+"].p_fwe < 0.05))) in lines[2].split()


def test_one_progress_bar_per_contrast_counts_the_schedule(problem, capsys):
    volumes, x, mask = problem
    data = np.moveaxis(volumes, -1, 0)[:, mask]
    permuted_glm(data, x, {"a": [0, 1, 0, 0], "b": [0, 0, 1, 0]}, n_perm=37, rng=0, verbose=True)
    err = capsys.readouterr().err
    assert "a (1/2)" in err and "b (2/2)" in err
    # not the contrasts' total (as "k/74"; a bare "74" can be part of the rate, e.g. 1741.04perm/s)
    assert err.count("37/37") >= 2 and "/74" not in err


def test_design_contrast_and_block_files_in_the_api(problem, tmp_path):
    from voxstats.design_files import write_blocks, write_contrasts, write_design, write_f_contrasts

    volumes, x, mask = problem
    imgs = [nib.Nifti1Image(volumes[..., i], AFFINE) for i in range(volumes.shape[-1])]
    cons = {"cov": [0.0, 1, 0, 0], "grp": [0.0, 0, 0, 1]}
    blocks = np.repeat([1, 2, 3], 4)
    write_design(tmp_path / "design.mat", x)
    write_contrasts(tmp_path / "design.con", cons)
    write_f_contrasts(tmp_path / "design.fts", [[1, 1]], t_names=list(cons))
    write_blocks(tmp_path / "design.grp", blocks)
    (tmp_path / "design.csv").write_text("one,cov,iq,grp\n" + "\n".join(",".join(repr(float(v)) for v in r) for r in x) + "\n")
    (tmp_path / "con.csv").write_text("name,grp,cov,iq,one\ncov,0,1,0,0\ngrp,1,0,0,0\n")
    kwargs = dict(n_perm=30, rng=2)
    want = randomise(imgs, x, cons, f_contrasts={"F1": [cons["cov"], cons["grp"]]},
                     exchangeability_blocks=blocks, **kwargs)
    from_vest = randomise(imgs, str(tmp_path / "design.mat"), str(tmp_path / "design.con"),
                          f_contrasts=tmp_path / "design.fts", exchangeability_blocks=str(tmp_path / "design.grp"),
                          **kwargs)
    from_csv = randomise(imgs, tmp_path / "design.csv", tmp_path / "con.csv",
                         f_contrasts={"F1": [cons["cov"], cons["grp"]]}, exchangeability_blocks=blocks, **kwargs)
    for got in (from_vest, from_csv):
        assert [c.name for c in got.contrasts] == ["cov", "grp", "F1"]
        for a, b in zip(got.contrasts, want.contrasts):
            np.testing.assert_array_equal(a.stat, b.stat)
            np.testing.assert_array_equal(a.p_fwe, b.p_fwe)
    assert from_csv.design_names == ("one", "cov", "iq", "grp")
    with pytest.raises(ValueError, match=r"exchangeability_blocks: no such file 'nope.grp'"):
        randomise(imgs, x, cons, exchangeability_blocks="nope.grp", **kwargs)
    with pytest.raises(ValueError, match=r"design: no such file 'design.csv' \(a string names a file"):
        randomise(imgs, "design.csv", cons, **kwargs)


@pytest.mark.parametrize("mode", ["exact", "fsl"])
def test_weighted_graph_driver(rng, mode):
    # a VoxelGraph with node weights (vertex areas) as the adjacency: TFCE sums the weights
    from voxstats.graph import graph_from_adjacency

    n_nodes, n = 40, 10
    chain = sparse.diags([np.ones(n_nodes - 1)], [1], shape=(n_nodes, n_nodes))
    weights = rng.uniform(0.5, 2.0, n_nodes)
    graph = graph_from_adjacency(chain, weights=weights)
    x = np.column_stack([np.ones(n), rng.standard_normal(n), rng.standard_normal(n)])
    data = rng.standard_normal((n, n_nodes)) + np.outer(x[:, 1], np.r_[np.ones(10), np.zeros(30)])
    res = permuted_glm(data, x, [0, 1, 0], adjacency=graph, n_perm=20, tfce=True, tfce_E=1.0,
                       tfce_mode=mode, rng=0)
    observed = engine.statistics(make_job(data, make_design(x), make_contrasts([0, 1, 0], make_design(x))[0], None),
                                 make_schedule(n, 20, rng=0), 0, 1)[0]
    dh = res[0].tfce_dh
    want = tfce_reference(observed.astype(np.float64), connectivity=chain, E=1.0, mode=mode, dh=dh,
                          weights=weights)
    np.testing.assert_allclose(res[0].tfce, want, rtol=1e-5)
    with pytest.raises(ValueError, match=r"adjacency: has 40 nodes but the data have 39 columns"):
        permuted_glm(data[:, :39], x, [0, 1, 0], adjacency=graph, tfce=True)


@pytest.mark.parametrize("two_sided", [True, False])
def test_summary_peak_is_signed_largest_abs_for_two_sided_and_max_for_one_sided(rng, two_sided):
    from scipy import stats

    n = 12
    g = np.repeat([1.0, 0.0], 6)
    y = rng.standard_normal((n, 40))
    y[:, 3] -= 4 * g  # a strong negative effect: t about -9
    y[:, 7] += 1.0 * g  # a weak positive one
    res = permuted_glm(y.astype(np.float32), np.column_stack([g, 1 - g]), {"A>B": [1, -1]}, n_perm=20, rng=0,
                       two_sided=two_sided)
    t = stats.ttest_ind(y[g == 1], y[g == 0]).statistic  # SciPy, independent of voxstats
    assert t.min() < -abs(t.max())  # the negative side dominates
    k = int(np.argmax(np.abs(t))) if two_sided else int(np.argmax(t))
    c = res["A>B"]
    assert c.peak_index == k and c.peak == pytest.approx(t[k], rel=1e-5)
    row = res.summary().splitlines()[2].split()
    assert res.summary().splitlines()[1].split()[3] == "peak"
    assert row[3] == f"{c.peak:.4g}" and float(row[3]) == pytest.approx(t[k], rel=1e-3)
    assert (float(row[3]) < 0) == two_sided
