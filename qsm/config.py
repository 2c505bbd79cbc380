"""Study configuration (TOML) and the checks that run before any long work.

A study config has the sections ``study``, ``groups``, ``atlas``,
``referencing``, ``normalization``, ``voxelwise``, ``roi``, ``regression`` and
``simulation``;
see ``qsm/data/demo_study.toml`` for every key with its default.  Unknown
sections or keys, wrong types, an atlas without a label table, missing
participant columns and too small groups are errors with a one-line message.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import tomllib
from dataclasses import MISSING, dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from qsm.errors import ListedError, counted, summarize

logger = logging.getLogger(__name__)

__all__ = ["StudyConfig", "load_config", "demo_config_path", "read_participants",
           "check_participants", "config_to_toml", "save_config", "check_label"]

_REFERENCING = ("none", "brain", "wm")
_ENGINES = ("dipy", "ants")
_DRIVES = ("structural", "chi", "hybrid", "multichannel")
_UNITS = ("ppb", "ppm")
_PUBLISHED = ("thomas", "najdenovska")
_ON_MISSING = ("stop", "exclude")
_INTERPOLATIONS = ("linear", "cubic", "quintic")
#: A BIDS label: letters and digits.
_BIDS_LABEL = re.compile(r"[A-Za-z0-9]+")
#: A group label: letters and digits, optionally joined by single "_" or "-" (as in HC_RRMS).
_GROUP_LABEL = re.compile(r"[A-Za-z0-9]+(?:[_-][A-Za-z0-9]+)*")
#: A column name used in formulas and file names (chi_vs_<variable>.png).
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def check_label(value, what: str, *, kind: str = "bids") -> str:
    """Check a label that ends up in file names; return it.

    Parameters
    ----------
    value : str
        The label.
    what : str
        What it is, for the message (e.g. ``"study.toml: [groups] patient group"``).
    kind : {'bids', 'group', 'identifier'}
        ``'bids'``: letters and digits (a BIDS label, e.g. a subject or space);
        ``'group'``: letters and digits, optionally joined by single ``_`` or
        ``-`` (``HC_RRMS``); ``'identifier'``: a letter then letters, digits, ``_``.

    Raises
    ------
    ValueError
        One line naming ``what`` and the label (``../x``, ``RR/MS``, spaces,
        dots and empty labels are refused, so no label can leave its folder).
    """
    pattern, rule = {"bids": (_BIDS_LABEL, "letters and digits only (a BIDS label)"),
                     "group": (_GROUP_LABEL, "letters and digits, optionally joined by single "
                                             "'_' or '-'"),
                     "identifier": (_IDENTIFIER, "a letter, then letters, digits or '_'")}[kind]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{what} {value!r} is used in file names and must be {rule}.")
    return value


@dataclass(frozen=True)
class Study:
    name: str = "QSM thalamus study"
    participants: str = "participants.tsv"
    id_column: str = "participant_id"
    group_column: str = "group"
    chi_column: str = "chi_path"
    space: str = "MNI152NLin2009aSym"
    units: str = "ppb"
    min_subjects_per_group: int = 3


@dataclass(frozen=True)
class Atlas:
    builtin: str = "demo_thalamus"
    name: str = ""
    labels_img: str = ""
    label_table: str = ""
    space: str = ""
    structure: str = "thalamus"
    unions: dict = field(default_factory=dict)
    resample: bool = False


@dataclass(frozen=True)
class Referencing:
    region: str = "brain"
    statistic: str = "mean"
    brain_mask: str = ""
    wm_mask: str = ""


@dataclass(frozen=True)
class Normalization:
    """``[normalization]``: how ``space = "native"`` cohorts reach template space.

    Used only when ``[study] space = "native"`` (see :func:`qsm.normalize.normalize_cohort`).
    ``template = ""`` is nilearn's bundled MNI152 2009a at ``template_resolution`` mm
    (or a packaged template by space name, e.g. ``"MNI152NLin2009cAsym"``);
    ``template_chi`` its χ channel (ppb; needed by the drives chi, hybrid,
    multichannel); ``nonlinear = "auto"`` is the drive's measured default;
    ``resolution = 0`` keeps the template grid; ``registration_resolution = 0``
    registers on it; ``qc_floor = 0`` is the drive's floor; ``dipy_params``
    overrides :data:`qsm.registration.DIPY_DEFAULTS` (e.g. fewer iterations for tests).
    """

    engine: str = "dipy"
    nonlinear: Any = "auto"
    drive: str = "structural"
    hybrid_mu: float = 400.0
    template: str = ""
    template_mask: str = ""
    template_space: str = ""
    template_chi: str = ""
    template_resolution: int = 2
    resolution: float = 0.0
    registration_resolution: float = 0.0
    qc_floor: float = 0.0
    interpolation: str = "linear"
    dipy_params: dict = field(default_factory=dict)
    outlier_z: float = 3.5
    n_jobs: int = 1
    seed: int = 0
    skip_bad: bool = False
    overwrite: bool = False
    out_subdir: str = "normalized"


@dataclass(frozen=True)
class Voxelwise:
    enabled: bool = True
    region: str = "thalamus"
    covariates: tuple = ("age", "sex")
    n_perm: int = 2000
    tfce: bool = True
    two_sided: bool = True
    connectivity: int = 6
    alpha: float = 0.05
    seed: int = 0
    n_jobs: int = 1


@dataclass(frozen=True)
class Roi:
    statistic: str = "mean"
    ignore_zeros: bool = True
    trim_percentile: float = 0.0
    max_missing_fraction: float = 0.1
    on_missing: str = "stop"


@dataclass(frozen=True)
class Regression:
    group_formula: str = "chi ~ patient + age + C(sex)"
    group_term: str = "patient"
    clinical: tuple = ("disease_duration",)
    clinical_formula: str = "chi ~ {variable} + age + C(sex)"
    alpha: float = 0.05


@dataclass(frozen=True)
class Simulation:
    """``[simulation]``: how ``qsm demo`` simulated the cohort (qsm.simulate).

    ``ground_truth`` (a path relative to the config) names the simulation's
    ``ground_truth.json``; when set, the report compares what was found with
    what was planted.
    """

    n_per_group: int = 40
    seed: int = 2018
    native: bool = False
    effects: bool = True
    ground_truth: str = ""


_SECTIONS = {"study": Study, "atlas": Atlas, "referencing": Referencing,
             "normalization": Normalization, "voxelwise": Voxelwise, "roi": Roi,
             "regression": Regression,
             "simulation": Simulation}


@dataclass(frozen=True)
class StudyConfig:
    """A validated study configuration (one frozen dataclass per section).

    Attributes
    ----------
    groups : mapping of str to str
        Patient group -> matched control group.
    base_dir : Path
        Folder against which relative paths are resolved.
    source : str
        Where the config came from (file path or ``"<dict>"``).
    """

    study: Study
    groups: MappingProxyType
    atlas: Atlas
    referencing: Referencing
    normalization: Normalization
    voxelwise: Voxelwise
    roi: Roi
    regression: Regression
    simulation: Simulation
    base_dir: Path
    source: str = "<dict>"

    def path(self, value: str) -> Path:
        """Resolve a path of the config against :attr:`base_dir`."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def to_dict(self) -> dict:
        """Plain dictionary of the settings (for reports and provenance)."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}
        out["groups"] = dict(self.groups)
        return out


def demo_config_path() -> Path:
    """Path of the shipped default config ``qsm/data/demo_study.toml``."""
    return Path(str(resources.files("qsm") / "data" / "demo_study.toml"))


def _coerce(source: str, section: str, key: str, value: Any, default: Any):
    where = f"{source}: [{section}] {key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}.")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}.")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a table (e.g. {{ key = value }}), got {value!r}.")
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in value.items()}
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where} must be a list of strings, got {value!r}.")
        return tuple(value)
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}.")
    return value


_TRISTATE = {("normalization", "nonlinear")}


def _tristate(source: str, section: str, key: str, value: Any):
    """true, false or "auto" (the drive's default)."""
    if isinstance(value, bool) or value == "auto":
        return value
    raise ValueError(f"{source}: [{section}] {key} must be true, false or \"auto\", got "
                     f"{value!r}.")


def _merge(base: dict, extra: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def load_config(source=None, *, base_dir=None, overrides: dict | None = None) -> StudyConfig:
    """Read and validate a study config.

    Parameters
    ----------
    source : str, Path, dict or None
        A TOML file, an already parsed dict, or None for the shipped demo config.
    base_dir : str or Path, optional
        Folder for relative paths (default: the TOML file's folder, or the
        current directory for a dict).
    overrides : dict, optional
        ``{section: {key: value}}`` applied on top of ``source``.

    Returns
    -------
    config : StudyConfig
    """
    if source is None:
        source = demo_config_path()
    if isinstance(source, dict):
        raw, name = source, "<dict>"
        folder = Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"Study config {path} does not exist.")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"Study config {path} is not valid TOML: {exc}") from None
        name, folder = str(path), path.resolve().parent
    raw = _merge(raw, overrides or {})
    unknown = sorted(set(raw) - set(_SECTIONS) - {"groups"})
    if unknown:
        raise ValueError(f"{name}: unknown section(s) {unknown}; allowed sections are "
                         f"{sorted(list(_SECTIONS) + ['groups'])}.")
    sections = {}
    for sec, cls in _SECTIONS.items():
        values = raw.get(sec, {})
        if not isinstance(values, dict):
            raise ValueError(f"{name}: [{sec}] must be a table.")
        defaults = {f.name: (f.default_factory() if f.default is MISSING else f.default)
                    for f in dataclasses.fields(cls)}
        bad = sorted(set(values) - set(defaults))
        if bad:
            raise ValueError(f"{name}: unknown key(s) {bad} in [{sec}]; allowed keys are "
                             f"{sorted(defaults)}.")
        sections[sec] = cls(**{k: (_tristate(name, sec, k, v) if (sec, k) in _TRISTATE
                                   else _coerce(name, sec, k, v, defaults[k]))
                               for k, v in values.items()})
    groups = raw.get("groups", {})
    if not isinstance(groups, dict) or not groups or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in groups.items()):
        raise ValueError(f"{name}: [groups] must map each patient group to its control group "
                         "(e.g. RRMS = \"HC_RRMS\").")
    config = StudyConfig(groups=MappingProxyType(dict(groups)),
                         base_dir=Path(base_dir) if base_dir is not None else folder,
                         source=name, **sections)
    _check_values(config)
    return config


