"""Figure content tested through the data behind it: plotted values, scales, texts, sizes."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib import colors  # noqa: E402

from qsm import figures  # noqa: E402
from qsm.regression import clinical_regressions, group_comparisons, regional_values  # noqa: E402

PAIRS = {"RRMS": "HC_RRMS", "SPMS": "HC_SPMS"}


@pytest.fixture(scope="module")
def long():
    rng = np.random.default_rng(1)
    n = 25
    groups = [g for g in ("RRMS", "HC_RRMS", "SPMS", "HC_SPMS") for _ in range(n)]
    people = pd.DataFrame({
        "participant_id": [f"sub-{i:03d}" for i in range(4 * n)], "group": groups,
        "age": rng.normal(45, 10, 4 * n), "sex": rng.choice(["F", "M"], 4 * n)})
    patient = ~people.group.str.startswith("HC")
    people["disease_duration"] = np.where(patient, rng.gamma(3, 3, 4 * n), np.nan)
    people["edss"] = np.where(patient, rng.normal(3, 1, 4 * n), np.nan)
    rows = []
    for region, shift in (("thalamus", -3.0), ("pulvinar", -6.0), ("medial", 0.0)):
        chi = (25 + shift * patient + 0.3 * (people.age - 45) + 2.0 * (people.sex == "M")
               - 0.4 * people.disease_duration.fillna(0) + rng.normal(0, 2, 4 * n))
        rows.append(pd.DataFrame({"subject": people.participant_id, "roi": region, "mean": chi}))
    return regional_values(pd.concat(rows), people)


def _texts(fig):
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]


def _check_journal_size(fig):
    assert fig.get_figwidth() * 25.4 == pytest.approx(figures.WIDTH_MM)
    small = [(t.get_text(), t.get_fontsize()) for t in _texts(fig)
             if t.get_fontsize() < figures.MIN_FONT_PT]
    assert not small


def _adjusted_by_numpy(sub, patient):
    """χ minus (age, sex) effects from a NumPy least-squares fit of chi ~ patient + age + sex."""
    x = np.column_stack([np.ones(len(sub)), sub.group == patient, sub.age,
                         sub.sex == "M"]).astype(float)
    b = np.linalg.lstsq(x, sub.chi.to_numpy(), rcond=None)[0]
    z = x[:, 2:]
    return sub.chi.to_numpy() - (z - z.mean(0)) @ b[2:]


def test_regions_by_group_plots_adjusted_values_with_table_marks(long):
    table = group_comparisons(long, PAIRS)
    fig = figures.regions_by_group_figure(long, table, PAIRS, regions=["thalamus", "pulvinar",
                                                                      "medial"])
    _check_journal_size(fig)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["thalamus", "pulvinar", "medial"]
    for ax in axes:
        region = ax.get_title()
        assert ax.get_ylabel().startswith("χ (ppb)") and "adjusted for age, sex" in ax.get_ylabel()
        # patients next to their own controls, pairs in order
        assert [t.get_text() for t in ax.get_xticklabels()] == list(PAIRS)
        points = {line.get_label(): line for line in ax.get_lines()
                  if line.get_label() in {*PAIRS, *PAIRS.values()}}
        for patient, control in PAIRS.items():
            sub = long[long.group.isin([patient, control]) & (long.roi == region)]
            expected = _adjusted_by_numpy(sub, patient)
            is_patient = (sub.group == patient).to_numpy()
            for group, keep in ((patient, is_patient), (control, ~is_patient)):
                plotted = np.sort(points[group].get_ydata())
                np.testing.assert_allclose(plotted, np.sort(expected[keep]), rtol=1e-9)
            # patients to the right of their controls, the pair side by side
            assert points[patient].get_xdata().mean() - points[control].get_xdata().mean() \
                == pytest.approx(1.0, abs=0.25)
            # the difference of adjusted means is the table's beta
            row = table[(table.patient_group == patient) & (table.region == region)].iloc[0]
            diff = points[patient].get_ydata().mean() - points[control].get_ydata().mean()
            assert diff == pytest.approx(row.beta, rel=1e-9)
            mark = [t for t in ax.texts if t.get_gid() == f"mark-{patient}"]
            assert [m.get_text() for m in mark] == [figures.significance_mark(row.p_holm)]
    assert figures.significance_mark(0.0004) == "***" and figures.significance_mark(0.2) == "n.s."
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["matched controls", "RRMS patients", "SPMS patients"]
    plt.close(fig)


def test_clinical_points_are_partial_residuals_on_the_fitted_line(long):
    table = clinical_regressions(long, list(PAIRS), variables=["disease_duration", "edss"])
    fig = figures.clinical_figure(long, table, variable="disease_duration",
                                  regions=["thalamus", "pulvinar"], patient_groups=list(PAIRS))
    _check_journal_size(fig)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    for ax in axes:
        region = ax.get_title().split("\n")[0]
        row = table[(table.variable == "disease_duration") & (table.region == region)].iloc[0]
        assert ax.get_xlabel() == "disease duration (years)"
        assert ax.get_ylabel().startswith("χ (ppb)")
        assert f"β = {row.beta:.2f}".replace("-", "−") in ax.get_title()
        assert "ppb/year" in ax.get_title()
        lines = {line.get_label(): line for line in ax.get_lines()}
        x = np.concatenate([lines[g].get_xdata() for g in PAIRS])
        y = np.concatenate([lines[g].get_ydata() for g in PAIRS])
        slope, intercept = np.polyfit(x, y, 1)  # least squares through the plotted points
        assert slope == pytest.approx(row.beta, rel=1e-8)
        fit_x, fit_y = lines["fit"].get_xdata(), lines["fit"].get_ydata()
        np.testing.assert_allclose(fit_y, intercept + slope * fit_x, rtol=1e-8)
        # unadjusted points would not agree: age is correlated with nothing here, sex is
        sub = long[long.group.isin(list(PAIRS)) & (long.roi == region)]
        assert not np.allclose(np.sort(y), np.sort(sub.chi.to_numpy()))
    plt.close(fig)
    fig = figures.clinical_figure(long, table, variable="edss", regions=["thalamus"],
                                  patient_groups=list(PAIRS), note="Caveat: pooled groups.")
    ax = [a for a in fig.axes if a.get_visible()][0]
    assert ax.get_xlabel() == "EDSS (points)" and "ppb per EDSS point" in ax.get_title()
    assert [t.get_text() for t in fig.texts if t.get_gid() == "note"] == ["Caveat: pooled groups."]
    _check_journal_size(fig)
    plt.close(fig)


@pytest.fixture(scope="module")
def atlas_grid():
    from qsm.atlas import demo_thalamus_atlas, region_masks

    atlas = demo_thalamus_atlas()
    return atlas, np.asarray(atlas.labels_img.dataobj), atlas.labels_img.affine, \
        region_masks(atlas)


def test_pmaps_one_scale_direction_colours_and_empty_rows(atlas_grid):
    from qsm.slices import HIGHER_CMAP, LOWER_CMAP, pmaps_figure

    atlas, labels, affine, masks = atlas_grid
    ones = np.ones(labels.shape)
    lower = np.where(masks["anterior"], 0.001, 1.0)
    higher = np.where(masks["pulvinar"], 0.02, 1.0)
    pmaps = {"A vs HC_A": (lower, -ones), "B vs HC_B": (higher, ones),
             "C vs HC_C": (np.full(labels.shape, 0.3), ones)}
    fig = pmaps_figure(pmaps, affine, atlas_labels=labels, alpha=0.05,
                       n_perm=5000)
    _check_journal_size(fig)
    rows = np.array([ax for ax in fig.axes if ax.get_label() != "<colorbar>"
                     and not (ax.get_gid() or "").startswith("colorbar")]).reshape(3, 3)
    overlays = [im for ax in rows.flat for im in ax.get_images()
                if im.get_label() in ("lower", "higher")]
    assert len(overlays) == 18
    for im in overlays:  # one scale for every row: alpha to the smallest p of 5000 permutations
        assert im.norm.vmin == pytest.approx(-np.log10(0.05))
        assert im.norm.vmax == pytest.approx(np.log10(5000))
        assert im.get_cmap().name == ("qsm_lower" if im.get_label() == "lower" else "qsm_higher")
    # what is coloured: row A only below (lower χ), row B only above, row C nothing
    def coloured(row, label):
        return sum(int(np.ma.count(im.get_array())) for ax in rows[row] for im in ax.get_images()
                   if im.get_label() == label)
    assert coloured(0, "lower") > 0 and coloured(0, "higher") == 0
    assert coloured(1, "higher") > 0 and coloured(1, "lower") == 0
    assert coloured(2, "lower") == coloured(2, "higher") == 0
    empty = [t.get_text() for ax in rows.flat for t in ax.texts if t.get_label() == "empty"]
    assert empty == ["no voxel with FWE p < 0.05"]
    # stronger is darker and more saturated, in both directions
    for cmap in (LOWER_CMAP, HIGHER_CMAP):
        weak, strong = colors.rgb_to_hsv(cmap(0.0)[:3]), colors.rgb_to_hsv(cmap(1.0)[:3])
        assert strong[1] > weak[1] and strong[2] < weak[2]
    labels_text = " ".join(t.get_text() for t in _texts(fig))
    assert "lower χ in patients" in labels_text and "higher χ in patients" in labels_text
    # L/R inside every panel, titles above the panels (nothing hides the markers)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in rows.flat:
        sides = {t.get_text(): t for t in ax.texts if (t.get_gid() or "").startswith("side-")}
        assert set(sides) == {"L", "R"}
        box = ax.get_window_extent(renderer)
        left, right = (sides[s].get_window_extent(renderer) for s in ("L", "R"))
        assert box.x0 <= left.x0 < left.x1 < box.x0 + box.width / 2
        assert box.x1 >= right.x1 > right.x0 > box.x0 + box.width / 2
        if ax.get_title():
            assert ax.title.get_window_extent(renderer).y0 >= box.y1 - 1
    assert [ax.get_title() for ax in rows[0]][0].startswith("axial")
    plt.close(fig)
    # nothing significant anywhere: no colour bar at all
    fig = pmaps_figure({"C vs HC_C": pmaps["C vs HC_C"]}, affine, atlas_labels=labels)
    assert not [ax for ax in fig.axes if (ax.get_gid() or "").startswith("colorbar")]
    plt.close(fig)


def test_atlas_legend_names_every_region(atlas_grid):
    from qsm.slices import atlas_figure

    atlas, labels, affine, _ = atlas_grid
    fig = atlas_figure(atlas, labels, affine)
    _check_journal_size(fig)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(atlas.labels["name"])
    # each region's colour in the legend is the colour drawn for its label
    axial = fig.axes[0]
    drawn = [im for im in axial.get_images() if im.get_label() == "atlas"][0].get_array()
    plane = np.asarray(labels)[:, :, _axial_index(axial, affine)].T
    for patch, index in zip(fig.legends[0].get_patches(), atlas.labels["index"]):
        where = plane == index
        if where.any():
            np.testing.assert_allclose(drawn[where][0][:3], patch.get_facecolor()[:3])
    plt.close(fig)


def _axial_index(ax, affine):
    z = float(ax.get_title().split("=")[1].split()[0])
    return int(round((z - affine[2, 3]) / affine[2, 2]))


def test_save_figure_writes_png_and_pdf(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = figures.save_figure(fig, tmp_path / "f.png")
    assert path == tmp_path / "f.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.png"]


def test_slices_drawn_over_the_given_template(atlas_grid):
    import nibabel as nib

    from qsm.slices import atlas_figure

    atlas, labels, affine, _ = atlas_grid
    template = np.random.default_rng(0).uniform(1, 2, labels.shape).astype(np.float32)
    fig = atlas_figure(atlas, labels, affine, background_img=nib.Nifti1Image(template, affine))
    axial = fig.axes[0]
    drawn = [im for im in axial.get_images() if im.get_label() == "background"][0].get_array()
    np.testing.assert_allclose(drawn, template[:, :, _axial_index(axial, affine)].T, rtol=1e-6)
    plt.close(fig)
