"""The report of a study run: ``report.md`` and a self-contained ``report.html``.

Both are rendered from one list of sections (text, tables, figures), so they say
the same. The HTML page embeds its figures (PNG as ``data:`` URIs), styles its
tables and sorts them by a click on a column header with a few lines of inline
JavaScript: it needs no network and no other file to be read, mailed or
archived.

Units: χ and β of group comparisons in ppb, clinical slopes in ppb per unit of
the variable (ppb/year for disease duration, ppb per EDSS point), age and
durations in years, women in %.
"""

from __future__ import annotations

import json
import platform
import shlex
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from qsm.atlas import _atomic_write_text

__all__ = ["markdown_table", "versions", "write_report", "format_p", "variable_label",
           "PAPER_PATTERN"]

_PACKAGES = ("voxstats", "numpy", "scipy", "numba", "nibabel", "nilearn", "statsmodels",
             "pandas", "matplotlib")

#: name -> (label, unit of the values, unit of a slope's denominator)
_VARIABLES = {
    "age": ("age", "years", "year"),
    "disease_duration": ("disease duration", "years", "year"),
    "duration": ("disease duration", "years", "year"),
    "edss": ("EDSS", "points", "EDSS point"),
}

#: The paper's group findings as the simulation mimics them (qsm.simulate), per patient group.
PAPER_PATTERN = {
    "CIS": "no change",
    "RRMS": "lower χ outside the pulvinar",
    "SPMS": "lower χ, mainly in the pulvinar",
    "disease_duration": "χ falling with disease duration in the pulvinar and the left lateral "
                        "nuclear group",
}

_MAIN_REGIONS = ("thalamus", "anterior", "medial", "lateral", "pulvinar", "lateral_left")