def config_to_toml(config: StudyConfig, *, header: str = "") -> str:
    """The settings of ``config`` as TOML that :func:`load_config` reads back unchanged.

    Every key of every section is written (defaults included), so the file
    documents the run completely; relative paths stay relative to the folder
    the file is saved in (:attr:`StudyConfig.base_dir`).
    """
    from qsm._toml import dumps

    settings = config.to_dict()
    order = ["study", "groups"] + [s for s in _SECTIONS if s != "study"]
    return dumps({section: settings[section] for section in order}, header=header)


def save_config(config: StudyConfig, path, *, header: str = "") -> Path:
    """Write :func:`config_to_toml` to ``path`` (temporary file, then rename)."""
    from voxstats.image import atomic_write_text

    path = Path(path)
    atomic_write_text(path, config_to_toml(config, header=header))
    return path


def _check_values(c: StudyConfig) -> None:
    src = c.source
    a = c.atlas
    if c.study.units not in _UNITS:
        raise ValueError(f"{src}: invalid value for [study] units. Allowed values are "
                         f"{', '.join(map(repr, _UNITS))}, but got {c.study.units!r} instead.")
    if a.name:
        if a.name.lower() not in _PUBLISHED:
            raise ValueError(f"{src}: invalid value for [atlas] name. Allowed values are "
                             f"{', '.join(map(repr, _PUBLISHED))}, but got {a.name!r} instead.")
        if a.label_table or a.unions:
            raise ValueError(f"{src}: [atlas] name = {a.name!r} brings its own label table and "
                             "nuclear groups; remove label_table/unions (labels_img may point "
                             "to the files of the original release).")
        if a.labels_img and not c.path(a.labels_img).exists():
            raise FileNotFoundError(f"{src}: [atlas] labels_img {c.path(a.labels_img)} does "
                                    "not exist.")
    elif a.labels_img:
        if not a.label_table:
            raise ValueError(f"{src}: the atlas {a.labels_img} has no label table; set [atlas] "
                             "label_table to a TSV with the columns 'index, name, hemisphere'.")
        if not a.space:
            raise ValueError(f"{src}: [atlas] space must name the template space of "
                             f"{a.labels_img}.")
        for key in ("labels_img", "label_table"):
            if not c.path(getattr(a, key)).is_file():
                raise FileNotFoundError(f"{src}: [atlas] {key} {c.path(getattr(a, key))} "
                                        "does not exist.")
        for name, members in a.unions.items():
            if not (isinstance(members, tuple) and members
                    and all(isinstance(m, int) and not isinstance(m, bool) for m in members)):
                raise ValueError(f"{src}: [atlas] unions.{name} must be a list of label "
                                 f"indices (integers), got {members!r}.")
    elif a.unions:
        raise ValueError(f"{src}: [atlas] unions are for a user atlas (labels_img); the demo "
                         "atlas has its own.")
    elif a.builtin != "demo_thalamus":
        raise ValueError(f"{src}: invalid value for [atlas] builtin. Allowed values are "
                         f"'demo_thalamus', but got {a.builtin!r} instead (or set labels_img).")
    for key in ("brain_mask", "wm_mask"):
        value = getattr(c.referencing, key)
        if value and not c.path(value).is_file():
            raise FileNotFoundError(f"{src}: [referencing] {key} {c.path(value)} does not exist.")
    if c.roi.on_missing not in _ON_MISSING:
        raise ValueError(f"{src}: invalid value for [roi] on_missing. Allowed values are "
                         f"{', '.join(map(repr, _ON_MISSING))}, but got {c.roi.on_missing!r} "
                         "instead.")
    if not 0 <= c.roi.max_missing_fraction <= 1:
        raise ValueError(f"{src}: [roi] max_missing_fraction must be in [0, 1], got "
                         f"{c.roi.max_missing_fraction}.")
    ref = c.referencing.region
    if ref not in _REFERENCING and not c.path(ref).is_file():
        raise ValueError(f"{src}: invalid value for [referencing] region. Allowed values are "
                         f"{', '.join(map(repr, _REFERENCING))} or a mask image path, but got "
                         f"{ref!r} instead.")
    if c.referencing.statistic not in ("mean", "median"):
        raise ValueError(f"{src}: invalid value for [referencing] statistic. Allowed values are "
                         f"'mean', 'median', but got {c.referencing.statistic!r} instead.")
    if c.study.space == "native" and ref == "none":
        raise ValueError(f"{src}: [referencing] region = 'none' is not possible with [study] "
                         "space = 'native' (qsm.normalize always re-references); choose "
                         f"{', '.join(map(repr, _REFERENCING[1:]))} or a mask image path.")
    _check_normalization(c)
    v = c.voxelwise
    if v.n_perm < 1:
        raise ValueError(f"{src}: [voxelwise] n_perm must be >= 1, got {v.n_perm}.")
    if v.connectivity not in (6, 18, 26):
        raise ValueError(f"{src}: invalid value for [voxelwise] connectivity. Allowed values "
                         f"are 6, 18, 26, but got {v.connectivity} instead.")
    for key, alpha in (("voxelwise", v.alpha), ("regression", c.regression.alpha)):
        if not 0 < alpha < 1:
            raise ValueError(f"{src}: [{key}] alpha must be in (0, 1), got {alpha}.")
    if c.roi.statistic not in ("mean", "median"):
        raise ValueError(f"{src}: invalid value for [roi] statistic. Allowed values are 'mean', "
                         f"'median', but got {c.roi.statistic!r} instead.")
    if not 0 <= c.roi.trim_percentile < 50:
        raise ValueError(f"{src}: [roi] trim_percentile must be in [0, 50), got "
                         f"{c.roi.trim_percentile}.")
    if "{variable}" not in c.regression.clinical_formula:
        raise ValueError(f"{src}: [regression] clinical_formula must contain '{{variable}}', "
                         f"got {c.regression.clinical_formula!r}.")
    if c.study.min_subjects_per_group < 2:
        raise ValueError(f"{src}: [study] min_subjects_per_group must be >= 2.")
    _check_labels_and_formulas(c)


