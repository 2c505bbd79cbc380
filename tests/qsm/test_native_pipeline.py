"""qsm.pipeline with ``[study] space = "native"``: normalization by qsm.normalize first."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from qsm.atlas import demo_thalamus_atlas, region_masks
from qsm.config import load_config
from qsm.pipeline import run_study
from qsm.simulate import simulate_cohort
from qsm.template import MNI_SPACE, load_template

# few iterations: about 3-5 s per subject at 2 mm (the defaults take ~20 s)
FAST_DIPY = {"affine_level_iters": [10, 5, 0], "syn_level_iters": [5, 0, 0],
             "sampling_proportion": 0.05}
EFFECTS = {"rrms_shift": -15.0, "spms_pulvinar_shift": -10.0, "duration_slope": -0.6,
           "thalamus_duration_slope": -0.3}


def _native_config(root, **sections):
    raw = {"study": {"space": "native", "min_subjects_per_group": 2},
           "groups": {"RRMS": "HC_RRMS"},
           "normalization": {"n_jobs": 2, "dipy_params": FAST_DIPY, "seed": 1},
           "voxelwise": {"n_perm": 50},
           # 3 patients: no room for age and sex in the clinical regression
           "regression": {"clinical": ["disease_duration"],
                          "clinical_formula": "chi ~ {variable}"}}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return load_config(raw, base_dir=root)


@pytest.fixture(scope="module")
def native_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    cohort = simulate_cohort(root / "data", n_per_group=3, native=True, rng=3, noise_sd=3.0,
                             effects=EFFECTS, verbose=False)
    config = _native_config(cohort.root)
    return cohort, config, run_study(config, root / "out", verbose=False)


@pytest.mark.slow
def test_normalized_maps_in_template_space(native_study):
    cohort, _, res = native_study
    template = load_template(resolution=2)
    parts = res.participants
    assert len(parts) == 6 and set(parts.group) == {"RRMS", "HC_RRMS"}
    # only the analysed groups were registered
    normalized = sorted((res.out_dir / "normalized").glob("sub-*/anat/*_Chimap.nii.gz"))
    assert len(normalized) == 6
    assert all(p.name.endswith(f"_space-{MNI_SPACE}_Chimap.nii.gz") for p in normalized)
    brain = template.mask()
    thal = region_masks(demo_thalamus_atlas())["thalamus"]
    truth_of = dict(zip(cohort.participants.participant_id, cohort.participants.template_chi_path))
    for sub, path, native in zip(parts.participant_id, parts.chi_path, parts.native_chi_path):
        img = nib.load(path)
        assert img.shape == template.shape
        np.testing.assert_allclose(img.affine, template.affine, atol=1e-5)
        assert "space-native" in native
        chi = img.get_fdata()
        truth = nib.load(cohort.root / truth_of[sub]).get_fdata()
        raw = nib.load(cohort.root / native).get_fdata()
        r_norm = np.corrcoef(chi[brain], truth[brain])[0, 1]
        r_raw = np.corrcoef(raw[brain], truth[brain])[0, 1]
        # registration recovers the template-space map (the native one is misaligned)
        assert r_norm > 0.93 and r_norm > r_raw + 0.1, (sub, r_norm, r_raw)
        assert np.corrcoef(chi[thal], truth[thal])[0, 1] > 0.75
    # quality and sidecars from qsm.normalize
    assert (parts.registration_nmi > 1.1).all() and not parts.registration_outlier.any()
    quality = pd.read_csv(res.out_dir / "normalized" / "normalization_quality.tsv", sep="\t")
    assert sorted(quality.participant_id) == sorted(parts.participant_id)


@pytest.mark.slow
def test_reference_offsets_recorded(native_study):
    _, _, res = native_study
    parts = res.participants
    template = load_template(resolution=2)
    brain = template.mask()
    for _, row in parts.iterrows():
        sidecar = json.loads(Path(row.chi_path.replace(".nii.gz", ".json")).read_text())
        assert sidecar["ReferenceRegion"] == "whole_brain"
        assert sidecar["ReferenceOffset"] == pytest.approx(row.normalization_offset_ppb)
        # qsm.normalize already zeroed the brain mean, so the pipeline's residual offset
        # (same region: nilearn's brain mask = the template mask) is ~0
        chi = nib.load(row.chi_path).get_fdata()
        inside = chi[brain]
        assert abs(inside[inside != 0].mean()) < 0.05
        assert abs(row.reference_ppb) < 0.05
    # the offsets differ between subjects (the simulated reference ambiguity, sd 3 ppb)
    assert parts.normalization_offset_ppb.std() > 0.5
    table = pd.read_csv(res.out_dir / "referencing.tsv", sep="\t")
    np.testing.assert_allclose(table.normalization_offset_ppb, parts.normalization_offset_ppb,
                               rtol=1e-5)
    assert set(table.reference_region) == {"brain"}
    prov = json.loads((res.out_dir / "provenance.json").read_text())
    assert prov["referencing"]["region"] == "brain"
    assert prov["normalization"]["space"] == MNI_SPACE
    assert prov["normalization"]["n_normalized"] == 6
    assert prov["config"]["normalization"]["dipy_params"]["syn_level_iters"] == [5, 0, 0]
    assert "normalization" in res.timings


@pytest.mark.slow
def test_planted_effect_found_after_normalization(native_study):
    _, _, res = native_study
    regions = set(demo_thalamus_atlas().region_names)
    roi = res.roi_table
    assert set(roi.roi) == regions and roi.groupby("subject").size().eq(len(regions)).all()
    assert (roi.num_voxels > 0).all()
    gt = res.group_table.set_index("region")
    # planted: -15 ppb in RRMS outside the pulvinar, nothing in the pulvinar
    for region in ("anterior", "medial", "lateral"):
        assert -25 < gt.loc[region, "beta"] < -5, region
    assert abs(gt.loc["pulvinar", "beta"]) < abs(gt.loc["medial", "beta"]) / 2
    assert gt.loc["medial", "p"] < 0.05
    for name in ("cohort_qsmstats.tsv", "regression_groups.tsv", "report.md",
                 "voxelwise/RRMS_vs_HC_RRMS_stat-pfwe.nii.gz", "figures/atlas.png"):
        assert (res.out_dir / name).is_file(), name


@pytest.mark.slow
def test_rerun_reuses_complete_normalizations(native_study, tmp_path):
    cohort, config, res = native_study
    shutil.copytree(res.out_dir / "normalized", tmp_path / "normalized")
    config = load_config({**config.to_dict(), "voxelwise": {"enabled": False}},
                         base_dir=cohort.root)
    again = run_study(config, tmp_path, verbose=False)
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["normalization"]["n_existing"] == 6 and prov["normalization"]["n_normalized"] == 0
    pd.testing.assert_frame_equal(again.roi_table, res.roi_table)


@pytest.mark.slow
def test_relative_out_with_native_space(native_study, tmp_path, monkeypatch):
    """--out relative to the working directory, the participants table elsewhere."""
    cohort, config, res = native_study
    monkeypatch.chdir(tmp_path)
    shutil.copytree(res.out_dir / "normalized", tmp_path / "rel" / "run" / "normalized")
    config = load_config({**config.to_dict(), "voxelwise": {"enabled": False}},
                         base_dir=cohort.root)
    again = run_study(config, Path("rel") / "run", verbose=False)
    assert again.out_dir == tmp_path / "rel" / "run"
    assert all(Path(p).is_file() for p in again.participants.chi_path)
    pd.testing.assert_frame_equal(again.roi_table, res.roi_table)


# ------------------------------------------------------------------ checks before work
def _tiny_cohort(folder, *, bad_structural=None, structural=True):
    rows = []
    rng = np.random.default_rng(0)
    for group in ("RRMS", "HC_RRMS"):
        for i in range(2):
            sid = f"sub-{group.replace('_', '')}{i}"
            chi = nib.Nifti1Image(rng.normal(size=(4, 4, 4)).astype(np.float32), np.eye(4))
            nib.save(chi, folder / f"{sid}_chi.nii.gz")
            shape = (5, 4, 4) if sid == bad_structural else (4, 4, 4)
            nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)),
                     folder / f"{sid}_T1w.nii.gz")
            row = dict(participant_id=sid, group=group, age=40.0 + i, sex="F",
                       disease_duration=3.0 if group == "RRMS" else None,
                       chi_path=f"{sid}_chi.nii.gz")
            if structural:
                row["structural_path"] = f"{sid}_T1w.nii.gz"
            rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    return folder


def test_structural_column_required(tmp_path):
    _tiny_cohort(tmp_path, structural=False)
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['structural_path'\]"):
        run_study(_native_config(tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_subject_fails_before_registration(tmp_path):
    _tiny_cohort(tmp_path, bad_structural="sub-HCRRMS1")
    with pytest.raises(ValueError, match=r"Subject 'sub-HCRRMS1'.*sub-HCRRMS1_T1w.nii.gz.*not "
                                         r"in the same space"):
        run_study(_native_config(tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_skip_bad_skips_with_a_warning(tmp_path):
    _tiny_cohort(tmp_path, bad_structural="sub-HCRRMS1")
    config = _native_config(tmp_path, normalization={"skip_bad": True})
    from qsm import pipeline

    with pytest.warns(UserWarning, match="Skipped 1 subject"):
        _, _, native = pipeline._check_before_work(config)
    assert native.cohort.subjects == ["sub-RRMS0", "sub-RRMS1", "sub-HCRRMS0"]
    assert [s.subject for s in native.cohort.skipped] == ["HCRRMS1"]


def test_wm_reference_from_the_template_on_any_grid(tmp_path):
    """A 3 mm output grid: white matter from the study template, not refused (nilearn has no
    3 mm white-matter mask); it lies inside nilearn's (generous) 2 mm mask carried to 3 mm."""
    from nilearn import datasets
    from nilearn.image import resample_to_img

    from qsm import pipeline
    from qsm.template import output_grid

    _tiny_cohort(tmp_path)
    config = _native_config(tmp_path, referencing={"region": "wm"},
                            normalization={"resolution": 3.0}, atlas={"resample": True})
    _, _, native = pipeline._check_before_work(config)
    assert native.reference == "wm"
    shape, affine = output_grid(native.template, 3.0)
    grid = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
    mask, description = pipeline._study_reference_mask(config, grid, native)
    assert mask.shape == shape and "white matter" in description
    nl = resample_to_img(datasets.load_mni152_wm_mask(resolution=2), grid,
                         interpolation="nearest", force_resample=True, copy_header=True)
    nl = np.asarray(nl.dataobj) > 0
    assert (mask & nl).sum() / mask.sum() > 0.95
    assert 300 < mask.sum() * 27 / 1000 < 800      # ml of deep white matter