def versions() -> dict:
    """Python and package versions."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            module = __import__(name)
            out[name] = getattr(module, "__version__", "unknown")
    return out


def variable_label(name: str) -> tuple[str, str, str]:
    """``(label, unit, slope unit)`` of a participant column, e.g. ``disease_duration`` ->
    ``("disease duration", "years", "ppb/year")``; unknown columns get ``"ppb per unit"``."""
    label, unit, per = _VARIABLES.get(name.lower(), (name.replace("_", " "), "", ""))
    slope = f"ppb/{per}" if per == "year" else (f"ppb per {per}" if per else
                                               f"ppb per unit of {label}")
    return label, unit, slope


def format_p(p) -> str:
    """A p-value as people write it: ``0.034``, ``0.0029``, ``0.0002``, ``6.1e-15``.

    Three decimals from 0.01 up, two significant digits below (so the smallest
    permutation p of 5000 permutations, 1/5001 = 0.000199..., prints 0.0002),
    scientific notation below 0.0001; ``n/a`` for a missing value.
    """
    if p is None or (isinstance(p, (float, np.floating)) and not np.isfinite(p)):
        return "n/a"
    p = float(p)
    if p >= 0.01:
        return f"{p:.3f}"
    if p >= 1e-4:
        text = f"{p:.2g}"
        return f"{p:.4f}" if "e" in text else text
    return f"{p:.1e}"


def _fmt(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "n/a"
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.3f}"
    return str(value)


def markdown_table(df: pd.DataFrame, columns=None) -> str:
    """A pipe table of ``df`` (floats with 3 decimals or 3 significant digits)."""
    columns = list(df.columns if columns is None else columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in df[columns].iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------- content model
@dataclass
class Table:
    """Columns, rows of display text, and a sort key per cell (numbers sort as numbers)."""

    columns: list
    rows: list
    keys: list
    caption: str = ""
    name: str = ""


@dataclass
class Figure:
    name: str
    path: Path
    caption: str
    others: list = field(default_factory=list)  # the same figure in other formats


@dataclass
class Section:
    title: str
    blocks: list  # str (paragraph, **bold** and `code`), Table, Figure, or ("code", text)
    level: int = 2


def _table(df: pd.DataFrame, spec, *, caption="", name="") -> Table:
    """``spec``: (header, column or function of the row, formatter or None) per column."""
    columns, rows, keys = [h for h, _, _ in spec], [], []
    for _, row in df.iterrows():
        texts, sort = [], []
        for _, source, fmt in spec:
            value = source(row) if callable(source) else row[source]
            texts.append(fmt(value) if fmt else _fmt(value))
            number = value if isinstance(value, (int, float, np.integer, np.floating)) \
                and not isinstance(value, (bool, np.bool_)) else None
            sort.append(float(number) if number is not None and np.isfinite(number) else None)
        rows.append(texts)
        keys.append(sort)
    return Table(columns, rows, keys, caption, name)


def _num(digits):
    return lambda v: "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) \
        else f"{v:.{digits}f}".replace("-", "−")


def _ci(row):
    return f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]".replace("-", "−")


def _msd(values, digits=1) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if not len(values):
        return "–"
    sd = values.std() if len(values) > 1 else float("nan")
    return f"{values.mean():.{digits}f} ± {sd:.{digits}f}"


# ------------------------------------------------------------------------ sections
def _pair_order(config) -> list[tuple[str, str]]:
    """(group, role) in patient/control pairs."""
    out = []
    for patient, control in config.groups.items():
        out += [(patient, "patients"), (control, f"controls of {patient}")]
    return out


def cohort_table(config, participants: pd.DataFrame) -> Table:
    """Demographics per group, patients next to their matched controls, with units."""
    s = config.study
    groups = participants[s.group_column]
    columns = [c for c in dict.fromkeys(["age", *config.regression.clinical])
               if c in participants.columns]
    rows = []
    for group, role in _pair_order(config):
        part = participants[groups == group]
        row = {"group": group, "role": role, "n": int(len(part))}
        for c in columns:
            row[c] = _msd(part[c])
        if "sex" in participants.columns:
            sex = part["sex"].astype(str).str.upper().str[0]
            row["women"] = f"{100 * (sex == 'F').mean():.0f}" if len(part) else "–"
        rows.append(row)
    df = pd.DataFrame(rows)
    spec = [("group", "group", str), ("", "role", str), ("n", "n", str)]
    for c in columns:
        label, unit, _ = variable_label(c)
        spec.append((f"{label} ({unit}), mean ± SD" if unit else f"{label}, mean ± SD", c, str))
    if "women" in df.columns:
        spec.append(("women (%)", "women", str))
    return _table(df, spec, name="cohort")


def _voxelwise_section(config, table: pd.DataFrame) -> Section:
    v = config.voxelwise
    covariates = (f"with the covariates {', '.join(v.covariates)}" if v.covariates
                  else "without covariates")
    text = (f"Each patient group against its matched controls inside the atlas region "
            f"`{v.region}`: a GLM `1 + patient` {covariates}, Freedman–Lane permutations "
            f"(n = {v.n_perm}), {'TFCE (E = 0.5, H = 2, exact) ' if v.tfce else ''}"
            f"{'two-sided' if v.two_sided else 'one-sided'}, family-wise error (FWE) corrected "
            f"p < {v.alpha}. Voxels counted per atlas region; *lower χ* means lower in "
            "patients than in their controls. Maps: `voxelwise/<patients>_vs_<controls>_stat-"
            "t|tfce|pfwe.nii.gz`; the p maps hold plain p-values, as their JSON sidecars "
            "say (`\"p_convention\": \"p\"`).")
    spec = [("patients", "patient_group", str), ("controls", "control_group", str),
            ("region", "region", str), ("voxels", "n_voxels", str),
            ("lower χ (voxels)", "n_sig_lower", str), ("higher χ (voxels)", "n_sig_higher", str),
            ("significant (%)", lambda r: 100 * r["frac_sig"], _num(1)),
            ("smallest FWE p", "min_p_fwe", format_p)]
    return Section("Voxel-wise analysis", [text, _table(table, spec, name="voxelwise")])


_RESULT_SPEC = [("n", "n", str), ("β ({unit})", "beta", _num(2)), ("SE ({unit})", "se", _num(2)),
                ("95 % CI ({unit})", _ci, str), ("t", "t", _num(2)), ("p", "p", format_p),
                ("Holm p", "p_holm", format_p), ("FDR p", "p_fdr", format_p),
                ("partial r", "partial_r", _num(2))]


def _result_spec(unit):
    return [(h.format(unit=unit), src, fmt) for h, src, fmt in _RESULT_SPEC]


def _edss_caveat(config) -> str:
    return ("**Caveat (EDSS).** EDSS differs between the patient groups pooled here "
            f"({', '.join(config.groups)}), and so may χ: the pooled model "
            f"`{config.regression.clinical_formula}` mixes the association within groups with "
            "the differences between groups (a between-group confound). Add the patient group "
            "as a covariate (`+ C(group)` in `[regression] clinical_formula`) before reading "
            "an EDSS slope as a within-patient association.")


def _regression_sections(config, group_table, clinical_table) -> list[Section]:
    reg = config.regression
    out = [Section("Regional group comparisons", [
        f"Per region and patient group, `{reg.group_formula}` (OLS, statsmodels) on the "
        f"patients and their matched controls; β of `{reg.group_term}` is patients minus "
        f"controls in ppb, adjusted for the other terms. Holm and FDR corrections across "
        f"regions within each patient group; alpha = {reg.alpha}.",
        _table(group_table, [("patients", "patient_group", str), ("region", "region", str)]
               + _result_spec("ppb"), name="groups")])]
    blocks = []
    if clinical_table is None or not len(clinical_table):
        blocks.append("No clinical variable was analysed (`[regression] clinical = []`).")
    else:
        blocks.append(f"`{reg.clinical_formula}` per clinical variable and region, patients of "
                      f"the groups {', '.join(config.groups)} pooled; Holm and FDR across "
                      "regions per variable.")
        for variable, part in clinical_table.groupby("variable", sort=False):
            label, _, slope = variable_label(variable)
            blocks.append(f"**{label}** (β in {slope}, χ per unit of {label}).")
            if variable.lower() == "edss" and "C(" + config.study.group_column + ")" not in \
                    reg.clinical_formula.replace(" ", ""):
                blocks.append(_edss_caveat(config))
            blocks.append(_table(part, [("region", "region", str)] + _result_spec(slope),
                                 name=f"clinical_{variable}"))
    out.append(Section("Clinical regressions (patients)", blocks))
    return out


def _signed(values) -> str:
    return ", ".join(f"{name} {value:+.1f}".replace("-", "−") for name, value in values)


def _truth_section(config, truth: dict, group_table, clinical_table, voxelwise_table
                   ) -> Section:
    """Planted (simulation) vs found (this run) vs the paper's pattern."""
    expected = pd.DataFrame(truth.get("expected_region_effects", [])).set_index("region")
    alpha = config.regression.alpha
    gt = group_table.set_index(["patient_group", "region"])
    vt = (voxelwise_table.set_index(["patient_group", "region"])
          if voxelwise_table is not None else None)
    summary, rows = [], []
    for patient in config.groups:
        regions = [r for r in _MAIN_REGIONS if (patient, r) in gt.index and r in expected.index
                   and r != "lateral_left"]
        planted = [(r, float(expected.loc[r].get(patient, np.nan))) for r in regions]
        found = [(r, float(gt.loc[(patient, r), "beta"])) for r in regions
                 if gt.loc[(patient, r), "p_holm"] < alpha]
        voxels = "–"
        region = config.voxelwise.region
        if vt is not None and (patient, region) in vt.index:
            v = vt.loc[(patient, region)]
            voxels = (f"{int(v['n_sig_lower'])} lower, {int(v['n_sig_higher'])} higher of "
                      f"{int(v['n_voxels'])}")
        summary.append({
            "patients": patient,
            "planted": (_signed([p for p in planted if p[1] != 0]) or "nothing"),
            "voxels": voxels,
            "found": _signed(found) or "no region",
            "paper": PAPER_PATTERN.get(patient, "–")})
        for r in _MAIN_REGIONS:
            if (patient, r) not in gt.index or r not in expected.index:
                continue
            g = gt.loc[(patient, r)]
            value = float(expected.loc[r].get(patient, np.nan))
            rows.append({"patients": patient, "region": r, "planted": value,
                         "beta": g["beta"], "ci_low": g["ci_low"], "ci_high": g["ci_high"],
                         "p_holm": g["p_holm"],
                         "covered": bool(g["ci_low"] <= value <= g["ci_high"])})
    effects = truth.get("effects", {})
    blocks = [
        "The cohort is **simulated** (`qsm.simulate`): the effects below were planted, so "
        "the analysis can be checked against them. *Planted*: the planted shift averaged over "
        "each region (ppb); *found*: this run's regional β (ppb) where Holm p < "
        f"{alpha:g}, and the voxel-wise count in `{config.voxelwise.region}` (TFCE FWE p < "
        f"{config.voxelwise.alpha:g}); *paper*: the pattern of Schweser et al. (NeuroImage "
        "2018;167:438-452) that the simulation mimics. Planted effects (ppb, ppb/year): "
        + ", ".join(f"{k} {v:+g}" for k, v in effects.items()) + ".",
        _table(pd.DataFrame(summary), [
            ("patients", "patients", str), ("planted (ppb)", "planted", str),
            (f"found: voxels with FWE p < {config.voxelwise.alpha:g}", "voxels", str),
            (f"found: regions with Holm p < {alpha:g} (β, ppb)", "found", str),
            ("paper's pattern", "paper", str)], name="truth_summary"),
        "Per region:",
        _table(pd.DataFrame(rows), [
            ("patients", "patients", str), ("region", "region", str),
            ("planted (ppb)", "planted", _num(2)), ("found β (ppb)", "beta", _num(2)),
            ("95 % CI (ppb)", _ci, str), ("Holm p", "p_holm", format_p),
            ("CI covers planted", "covered", _fmt)], name="truth_groups")]
    if clinical_table is not None and len(clinical_table) and "duration_slope" in expected:
        ct = clinical_table[clinical_table["variable"] == "disease_duration"]
        ct = ct[ct["region"].isin(_MAIN_REGIONS) & ct["region"].isin(expected.index)].copy()
        if len(ct):
            ct["planted"] = [float(expected.loc[r, "duration_slope"]) for r in ct["region"]]
            ct["covered"] = (ct["ci_low"] <= ct["planted"]) & (ct["planted"] <= ct["ci_high"])
            blocks += [
                "**Disease duration** (ppb/year). The slope was planted *within* each patient "
                "group; the pooled model also sees the differences between groups, so its slope "
                "need not equal the planted one. Paper's pattern: "
                + PAPER_PATTERN["disease_duration"] + ".",
                _table(ct, [("region", "region", str), ("planted (ppb/year)", "planted", _num(2)),
                            ("found β (ppb/year)", "beta", _num(2)),
                            ("95 % CI (ppb/year)", _ci, str), ("Holm p", "p_holm", format_p),
                            ("CI covers planted", "covered", _fmt)], name="truth_duration")]
        if (clinical_table["variable"] == "edss").any():
            blocks.append("**EDSS**: nothing was planted; any EDSS association found here "
                          "comes from the differences between the pooled patient groups. "
                          + _edss_caveat(config))
    return Section("Simulated cohort: planted vs found vs paper", blocks)