def _check_labels_and_formulas(c: StudyConfig) -> None:
    """Labels that reach file names, and formulas that reach patsy: data only."""
    from qsm.regression import check_formula

    src = c.source
    for patient, control in c.groups.items():
        check_label(patient, f"{src}: [groups] patient group", kind="group")
        check_label(control, f"{src}: [groups] control group of {patient}", kind="group")
    controls = list(c.groups.values())
    shared = sorted({g for g in controls if controls.count(g) > 1} | (set(c.groups) & set(controls)))
    if shared:
        raise ValueError(f"{src}: [groups] each patient group needs its own control group; "
                         f"{shared} appear(s) more than once.")
    if c.study.space != "native":
        check_label(c.study.space, f"{src}: [study] space")
    if c.atlas.space:
        check_label(c.atlas.space, f"{src}: [atlas] space")
    if c.normalization.template_space:
        check_label(c.normalization.template_space, f"{src}: [normalization] template_space")
    for key in ("id_column", "group_column", "chi_column"):
        if not getattr(c.study, key):
            raise ValueError(f"{src}: [study] {key} must name a column.")
    for variable in c.regression.clinical:
        check_label(variable, f"{src}: [regression] clinical variable", kind="identifier")
    for covariate in c.voxelwise.covariates:
        check_label(covariate, f"{src}: [voxelwise] covariate", kind="identifier")
    names = check_formula(c.regression.group_formula,
                          where=f"{src}: [regression] group_formula")
    if _IDENTIFIER.fullmatch(c.regression.group_term) and c.regression.group_term not in names:
        raise ValueError(f"{src}: [regression] group_term {c.regression.group_term!r} is not a "
                         f"column of group_formula {c.regression.group_formula!r}.")
    check_formula(c.regression.clinical_formula, where=f"{src}: [regression] clinical_formula")


