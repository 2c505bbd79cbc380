"""The study report: units, pairs, numbers as people write them, and report.html in a browser."""

import html
import json
import re
import shlex
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from qsm.config import load_config  # noqa: E402
from qsm.figures import save_figure  # noqa: E402
from qsm.report import cohort_table, format_p, variable_label, write_report  # noqa: E402
from qsm.regression import clinical_regressions, group_comparisons, regional_values  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.parametrize("p, text", [
    (0.000199974, "0.0002"), (1 / 5001, "0.0002"), (0.00042, "0.00042"), (0.0029, "0.0029"),
    (0.034, "0.034"), (0.05, "0.050"), (1.0, "1.000"), (5.8e-15, "5.8e-15"),
    (float("nan"), "n/a"), (None, "n/a"),
])
def test_format_p(p, text):
    assert format_p(p) == text


def test_units_of_variables():
    assert variable_label("disease_duration") == ("disease duration", "years", "ppb/year")
    assert variable_label("edss") == ("EDSS", "points", "ppb per EDSS point")
    assert variable_label("iq") == ("iq", "", "ppb per unit of iq")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A small study's tables, figures and config, without running the pipeline."""
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(3)
    n = 12
    groups = [g for g in ("RRMS", "HC_RRMS", "SPMS", "HC_SPMS") for _ in range(n)]
    people = pd.DataFrame({"participant_id": [f"sub-{i:03d}" for i in range(4 * n)],
                           "group": groups, "age": rng.normal(45, 9, 4 * n).round(1),
                           "sex": rng.choice(["F", "M"], 4 * n)})
    patient = ~people.group.str.startswith("HC")
    people["disease_duration"] = np.where(patient, rng.gamma(3, 3, 4 * n).round(1), np.nan)
    people["edss"] = np.where(patient, rng.integers(0, 14, 4 * n) / 2, np.nan)
    rows = [pd.DataFrame({"subject": people.participant_id, "roi": r,
                          "mean": 25 - 4 * patient + rng.normal(0, 2, 4 * n)})
            for r in ("thalamus", "pulvinar")]
    long = regional_values(pd.concat(rows), people)
    pairs = {"RRMS": "HC_RRMS", "SPMS": "HC_SPMS"}
    config = load_config({"groups": pairs, "regression": {"clinical": ["age", "edss"]},
                          "voxelwise": {"covariates": []}}, base_dir=root)
    group_table = group_comparisons(long, pairs)
    clinical_table = clinical_regressions(long, list(pairs), variables=["age", "edss"],
                                          formula="chi ~ {variable}")
    voxelwise = pd.DataFrame({"patient_group": ["RRMS", "SPMS"], "control_group":
                              ["HC_RRMS", "HC_SPMS"], "region": "thalamus", "n_voxels": 1160,
                              "n_sig_lower": [769, 0], "n_sig_higher": 0, "frac_sig":
                              [769 / 1160, 0.0], "min_p_fwe": [1 / 5001, 0.34]})
    figs = {}
    for name in ("atlas", "chi_vs_edss"):
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1, 2], [1, 0, 2])
        ax.set_title(name)
        figs[name] = save_figure(fig, root / "figures" / f"{name}.png")
    truth = {"effects": {"rrms_shift": -5.0}, "expected_region_effects": [
        {"region": "thalamus", "RRMS": -4.2, "SPMS": -1.8, "duration_slope": -0.3},
        {"region": "pulvinar", "RRMS": 0.0, "SPMS": -6.0, "duration_slope": -0.5}]}
    path = write_report(root / "report.md", config=config, participants=people,
                        group_table=group_table, clinical_table=clinical_table,
                        voxelwise_table=voxelwise, figures=figs,
                        timings={"simulation": 12.3, "voxelwise": 4.0, "total": 20.5},
                        truth=truth)
    return path, config, people, group_table, clinical_table


def test_cohort_rows_in_pairs_with_units(study):
    _, config, people, _, _ = study
    table = cohort_table(config, people)
    assert [r[0] for r in table.rows] == ["RRMS", "HC_RRMS", "SPMS", "HC_SPMS"]
    assert [r[1] for r in table.rows] == ["patients", "controls of RRMS", "patients",
                                          "controls of SPMS"]
    # age is also a clinical variable: one column, with its unit (no age_mean_x / _y)
    assert table.columns == ["group", "", "n", "age (years), mean ± SD",
                             "EDSS (points), mean ± SD", "women (%)"]
    part = people[people.group == "SPMS"]
    row = table.rows[2]
    assert row[3] == f"{part.age.mean():.1f} ± {part.age.std():.1f}"
    assert row[5] == f"{100 * (part.sex == 'F').mean():.0f}"
    assert table.rows[3][4] == "–"