_CAPTIONS = {
    "atlas": "The thalamus atlas on the template: each region in its colour, named in the "
             "legend (axial and coronal close-ups).",
    "voxelwise": "Voxel-wise TFCE results per patient group: voxels with FWE p < alpha, "
                 "coloured by −log10 p on one scale for all rows (blue: lower χ in patients, "
                 "red: higher), over the template with the atlas outline.",
    "regions_by_group": "Regional χ (ppb) by group, adjusted for the covariates of the group "
                        "model (the values the tests use); each patient group next to its "
                        "controls; marks from the Holm-corrected group tests.",
}


def _figure_section(figures: dict, report_dir: Path) -> Section:
    blocks = []
    for name, path in figures.items():
        path = Path(path)
        others = sorted(p for p in path.parent.glob(path.stem + ".*") if p.suffix != ".png")
        caption = _CAPTIONS.get(name)
        if caption is None and name.startswith("chi_vs_"):
            label, unit, slope = variable_label(name[len("chi_vs_"):])
            caption = (f"χ against {label} in the pooled patients: points are χ adjusted for "
                       f"the other terms of the clinical model (partial residuals), so they "
                       f"scatter around the fitted line; slopes in {slope}.")
        blocks.append(Figure(name, path, caption or name, others))
    return Section("Figures", blocks)


