"""``voxstats randomise``'s randomise flags, against independent NumPy/statsmodels references.

Output names, the -N/-P text formats and the printed lines follow FSL randomise
2.9 (checked by hand against a build of it on the same kind of toy data).
"""

import json

import nibabel as nib
import numpy as np
import pytest
import statsmodels.api as sm

import voxstats
from voxstats.cli import main
from voxstats.design_files import write_contrasts, write_design, write_f_contrasts

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])
SHAPE = (5, 4, 3)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """8 subjects, 4+4, an effect in one corner (as the randomise toy data), FSL files."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    data = rng.standard_normal(SHAPE + (8,)).astype(np.float32) + 10
    data[1:4, 1:3, 1:3, :4] += 1.5
    nib.save(nib.Nifti1Image(data, AFFINE), root / "data.nii.gz")
    x = np.repeat(np.eye(2), 4, axis=0)
    write_design(root / "design.mat", x)
    write_contrasts(root / "design.con", {"g1>g2": [1.0, -1], "g2>g1": [-1.0, 1]})
    write_f_contrasts(root / "design.fts", [[1, 1]], t_names=["g1>g2", "g2>g1"])
    return {"root": root, "data": data, "x": x}


def _argv(toy, out, *extra):
    root = toy["root"]
    return ["randomise", "-i", str(root / "data.nii.gz"), "-o", str(out), "-d", str(root / "design.mat"),
            "-t", str(root / "design.con"), "--seed", "1", *extra]


def _t_map(data, x, c):
    """OLS t of every voxel of (x, y, z, n) data, float64."""
    y = data.reshape(-1, data.shape[-1]).T.astype(np.float64)
    pinv = np.linalg.pinv(x)
    beta = pinv @ y
    resid = y - x @ beta
    s2 = (resid ** 2).sum(0) / (x.shape[0] - np.linalg.matrix_rank(x))
    return (c @ beta) / np.sqrt(s2 * (c @ pinv @ pinv.T @ c))


def test_permutation_and_null_text_files(toy, tmp_path, capsys):
    """-P: row k gives each subject's design row (1-based); -N: the maxima of those relabellings."""
    out = tmp_path / "r"
    assert main(_argv(toy, out, "-x", "-N", "-P", "-n", "40320")) == 0
    capsys.readouterr()
    record = json.loads((tmp_path / "r.json").read_text())
    n_perm = record["n_perm"]
    for stat, c in (("tstat1", np.array([1.0, -1])), ("tstat2", np.array([-1.0, 1]))):
        text = (tmp_path / f"r_perm_{stat}.txt").read_text()
        rows = text.splitlines()
        assert len(rows) == n_perm and rows[0] == " ".join(f"{v:f}" for v in range(1, 9)) + " "
        perms = np.loadtxt(tmp_path / f"r_perm_{stat}.txt").astype(int)
        null_text = (tmp_path / f"r_vox_corrp_{stat}.txt").read_text().splitlines()
        assert len(null_text) == n_perm and all(line.endswith(" ") for line in null_text)
        null = np.array([float(v) for v in null_text])
        for k in range(0, n_perm, max(1, n_perm // 60)):  # X_perm = X[p - 1]
            want = _t_map(toy["data"], toy["x"][perms[k] - 1], c).max()
            assert null[k] == pytest.approx(want, abs=2e-6)
        # 1 - p of the FWE map is the share of null maxima below the observed t (randomise's count)
        corrp = np.asarray(nib.load(tmp_path / f"r_vox_corrp_{stat}.nii.gz").dataobj)
        t_obs = _t_map(toy["data"], toy["x"], c)
        for v in np.argsort(t_obs)[-3:]:
            assert corrp.ravel()[v] == pytest.approx(np.mean(null < t_obs[v] - 1e-5), abs=1e-6)


def test_q_prints_the_exhaustive_count_and_exits(toy, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["randomise", "-i", str(toy["root"] / "data.nii.gz"), "-o", str(out), "-1", "-q"]) == 0
    assert capsys.readouterr().out == ("One-sample design detected; sign-flipping instead of permuting.\n"
                                       "256 sign-flips required for exhaustive test of t-test 1\n")
    assert list(tmp_path.iterdir()) == []


def test_glm_output_matches_statsmodels(toy, tmp_path, capsys):
    out = tmp_path / "g"
    assert main(_argv(toy, out, "--glm_output", "-n", "100")) == 0
    printed = capsys.readouterr().out
    assert "Warning! No output options selected. Outputing raw tstat only" in printed
    assert sorted(p.name for p in tmp_path.glob("g_*")) == sorted(
        ["g_tstat1.nii.gz", "g_tstat2.nii.gz", "g_glm_pe.nii.gz", "g_glm_cope.nii.gz", "g_glm_varcope.nii.gz",
         "g_glm_sigmasqr.nii.gz"])
    assert json.loads((tmp_path / "g.json").read_text())["n_perm"] == 1  # nothing to permute for
    pe = np.asarray(nib.load(tmp_path / "g_glm_pe.nii.gz").dataobj)
    cope = np.asarray(nib.load(tmp_path / "g_glm_cope.nii.gz").dataobj)
    varcope = np.asarray(nib.load(tmp_path / "g_glm_varcope.nii.gz").dataobj)
    s2 = np.asarray(nib.load(tmp_path / "g_glm_sigmasqr.nii.gz").dataobj)
    assert pe.shape == SHAPE + (2,) and cope.shape == SHAPE + (2,) and s2.shape == SHAPE
    for ijk in ((0, 0, 0), (2, 1, 1), (4, 3, 2)):
        fit = sm.OLS(toy["data"][ijk].astype(np.float64), toy["x"]).fit()
        np.testing.assert_allclose(pe[ijk], fit.params, rtol=1e-5)
        assert s2[ijk] == pytest.approx(fit.mse_resid, rel=1e-5)
        test = fit.t_test(np.array([[1.0, -1]]))
        assert cope[ijk][0] == pytest.approx(float(test.effect.squeeze()), rel=1e-5)
        assert varcope[ijk][1] == pytest.approx(float(test.sd.squeeze()) ** 2, rel=1e-5)


def test_fonly_and_skipto(toy, tmp_path, capsys):
    root = toy["root"]
    assert main(_argv(toy, tmp_path / "f", "-f", str(root / "design.fts"), "--fonly", "-x", "-n", "50",
                      "--quiet")) == 0
    assert sorted(p.name for p in tmp_path.glob("f_*")) == ["f_fstat1.nii.gz", "f_vox_corrp_fstat1.nii.gz"]
    # contrasts numbered F first, then t: 2 is the first t contrast, written under its own number
    assert main(_argv(toy, tmp_path / "s", "-f", str(root / "design.fts"), "--skipTo", "3", "-x", "-n", "50",
                      "--quiet")) == 0
    assert sorted(p.name for p in tmp_path.glob("s_*")) == ["s_tstat2.nii.gz", "s_vox_corrp_tstat2.nii.gz"]
    t2 = np.asarray(nib.load(tmp_path / "s_tstat2.nii.gz").dataobj).ravel()
    np.testing.assert_allclose(t2, _t_map(toy["data"], toy["x"], np.array([-1.0, 1])), rtol=1e-5, atol=1e-6)


def test_one_sample_with_a_design_sign_flips_it(toy, tmp_path):
    """-1 with -d/-t: sign flipping of the given design (randomise forces flipping)."""
    root = toy["root"]
    rng = np.random.default_rng(3)
    x = np.column_stack([np.ones(8), rng.normal(size=8)])
    write_design(tmp_path / "os.mat", x)
    write_contrasts(tmp_path / "os.con", {"mean": [1.0, 0]})
    out = tmp_path / "o"
    assert main(["randomise", "-i", str(root / "data.nii.gz"), "-o", str(out), "-1", "-d", str(tmp_path / "os.mat"),
                 "-t", str(tmp_path / "os.con"), "-x", "-n", "64", "--seed", "4", "--quiet"]) == 0
    res = voxstats.randomise(str(root / "data.nii.gz"), x, [1.0, 0], n_perm=64, rng=4, two_sided=False,
                             sign_flip=True, permute=False)
    assert res.scheme == "sign-flip"
    corrp = np.asarray(nib.load(tmp_path / "o_vox_corrp_tstat1.nii.gz").dataobj)
    np.testing.assert_allclose(corrp[np.asarray(res.mask_img.dataobj) > 0], 1 - res[0].p_fwe, atol=1e-6)


def test_variance_smoothing_and_voxelwise_evs_on_the_command_line(toy, tmp_path):
    root = toy["root"]
    res = voxstats.randomise(str(root / "data.nii.gz"), toy["x"], [1.0, -1], n_perm=40, rng=1,
                             two_sided=False, variance_smoothing=4.0)
    assert main(_argv(toy, tmp_path / "v", "-v", "4", "-x", "-n", "40", "--quiet")) == 0
    inside = np.asarray(res.mask_img.dataobj) > 0
    got = np.asarray(nib.load(tmp_path / "v_tstat1.nii.gz").dataobj)[inside]
    np.testing.assert_allclose(got, res[0].stat, rtol=1e-6)
    assert res.settings["voxel_size"] == [2.0, 2.0, 3.0]  # from the images' header
    # --vxl/--vxf: EV 2 replaced by a voxel-wise regressor image
    rng = np.random.default_rng(5)
    ev = rng.uniform(0, 1, SHAPE + (8,)).astype(np.float32)
    nib.save(nib.Nifti1Image(ev, AFFINE), tmp_path / "ev.nii.gz")
    x = np.column_stack([np.ones(8), np.repeat([1.0, 0], 4), ev.mean(axis=(0, 1, 2))])
    write_design(tmp_path / "vx.mat", x)
    write_contrasts(tmp_path / "vx.con", {"group": [0, 1.0, 0]})
    assert main(["randomise", "-i", str(root / "data.nii.gz"), "-o", str(tmp_path / "w"), "-d", str(tmp_path / "vx.mat"),
                 "-t", str(tmp_path / "vx.con"), "--vxl", "3", "--vxf", str(tmp_path / "ev.nii.gz"), "-x", "-n", "30",
                 "--seed", "2", "--quiet"]) == 0
    t = np.asarray(nib.load(tmp_path / "w_tstat1.nii.gz").dataobj)
    for ijk in ((0, 0, 0), (2, 1, 1)):
        xv = x.copy()
        xv[:, 2] = ev[ijk]
        want = sm.OLS(toy["data"][ijk].astype(np.float64), xv).fit().tvalues[1]
        assert t[ijk] == pytest.approx(want, rel=1e-4)


def test_cluster_thresholds_of_their_own_and_tfce_exact_upgrade(toy, tmp_path, capsys):
    assert main(_argv(toy, tmp_path / "c", "-c", "2.5", "-C", "3.5", "-T", "--tfce-mode", "exact", "-n", "60")) == 0
    printed = capsys.readouterr().out
    assert "TFCE exact" in printed
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["tfce_mode"] == "exact" and record["library_call"]["cluster_mass_threshold"] == 3.5
    t = _t_map(toy["data"], toy["x"], np.array([1.0, -1])).reshape(SHAPE)
    from scipy import ndimage

    extent = np.asarray(nib.load(tmp_path / "c_clustere_corrp_tstat1.nii.gz").dataobj)
    mass = np.asarray(nib.load(tmp_path / "c_clusterm_corrp_tstat1.nii.gz").dataobj)
    lab_e, _ = ndimage.label(t >= 2.5, structure=np.ones((3, 3, 3)))
    lab_m, _ = ndimage.label(t >= 3.5, structure=np.ones((3, 3, 3)))
    assert ((extent > 0) <= (lab_e > 0)).all() and ((mass > 0) <= (lab_m > 0)).all()
    assert (lab_e > 0).sum() > (lab_m > 0).sum() > 0


def test_twopass_outputs_as_randomise_names_them(toy, tmp_path, capsys):
    out = tmp_path / "tp"
    assert main(_argv(toy, out, "-c", "2", "-T", "--twopass", "-R", "-N", "-x", "--uncorrp", "-n", "70")) == 0
    printed = capsys.readouterr().out
    names = {p.name for p in tmp_path.glob("tp_*")}
    for stat in ("tstat1", "tstat2"):
        for part in ("sum", "samp", "post"):
            assert f"tp__clusternorm_{stat}{part}.nii.gz" in names and f"tp__tfcenorm_{stat}{part}.nii.gz" in names
        for name in ("clustern_corrp_", "clustern_", "tfcen_corrp_", "tfcen_p_", "tfcen_"):
            assert f"tp_{name}{stat}.nii.gz" in names
        for name in ("clustern_corrp_", "tfcen_corrp_"):
            assert f"tp_{name}{stat}.txt" in names
    res = voxstats.randomise(str(toy["root"] / "data.nii.gz"), toy["x"], {"g1>g2": [1.0, -1], "g2>g1": [-1.0, 1]},
                             n_perm=70, rng=1, two_sided=False, tfce=True, tfce_mode="fsl",
                             cluster_threshold=2.0, twopass=True)
    inside = np.asarray(res.mask_img.dataobj) > 0
    tp = res[0].twopass
    for name, values in (("clustern_tstat1", tp.clustern), ("clustern_corrp_tstat1", 1 - tp.clustern_p_fwe),
                         ("tfcen_corrp_tstat1", 1 - tp.tfcen_p_fwe), ("_tfcenorm_tstat1post", tp.tfce_mean),
                         ("_clusternorm_tstat1sum", tp.cluster_sum)):
        got = np.asarray(nib.load(tmp_path / f"tp_{name}.nii.gz").dataobj)[inside]
        np.testing.assert_allclose(got, values, rtol=1e-6, atol=1e-6, err_msg=name)
    value = np.sort(tp.null_max_clustern)[int(np.ceil(0.95 * tp.null_max_clustern.size)) - 1]
    assert f"Critical Value for: {out}_clustern_tstat1 is: {value:g}\n" in printed
    assert printed.index("_clustere_tstat1 is") < printed.index("_clustern_tstat1 is") < printed.index("_tfce_tstat1 is")


def test_effective_design_decides_the_distinct_rearrangements(toy, tmp_path, capsys):
    """A continuous covariate makes every row distinct (8! relabellings); --effective_design
    naming only the groups brings the count back to C(8, 4) = 70, as randomise's tested-EV rule."""
    import math

    root = toy["root"]
    rng = np.random.default_rng(7)
    x = np.column_stack([toy["x"], rng.normal(size=8)])
    write_design(tmp_path / "cov.mat", x)
    write_contrasts(tmp_path / "cov.con", {"g": [1.0, -1, 0]})
    write_design(tmp_path / "eff.mat", toy["x"])
    base = ["randomise", "-i", str(root / "data.nii.gz"), "-d", str(tmp_path / "cov.mat"), "-t", str(tmp_path / "cov.con")]
    assert main(base + ["-o", str(tmp_path / "a"), "-q"]) == 0
    first, note = capsys.readouterr().out.splitlines()
    assert first == f"{math.factorial(8)} permutations required for exhaustive test of t-test 1"
    assert f"randomise counts those of the tested regressors only and would report {math.comb(8, 4)}" in note
    assert main(base + ["-o", str(tmp_path / "b"), "-q", "--effective_design", str(tmp_path / "eff.mat")]) == 0
    assert capsys.readouterr().out == f"{math.comb(8, 4)} permutations required for exhaustive test of t-test 1\n"
    assert main(base + ["-o", str(tmp_path / "c"), "-x", "-n", "0", "--effective_design", str(tmp_path / "eff.mat"),
                        "--quiet"]) == 0
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["n_perm"] == 70 and record["exhaustive"]
    res = voxstats.permuted_glm(toy["data"].reshape(-1, 8).T, x, [1.0, -1, 0], effective_design=toy["x"], n_perm=0)
    assert res.n_perm == res.n_possible == 70


@pytest.mark.parametrize("twotail", [False, True])
def test_summary_line_reports_the_peak_the_test_refers_to(toy, tmp_path, capsys, twotail):
    """g1>g2 peaks positive, g2>g1 (its negation) negative: with --twotail the peak of tstat2 is the
    signed t of largest |t| (SciPy), one-sided it is the maximum; the JSON records the same peak."""
    from scipy import stats

    out = tmp_path / "pk"
    assert main(_argv(toy, out, "-x", "-n", "20", *(["--twotail"] if twotail else []))) == 0
    text = capsys.readouterr().out
    data = toy["data"].reshape(-1, 8)
    t1 = stats.ttest_ind(data[:, :4], data[:, 4:], axis=1).statistic  # g1>g2, independent of voxstats
    record = json.loads((tmp_path / "pk.json").read_text())
    for line_name, t, entry in (("tstat1 (g1>g2)", t1, record["summary"][0]),
                                ("tstat2 (g2>g1)", -t1, record["summary"][1])):
        k = int(np.argmax(np.abs(t))) if twotail else int(np.argmax(t))
        ijk = np.unravel_index(k, SHAPE)
        word = "peak" if twotail else "max"
        expected = f"{line_name}: FWE p<0.05 voxels: voxel "
        (line,) = [v for v in text.splitlines() if v.startswith(expected)]
        assert line.endswith(f"; {word} {t[k]:.4g} at voxel {tuple(int(v) for v in ijk)} = "
                             + "({:.1f}, {:.1f}, {:.1f}) mm".format(*(AFFINE[:3, :3] @ ijk)))
        assert entry["peak_stat"] == pytest.approx(t[k], rel=1e-5) and entry["peak_voxel"] == list(ijk)
        assert entry["max_stat"] == pytest.approx(t.max(), rel=1e-5)
    assert (f"peak {-t1.max():.4g}" in text) == twotail  # tstat2's peak is negative only two-sided


def test_corrcon_critical_values_are_on_z_and_say_so(toy, tmp_path, capsys):
    """--corrcon with t and F contrasts compares z: the critical values (randomise's rule, ceil(0.95 N)-th
    null maximum) equal SciPy's z of t(6) and F(1, 6) maxima over the -P relabellings, and are marked (z)."""
    from scipy import stats

    root = toy["root"]
    out = tmp_path / "cc"
    assert main(_argv(toy, out, "-f", str(root / "design.fts"), "--corrcon", "-x", "-P", "-n", "30")) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "cc.json").read_text())
    y = toy["data"].reshape(-1, 8).T.astype(np.float64)
    x = toy["x"]
    for stat, c, kind in (("tstat1", np.array([1.0, -1]), "t"), ("tstat2", np.array([-1.0, 1]), "t"),
                          ("fstat1", np.array([1.0, -1]), "F")):
        perms = np.loadtxt(tmp_path / f"cc_perm_{stat}.txt").astype(int) - 1
        maxima = []
        for p in perms:
            xp = x[p]
            beta, rss = np.linalg.lstsq(xp, y, rcond=None)[:2]
            t = (c @ beta) / np.sqrt(rss / 6 * (c @ np.linalg.inv(xp.T @ xp) @ c))
            z = stats.norm.isf(stats.t.sf(t, 6) if kind == "t" else stats.f.sf(t ** 2, 1, 6))
            maxima.append(z.max())
        want = np.sort(maxima)[int(np.ceil(0.95 * len(maxima))) - 1]
        name = f"{out}_vox_{stat}"
        assert record["critical_values"][name] == pytest.approx(want, rel=1e-4)
        assert record["critical_value_scales"][name] == "z"
        assert f"Critical Value for: {name} is: {record['critical_values'][name]:g} (z)\n" in printed
    # without --corrcon (t only): the statistic itself, no mark
    assert main(_argv(toy, tmp_path / "plain", "-x", "-n", "30")) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "plain.json").read_text())
    assert set(record["critical_value_scales"].values()) == {"statistic"}
    assert "(z)" not in printed and f"Critical Value for: {tmp_path / 'plain'}_vox_tstat1 is: " in printed