def formula_columns(config: StudyConfig) -> list[str]:
    """Participant columns the regression formulas use (not ``chi``, ``patient``)."""
    from qsm.regression import check_formula

    reg = config.regression
    names = check_formula(reg.group_formula) + check_formula(reg.clinical_formula)
    return [n for n in dict.fromkeys(names) if n not in ("chi", "patient", "{variable}")]


def _allowed(src, key, value, allowed):
    if value not in allowed:
        raise ValueError(f"{src}: invalid value for [normalization] {key}. Allowed values are "
                         f"{', '.join(map(repr, allowed))}, but got {value!r} instead.")


def _check_normalization(c: StudyConfig) -> None:
    src, n = c.source, c.normalization
    _allowed(src, "engine", n.engine, _ENGINES)
    _allowed(src, "drive", n.drive, _DRIVES)
    _allowed(src, "interpolation", n.interpolation, _INTERPOLATIONS)
    _allowed(src, "template_resolution", n.template_resolution, (1, 2))
    if n.hybrid_mu < 0:
        raise ValueError(f"{src}: [normalization] hybrid_mu must be >= 0 (per ppm of χ), got "
                         f"{n.hybrid_mu}.")
    if n.registration_resolution < 0 or not 0 <= n.qc_floor <= 1:
        raise ValueError(f"{src}: [normalization] registration_resolution must be >= 0 (mm) and "
                         f"qc_floor in [0, 1], got {n.registration_resolution} and {n.qc_floor}.")
    if c.study.space == "native" and n.drive != "structural" and not n.template_chi:
        raise ValueError(f"{src}: [normalization] drive = {n.drive!r} needs the template's χ "
                         "channel: set template_chi (a χ template in ppb on the template grid).")
    if n.resolution < 0:
        raise ValueError(f"{src}: [normalization] resolution must be > 0 (mm), or 0 for the "
                         f"template grid, got {n.resolution}.")
    if n.n_jobs == 0 or n.n_jobs < -1:
        raise ValueError(f"{src}: [normalization] n_jobs must be >= 1 or -1 (all cores), got "
                         f"{n.n_jobs}.")
    if n.outlier_z <= 0:
        raise ValueError(f"{src}: [normalization] outlier_z must be > 0, got {n.outlier_z}.")
    if not n.out_subdir or Path(n.out_subdir).is_absolute() or ".." in Path(n.out_subdir).parts:
        raise ValueError(f"{src}: [normalization] out_subdir must be a relative folder name "
                         f"inside the output folder, got {n.out_subdir!r}.")
    if n.dipy_params:
        from qsm.registration import DIPY_DEFAULTS

        bad = sorted(set(n.dipy_params) - set(DIPY_DEFAULTS))
        if bad:
            raise ValueError(f"{src}: unknown key(s) {bad} in [normalization] dipy_params; "
                             f"allowed keys are {sorted(DIPY_DEFAULTS)}.")
        for key, value in n.dipy_params.items():
            default = DIPY_DEFAULTS[key]
            ok = (isinstance(value, tuple) and len(value) == len(default)
                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
                  if isinstance(default, tuple) else
                  isinstance(value, (int, float)) and not isinstance(value, bool))
            if not ok:
                shown = list(default) if isinstance(default, tuple) else default
                raise ValueError(f"{src}: [normalization] dipy_params.{key} must be like the "
                                 f"default {shown!r}, got {value!r}.")
    if n.template_chi and not c.path(n.template_chi).is_file():
        raise FileNotFoundError(f"{src}: [normalization] template_chi "
                                f"{c.path(n.template_chi)} does not exist.")
    if n.template in _SPACE_TEMPLATES:
        if n.template_mask or n.template_space:
            raise ValueError(f"{src}: [normalization] template = {n.template!r} is a packaged "
                             "template with its own mask and space; remove template_mask/"
                             "template_space.")
    elif n.template:
        if not (n.template_mask and n.template_space):
            raise ValueError(f"{src}: [normalization] template {n.template} needs "
                             "template_mask (its brain mask) and template_space (its space name).")
        for key in ("template", "template_mask"):
            if not c.path(getattr(n, key)).is_file():
                raise FileNotFoundError(f"{src}: [normalization] {key} "
                                        f"{c.path(getattr(n, key))} does not exist.")
    elif n.template_mask or n.template_space:
        raise ValueError(f"{src}: [normalization] template_mask/template_space are only used "
                         "with a user template; set template too (or remove them).")