def _settings_section(config) -> Section:
    from qsm.config import config_to_toml

    return Section("Settings", [
        f"Config: `{config.source}`. {_rerun(config, capital=True)}. Every "
        "setting of the run, defaults included:", ("code", config_to_toml(config))])


def _rerun(config, *, capital=False) -> str:
    """``rerun (from any folder): `qsm run /abs/study.toml --out OTHER` ``.

    The config's absolute path, so the command works from any working directory.
    """
    if config.source == "<dict>":
        text = "built in Python; save it with `qsm.config.save_config` to rerun it"
    else:
        path = shlex.quote(str(Path(config.source).resolve()))
        text = f"rerun (from any folder): `qsm run {path} --out OTHER`"
    return text[0].upper() + text[1:] if capital else text


_STAGES = {"load_reference_roi": "loading, referencing, ROI tables", "voxelwise": "voxel-wise",
           "total": "total"}


def _stage(name: str) -> str:
    return _STAGES.get(name, name.replace("_", " "))


def _timings_table(timings: dict) -> Table:
    df = pd.DataFrame({"stage": [_stage(k) for k in timings],
                       "seconds": [float(v) for v in timings.values()]})
    return _table(df, [("stage", "stage", str), ("seconds", "seconds", _num(1))],
                  name="timings")