def test_markdown_report_units_values_and_sections(study):
    path, config, people, group_table, clinical_table = study
    text = path.read_text()
    assert "age_mean_x" not in text and "covariates ," not in text
    assert "GLM `1 + patient` without covariates" in text
    assert "total run time 20.5 s (simulation 12.3 s, voxel-wise 4.0 s)" in text.lower()
    assert "| simulation | 12.3 |" in text
    assert "β (ppb) |" in text and "β (ppb per EDSS point) |" in text
    assert "β (ppb/year) |" in text  # age: ppb/year
    assert "0.0002" in text and "0.000199" not in text  # smallest FWE p of 5000 permutations
    row = group_table[(group_table.patient_group == "RRMS")
                      & (group_table.region == "thalamus")].iloc[0]
    assert f"| RRMS | thalamus | {row.n} | {row.beta:.2f}".replace("-", "−") in text
    assert "## Simulated cohort: planted vs found vs paper" in text
    assert "lower χ outside the pulvinar" in text  # the paper's pattern for RRMS
    assert "Caveat (EDSS)" in text and text.index("Caveat (EDSS)") < text.index("| region |",
                                                                             text.index("**EDSS**"))
    assert config.source == "<dict>" and "qsm run <dict>" not in text
    assert "save it with `qsm.config.save_config` to rerun it" in text
    # the settings are the TOML a rerun reads
    toml = text.split("```toml\n")[1].split("```")[0]
    (path.parent / "again.toml").write_text(toml)
    assert load_config(path.parent / "again.toml").to_dict() == config.to_dict()
    assert "![atlas](figures/atlas.png)" in text and "[PDF](figures/atlas.pdf)" in text


def test_rerun_hint_names_the_config_by_its_absolute_path(study, tmp_path, monkeypatch):
    """A config given by a relative path: the report's rerun command works from any folder."""
    path, config, people, group_table, clinical_table = study
    (tmp_path / "cfg").mkdir()
    toml = path.read_text().split("```toml\n")[1].split("```")[0]
    (tmp_path / "cfg" / "my study.toml").write_text(toml)
    monkeypatch.chdir(tmp_path / "cfg")
    relative = load_config("my study.toml")
    assert relative.source == "my study.toml"
    out = write_report(tmp_path / "out" / "report.md", config=relative, participants=people,
                       group_table=group_table, clinical_table=clinical_table,
                       voxelwise_table=None, figures={}, timings={"total": 1.0})
    monkeypatch.chdir(tmp_path / "out")   # elsewhere: the hint must still find the file
    for text in (out.read_text(), out.with_suffix(".html").read_text()):
        commands = re.findall(r"qsm run (.+?) --out OTHER", text)
        assert len(commands) == 2, commands
        for cmd in commands:
            target = Path(shlex.split(html.unescape(cmd))[0])
            assert target.is_absolute() and target.is_file()
            assert target.samefile(tmp_path / "cfg" / "my study.toml")


def test_html_report_is_self_contained(study):
    path, *_ = study
    html = path.with_suffix(".html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "@import" not in html and "url(" not in html
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) == 2 and all(s.startswith("data:image/png;base64,") for s in images)
    md = path.read_text()
    for number in re.findall(r"\| (−?\d+\.\d\d) \|", md)[:20]:
        assert number in html


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1600",
                f"--user-data-dir={tempfile.mkdtemp(prefix='qsm-chromium-')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="Debian packages chromium and chromium-driver not installed "
                           "(.ci/run installs them)")
