"""Cohort discovery and validation: which χ maps and structural images make up the study.

Two sources are understood:

* a **BIDS derivatives folder** (QSMxT-style):
  ``sub-<id>/[ses-<id>/]anat/sub-<id>[_ses-<id>]_..._Chimap.nii.gz`` with a
  structural image in the same ``anat`` folder (``*_T1w.nii.gz``, else a GRE
  magnitude ``*_magnitude.nii.gz`` / ``*_part-mag*.nii.gz``). Files with a
  ``space-`` entity other than ``space-native``/``space-orig`` are already
  normalized and are ignored. A ``participants.tsv`` at the root adds the
  clinical columns.
* a **participants table** (``.tsv`` or ``.csv``) with one row per subject
  (and session): a subject column (default ``participant_id``), a χ path
  column (``chi_path``), a structural path column (``structural_path``) and
  any clinical columns. Relative paths are resolved against the table's folder.

Every subject is validated: files exist and are 3D images, χ and structural
share one grid (shape and affine), the χ map has only finite values, and no
subject (and session) appears twice. Each problem is a one-line error naming
the subject and the file; with ``skip_bad=True`` the subject is skipped
instead, with a warning, and listed in :attr:`Cohort.skipped`.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from qsm.errors import N_EXAMPLES, summarize

logger = logging.getLogger(__name__)

CORE_COLUMNS = ("subject", "session", "chi_path", "structural_path")
_STRUCTURAL_SUFFIXES = {
    "T1w": ("_T1w.nii.gz", "_T1w.nii"),
    "magnitude": ("_magnitude.nii.gz", "_magnitude.nii", "_mag.nii.gz", "_mag.nii",
                  "_MEGRE.nii.gz", "_MEGRE.nii"),
}
_BIDS_LABEL = re.compile(r"[A-Za-z0-9]+")
_ENTITY = re.compile(r"(?:^|_)(sub|ses|space)-([A-Za-z0-9]+)")


class CohortError(ValueError):
    """A subject (or the table) fails validation."""


@dataclass(frozen=True)
class SkippedSubject:
    """A subject left out by ``skip_bad=True`` and why."""

    subject: str
    session: str | None
    reason: str


@dataclass(frozen=True)
class Cohort:
    """The subjects of a study.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per subject (and session): ``subject`` (label without the
        ``sub-`` prefix), ``session`` (label or None), ``chi_path`` and
        ``structural_path`` (absolute :class:`~pathlib.Path` or None), then the
        clinical columns in their original order.
    source : Path or None
        The folder or table the cohort was read from.
    skipped : tuple of SkippedSubject
        Subjects left out by ``skip_bad=True``.
    """

    table: pd.DataFrame
    source: Path | None = None
    skipped: tuple = ()

    def __len__(self):
        return len(self.table)

    def __iter__(self):
        """Iterate over rows as dicts."""
        return iter(self.table.to_dict("records"))

    @property
    def subjects(self):
        """list of str: ``sub-<id>[_ses-<id>]`` labels, in table order."""
        return [bids_prefix(r["subject"], r["session"]) for r in self]

    @property
    def clinical(self):
        """pandas.DataFrame: the clinical columns (plus subject and session)."""
        cols = [c for c in self.table.columns if c not in ("chi_path", "structural_path")]
        return self.table[cols]


def bids_prefix(subject, session=None):
    """``sub-<subject>[_ses-<session>]``."""
    return f"sub-{subject}" + (f"_ses-{session}" if _has(session) else "")


def _has(value):
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and value != ""


def _strip(label, prefix):
    label = str(label).strip()
    return label[len(prefix):] if label.startswith(prefix) else label


# --------------------------------------------------------------------------- reading
def load_cohort(source, *, subject_column="participant_id", session_column="session_id",
                chi_column="chi_path", structural_column="structural_path",
                structural="auto", require_structural=True, skip_bad=False, validate=True):
    """Read and validate a cohort.

    Parameters
    ----------
    source : str or Path
        A BIDS derivatives folder, or a participants table (``.tsv``/``.csv``).
    subject_column, session_column, chi_column, structural_column : str
        Column names in a participants table (the session column is optional).
    structural : {'auto', 'T1w', 'magnitude'}
        Which structural image to pick in a BIDS folder (``'auto'``: T1w, else magnitude).
    require_structural : bool
        If False, a missing structural column/image is allowed (``structural_path`` None).
    skip_bad : bool
        Skip invalid subjects with a warning instead of raising.
    validate : bool
        Open every image to check dimensions, grids and finite values.

    Returns
    -------
    Cohort
    """
    if structural not in ("auto", *_STRUCTURAL_SUFFIXES):
        raise ValueError("Invalid value for the 'structural' parameter. Allowed values are "
                         f"'auto', 'T1w', 'magnitude', but got {structural!r} instead.")
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"Cohort source '{source}' does not exist.")
    if source.is_dir():
        table, problems = _from_bids(source, structural, require_structural)
        label = source
    else:
        table = _from_table(source, subject_column, session_column, chi_column,
                            structural_column, require_structural)
        problems = {}
        label = source
    problems.update(_duplicates(table, label))
    skipped = []
    keep = []
    for idx, row in table.iterrows():
        reason = problems.get(idx)
        if reason is None and validate:
            reason = _validate_row(row, require_structural)
        elif reason is None:
            reason = _check_exists(row, require_structural)
        if reason is None:
            keep.append(idx)
            continue
        if not skip_bad:
            raise CohortError(reason)
        skipped.append(SkippedSubject(row["subject"], row["session"], reason))
    if skipped:
        warnings.warn(f"Skipped {len(skipped)} subject(s) of '{label}': "
                      + summarize(s.reason for s in skipped)
                      + (" (all in Cohort.skipped and the log)" if len(skipped) > N_EXAMPLES
                         else ""), UserWarning, stacklevel=2)
        logger.info("Skipped %d subject(s) of '%s':\n%s", len(skipped), label,
                    "\n".join(f"  {s.reason}" for s in skipped))
    table = table.loc[keep].reset_index(drop=True)
    if len(table) == 0:
        raise CohortError(f"No valid subject found in '{label}'.")
    logger.info("Cohort of %d subject(s) from %s (%d skipped)", len(table), label, len(skipped))
    return Cohort(table=table, source=source, skipped=tuple(skipped))


def _from_table(path, subject_column, session_column, chi_column, structural_column,
                require_structural):
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        raw = pd.read_csv(path, sep=sep, dtype={subject_column: str, session_column: str},
                          na_values=["n/a", "NA", ""], keep_default_na=True)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise CohortError(f"Participants table '{path}' could not be read: {err}") from err
    required = [subject_column, chi_column] + ([structural_column] if require_structural else [])
    for col in required:
        if col not in raw.columns:
            raise CohortError(f"Participants table '{path}' has no '{col}' column; "
                              f"columns are {', '.join(map(str, raw.columns))}.")
    base = path.parent

    def resolve(value):
        if not _has(value):
            return None
        p = Path(str(value))
        return p if p.is_absolute() else (base / p)

    out = pd.DataFrame({
        "subject": [_strip(s, "sub-") for s in raw[subject_column]],
        "session": ([_strip(s, "ses-") if _has(s) else None for s in raw[session_column]]
                    if session_column in raw.columns else [None] * len(raw)),
        "chi_path": [resolve(v) for v in raw[chi_column]],
        "structural_path": ([resolve(v) for v in raw[structural_column]]
                            if structural_column in raw.columns else [None] * len(raw)),
    })
    clinical = raw.drop(columns=[c for c in (subject_column, session_column, chi_column,
                                             structural_column) if c in raw.columns])
    return pd.concat([out, clinical.reset_index(drop=True)], axis=1)


def _entities(name):
    return dict(_ENTITY.findall(name))


def _from_bids(root, structural, require_structural):
    rows, problems = [], {}
    for chi in sorted(root.glob("sub-*/**/anat/*_Chimap.nii*")):
        ents = _entities(chi.name)
        if ents.get("space", "native") not in ("native", "orig"):
            continue
        subject, session = ents.get("sub"), ents.get("ses")
        prefix = bids_prefix(subject, session)
        candidates = []
        kinds = ("T1w", "magnitude") if structural == "auto" else (structural,)
        for kind in kinds:
            for f in sorted(chi.parent.iterdir()):
                if (f.name.startswith(prefix + "_") and f.name.endswith(_STRUCTURAL_SUFFIXES[kind])
                        and _entities(f.name).get("space", "native") in ("native", "orig")):
                    candidates.append(f)
            if candidates:
                break
        if not candidates:
            candidates = [f for f in sorted(chi.parent.iterdir())
                          if f.name.startswith(prefix + "_") and "part-mag" in f.name
                          and f.name.endswith((".nii", ".nii.gz"))]
        idx = len(rows)
        if len(candidates) > 1:
            problems[idx] = (f"Subject '{prefix}': several structural images match χ map "
                             f"'{chi}': {', '.join(c.name for c in candidates)}.")
        elif not candidates and require_structural:
            problems[idx] = (f"Subject '{prefix}': no structural image (T1w or magnitude) next "
                             f"to χ map '{chi}'.")
        rows.append({"subject": subject, "session": session, "chi_path": chi,
                     "structural_path": candidates[0] if len(candidates) == 1 else None})
    if not rows:
        raise CohortError(f"No 'sub-*/[ses-*/]anat/*_Chimap.nii[.gz]' file found in '{root}'.")
    table = pd.DataFrame(rows, columns=list(CORE_COLUMNS))
    participants = root / "participants.tsv"
    if participants.exists():
        clin = pd.read_csv(participants, sep="\t", dtype={"participant_id": str},
                           na_values=["n/a"])
        if "participant_id" not in clin.columns:
            raise CohortError(f"Participants table '{participants}' has no 'participant_id' "
                              f"column; columns are {', '.join(map(str, clin.columns))}.")
        clin = clin.drop(columns=[c for c in ("chi_path", "structural_path", "template_chi_path")
                                  if c in clin.columns])
        clin["subject"] = [_strip(s, "sub-") for s in clin.pop("participant_id")]
        table = table.merge(clin, on="subject", how="left", validate="many_to_one")
    return table, problems


# ------------------------------------------------------------------------ validation
def _duplicates(table, label):
    keys = {idx: bids_prefix(row["subject"], row["session"]) for idx, row in table.iterrows()}
    counts = pd.Series(list(keys.values()), dtype=object).value_counts()
    out = {}
    for idx, k in keys.items():
        if counts[k] > 1:
            row = table.loc[idx]
            out[idx] = (f"Subject '{bids_prefix(row['subject'], row['session'])}' appears "
                        f"{counts[k]} times in '{label}'.")
    return out


def _check_exists(row, require_structural):
    prefix = bids_prefix(row["subject"], row["session"])
    for entity, label in (("sub", row["subject"]), ("ses", row["session"])):
        if (entity == "sub" or _has(label)) and not _BIDS_LABEL.fullmatch(str(label)):
            return (f"Subject '{prefix}': the label {str(label)!r} ({entity}-) is used in file "
                    "names and must be letters and digits only (a BIDS label).")
    if row["chi_path"] is None:
        return f"Subject '{prefix}': no χ map path given."
    if not Path(row["chi_path"]).is_file():
        return f"Subject '{prefix}': χ map file '{row['chi_path']}' does not exist."
    struct = row["structural_path"]
    if struct is None:
        return f"Subject '{prefix}': no structural image path given." if require_structural else None
    if not Path(struct).is_file():
        return f"Subject '{prefix}': structural image file '{struct}' does not exist."
    return None


def _validate_row(row, require_structural):
    missing = _check_exists(row, require_structural)
    if missing:
        return missing
    prefix = bids_prefix(row["subject"], row["session"])
    imgs = {}
    for key, what in (("chi_path", "χ map"), ("structural_path", "structural image")):
        path = row[key]
        if path is None:
            continue
        try:
            img = nib.load(path)
        except Exception as err:  # nibabel raises several types for bad files
            return f"Subject '{prefix}': {what} '{path}' is not a readable NIfTI image ({err})."
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            return f"Subject '{prefix}': {what} '{path}' must be a 3D image, got shape {img.shape}."
        imgs[key] = img
    chi = imgs["chi_path"]
    struct = imgs.get("structural_path")
    if struct is not None and (chi.shape[:3] != struct.shape[:3]
                               or not np.allclose(chi.affine, struct.affine, atol=1e-3)):
        what = "shapes differ" if chi.shape[:3] != struct.shape[:3] else "affines differ"
        return (f"Subject '{prefix}': χ map '{row['chi_path']}' {chi.shape[:3]} and structural "
                f"image '{row['structural_path']}' {struct.shape[:3]} are not in the same space "
                f"({what}).")
    kind = chi.get_data_dtype().kind
    if kind not in "iuf":
        what = {"c": "complex", "V": "RGB or structured", "b": "boolean"}.get(kind, kind)
        return (f"Subject '{prefix}': χ map '{row['chi_path']}' holds {what} values; expected "
                "real numbers (ppb).")
    try:
        data = np.asarray(chi.dataobj)
    except Exception as err:  # a truncated or corrupt file fails only when its data are read
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"Subject '{prefix}': χ map '{row['chi_path']}' cannot be read ({why})."
    bad = int(np.size(data) - np.isfinite(data).sum())
    if bad:
        return f"Subject '{prefix}': χ map '{row['chi_path']}' contains {bad} non-finite value(s)."
    return None