def report_sections(*, config, participants, group_table, clinical_table, voxelwise_table,
                    figures, timings, report_dir, truth=None, coverage=None) -> list[Section]:
    """Every section of the report, in order."""
    total = timings.get("total", float("nan"))
    parts = ", ".join(f"{_stage(k)} {v:.1f} s" for k, v in timings.items() if k != "total")
    left_out = ""
    if coverage is not None and coverage.excluded:
        left_out = (f" ({len(coverage.excluded)} more left out: see *Data coverage and "
                    "exclusions*)")
    intro = (f"{len(participants)} subjects{left_out} in {len(config.groups)} patient/control "
             f"pairs ({', '.join(f'{p} / {c}' for p, c in config.groups.items())}). Config "
             f"`{config.source}` ({_rerun(config)}). Total run time "
             f"{total:.1f} s ({parts}). χ in ppb throughout.")
    sections = [Section(config.study.name, [intro], level=1)]
    if truth is not None:
        sections.append(_truth_section(config, truth, group_table, clinical_table,
                                       voxelwise_table))
    sections.append(Section("Cohort", ["Patients next to their matched controls (the "
                                       "subjects analysed).",
                                       cohort_table(config, participants)]))
    if coverage is not None:
        from qsm.report_coverage import coverage_section

        sections.append(coverage_section(coverage, n_analysed=len(participants)))
    if voxelwise_table is not None:
        sections.append(_voxelwise_section(config, voxelwise_table))
    sections += _regression_sections(config, group_table, clinical_table)
    sections.append(_figure_section(figures, report_dir))
    sections.append(_settings_section(config))
    sections.append(Section("Run time", [_timings_table(timings)]))
    v = versions()
    sections.append(Section("Versions", [
        _table(pd.DataFrame({"package": list(v), "version": list(v.values())}),
               [("package", "package", str), ("version", "version", str)], name="versions"),
        "The demo atlas is an approximate geometric thalamus parcellation meant for "
        "simulation and demos; use a published thalamic atlas for real data."
        if not config.atlas.labels_img else f"Atlas: `{config.atlas.labels_img}` "
                                            f"({config.atlas.space})."]))
    return sections


# ------------------------------------------------------------------------ markdown
def _md_table(t: Table) -> str:
    lines = ["| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def render_markdown(sections, report_dir: Path) -> str:
    out = []
    for s in sections:
        out += ["#" * s.level + " " + s.title, ""]
        for b in s.blocks:
            if isinstance(b, Table):
                out += [_md_table(b), ""]
            elif isinstance(b, Figure):
                rel = _relative(b.path, report_dir)
                links = ", ".join(f"[{p.suffix[1:].upper()}]({_relative(p, report_dir)})"
                                  for p in b.others)
                out += [f"### {b.name}", "", f"![{b.name}]({rel})", "",
                        b.caption + (f" Also as {links}." if links else ""), ""]
            elif isinstance(b, tuple):
                out += ["```toml", b[1].rstrip("\n"), "```", ""]
            else:
                out += [b, ""]
    return "\n".join(out)


def _relative(path: Path, folder: Path) -> str:
    try:
        return Path(path).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


def write_report(path, *, config, participants, group_table, clinical_table,
                 voxelwise_table, figures, timings, truth=None, coverage=None) -> Path:
    """Write ``report.md`` and the self-contained ``report.html`` beside it.

    Parameters
    ----------
    path : str or Path
        The Markdown report (``.md``); the HTML page gets the same name with
        ``.html``.
    config : StudyConfig
    participants, group_table, clinical_table, voxelwise_table : DataFrame
        As in :class:`qsm.pipeline.StudyResult` (``voxelwise_table`` may be None).
    figures : dict of str to Path
        PNG figures (other formats with the same stem are linked).
    timings : dict of str to float
        Seconds per stage, with ``total``.
    truth : dict, optional
        A simulation's ``ground_truth.json``: adds "planted vs found vs paper".
    coverage : qsm.report_coverage.CoverageSummary, optional
        Adds "Data coverage and exclusions": the voxel-wise mask's voxels left
        out for lack of data, subjects without data where, and the subjects
        left out or flagged, with the reason.

    Returns
    -------
    path : Path
        The Markdown report.
    """
    from qsm.report_html import render_html

    path = Path(path)
    sections = report_sections(config=config, participants=participants,
                               group_table=group_table, clinical_table=clinical_table,
                               voxelwise_table=voxelwise_table, figures=figures,
                               timings=timings, report_dir=path.parent, truth=truth,
                               coverage=coverage)
    _atomic_write_text(path, render_markdown(sections, path.parent))
    _atomic_write_text(path.with_suffix(".html"),
                       render_html(sections, title=config.study.name, report_dir=path.parent))
    return path


def load_truth(config) -> dict | None:
    """The ``[simulation] ground_truth`` JSON of a config, if set (one-line error if broken)."""
    name = config.simulation.ground_truth
    if not name:
        return None
    p = config.path(name)
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config.source}: [simulation] ground_truth {p} cannot be read "
                         f"({exc}).") from None
