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