def test_ants_engine_without_antspyx(tmp_path):
    try:
        import ants  # noqa: F401
        pytest.skip("antspyx is installed")
    except ImportError:
        pass
    _tiny_cohort(tmp_path)
    config = _native_config(tmp_path, normalization={"engine": "ants"})
    with pytest.raises(ValueError, match=r"engine = 'ants' needs the optional antspyx"):
        run_study(config, tmp_path / "out")


@pytest.mark.parametrize("section, message", [
    ({"normalization": {"engine": "fsl"}},
     r"invalid value for \[normalization\] engine. Allowed values are 'dipy', 'ants', but got "
     r"'fsl' instead"),
    ({"normalization": {"nonlinar": False}}, r"unknown key\(s\) \['nonlinar'\] in "
                                             r"\[normalization\]"),
    ({"normalization": {"dipy_params": {"syn_iters": [1, 0, 0]}}},
     r"unknown key\(s\) \['syn_iters'\] in \[normalization\] dipy_params"),
    ({"normalization": {"dipy_params": {"syn_level_iters": [1]}}},
     r"dipy_params.syn_level_iters must be like the default \[30, 15, 5\]"),
    ({"normalization": {"dipy_params": [1]}}, r"\[normalization\] dipy_params must be a table"),
    ({"normalization": {"n_jobs": 0}}, r"\[normalization\] n_jobs must be >= 1 or -1"),
    ({"normalization": {"template": "tpl.nii.gz"}}, "needs template_mask"),
    ({"normalization": {"out_subdir": "/abs"}}, "out_subdir must be a relative folder"),
    ({"normalization": {"drive": "magnitude"}}, r"\[normalization\] drive"),
    ({"referencing": {"region": "none"}}, "region = 'none' is not possible with"),
    ({"referencing": {"statistic": "mode"}}, r"\[referencing\] statistic"),
])
def test_bad_normalization_configs(section, message):
    raw = {"groups": {"A": "B"}, "study": {"space": "native"}, **section}
    with pytest.raises(ValueError, match=message):
        load_config(raw)