_SPACE_TEMPLATES = ("MNI152NLin2009aSym", "MNI152NLin2009cAsym", "MNI152NLin6Asym")


def read_participants(config: StudyConfig) -> pd.DataFrame:
    """Read the participants TSV of a config (``n/a`` as missing)."""
    path = config.path(config.study.participants)
    if not path.is_file():
        raise FileNotFoundError(f"Participants table {path} does not exist.")
    df = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=True,
                     dtype={config.study.id_column: str, config.study.group_column: str})
    return df


def check_participants(config: StudyConfig, participants: pd.DataFrame, *,
                       whole_table: bool = True) -> pd.DataFrame:
    """Check the participants table against the config; return the analysed rows.

    Checks, each a one-line error naming the table and the column or subject
    (several subjects: their count and the first few, all of them in the
    ``items`` of the :class:`qsm.errors.ListedError` raised):
    required columns (id, group, χ paths, covariates, clinical variables, the
    columns the formulas use and, for native space, ``structural_path``);
    unique ids (BIDS labels when they become file names, ``space = "native"``);
    every ``[groups]`` label present in the group column (unless *whole_table*
    is False: rows left after excluding subjects); every patient and control
    group with at least ``min_subjects_per_group``
    subjects; a χ path for every analysed subject, and the file there;
    covariates without missing values; numeric columns (clinical variables, and
    any covariate or formula column holding numbers) without text values; and
    clinical variables with at least one value among the patients.
    """
    s = config.study
    src = config.path(s.participants)
    covariates = list(config.voxelwise.covariates) if config.voxelwise.enabled else []
    clinical = list(config.regression.clinical)
    in_formulas = formula_columns(config)
    needed = [s.id_column, s.group_column, s.chi_column, *covariates, *clinical, *in_formulas]
    if s.space == "native" and config.normalization.drive != "chi":
        needed.append("structural_path")
    missing = [c for c in dict.fromkeys(needed) if c not in participants.columns]
    if missing:
        raise ValueError(f"Participants table {src} lacks the column(s) {missing}; it has "
                         f"{list(participants.columns)}.")
    ids = participants[s.id_column]
    if ids.isna().any():
        rows_na = [str(int(i) + 1) for i in ids[ids.isna()].index]
        raise ListedError(f"Participants table {src}: {s.id_column} is n/a in row(s) "
                          f"{counted(len(rows_na), 'rows')}", rows_na,
                          " (1 = first data row).", sep=", ")
    if ids.duplicated().any():
        dup = sorted(set(map(str, ids[ids.duplicated()])))
        raise ListedError(f"Participants table {src}: {s.id_column} values must be unique; "
                          f"{len(dup)} appear more than once: ", dup, sep=", ")
    if s.space == "native":
        for value in ids:
            label = str(value)[4:] if str(value).startswith("sub-") else str(value)
            check_label(label, f"Participants table {src}: participant label")
    wanted = list(config.groups) + list(config.groups.values())
    counts = participants[s.group_column].value_counts()
    present = sorted(map(str, counts.index))
    unknown = [g for g in dict.fromkeys(wanted) if g not in counts.index]
    if unknown and whole_table:
        raise ValueError(f"{config.source}: [groups] names group(s) "
                         f"{', '.join(map(repr, unknown))} that the {s.group_column!r} column "
                         f"of {src} does not hold; its groups are "
                         f"{summarize(map(repr, present), sep=', ', n=12) or 'none (empty table)'}.")
    small = {g: int(counts.get(g, 0)) for g in wanted
             if counts.get(g, 0) < s.min_subjects_per_group}
    if small:
        raise ValueError(f"Participants table {src}: too few subjects in group(s) {small}; "
                         f"each needs at least {s.min_subjects_per_group} "
                         "([study] min_subjects_per_group).")
    rows = participants[participants[s.group_column].isin(wanted)].reset_index(drop=True)
    no_map = rows[s.chi_column].isna()
    if no_map.any():
        names = list(map(str, rows.loc[no_map, s.id_column]))
        raise ListedError(f"Participants table {src}: {s.chi_column} is n/a for "
                          f"{counted(len(names))}", names, "; every analysed subject needs a χ map.",
                          sep=", ")
    for col in covariates:
        if rows[col].isna().any():
            names = list(map(str, rows.loc[rows[col].isna(), s.id_column]))
            raise ListedError(f"Participants table {src}: covariate {col!r} is n/a for "
                              f"{counted(len(names))}", names, sep=", ")
    for col in dict.fromkeys(clinical + covariates + in_formulas):
        if col == s.group_column:
            continue
        rows[col] = _numeric_or_text(rows, col, must_be_numeric=col in clinical, src=src,
                                     id_column=s.id_column)
    patients = rows[s.group_column].isin(list(config.groups))
    for col in clinical:
        if rows.loc[patients, col].isna().all():
            raise ValueError(f"Participants table {src}: clinical variable {col!r} is n/a for "
                             f"every patient ({', '.join(config.groups)}); remove it from "
                             "[regression] clinical or fill it in.")
    folder = src.parent
    absent = []
    for sub, rel in zip(rows[s.id_column], rows[s.chi_column]):
        p = Path(str(rel)).expanduser()
        p = p if p.is_absolute() else folder / p
        if not p.is_file():
            absent.append((sub, p))
    if len(absent) == 1:
        sub, p = absent[0]
        raise FileNotFoundError(f"χ map {p} of {sub} listed in {src} does not exist.")
    if absent:
        raise ListedError(f"Participants table {src}: the χ maps of {len(absent)} of {len(rows)} "
                          "subject(s) do not exist: ", [f"{sub} ({p})" for sub, p in absent])
    return rows


def _numeric_or_text(rows, col, *, must_be_numeric, src, id_column) -> pd.Series:
    """A column as numbers when it holds numbers; a text value among numbers is an error."""
    values = rows[col]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values
    present = values.notna()
    numbers = pd.to_numeric(values.where(present), errors="coerce")
    text = present & numbers.isna()
    if not text.any():
        return numbers
    if must_be_numeric or numbers.notna().any():
        first = text[text].index[0]
        raise ValueError(f"Participants table {src}: column {col!r} must hold numbers, but "
                         f"{values[first]!r} ({rows.loc[first, id_column]}) is not a number "
                         "(write n/a for a missing value).")
    return values
