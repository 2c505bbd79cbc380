"""Voxels without data and units of χ through qsm.pipeline.run_study (small simulated cohorts)."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from qsm.atlas import demo_thalamus_atlas, region_masks
from qsm.config import load_config
from qsm.pipeline import run_study
from qsm.simulate import simulate_cohort
from qsm.units import check_units, robust_range

GROUPS = {"RRMS": "HC_RRMS"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodata")
    sim = simulate_cohort(root / "data", n_per_group=6, rng=11, verbose=False)
    keep = sim.participants[sim.participants.group.isin(["RRMS", "HC_RRMS"])]
    keep.to_csv(sim.root / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    return sim.root, keep.reset_index(drop=True)


def _config(root, **sections):
    raw = {"groups": GROUPS, "voxelwise": {"n_perm": 50, "covariates": []},
           "regression": {"clinical": [], "group_formula": "chi ~ patient"}}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return load_config(raw, base_dir=root)


def _section(path, title):
    """The text of one ``## title`` section of a Markdown report."""
    text = path.read_text()
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _patch(root, table, k, n=89):
    """Zero an n-voxel patch of subject k's left pulvinar (a masked vein, say)."""
    masks = region_masks(demo_thalamus_atlas())
    idx = np.argwhere(masks["pulvinar_left"])[:n]
    path = root / table.chi_path[k]
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32).copy()
    data[tuple(idx.T)] = 0.0
    nib.save(nib.Nifti1Image(data, img.affine), path)
    return idx


@pytest.mark.slow
def test_voxels_without_data_leave_the_voxelwise_mask(cohort, tmp_path):
    root, table = cohort
    idx = _patch(root, table, 0)
    sub = table.participant_id[0]
    res = run_study(_config(root, roi={"max_missing_fraction": 0.2}), tmp_path / "a",
                    verbose=False)
    cov = pd.read_csv(tmp_path / "a" / "coverage.tsv", sep="\t")
    row = cov[(cov.subject == sub) & (cov.roi == "pulvinar_left")].iloc[0]
    assert row.num_no_data == len(idx) == 89
    assert (cov[cov.subject != sub].num_no_data[cov.roi == "thalamus"] == 0).all()
    prov = json.loads((tmp_path / "a" / "provenance.json").read_text())
    vox = prov["coverage"]["voxelwise_mask"]
    assert vox["dropped_no_data"] == 89 and vox["analysed_voxels"] == vox["region_voxels"] - 89
    # the patch is not analysed: no statistic there; the rest of the region is
    t = nib.load(tmp_path / "a" / "voxelwise" / "RRMS_vs_HC_RRMS_stat-t.nii.gz").get_fdata()
    assert np.all(t[tuple(idx.T)] == 0)
    pul = region_masks(demo_thalamus_atlas())["pulvinar_left"]
    assert np.count_nonzero(t[pul]) == pul.sum() - 89
    table_rt = res.voxelwise_table.set_index("region")
    assert table_rt.loc["pulvinar_left", "n_voxels"] == pul.sum() - 89
    # ROI statistics: the subject's pulvinar mean is over its voxels with data
    roi = pd.read_csv(tmp_path / "a" / "cohort_qsmstats.tsv", sep="\t")
    r = roi[(roi.subject == sub) & (roi.roi == "pulvinar_left")].iloc[0]
    assert r.num_voxels == pul.sum() - 89
    # the report says it: the mask's voxels left out, and who lacks data where
    n_thal = int(region_masks(demo_thalamus_atlas())["thalamus"].sum())
    section = _section(tmp_path / "a" / "report.md", "Data coverage and exclusions")
    assert (f"{n_thal - 89} of {n_thal} voxels of `thalamus` analysed; **89 "
            f"({89 / n_thal:.1%}) left out**") in section
    assert f"{len(table)} of {len(table)} analysed; none left out" in section
    group = table.group[0]
    assert (f"| {sub} | {group} | 89 | {n_thal} | {100 * 89 / n_thal:.1f} | "
            "pulvinar_left 89 | analysed |") in section
    # a subject missing more than the limit of the thalamus is named and stops the run...
    with pytest.raises(ValueError, match=rf"without data in more than 1% of the thalamus.*{sub} "):
        run_study(_config(root, roi={"max_missing_fraction": 0.01}), tmp_path / "b",
                  verbose=False)
    # ... or is left out when the config says so
    res = run_study(_config(root, roi={"max_missing_fraction": 0.01, "on_missing": "exclude"},
                            study={"min_subjects_per_group": 3}), tmp_path / "c",
                    verbose=False)
    assert sub not in set(res.participants.participant_id) and len(res.participants) == 11
    prov = json.loads((tmp_path / "c" / "provenance.json").read_text())
    assert prov["coverage"]["excluded_subjects"] == [sub]
    section = _section(tmp_path / "c" / "report.md", "Data coverage and exclusions")
    assert f"{len(table) - 1} of {len(table)} analysed; 1 left out" in section
    assert (f"| {sub} | {group} | no data in {89 / n_thal:.1%} of the thalamus (more than "
            "[roi] max_missing_fraction = 1%) |") in section
    assert f"| {sub} | {group} | 89 | {n_thal} |" in section and "| excluded |" in section
    assert "(1 more left out: see *Data coverage and exclusions*)" in (
        tmp_path / "c" / "report.md").read_text()
    assert prov["coverage"]["voxelwise_mask"]["dropped_no_data"] == 0