def test_html_report_in_headless_chromium(study):
    pytest.importorskip("selenium")
    path, _, _, group_table, _ = study
    url = path.with_suffix(".html").resolve().as_uri()
    driver = _browser()
    try:
        driver.get(url)
        sizes = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "Promise.all([...document.images].map(i => i.decode().then("
            "() => [i.naturalWidth, i.naturalHeight], e => [0, String(e)]))).then(done);")
        # every figure decodes, at its PNG size
        expected = [[int.from_bytes(p.read_bytes()[16:20], "big"),  # PNG IHDR width, height
                     int.from_bytes(p.read_bytes()[20:24], "big")]
                    for p in sorted(Path(path.parent / "figures").glob("*.png"))]
        assert sorted(sizes) == sorted(expected) and len(sizes) == 2
        # nothing but the page itself and its data: URIs was requested
        requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
        urls = [m["params"]["request"]["url"] for m in requests
                if m["method"] == "Network.requestWillBeSent"]
        assert url in urls
        ours = [u for u in urls if not u.startswith("chrome:")]  # the browser's start page
        assert all(u == url or u.startswith("data:") for u in ours), ours
        # the tables sort by a click on a header (numbers as numbers)
        cells = "#table-groups tbody td:nth-child(4)"
        header = driver.find_element("css selector", "#table-groups th:nth-child(4)")
        assert header.text.startswith("β (ppb)")
        header.click()
        shown = [float(c.text.replace("−", "-")) for c in
                 driver.find_elements("css selector", cells)]
        assert shown == sorted(shown) and len(shown) == len(group_table)
        header.click()
        shown = [float(c.text.replace("−", "-")) for c in
                 driver.find_elements("css selector", cells)]
        assert shown == sorted(shown, reverse=True)
        assert driver.execute_script("return document.title") == "QSM thalamus study"
    finally:
        driver.quit()


def test_coverage_section_lists_the_incomplete_first_and_says_who_was_left_out():
    from qsm.report import render_markdown
    from qsm.report_coverage import MAX_LISTED, CoverageSummary, coverage_section

    rng = np.random.default_rng(5)
    n_sub = MAX_LISTED + 5
    subjects = [f"sub-{i:03d}" for i in range(n_sub)]
    missing = rng.permutation(np.arange(1, n_sub + 1))  # every subject lacks 1..n_sub voxels
    missing[0] = 0                                       # ...but one has full data
    rows = []
    for sub, n in zip(subjects, missing):
        left = min(int(n), 40)
        rows += [(sub, "pulvinar_left", 90, left, left / 90),
                 (sub, "medial_left", 200, int(n) - left, (int(n) - left) / 200),
                 (sub, "thalamus", 1000, int(n), n / 1000)]
    table = pd.DataFrame(rows, columns=["subject", "roi", "num_voxels", "num_no_data",
                                        "fraction_no_data"])
    worst = subjects[int(np.argmax(missing))]
    summary = CoverageSummary(
        table=table, region="thalamus", groups={s: "RRMS" for s in subjects},
        label_regions=["pulvinar_left", "medial_left"], max_missing_fraction=0.04,
        on_missing="exclude",
        voxelwise_mask={"region": "thalamus", "region_voxels": 1000, "analysed_voxels": 900,
                        "dropped_no_data": 100},
        excluded=[{"subject": worst, "group": "RRMS", "reason": "too little data"},
                  {"subject": "sub-999", "group": "HC_RRMS", "reason": "χ map unreadable"}],
        flagged=[{"subject": subjects[1], "group": "RRMS", "reason": "registration QC"}],
        n_listed=n_sub + 1)
    text = render_markdown([coverage_section(summary, n_analysed=n_sub - 1)], Path("."))
    assert f"{n_sub - 1} of {n_sub + 1} analysed; 2 left out" in text
    assert "900 of 1000 voxels of `thalamus` analysed; **100 (10.0%) left out**" in text
    assert f"| {worst} | RRMS | too little data |" in text
    assert "| sub-999 | HC_RRMS | χ map unreadable |" in text
    assert f"| {subjects[1]} | RRMS | registration QC |" in text
    assert "more than 4% of `thalamus`" in text and "is left out" in text
    # the incomplete subjects, most incomplete first, at most MAX_LISTED, with where
    listed = re.findall(r"^\| (sub-\d+) \| RRMS \| (\d+) \| 1000 \| ([\d.]+) \| (.*) \| "
                        r"(analysed|excluded) \|$", text, flags=re.M)
    assert len(listed) == MAX_LISTED
    expected = sorted((s for s, n in zip(subjects, missing) if n), key=lambda s: -missing[
        subjects.index(s)])[:MAX_LISTED]
    assert [x[0] for x in listed] == expected
    for sub, n, pct, where, status in listed:
        k = subjects.index(sub)
        assert int(n) == missing[k] and float(pct) == round(missing[k] / 10, 1)
        left = min(int(missing[k]), 40)
        assert where == f"pulvinar_left {left}" + (
            f", medial_left {missing[k] - left}" if missing[k] > left else "")
        assert status == ("excluded" if sub == worst else "analysed")
    assert f"({n_sub - 1}; the {MAX_LISTED} most incomplete listed" in text
    assert subjects[int(np.argmin(missing))] not in text.split("most incomplete")[1]
