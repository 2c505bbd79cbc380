"""End-to-end tests of qsm.pipeline on small simulated cohorts."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from qsm.atlas import demo_thalamus_atlas
from qsm.config import load_config
from qsm.pipeline import run_study, voxelwise_design
from qsm.regression import group_comparisons, regional_values
from qsm.roi import cohort_region_stats
from qsm.simulate import simulate_cohort

EFFECTS = {"rrms_shift": -8.0, "spms_pulvinar_shift": -10.0, "spms_other_shift": -1.0,
           "duration_slope": -0.6, "thalamus_duration_slope": -0.3}
NUCLEI = ["anterior", "medial", "lateral"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    cohort = simulate_cohort(root / "data", n_per_group=12, rng=7, effects=EFFECTS,
                             noise_sd=4.0)
    config = load_config(overrides={"voxelwise": {"n_perm": 200}}, base_dir=cohort.root)
    return cohort, run_study(config, root / "out", verbose=False)


@pytest.mark.slow
def test_outputs_written(study):
    _, res = study
    out = res.out_dir
    for name in ("cohort_qsmstats.tsv", "regression_groups.tsv", "regression_clinical.tsv",
                 "voxelwise/voxelwise_regions.tsv", "report.md", "provenance.json",
                 "figures/atlas.png", "figures/voxelwise_tfce_pfwe.png",
                 "figures/regional_chi_by_group.png", "figures/chi_vs_disease_duration.png",
                 "voxelwise/RRMS_vs_HC_RRMS_stat-pfwe.nii.gz"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "## Clinical regressions" in report and "figures/atlas.png" in report
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["n_subjects"] == 72 and prov["config"]["voxelwise"]["n_perm"] == 200
    p = nib.load(out / "voxelwise/SPMS_vs_HC_SPMS_stat-pfwe.nii.gz")
    assert p.shape == (99, 117, 95)
    assert np.all((p.get_fdata() > 0) & (p.get_fdata() <= 1))
    assert set(res.voxelwise_table.scheme) == {"freedman-lane"}


@pytest.mark.slow
def test_referencing_removes_the_global_offset(study):
    cohort, res = study
    # the reference subtracted is the brain mean of the raw map
    from nilearn import datasets

    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=2).dataobj) > 0
    raw = nib.load(cohort.root / cohort.participants.chi_path[5]).get_fdata()
    vals = raw[brain]
    assert res.participants.reference_ppb[5] == pytest.approx(vals[vals != 0].mean(), rel=1e-4)


@pytest.mark.slow
def test_planted_effects_found_where_planted(study):
    _, res = study
    vt = res.voxelwise_table.set_index(["patient_group", "region"])
    gt = res.group_table.set_index(["patient_group", "region"])
    # CIS: nothing
    assert (vt.loc["CIS", "n_sig_lower"] + vt.loc["CIS", "n_sig_higher"]).sum() == 0
    assert (gt.loc["CIS", "p_holm"] >= 0.05).all()
    # RRMS: lower chi outside the pulvinar, not in the pulvinar
    for region in NUCLEI:
        assert vt.loc[("RRMS", region), "n_sig_lower"] > 0, region
        assert gt.loc[("RRMS", region), "p_holm"] < 0.05
        assert gt.loc[("RRMS", region), "beta"] < 0
    assert vt.loc[("RRMS", "medial"), "frac_sig"] > vt.loc[("RRMS", "pulvinar"), "frac_sig"]
    assert gt.loc[("RRMS", "pulvinar"), "p_holm"] >= 0.05
    assert vt.loc[("RRMS", "thalamus"), "n_sig_higher"] == 0
    # SPMS: mainly the pulvinar
    assert vt.loc[("SPMS", "pulvinar"), "n_sig_lower"] > 0
    assert gt.loc[("SPMS", "pulvinar"), "p_holm"] < 0.05
    assert vt.loc[("SPMS", "pulvinar"), "frac_sig"] > vt.loc[("SPMS", "medial"), "frac_sig"]
    # duration slopes negative where planted
    ct = res.clinical_table[res.clinical_table.variable == "disease_duration"].set_index("region")
    assert ct.loc["pulvinar", "beta"] < 0 and ct.loc["pulvinar", "p_holm"] < 0.05
    assert ct.loc["lateral_left", "beta"] < 0
    assert ct.loc["thalamus", "beta"] < 0


def test_voxelwise_design_coding():
    rows = pd.DataFrame({"group": ["P", "P", "C", "C"], "age": [30.0, 40.0, 50.0, 60.0],
                         "sex": ["F", "M", "M", "F"]})
    d = voxelwise_design(rows, "P", ["age", "sex"])
    assert list(d.columns) == ["intercept", "patient", "age", "sex[M]"]
    assert d.patient.tolist() == [1, 1, 0, 0]
    assert d.age.tolist() == [-15, -5, 5, 15]
    assert d["sex[M]"].tolist() == [0, 1, 1, 0]


@pytest.mark.slow
def test_no_effects_no_region_survives_at_nominal_rate(tmp_path):
    """Null cohorts: family-wise (Holm) false positives at about the nominal 5 % rate."""
    atlas = demo_thalamus_atlas()
    families, hits, pvalues = 0, 0, []
    for seed in range(8):
        c = simulate_cohort(tmp_path / str(seed), n_per_group=6, rng=100 + seed, effects=0,
                            noise_sd=4.0, verbose=False)
        paths = [c.root / p for p in c.participants.chi_path]
        roi = cohort_region_stats(paths, atlas, subjects=c.participants.participant_id,
                                  ignore_zeros=True)
        long = regional_values(roi, c.participants)
        table = group_comparisons(long, {g: f"HC_{g}" for g in ("CIS", "RRMS", "SPMS")})
        for _, fam in table.groupby("patient_group"):
            families += 1
            hits += bool((fam.p_holm < 0.05).any())
        pvalues += list(table.p)
    assert families == 24
    # uncorrected p-values roughly uniform under the null (regions overlap: loose bounds)
    assert 0.3 < np.median(pvalues) < 0.7
    assert hits <= 3  # P(X >= 4 | n=24, p=0.05) ~ 0.03


def test_bad_config_fails_before_work(tmp_path):
    (tmp_path / "participants.tsv").write_text("participant_id\tgroup\nsub-1\tCIS\n")
    config = load_config(base_dir=tmp_path)
    with pytest.raises(ValueError, match="lacks the column"):
        run_study(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_reference_offsets_written(study):
    _, res = study
    table = pd.read_csv(res.out_dir / "referencing.tsv", sep="\t")
    assert list(table.participant_id) == list(res.participants.participant_id)
    np.testing.assert_allclose(table.reference_ppb, res.participants.reference_ppb, rtol=1e-5)
    assert set(table.reference_region) == {"brain"} and set(table.reference_statistic) == {"mean"}
    assert (table.reference_voxels > 200000).all()
    prov = json.loads((res.out_dir / "provenance.json").read_text())
    assert prov["referencing"]["region"] == "brain" and prov["normalization"] is None
    assert prov["referencing"]["offset_ppb_mean"] == pytest.approx(table.reference_ppb.mean())


def _chi_on_mni_grid(seed=0):
    from nilearn import datasets

    brain_img = datasets.load_mni152_brain_mask(resolution=2)
    brain = np.asarray(brain_img.dataobj) > 0
    data = np.random.default_rng(seed).normal(10.0, 5.0, brain.shape).astype(np.float32)
    data[~brain] = 0
    data[brain & (np.arange(data.size).reshape(data.shape) % 97 == 0)] = 0  # holes
    return nib.Nifti1Image(data, brain_img.affine), brain


@pytest.mark.parametrize("region, statistic", [("wm", "median"), ("brain", "mean")])
def test_reference_region_vs_direct_computation(tmp_path, region, statistic):
    from nilearn import datasets
    from scipy import ndimage

    from qsm.chi_loading import _rereference
    from qsm.pipeline import _study_reference_mask

    img, brain = _chi_on_mni_grid()
    data = np.asarray(img.dataobj)
    config = load_config({"groups": {"A": "B"},
                          "referencing": {"region": region, "statistic": statistic}})
    mask, description = _study_reference_mask(config, img, None)
    if region == "wm":  # nilearn's white-matter mask eroded once (qsm.reference)
        wm = np.asarray(datasets.load_mni152_wm_mask(resolution=2).dataobj) > 0
        expected_mask = ndimage.binary_erosion(wm)
        assert "eroded" in description
    else:
        expected_mask = brain
    np.testing.assert_array_equal(mask, expected_mask)
    values = data[expected_mask & (data != 0)]
    expected = np.median(values) if statistic == "median" else values.mean(dtype=np.float64)
    out, offset, n = _rereference(data, img.affine, mask, statistic, "chi.nii.gz")
    assert offset == pytest.approx(expected, rel=1e-5) and n == values.size
    inside = data != 0
    np.testing.assert_allclose(out[inside], data[inside] - offset, rtol=1e-6, atol=1e-5)
    assert (out[~inside] == 0).all()  # zeros (outside the map) stay zero


def test_reference_mask_on_another_grid(tmp_path):
    from qsm.pipeline import _study_reference_mask

    img, _ = _chi_on_mni_grid()
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[5:15, 5:15, 5:15] = 1
    nib.save(nib.Nifti1Image(mask, np.diag([8.0, 8.0, 8.0, 1.0])), tmp_path / "ref.nii.gz")
    raw = {"groups": {"A": "B"}, "referencing": {"region": "ref.nii.gz"}}
    with pytest.raises(ValueError, match=r"reference mask \(.*ref.nii.gz\) and the χ maps are "
                                         r"not on the same grid; set \[atlas\] resample"):
        _study_reference_mask(load_config(raw, base_dir=tmp_path), img, None)
    raw["atlas"] = {"resample": True}
    region, name = _study_reference_mask(load_config(raw, base_dir=tmp_path), img, None)
    assert region.shape == img.shape and name.endswith("ref.nii.gz")
    # nearest neighbour: the 8 mm cube [40, 120) mm in voxel-world units of the mask grid
    world = img.affine[:3, :3] @ np.argwhere(region).T + img.affine[:3, 3:]
    assert world.min() >= 36 and world.max() <= 124 and region.sum() > 1000


def test_reference_region_without_voxels_names_the_map():
    from qsm.chi_loading import _rereference

    img, _ = _chi_on_mni_grid()
    empty = np.zeros(img.shape, bool)
    with pytest.raises(ValueError, match=r"χ map chi.nii.gz: cannot re-reference"):
        _rereference(np.asarray(img.dataobj), img.affine, empty, "mean", "chi.nii.gz")


def test_user_atlas_with_unions(tmp_path):
    from qsm.atlas import region_masks, save_atlas
    from qsm.pipeline import _load_study_atlas

    img_path, tsv_path = save_atlas(demo_thalamus_atlas(), tmp_path, prefix="user")
    raw = {"groups": {"A": "B"},
           "atlas": {"labels_img": img_path.name, "label_table": tsv_path.name,
                     "space": "MNI152NLin2009aSym", "unions": {"posterior": [4, 8]}}}
    atlas = _load_study_atlas(load_config(raw, base_dir=tmp_path))
    assert atlas.space == "MNI152NLin2009aSym"
    assert {"posterior", "thalamus", "thalamus_left"} <= set(atlas.region_names)
    masks = region_masks(atlas)
    labels = np.asarray(atlas.labels_img.dataobj)
    np.testing.assert_array_equal(masks["posterior"], np.isin(labels, [4, 8]))
    raw["atlas"]["unions"] = {"posterior": ["pulvinar_left"]}
    with pytest.raises(ValueError, match=r"\[atlas\] unions.posterior must be a list of label "
                                         "indices"):
        load_config(raw, base_dir=tmp_path)
    with pytest.raises(ValueError, match=r"\[atlas\] unions are for a user atlas"):
        load_config({"groups": {"A": "B"}, "atlas": {"unions": {"x": [1]}}})
