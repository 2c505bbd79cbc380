"""The report's "Data coverage and exclusions" section (see :mod:`qsm.report`).

What a reader needs before trusting a group comparison on real QSM maps: how
many voxels of the voxel-wise region were analysed and how many were left out
because a subject had no data there (:mod:`qsm.coverage`), which subjects lack
data where, and which subjects were left out of the analysis and why (too
little coverage with ``[roi] on_missing = "exclude"``, invalid inputs skipped
by the normalization), plus registrations flagged by the QC but kept.

The facts come from :func:`qsm.pipeline.run_study` as one
:class:`CoverageSummary`; this module only words them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

__all__ = ["CoverageSummary", "coverage_section", "MAX_LISTED"]

#: At most this many subjects are listed in the table of subjects without full data
#: (the most incomplete first); ``coverage.tsv`` has them all.
MAX_LISTED = 40


@dataclass(frozen=True)
class CoverageSummary:
    """Coverage of the analysed region and the subjects left out, as the report words them.

    Attributes
    ----------
    table : DataFrame
        :func:`qsm.coverage.coverage_table` of every subject read (``subject, roi,
        num_voxels, num_no_data, fraction_no_data``), as in ``coverage.tsv``.
    region : str
        The region the exclusion rule and the voxel-wise mask use (``[voxelwise]
        region``, or ``thalamus`` without a voxel-wise step).
    groups : dict of str to str
        Subject -> group, for every subject read (excluded ones included).
    label_regions : list of str
        The atlas's own labels (not unions): where a subject's missing voxels are
        located.
    max_missing_fraction : float
    on_missing : str
        ``"stop"`` or ``"exclude"``.
    ignore_zeros : bool
        Whether 0 counts as "no data" (``[roi] ignore_zeros``).
    voxelwise_mask : dict or None
        ``region, region_voxels, analysed_voxels, dropped_no_data``; None without
        a voxel-wise step.
    excluded : list of dict
        ``subject, group, reason`` per subject left out of the analysis.
    flagged : list of dict
        ``subject, group, reason`` per subject kept but flagged (registration QC).
    n_listed : int
        Subjects of the participants table selected for the study (the
        patient and control groups), before any exclusion.
    """

    table: pd.DataFrame
    region: str
    groups: dict
    label_regions: list
    max_missing_fraction: float
    on_missing: str
    ignore_zeros: bool = True
    voxelwise_mask: dict | None = None
    excluded: list = field(default_factory=list)
    flagged: list = field(default_factory=list)
    n_listed: int = 0


def _rule(c: CoverageSummary) -> str:
    what = "finite and non-zero" if c.ignore_zeros else "finite"
    action = ("stops the run" if c.on_missing == "stop"
              else "is left out (`[roi] on_missing = \"exclude\"`)")
    return (f"A voxel has data when its χ is {what} (`[roi] ignore_zeros = "
            f"{str(c.ignore_zeros).lower()}`); zeros are voxels outside the reconstructed field "
            "of view or masked out. Regional values average each subject's voxels with data; the "
            "voxel-wise analysis keeps only voxels with data in every analysed subject. A subject "
            f"without data in more than {c.max_missing_fraction:.0%} of `{c.region}` "
            f"(`[roi] max_missing_fraction`) {action}. Per subject and region: `coverage.tsv`.")


def _mask_text(c: CoverageSummary) -> str:
    v = c.voxelwise_mask
    if v is None:
        return "No voxel-wise analysis was run."
    if not v["dropped_no_data"]:
        return (f"**Voxel-wise mask**: all {v['region_voxels']} voxels of `{v['region']}` were "
                "analysed (every analysed subject has data in each of them).")
    share = v["dropped_no_data"] / v["region_voxels"] if v["region_voxels"] else 0.0
    return (f"**Voxel-wise mask**: {v['analysed_voxels']} of {v['region_voxels']} voxels of "
            f"`{v['region']}` analysed; **{v['dropped_no_data']} ({share:.1%}) left out** because "
            "at least one analysed subject has no data there. Their voxels have no statistic "
            "in the maps and are not counted in the voxel-wise table.")


def _missing_rows(c: CoverageSummary, excluded: set) -> pd.DataFrame:
    t = c.table
    region = t[t["roi"] == c.region].set_index("subject")
    labels = t[t["roi"].isin(c.label_regions) & (t["num_no_data"] > 0)]
    where = {s: ", ".join(f"{r} {int(n)}" for r, n in zip(part["roi"], part["num_no_data"]))
             for s, part in labels.groupby("subject", sort=False)}
    rows = []
    for subject, row in region.iterrows():
        if row["num_no_data"] <= 0:
            continue
        rows.append({"subject": subject, "group": c.groups.get(subject, ""),
                     "voxels": int(row["num_no_data"]), "of": int(row["num_voxels"]),
                     "percent": 100.0 * float(row["fraction_no_data"]),
                     "where": where.get(subject, "–"),
                     "status": "excluded" if subject in excluded else "analysed"})
    df = pd.DataFrame(rows, columns=["subject", "group", "voxels", "of", "percent", "where",
                                     "status"])
    return df.sort_values(["percent", "subject"], ascending=[False, True], kind="stable")


def coverage_section(c: CoverageSummary, *, n_analysed: int):
    """The report section (a :class:`qsm.report.Section`) for ``c``.

    ``n_analysed``: subjects in the analysis after every exclusion.
    """
    from qsm.report import Section, _num, _table

    excluded = {e["subject"] for e in c.excluded}
    listed = c.n_listed or n_analysed + len(c.excluded)
    blocks = [_rule(c),
              f"**Subjects**: {n_analysed} of {listed} analysed"
              + (f"; {len(c.excluded)} left out (below)." if c.excluded
                 else "; none left out."),
              _mask_text(c)]
    if c.excluded:
        blocks += ["**Left out of the analysis**:",
                   _table(pd.DataFrame(c.excluded, columns=["subject", "group", "reason"]),
                          [("subject", "subject", str), ("group", "group", str),
                           ("why", "reason", str)], name="excluded")]
    if c.flagged:
        blocks += ["**Flagged but analysed** (check their QC images):",
                   _table(pd.DataFrame(c.flagged, columns=["subject", "group", "reason"]),
                          [("subject", "subject", str), ("group", "group", str),
                           ("flag", "reason", str)], name="flagged")]
    missing = _missing_rows(c, excluded)
    if not len(missing):
        blocks.append(f"Every subject has data in every voxel of `{c.region}`.")
    else:
        more = len(missing) - MAX_LISTED
        blocks.append(f"**Subjects without data in part of `{c.region}`** ({len(missing)}"
                      + (f"; the {MAX_LISTED} most incomplete listed, all in `coverage.tsv`"
                         if more > 0 else "") + "):")
        blocks.append(_table(missing.head(MAX_LISTED), [
            ("subject", "subject", str), ("group", "group", str),
            ("voxels without data", "voxels", str), (f"of ({c.region})", "of", str),
            ("without data (%)", "percent", _num(1)),
            ("where (atlas label: voxels)", "where", str), ("status", "status", str)],
            name="coverage"))
    return Section("Data coverage and exclusions", blocks)