@pytest.mark.slow
def test_units_ppm_are_converted_and_odd_maps_refused(cohort, tmp_path):
    root, table = cohort
    ppb = run_study(_config(root), tmp_path / "ppb", verbose=False)
    # the same maps written in ppm, declared as such: identical results (in ppb)
    ppm_root = tmp_path / "ppm"
    rows = table.copy()
    for k, rel in enumerate(table.chi_path):
        img = nib.load(root / rel)
        out = ppm_root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32) / 1000, img.affine), out)
    rows.to_csv(ppm_root / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    ppm = run_study(_config(ppm_root, study={"units": "ppm"}), tmp_path / "ppm_out",
                    verbose=False)
    a = ppb.roi_table.set_index(["subject", "roi"])["mean"]
    b = ppm.roi_table.set_index(["subject", "roi"])["mean"]
    np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-4, atol=1e-3)
    # declared ppb, the ppm maps are refused by name before any work, and before another
    # subject's error met while the maps are read (each map is read once: NaN in subject 0)
    nan_path = ppm_root / table.chi_path[0]
    nan_img = nib.load(nan_path)
    nan_data = np.asarray(nan_img.dataobj, np.float32).copy()
    nan_data[tuple(np.argwhere(region_masks(demo_thalamus_atlas())["thalamus"])[:3].T)] = np.nan
    nib.save(nib.Nifti1Image(nan_data, nan_img.affine), nan_path)
    with pytest.raises(ValueError, match=r"declared in ppb have an implausible robust brain "
                                         rf"range.*{table.participant_id[1]}.*as ppm"):
        run_study(_config(ppm_root), tmp_path / "bad", verbose=False)
    assert not (tmp_path / "bad").exists()
    # one subject 1000 x off among ppm maps: named
    odd = ppm_root / table.chi_path[2]
    img = nib.load(odd)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32) * 1000, img.affine), odd)
    with pytest.raises(ValueError, match=rf"implausible.*{table.participant_id[2]}"):
        run_study(_config(ppm_root, study={"units": "ppm"}), tmp_path / "bad2", verbose=False)
    assert not (tmp_path / "bad2").exists()
    # units right again: subject 0's NaN is the error
    nib.save(nib.Nifti1Image(np.asarray(nib.load(odd).dataobj, np.float32) / 1000, img.affine),
             odd)
    with pytest.raises(ValueError, match=rf"{table.chi_path[0]} of {table.participant_id[0]} "
                                         r"has 3 NaN or infinite"):
        run_study(_config(ppm_root, study={"units": "ppm"}), tmp_path / "bad3", verbose=False)
    assert not (tmp_path / "bad3").exists()


def test_check_units_by_hand():
    rng = np.random.default_rng(0)
    maps = [nib.Nifti1Image(rng.normal(0, 20, (10, 10, 10)).astype(np.float32), np.eye(4))
            for _ in range(4)]
    ranges = check_units(maps, "ppb")
    expected = [np.subtract(*np.percentile(np.asarray(m.dataobj), [99, 1])) for m in maps]
    np.testing.assert_allclose(ranges, expected, rtol=1e-6)
    assert robust_range(np.zeros(5)) != robust_range(np.zeros(5))   # NaN: too few voxels
    # 25x the others (range ~2300 ppb): plausible alone, odd for the cohort
    maps.append(nib.Nifti1Image(np.asarray(maps[0].dataobj) * 25, np.eye(4)))
    with pytest.raises(ValueError,
                       match=r"another unit.*image 4 .* ppb, 2[0-9.]+ x the cohort median"):
        check_units(maps, "ppb")
    with pytest.raises(ValueError, match="'units' parameter.*but got 'ppt'"):
        check_units(maps, "ppt")


def test_coverage_table_by_hand():
    from qsm.coverage import coverage_table, has_data

    rng = np.random.default_rng(1)
    data = rng.normal(0, 1, (6, 7, 8)).astype(np.float32)
    data[rng.random(data.shape) < 0.3] = 0.0
    data[0, 0, :4] = np.nan
    masks = {"a": rng.random(data.shape) < 0.5, "b": np.zeros(data.shape, bool)}
    masks["b"][0, 0, :6] = True
    have = has_data(data)
    expected = []
    for name, mask in masks.items():   # slow twin: voxel by voxel
        n = missing = 0
        for v, m in zip(data.ravel(), mask.ravel()):
            if m:
                n += 1
                missing += not (np.isfinite(v) and v != 0)
        expected.append((name, n, missing))
    indices = {k: np.flatnonzero(m) for k, m in masks.items()}
    for table in (coverage_table("s", have, masks),
                  coverage_table("s", have, masks, indices=indices)):
        assert list(zip(table.roi, table.num_voxels, table.num_no_data)) == expected
        np.testing.assert_allclose(table.fraction_no_data, [m / n for _, n, m in expected])