def _user_atlas(folder, space):
    from qsm.atlas import save_atlas

    img, tsv = save_atlas(demo_thalamus_atlas(), folder, prefix="user")
    return {"labels_img": img.name, "label_table": tsv.name, "space": space}


@pytest.mark.parametrize("native", [True, False])
def test_atlas_in_another_space_is_refused(tmp_path, native):
    _tiny_cohort(tmp_path)
    atlas = _user_atlas(tmp_path, "MNI152NLin2009cAsym")
    if native:
        config = _native_config(tmp_path, atlas=atlas)
        where = rf"'{MNI_SPACE}' \(the \[normalization\] template\)"
    else:
        config = load_config({"groups": {"RRMS": "HC_RRMS"}, "atlas": atlas,
                              "study": {"min_subjects_per_group": 2},
                              "regression": {"clinical": ["disease_duration"]}},
                             base_dir=tmp_path)
        where = r"'MNI152NLin2009aSym' \(\[study\] space\)"
    with pytest.raises(ValueError, match=r"the atlas user_dseg.nii.gz is in space "
                                         rf"'MNI152NLin2009cAsym' but the χ maps are in {where}"):
        run_study(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # the same atlas tagged with the template's space passes the checks
    from qsm import pipeline

    ok = _native_config(tmp_path, atlas=_user_atlas(tmp_path, MNI_SPACE))
    _, user_atlas, inputs = pipeline._check_before_work(ok)
    assert user_atlas.space == inputs.template.space == MNI_SPACE


def test_atlas_off_the_output_grid_needs_resample(tmp_path):
    _tiny_cohort(tmp_path)
    config = _native_config(tmp_path, normalization={"resolution": 3.0})
    with pytest.raises(ValueError, match=r"the atlas \(shape \(99, 117, 95\)\) is not on the "
                                         r"normalization output grid \(shape \(66, 78, 63\)\)"):
        run_study(config, tmp_path / "out")
    from qsm import pipeline

    config = _native_config(tmp_path, normalization={"resolution": 3.0},
                            atlas={"resample": True})
    _, _, inputs = pipeline._check_before_work(config)
    assert inputs.reference == "whole_brain"
