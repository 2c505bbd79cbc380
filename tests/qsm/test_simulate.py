"""Tests of qsm.simulate: cohort design, maps, planted effects, ground truth, seeds."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from qsm.atlas import demo_thalamus_atlas, region_masks
from scipy import ndimage

from qsm.simulate import Effects, _noise_box, _smooth_noise, expected_effects, simulate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return simulate_cohort(out, n_per_group=10, rng=3, noise_sd=0.0, subject_sd=0.0,
                           reference_offset_sd=0.0, effects={"age_slope": 0.0})


def test_participants_table(cohort):
    df = pd.read_csv(cohort.participants_path, sep="\t", na_values="n/a")
    assert list(df.columns) == ["participant_id", "group", "age", "sex", "disease_duration",
                                "edss", "chi_path"]
    assert df["participant_id"].is_unique and len(df) == 60
    assert df.groupby("group").size().to_dict() == {g: 10 for g in
                                                    ["CIS", "HC_CIS", "HC_RRMS", "HC_SPMS",
                                                     "RRMS", "SPMS"]}
    assert (df.groupby("group")["sex"].apply(lambda s: (s == "F").mean()) == 0.7).all()
    ages = df.groupby("group")["age"].mean()
    assert ages["CIS"] < ages["RRMS"] < ages["SPMS"]
    dur = df.groupby("group")["disease_duration"].mean()
    assert dur["CIS"] < dur["RRMS"] < dur["SPMS"]
    assert df.loc[df.group.str.startswith("HC"), ["disease_duration", "edss"]].isna().all().all()
    # controls matched 1:1 on sex, age within a few years
    for g in ("CIS", "RRMS", "SPMS"):
        p, c = df[df.group == g], df[df.group == f"HC_{g}"]
        assert list(p.sex) == list(c.sex)
        assert np.abs(p.age.to_numpy() - c.age.to_numpy()).max() < 8
    assert ((df.age - df.disease_duration.fillna(0)) >= 18).all()
    for rel in df.chi_path:
        assert (cohort.root / rel).is_file()
        assert rel.endswith("_space-MNI152NLin2009aSym_Chimap.nii.gz")


def test_noise_free_maps_carry_exactly_the_planted_effects(cohort):
    df = cohort.participants
    masks = region_masks(demo_thalamus_atlas())
    truth = json.loads(cohort.truth_path.read_text())
    eff = Effects(**truth["effects"])
    means = {}
    for row in df.itertuples():
        img = nib.load(cohort.root / row.chi_path)
        assert img.shape == (99, 117, 95)
        data = img.get_fdata()
        means[row.participant_id] = {n: data[m].mean() for n, m in masks.items()}
    means = pd.DataFrame(means).T.join(df.set_index("participant_id"))
    ctrl = means[means.group == "HC_CIS"]
    # all controls identical without noise and age effects
    assert np.allclose(ctrl["thalamus"], ctrl["thalamus"].iloc[0], atol=1e-3)
    base = ctrl.iloc[0]
    cis = means[means.group == "CIS"]
    # CIS: only the duration slope, centred on the group mean duration
    dd = cis.disease_duration - cis.disease_duration.mean()
    assert np.allclose(cis["anterior_left"] - base["anterior_left"],
                       eff.thalamus_duration_slope * dd, atol=1e-3)
    assert np.allclose(cis["pulvinar"] - base["pulvinar"], eff.duration_slope * dd, atol=1e-3)
    rrms = means[means.group == "RRMS"]
    dd = rrms.disease_duration - rrms.disease_duration.mean()
    slope = eff.thalamus_duration_slope * dd
    assert np.allclose(rrms["medial"] - base["medial"] - slope, eff.rrms_shift, atol=1e-3)
    assert np.allclose(rrms["anterior"] - base["anterior"] - slope, eff.rrms_shift, atol=1e-3)
    assert abs((rrms["pulvinar"] - base["pulvinar"]).mean()) < 1e-3
    spms = means[means.group == "SPMS"]
    assert np.isclose((spms["pulvinar"] - base["pulvinar"]).mean(), eff.spms_pulvinar_shift,
                      atol=1e-3)
    assert np.isclose((spms["medial_right"] - base["medial_right"]).mean(), eff.spms_other_shift,
                      atol=1e-3)
    # the planted-effect image and the expected-effects table agree with the truth JSON
    eimg = nib.load(cohort.effect_map_path)
    assert eimg.shape == (99, 117, 95, 4)
    assert truth["effect_map_volumes"] == ["CIS", "RRMS", "SPMS", "duration_slope"]
    table = pd.DataFrame(truth["expected_region_effects"]).set_index("region")
    assert table.loc["lateral_left", "duration_slope"] == pytest.approx(eff.duration_slope)
    assert table.loc["lateral_right", "duration_slope"] == pytest.approx(
        eff.thalamus_duration_slope)
    assert table.loc["medial", "RRMS"] == pytest.approx(eff.rrms_shift)


def test_baseline_is_tissue_dependent(cohort):
    data = nib.load(cohort.root / cohort.participants.chi_path[30]).get_fdata()
    inv = np.linalg.inv(nib.load(cohort.effect_map_path).affine)

    def at(x, y, z):
        return data[tuple(np.round(inv @ [x, y, z, 1]).astype(int)[:3])]

    assert at(-19, -4, -1) > 100  # globus pallidus
    assert at(-25, 4, 0) > 40  # putamen
    assert at(-28, -20, 28) < -10  # white matter (corona radiata)
    assert at(0, 0, 80) == 0  # outside the brain


def test_seeded_and_zero_effects(tmp_path):
    a = simulate_cohort(tmp_path / "a", n_per_group=2, rng=5)
    b = simulate_cohort(tmp_path / "b", n_per_group=2, rng=5)
    assert a.participants.equals(b.participants)
    img_a = nib.load(a.root / a.participants.chi_path[0]).get_fdata()
    img_b = nib.load(b.root / b.participants.chi_path[0]).get_fdata()
    assert np.array_equal(img_a, img_b)
    z = simulate_cohort(tmp_path / "z", n_per_group=2, rng=5, effects=0)
    assert not np.any(nib.load(z.effect_map_path).get_fdata())
    assert (expected_effects(Effects.zero()).drop(columns="region") == 0).all().all()


def test_native_option_writes_warped_images(tmp_path):
    c = simulate_cohort(tmp_path, n_per_group=2, rng=1, native=True)
    df = pd.read_csv(c.participants_path, sep="\t")
    assert {"structural_path", "template_chi_path"} <= set(df.columns)
    nat = nib.load(tmp_path / df.chi_path[0]).get_fdata()
    tpl = nib.load(tmp_path / df.template_chi_path[0]).get_fdata()
    t1 = nib.load(tmp_path / df.structural_path[0]).get_fdata()
    assert nat.shape == tpl.shape == t1.shape
    assert not np.allclose(nat, tpl)  # really moved
    assert np.corrcoef(nat.ravel(), tpl.ravel())[0, 1] > 0.3  # but still the same brain
    assert t1.max() > 500


def test_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="'n_per_group' parameter"):
        simulate_cohort(tmp_path, n_per_group=1)
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['bogus'\] in the 'effects'"):
        simulate_cohort(tmp_path, n_per_group=2, effects={"bogus": 1})


@pytest.mark.parametrize("sigma", [0.8, 1.27, 2.1])
def test_noise_smoothed_in_the_box_equals_the_whole_grid_on_the_brain(sigma):
    # a brain touching the grid's lower z edge (as nilearn's MNI 2 mm mask does) and away from
    # the others: smoothing the box alone must give the whole grid's values on every brain voxel
    brain = np.zeros((40, 44, 30), bool)
    brain[12:27, 15:30, 0:14] = True
    brain[20, 14, 5] = True
    box = _noise_box(brain, sigma)
    assert box[2] == slice(0, box[2].stop) and box[0].start > 0 and box[0].stop < 40
    field = np.random.default_rng(1).standard_normal(brain.shape).astype(np.float32)
    whole = ndimage.gaussian_filter(field, sigma, truncate=3.0)
    cropped = np.zeros_like(whole)
    cropped[box] = ndimage.gaussian_filter(field[box], sigma, truncate=3.0)
    np.testing.assert_array_equal(cropped[brain], whole[brain])
    # one voxel less of margin would not do
    tight = tuple(slice(b.start + (b.start > 0), b.stop - (b.stop < n))
                  for b, n in zip(box, brain.shape))
    short = np.zeros_like(whole)
    short[tight] = ndimage.gaussian_filter(field[tight], sigma, truncate=3.0)
    assert not np.array_equal(short[brain], whole[brain])
    # the simulation's noise: same random stream, same brain values with and without the box
    in_box = _smooth_noise(np.random.default_rng(2), brain.shape, sigma, 6.0, box)
    on_grid = _smooth_noise(np.random.default_rng(2), brain.shape, sigma, 6.0)
    np.testing.assert_array_equal(in_box[brain[box]], on_grid[brain])


def test_smooth_noise_has_the_requested_sd():
    noise = _smooth_noise(np.random.default_rng(0), (50, 50, 50), 1.27, 6.0)
    assert noise[6:-6, 6:-6, 6:-6].std() == pytest.approx(6.0, rel=0.05)
    # spatially smooth: neighbours strongly correlated
    r = np.corrcoef(noise[:-1].ravel(), noise[1:].ravel())[0, 1]
    assert r > 0.7
