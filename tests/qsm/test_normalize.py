"""Tests for qsm.normalize and the ``qsm normalize`` command line (small 4 mm cohort)."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from qsm import cli as qsm_cli
from qsm.cohort import load_cohort
from qsm.normalize import build_template, normalize_cohort, robust_z, similarity
from qsm.template import Template, load_template, output_grid
from qsm.transforms import grid_world, sample, simulate_deformation

FAST = {"affine_level_iters": (50, 20), "affine_sigmas": (2.0, 0.0), "affine_factors": (2, 1),
        "syn_level_iters": (10, 5)}


@pytest.fixture(scope="module")
def small_template():
    mni = load_template(resolution=2)
    shape, affine = output_grid(mni, 4.0)
    pts = grid_world(shape, affine)
    img = nib.Nifti1Image(sample(mni.img.dataobj, mni.affine, pts).astype(np.float32), affine)
    mask = nib.Nifti1Image(sample(mni.mask_img.dataobj, mni.affine, pts, order=0).astype(np.uint8),
                           affine)
    return Template(img=img, mask_img=mask, space="MNIsmall")


@pytest.fixture(scope="module")
def truth_chi(small_template):
    rng = np.random.default_rng(5)
    data = ndi.gaussian_filter(rng.standard_normal(small_template.shape), 2.0) * 0.3
    world = grid_world(small_template.shape, small_template.affine)
    for centre in ((-12.0, -18.0, 8.0), (12.0, -18.0, 8.0)):
        data += 0.08 * (np.linalg.norm(world - centre, axis=-1) < 10)
    return (1000.0 * data * small_template.mask()).astype(np.float32)   # ppb


@pytest.fixture(scope="module")
def bids(tmp_path_factory, small_template, truth_chi):
    root = tmp_path_factory.mktemp("qsmxt")
    for k, sub in enumerate(("01", "02", "03")):
        sim = simulate_deformation(small_template.img, rotation_deg=(2.0, -1.0, 3.0 * k),
                                   translation_mm=(3.0, -2.0 * k, 2.0), scale=(1.0, 1.0, 1.0),
                                   max_displacement_mm=2.0, smoothness_mm=16.0, blur_mm=0.0, rng=k)
        chi = sample(truth_chi, small_template.affine, sim.subject_to_template, order=1)
        chi = np.where(chi != 0, chi + 10.0 * k, 0.0)       # subject offsets of 10 k ppb
        anat = root / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True)
        nib.save(sim.img, anat / f"sub-{sub}_T1w.nii.gz")
        nib.save(nib.Nifti1Image(chi.astype(np.float32), sim.img.affine),
                 anat / f"sub-{sub}_Chimap.nii.gz")
    pd.DataFrame({"participant_id": ["sub-01", "sub-02", "sub-03"], "group": ["CIS", "RRMS", "HC"],
                  "disease_duration": [1.0, 5.0, np.nan]}).to_csv(
        root / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    return root


@pytest.fixture(scope="module")
def normalized(bids, small_template, tmp_path_factory):
    out = tmp_path_factory.mktemp("normalized")
    res = normalize_cohort(load_cohort(bids), out, template=small_template, params=FAST, rng=0,
                           verbose=False)
    return out, res


@pytest.mark.slow
def test_outputs_and_naming(normalized, small_template):
    out, res = normalized
    anat = out / "sub-01" / "anat"
    chi = anat / "sub-01_space-MNIsmall_Chimap.nii.gz"
    assert chi.exists() and (anat / "sub-01_space-MNIsmall_T1w.nii.gz").exists()
    assert (anat / "sub-01_from-native_to-MNIsmall_mode-image_xfm.mat").exists()
    assert (anat / "sub-01_from-native_to-MNIsmall_mode-image_xfm.nii.gz").exists()
    assert (anat / "sub-01_from-MNIsmall_to-native_mode-image_xfm.nii.gz").exists()
    png = out / "sub-01" / "figures" / "sub-01_space-MNIsmall_desc-normalization_qc.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((anat / "sub-01_space-MNIsmall_Chimap.json").read_text())
    assert meta["RegistrationEngine"] == "dipy" and meta["ReferenceRegion"] == "whole_brain"
    assert meta["RegistrationParameters"]["syn_level_iters"] == [10, 5]
    assert {"dipy", "nibabel", "nitransforms", "qsm"} <= set(meta["SoftwareVersions"])
    assert all((out / p).exists() for p in meta["Outputs"])
    img = nib.load(chi)
    assert img.shape == small_template.shape
    np.testing.assert_allclose(img.affine, small_template.affine)
    assert abs(img.get_fdata()[small_template.mask()].mean()) < 1e-5  # re-referenced
    assert not list(out.rglob(".*tmp*"))  # no temporary files left
    quality = pd.read_csv(res.quality_path, sep="\t")
    assert list(quality["participant_id"]) == ["sub-01", "sub-02", "sub-03"]
    assert {"nmi", "correlation", "nmi_z", "correlation_z", "outlier"} <= set(quality.columns)
    assert (quality["correlation"] > 0.9).all() and (quality["nmi"] > 1.1).all()
    # the normalized cohort points to template-space maps and keeps clinical columns
    assert res.cohort.table.loc[0, "chi_path"] == chi
    assert res.cohort.table.loc[1, "group"] == "RRMS"


@pytest.mark.slow
def test_chi_recovered_in_template_space(normalized, small_template, truth_chi):
    _, res = normalized
    mask = small_template.mask()
    for k, path in enumerate(res.table["chi_template_path"]):
        data = nib.load(path).get_fdata()
        r = np.corrcoef(data[mask], truth_chi[mask])[0, 1]
        assert r > 0.85, (k, r)
        # offset = subject shift (10 k ppb) + the truth's brain mean
        expected = truth_chi[mask].mean() + 10.0 * k
        assert res.table.loc[k, "offset"] == pytest.approx(expected, abs=10.0)


@pytest.mark.slow
def test_rerun_skips_complete_subjects(normalized, bids, small_template):
    out, first = normalized
    chi = first.table.loc[0, "chi_template_path"]
    stamp = chi.stat().st_mtime_ns
    again = normalize_cohort(load_cohort(bids), out, template=small_template, params=FAST, rng=0,
                             verbose=False)
    assert (again.table["status"] == "existing").all()
    assert chi.stat().st_mtime_ns == stamp
    np.testing.assert_allclose(again.table["nmi"], first.table["nmi"])
    # a half-finished subject (sidecar lists a missing output) is redone
    (out / "sub-02" / "anat" / "sub-02_space-MNIsmall_T1w.nii.gz").unlink()
    third = normalize_cohort(load_cohort(bids), out, template=small_template, params=FAST, rng=0,
                             verbose=False)
    assert list(third.table["status"]) == ["existing", "normalized", "existing"]


@pytest.mark.slow
def test_parallel_equals_serial_and_resolution(bids, small_template, tmp_path):
    cohort = load_cohort(bids)
    serial = normalize_cohort(cohort, tmp_path / "a", template=small_template, nonlinear=False,
                              params=FAST, rng=1, verbose=False)
    parallel = normalize_cohort(cohort, tmp_path / "b", template=small_template, nonlinear=False,
                                params=FAST, rng=1, n_jobs=2, verbose=False)
    for a, b in zip(serial.table["chi_template_path"], parallel.table["chi_template_path"]):
        np.testing.assert_array_equal(nib.load(a).get_fdata(), nib.load(b).get_fdata())
    coarse = normalize_cohort(cohort, tmp_path / "c", template=small_template, nonlinear=False,
                              params=FAST, resolution=8.0, interpolation="cubic", rng=1,
                              verbose=False)
    img = nib.load(coarse.table.loc[0, "chi_template_path"])
    assert img.header.get_zooms()[:3] == (8.0, 8.0, 8.0)
    assert img.shape == output_grid(small_template, 8.0)[0]
    assert json.loads(coarse.table.loc[0, "sidecar_path"].read_text())["Interpolation"] == "cubic"


@pytest.mark.slow
def test_build_template_moves_towards_cohort(bids, small_template, truth_chi):
    tpl = build_template(load_cohort(bids), n_iterations=1, template=small_template,
                         space="study", nonlinear=False, params=FAST, rng=0, verbose=False)
    assert tpl.space == "study" and tpl.chi_img is not None
    mask = small_template.mask()
    chi = tpl.chi_img.get_fdata()
    assert np.corrcoef(chi[mask], truth_chi[mask])[0, 1] > 0.8
    t1 = tpl.img.get_fdata()
    assert np.corrcoef(t1[mask], small_template.img.get_fdata()[mask])[0, 1] > 0.9
    with pytest.raises(ValueError, match="'n_iterations' parameter.*but got 0"):
        build_template(load_cohort(bids), n_iterations=0, template=small_template)


def test_similarity_and_robust_z():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((10, 10, 10))
    mask = np.ones(a.shape, bool)
    same = similarity(a, a, mask)
    assert same["correlation"] == pytest.approx(1.0) and same["nmi"] == pytest.approx(2.0)
    indep = similarity(a, rng.standard_normal(a.shape), mask)
    assert abs(indep["correlation"]) < 0.1 and 1.0 <= indep["nmi"] < 1.2
    z = robust_z([1.0, 1.1, 0.9, 1.0, 0.2])
    assert z[-1] < -3.5 and abs(z[0]) < 1e-12
    np.testing.assert_array_equal(robust_z([1.0, 1.0, 1.0]), 0.0)


def test_option_errors(bids, small_template, tmp_path):
    cohort = load_cohort(bids)
    with pytest.raises(ValueError, match="'reference' parameter.*but got 'ventricle'"):
        normalize_cohort(cohort, tmp_path, template=small_template, reference="ventricle")
    with pytest.raises(ValueError, match="for χ maps.*but got 'nearest'"):
        normalize_cohort(cohort, tmp_path, template=small_template, interpolation="nearest")
    with pytest.raises(TypeError, match="'cohort' must be a qsm.cohort.Cohort"):
        normalize_cohort("folder", tmp_path)
    with pytest.raises(ValueError, match="'resolution' parameter: expected a positive"):
        normalize_cohort(cohort, tmp_path, template=small_template, resolution=-1)


@pytest.mark.slow
def test_command_line(bids, small_template, tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    qsm_cli._add_normalize(parser)
    args = parser.parse_args([str(bids), str(tmp_path / "out"), "--affine-only",
                              "--reference", "wm", "--seed", "3"])
    assert args.engine == "dipy" and args.reference == "wm" and args.affine_only
    code = qsm_cli.main(["normalize", str(bids / "nope"), str(tmp_path / "out")])
    assert code == 1
    assert "Cohort source" in capsys.readouterr().err
    paths = small_template.save(tmp_path / "tpl")
    code = qsm_cli.main(["normalize", str(bids), str(tmp_path / "out"), "--affine-only", "--quiet",
                           "--template", str(paths["img"]), "--template-mask",
                           str(paths["mask_img"]), "--space", "small", "--resolution", "4",
                           "--reference", "csf"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err
    assert "3 subject(s): 3 normalized" in out
    meta = json.loads((tmp_path / "out" / "sub-03" / "anat" /
                       "sub-03_space-small_Chimap.json").read_text())
    assert meta["ReferenceRegion"] == "csf" and meta["OutputResolution"] == 4.0
    assert meta["RegistrationParameters"]["nonlinear"] is False


def test_no_data_kept_and_both_routes_give_one_offset(small_template, tmp_path):
    """A map covering ~78 % of the brain with 5 ppb: offset 5 in template space as in native.

    Before, normalization averaged over the template brain mask including voxels
    without data (offset 5 x coverage, 3.93 for the issue's map) and turned those
    voxels into minus the offset.
    """
    from qsm.cohort import load_cohort as _load
    from qsm.reference import rereference

    sim = simulate_deformation(small_template.img, rotation_deg=(2.0, 0.0, 3.0),
                               translation_mm=(3.0, -2.0, 2.0), scale=(1.0, 1.0, 1.0),
                               max_displacement_mm=0.0, blur_mm=0.0, rng=0)
    brain = sample(small_template.mask(), small_template.affine, sim.subject_to_template,
                   order=0) > 0
    z = np.indices(brain.shape)[2]
    cut = np.percentile(z[brain], 22)
    noise = np.random.default_rng(0).normal(0.0, 10.0, brain.shape)
    chi = np.where(brain & (z >= cut), 5.0 + noise, 0.0).astype(np.float32)
    anat = tmp_path / "in" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    nib.save(sim.img, anat / "sub-01_T1w.nii.gz")
    nib.save(nib.Nifti1Image(chi, sim.img.affine), anat / "sub-01_Chimap.nii.gz")
    native = rereference(nib.Nifti1Image(chi, sim.img.affine),
                         mask_img=nib.Nifti1Image(brain.astype(np.uint8), sim.img.affine))
    res = normalize_cohort(_load(tmp_path / "in"), tmp_path / "out", template=small_template,
                           nonlinear=False, params=FAST, rng=0, qc_floor=0.999, verbose=False)
    row = res.table.iloc[0]
    assert native.offset == pytest.approx(5.0, abs=0.5)
    assert row["offset"] == pytest.approx(native.offset, abs=0.3)
    assert 0.6 < row["coverage"] < 0.9
    assert native.offset * row["coverage"] < native.offset - 0.9   # what averaging zeros gave
    out = nib.load(row["chi_template_path"]).get_fdata()
    mask = small_template.mask()
    have = out != 0
    assert (mask & ~have).sum() > 0.1 * mask.sum()        # no data stays 0, not -5
    assert abs(out[mask & have].mean()) < 1e-3
    # an absolute floor flags a registration whatever the rest of the cohort
    assert bool(row["below_floor"]) and bool(row["outlier"])
    meta = json.loads(row["sidecar_path"].read_text())
    assert meta["Units"] == "ppb" and meta["Quality"]["floor"] == 0.999
    assert meta["DataCoverage"] == pytest.approx(row["coverage"])


@pytest.mark.slow
def test_chi_drive_from_the_command_line(bids, small_template, truth_chi, tmp_path, capsys):
    """`qsm normalize --drive chi` needs no structural image; a χ template is given."""
    src = tmp_path / "chi_only"
    for sub in ("01", "02", "03"):
        (src / f"sub-{sub}" / "anat").mkdir(parents=True)
        nib.save(nib.load(bids / f"sub-{sub}" / "anat" / f"sub-{sub}_Chimap.nii.gz"),
                 src / f"sub-{sub}" / "anat" / f"sub-{sub}_Chimap.nii")
    paths = small_template.save(tmp_path / "tpl")
    chi_tpl = tmp_path / "tpl" / "chi.nii.gz"
    nib.save(nib.Nifti1Image(truth_chi, small_template.affine), chi_tpl)
    args = ["normalize", str(src), str(tmp_path / "out"), "--drive", "chi", "--quiet",
            "--template", str(paths["img"]), "--template-mask", str(paths["mask_img"]),
            "--space", "small", "--affine-only"]
    code = qsm_cli.main(args)
    assert code == 2 and "--template-chi" in capsys.readouterr().err  # a usage error
    code = qsm_cli.main(args + ["--template-chi", str(chi_tpl), "--registration-resolution",
                                "8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    meta = json.loads((tmp_path / "out" / "sub-02" / "anat" /
                       "sub-02_space-small_Chimap.json").read_text())
    assert meta["RegistrationDrive"] == "chi" and meta["Quality"]["image"] == "chi"
    assert meta["RegistrationParameters"]["registration_resolution"] == 8.0
    assert meta["Quality"]["correlation"] > 0.8
    png = tmp_path / "out" / "sub-02" / "figures" / "sub-02_space-small_desc-normalization_qc.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_template_shape_update_moves_towards_the_mean_shape(small_template, truth_chi, tmp_path):
    """Every subject is the template under one common smooth warp: plain averaging keeps the
    starting shape; the ANTs shape update (average inverse warp) moves it to the cohort's."""
    from qsm.cohort import load_cohort as _load

    common = simulate_deformation(small_template.img, rotation_deg=(0.0, 0.0, 0.0),
                                  translation_mm=(0.0, 0.0, 0.0), scale=(1.0, 1.0, 1.0),
                                  max_displacement_mm=6.0, smoothness_mm=14.0, blur_mm=0.0,
                                  rng=3)
    mean_shape = common.img.get_fdata()
    rows = []
    for k in range(3):
        anat = tmp_path / "in" / f"sub-0{k}" / "anat"
        anat.mkdir(parents=True)
        noise = np.random.default_rng(k).normal(0, 0.01, mean_shape.shape) * (mean_shape > 0)
        nib.save(nib.Nifti1Image((mean_shape + noise).astype(np.float32), common.img.affine),
                 anat / f"sub-0{k}_T1w.nii.gz")
        chi = sample(truth_chi, small_template.affine, common.subject_to_template, order=1)
        nib.save(nib.Nifti1Image(chi.astype(np.float32), common.img.affine),
                 anat / f"sub-0{k}_Chimap.nii.gz")
        rows.append(k)
    cohort = _load(tmp_path / "in")
    mask = small_template.mask()

    def corr(tpl):
        return np.corrcoef(tpl.img.get_fdata()[mask], mean_shape[mask])[0, 1]

    plain = build_template(cohort, n_iterations=1, template=small_template, params=FAST,
                           gradient_step=0.0, rng=0, verbose=False)
    updated = build_template(cohort, n_iterations=1, template=small_template, params=FAST,
                             gradient_step=1.0, rng=0, verbose=False)
    start = np.corrcoef(small_template.img.get_fdata()[mask], mean_shape[mask])[0, 1]
    # the distance to the mean shape (1 - r) at least a third smaller with the update
    assert 1 - corr(updated) < 0.67 * (1 - corr(plain))
    assert 1 - corr(updated) < 0.67 * (1 - start)
    with pytest.raises(ValueError, match="'gradient_step' parameter.*but got 1.5"):
        build_template(cohort, template=small_template, gradient_step=1.5)
