"""The ``qsm`` command: ``qsm run``, ``qsm demo``, ``qsm normalize`` and ``qsm atlas``.

A thin layer over the library (nibabel's pattern): ``_get_parser()`` builds
argparse, ``main(argv=None) -> int`` calls the library and returns the exit
code (0 success, 1 bad input data or a failed run, 2 a usage error: a flag's
value or a combination of flags; 130 interrupted), as ``voxstats`` does. Every
error is one line on stderr, naming the command-line flag or the file at fault.

The console shows one progress bar per stage and warnings; the details (every
INFO message of qsm, voxstats and the libraries) go to ``qsm.log`` in the
output folder.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

from qsm.errors import N_EXAMPLES, ListedError, summarize

__all__ = ["main", "UsageError"]

LOG_NAME = "qsm.log"


class UsageError(ValueError):
    """A command line that cannot work whatever the data (a flag's value or a flag
    combination): one line on stderr, exit code 2, as argparse's own usage errors."""


class _HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default: ``(default: X)``, ``(default: off)`` for flags."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default is argparse.SUPPRESS or action.required
                or not action.option_strings or isinstance(action, argparse._VersionAction)):
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default else 'off'})"
        if action.default is None:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


def _int_at_least(minimum: int, *, minus_one=False):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum and not (minus_one and value == -1):
            extra = " or -1 (all cores)" if minus_one else ""
            raise argparse.ArgumentTypeError(f"must be >= {minimum}{extra}, got {value}")
        return value
    return parse


def _float_in(low, high=None, *, low_open=False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value > low if low_open else value >= low) or (high is not None and value > high):
            bound = f"> {low}" if low_open else f">= {low}"
            if high is not None:
                bound = f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    return parse


def _common_options(*, top_level: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the subcommand (``qsm -q demo`` = ``qsm demo -q``)."""
    common = argparse.ArgumentParser(add_help=False)
    # after the subcommand the default is SUPPRESS, so that it never resets a value given before
    default = False if top_level else argparse.SUPPRESS
    common.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="no progress bars; only warnings and errors on the console "
                             f"(details always go to {LOG_NAME} in the output folder) "
                             "(default: off)")
    return common


def _get_parser() -> argparse.ArgumentParser:
    from qsm import __version__

    parser = argparse.ArgumentParser(
        prog="qsm", formatter_class=_HelpFormatter, parents=[_common_options(top_level=True)],
        description="QSM thalamus study (Schweser et al., NeuroImage 2018;167:438-452): "
                    "simulate, normalize and analyse cohorts of χ maps.",
        epilog="Exit codes: 0 success; 1 bad input data or a failed run; 2 a usage error "
               "(a flag's value or a combination of flags); 130 interrupted. Same as voxstats.")
    parser.add_argument("--version", action="version", version=f"qsm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options(top_level=False)
    for name, (add, help_, description) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=description, parents=[common],
                           formatter_class=_HelpFormatter)
        add(p)
    return parser


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="study config (TOML); every key with its default is in "
                                  "qsm/data/demo_study.toml")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (created; a rerun into it reuses complete "
                        "normalizations)")
    p.add_argument("--n-perm", type=_int_at_least(1), default=None, metavar="N",
                   help="permutations per voxel-wise analysis (default: [voxelwise] n_perm "
                        "of the config)")


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: the simulated cohort and its study.toml in DIR/data, "
                        "the results in DIR; must be empty or new unless --overwrite")
    p.add_argument("--n-per-group", type=_int_at_least(1), default=None, metavar="N",
                   help="subjects in each of the six groups (default: [simulation] "
                        "n_per_group of the demo config, 40)")
    p.add_argument("--n-perm", type=_int_at_least(1), default=None, metavar="N",
                   help="permutations per voxel-wise analysis (default: [voxelwise] n_perm of "
                        "the demo config, 5000)")
    p.add_argument("--seed", type=int, default=None,
                   help="simulation seed (default: [simulation] seed of the demo config, 2018)")
    p.add_argument("--no-effects", action="store_true",
                   help="plant no disease effects (a null cohort)")
    p.add_argument("--overwrite", action="store_true",
                   help="simulate and analyse into a non-empty --out, replacing its files")


def _add_normalize(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="BIDS derivatives folder (sub-*/[ses-*/]anat/*_Chimap.nii.gz)"
                                  " or participants table (TSV/CSV with participant_id, "
                                  "chi_path, structural_path)")
    p.add_argument("out_dir", help="output BIDS-derivatives folder")
    tpl = p.add_argument_group("template")
    tpl.add_argument("--template", metavar="IMG|SPACE",
                     help="user template image, or a packaged template space "
                          "(MNI152NLin2009aSym, MNI152NLin2009cAsym, MNI152NLin6Asym) "
                          "(default: nilearn's bundled MNI152 2009a)")
    tpl.add_argument("--template-chi", metavar="IMG",
                     help="χ channel of the template (ppb, on its grid): needed by --drive "
                          "chi, hybrid and multichannel")
    tpl.add_argument("--template-mask", metavar="IMG",
                     help="brain mask of --template (required with it)")
    tpl.add_argument("--space", help="space name of --template, a BIDS label such as "
                                     "MyStudyTemplate (required with it)")
    tpl.add_argument("--template-resolution", type=int, choices=(1, 2), default=2,
                     help="voxel size (mm) of the bundled MNI template")
    tpl.add_argument("--build-template", type=_int_at_least(0), default=0, metavar="N",
                     help="first build a study template with N group-wise iterations "
                          "(0: use the template as is)")
    reg = p.add_argument_group("registration")
    reg.add_argument("--engine", choices=("dipy", "ants"), default="dipy",
                     help="registration engine (ants needs the optional antspyx)")
    reg.add_argument("--drive", choices=("structural", "chi", "hybrid", "multichannel"),
                     default="structural",
                     help="what drives the registration: the structural image, χ alone (no "
                          "structural image needed), the MuSus-100 hybrid T1w - mu*χ, or "
                          "both as two channels; χ rides along")
    reg.add_argument("--hybrid-mu", type=_float_in(0.0), default=400.0, metavar="MU",
                     help="hybrid contrast T1w[0, 255] - MU * χ[ppm]")
    stages = reg.add_mutually_exclusive_group()
    stages.add_argument("--affine-only", action="store_true", help="no nonlinear (SyN) stage")
    stages.add_argument("--nonlinear", action="store_true",
                        help="force SyN (default: per drive; affine only for a GRE magnitude "
                             "against a T1 template)")
    reg.add_argument("--resolution", type=_float_in(0.0, low_open=True), default=None,
                     metavar="MM", help="output voxel size in mm (default: the template grid)")
    reg.add_argument("--registration-resolution", type=_float_in(0.0, low_open=True),
                     default=None, metavar="MM",
                     help="register on a coarser grid of MM mm (default: the template grid)")
    reg.add_argument("--units", choices=("ppb", "ppm"), default="ppb",
                     help="units of the input χ maps (outputs are in ppb; QSM toolboxes "
                          "write ppm)")
    reg.add_argument("--qc-floor", type=_float_in(0.0, 1.0), default=None, metavar="R",
                     help="absolute floor of |r| with the template (default: per drive)")
    reg.add_argument("--interpolation", choices=("linear", "cubic", "quintic"),
                     default="linear", help="interpolation of the χ maps")
    ref = p.add_argument_group("reference region")
    ref.add_argument("--reference", choices=("whole_brain", "csf", "wm", "mask"),
                     default="whole_brain",
                     help="region whose mean (or median) is subtracted from each χ map")
    ref.add_argument("--reference-mask", metavar="IMG",
                     help="reference region mask in template space (with --reference mask)")
    ref.add_argument("--reference-statistic", choices=("mean", "median"), default="mean",
                     help="statistic of χ over the reference region")
    run = p.add_argument_group("run")
    run.add_argument("--skip-bad", action="store_true",
                     help="skip invalid subjects with a warning instead of stopping")
    run.add_argument("--structural", choices=("auto", "T1w", "magnitude"), default="auto",
                     help="structural image to use in a BIDS folder (auto: T1w, else "
                          "magnitude)")
    run.add_argument("--n-jobs", type=_int_at_least(1, minus_one=True), default=1, metavar="N",
                     help="subjects registered in parallel (-1: all cores)")
    run.add_argument("--seed", type=int, default=0, help="seed of the registration sampling")
    run.add_argument("--overwrite", action="store_true",
                     help="redo subjects whose outputs are complete")
    run.add_argument("--outlier-z", type=_float_in(0.0, low_open=True), default=3.5,
                     metavar="Z", help="flag registrations whose quality's robust z-score is "
                                       "below -Z")


def _add_atlas(p: argparse.ArgumentParser) -> None:
    from qsm import cli_atlas

    cli_atlas.configure(p)


_COMMANDS = {
    "run": (_add_run, "run a study from its TOML config",
            "Run the whole study of a config: cohort checks, normalization (space = \"native\"),"
            " referencing, ROI tables, voxel-wise TFCE per patient group, regressions, figures "
            "and report.html/report.md in --out."),
    "demo": (_add_demo, "simulate the 6-group cohort and run the study on it",
             "Simulate the seed study's cohort (CIS, RRMS, SPMS and a matched control group "
             "each) with planted effects, save it with its study.toml in OUT/data, and run the "
             "study on it (rerun it with: qsm run OUT/data/study.toml --out OTHER)."),
    "normalize": (_add_normalize, "normalize a cohort's χ maps to a template",
                  "Register each subject to a template (the structural image, χ, a hybrid or "
                  "both drive; χ rides along), re-reference χ, and write BIDS derivatives with "
                  "sidecars, QC images and normalization_quality.tsv into OUT_DIR."),
    "atlas": (_add_atlas, "published thalamic atlases: transfer between template spaces",
              "qsm atlas transfer: register the atlas space's template to a study template, "
              "carry the labels by nearest neighbour, and report QC (Dice, centroid shift, a "
              "thalamus close-up)."),
}

#: Library parameter names as ``qsm normalize`` spells them on its command line.
_NORMALIZE_FLAGS = {"reference_mask_img": "--reference-mask", "region_mask_img":
                    "--reference-mask", "reference": "--reference", "interpolation":
                    "--interpolation", "n_iterations": "--build-template", "space": "--space",
                    "mask_img": "--template-mask", "img": "--template", "resolution":
                    "--resolution", "drive": "--drive", "engine": "--engine", "n_jobs":
                    "--n-jobs", "hybrid_mu": "--hybrid-mu", "outlier_z": "--outlier-z",
                    "units": "--units", "registration_resolution": "--registration-resolution",
                    "qc_floor": "--qc-floor", "chi_img": "--template-chi",
                    "structural": "--structural", "region": "--reference"}


def _with_flags(message: str, flags: dict) -> str:
    """Name command-line flags instead of Python parameters in a library message."""
    def quoted(m):
        return flags[m.group(1)] if m.group(1) in flags else m.group(0)
    message = re.sub(r"'(\w+)' parameter", lambda m: (flags[m.group(1)] if m.group(1) in flags
                                                       else m.group(0)), message)
    message = re.sub(r"'(\w+)'", quoted, message)
    return re.sub(r"\b(\w+)=", lambda m: (flags[m.group(1)] + " " if m.group(1) in flags
                                          else m.group(0)), message)


# ----------------------------------------------------------------------------- logging
class _NotMatplotlib(logging.Filter):
    """Matplotlib's font messages, and what main() already printed, stay out of the console."""

    def filter(self, record):
        if not getattr(record, "console", True):
            return False
        return not record.name.startswith("matplotlib") or record.levelno >= logging.ERROR


class _Logging:
    """Console: warnings and errors (progress bars print themselves); file: everything."""

    def __init__(self):
        self.root = logging.getLogger()
        self.level = self.root.level
        self.console = logging.StreamHandler()
        self.console.setLevel(logging.WARNING)
        self.console.addFilter(_NotMatplotlib())
        self.console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.file = None
        self.root.setLevel(logging.INFO)
        self.root.addHandler(self.console)
        logging.captureWarnings(True)

    def to_file(self, folder: Path, argv) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOG_NAME
        self.file = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.file.setLevel(logging.INFO)
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                                 "%(message)s"))
        self.root.addHandler(self.file)
        logging.getLogger("qsm").info("qsm %s", " ".join(map(str, argv)))
        return path

    @property
    def path(self) -> Path | None:
        """The log file, once :meth:`to_file` has opened it."""
        return None if self.file is None else Path(self.file.baseFilename)

    def to_file_quietly(self, folder, argv) -> Path | None:
        """:meth:`to_file`, or None when *folder* is unknown or cannot hold a log."""
        try:
            return None if folder is None else self.to_file(Path(folder), argv)
        except OSError:
            return None

    def close(self):
        logging.captureWarnings(False)
        for handler in (self.console, self.file):
            if handler is not None:
                self.root.removeHandler(handler)
                handler.close()
        self.root.setLevel(self.level)


# ---------------------------------------------------------------------------- commands
def _out_dir(value, flag="--out") -> Path:
    from qsm.pipeline import check_out_dir

    return check_out_dir(value, flag)


def _precompile(config) -> None:
    """Compile voxstats' kernels in a child process while the study's first stages run.

    A cold numba cache costs about 4 s of CPU at the first voxel-wise test;
    done on the other core, it is ready when the test starts.
    """
    if config.voxelwise.enabled:
        from voxstats import compile_in_background

        compile_in_background()


def _run(args, log: _Logging, argv) -> int:
    from qsm.config import load_config
    from qsm.pipeline import run_study

    out = _out_dir(args.out)
    overrides = {"voxelwise": {"n_perm": args.n_perm}} if args.n_perm is not None else None
    config = load_config(args.config, overrides=overrides)
    log.to_file(out, argv)
    _precompile(config)
    result = run_study(config, out, verbose=not args.quiet)
    print(f"Report: {result.report_path.with_suffix('.html')} (and .md); "
          f"{result.timings['total']:.1f} s; log: {out / LOG_NAME}")
    return 0


def _demo(args, log: _Logging, argv) -> int:
    from qsm.config import load_config, save_config
    from qsm.pipeline import run_study
    from qsm.report import format_p
    from qsm.simulate import simulate_cohort

    t0 = time.perf_counter()
    out = _out_dir(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {args.out} is not empty; choose a new folder, or add "
                         "--overwrite to simulate and analyse into it again.")
    defaults = load_config()
    n = defaults.simulation.n_per_group if args.n_per_group is None else args.n_per_group
    seed = defaults.simulation.seed if args.seed is None else args.seed
    overrides = {"simulation": {"n_per_group": n, "seed": seed, "effects": not args.no_effects,
                                "ground_truth": "ground_truth.json"}}
    if args.n_perm is not None:
        overrides["voxelwise"] = {"n_perm": args.n_perm}
    config = load_config(overrides=overrides)  # every setting checked before simulating
    minimum = max(config.study.min_subjects_per_group, 3)
    if n < minimum:
        raise UsageError(f"--n-per-group must be >= {minimum} (the study's regressions need "
                         f"at least {minimum} subjects per group), got {n}.")
    log.to_file(out, argv)
    _precompile(config)  # compiles on the other core while the cohort is simulated
    cohort = simulate_cohort(out / "data", n_per_group=n, rng=seed,
                             effects=0 if args.no_effects else None,
                             native=config.simulation.native, verbose=not args.quiet)
    simulation_s = time.perf_counter() - t0
    study_toml = save_config(
        load_config(overrides=overrides, base_dir=cohort.root), cohort.root / "study.toml",
        header="Study config of this simulated cohort, written by `qsm demo`.\n"
               "Rerun the study: qsm run study.toml --out OTHER (same tables, byte for byte).")
    config = load_config(study_toml)
    result = run_study(config, out, verbose=not args.quiet,
                       timings={"simulation": simulation_s})
    print(f"Simulated {len(cohort.participants)} subjects (seed {seed}) in {out / 'data'}; "
          f"ground truth: {cohort.truth_path}; config: {study_toml}")
    if result.voxelwise_table is not None:
        vt = result.voxelwise_table
        for _, row in vt[vt.region == config.voxelwise.region].iterrows():
            print(f"  {row.patient_group} vs {row.control_group}: {row.n_sig_lower} voxels lower"
                  f", {row.n_sig_higher} higher (TFCE FWE p < {config.voxelwise.alpha}) of "
                  f"{row.n_voxels}; smallest FWE p {format_p(row.min_p_fwe)}")
    print(f"Report: {result.report_path.with_suffix('.html')} (and .md); total "
          f"{time.perf_counter() - t0:.1f} s; log: {out / LOG_NAME}")
    return 0


def _normalize(args, log: _Logging, argv) -> int:
    """Run ``qsm normalize`` (a thin layer on qsm.normalize); returns the exit code."""
    from qsm.cohort import load_cohort
    from qsm.normalize import build_template, normalize_cohort
    from qsm.template import SPACE_TEMPLATES

    packaged = args.template in SPACE_TEMPLATES
    if (args.template is None or packaged) and (args.template_mask or args.space):
        raise UsageError("--template-mask and --space describe a user --template image; give "
                         "--template IMG too (a bundled or packaged template brings its own).")
    if args.template is not None and not packaged and not (args.template_mask and args.space):
        raise UsageError("--template needs --template-mask (its brain mask) and --space (its "
                         "space name), unless it names a packaged space "
                         f"({', '.join(SPACE_TEMPLATES)}).")
    if (args.reference == "mask") != (args.reference_mask is not None):
        raise UsageError("--reference mask and --reference-mask IMG go together.")
    if args.drive != "structural" and args.template_chi is None:
        raise UsageError(f"--drive {args.drive} matches χ against the template's χ channel: "
                         "give it with --template-chi IMG (ppb, on the template's grid), or "
                         "use --drive structural.")
    from voxstats.image import check_img

    for flag, value in (("--template", None if packaged else args.template),
                        ("--template-mask", args.template_mask),
                        ("--template-chi", args.template_chi),
                        ("--reference-mask", args.reference_mask)):
        if value is not None:
            check_img(value, name=flag, ndim=3)
    out = _out_dir(args.out_dir, "out_dir")
    try:
        cohort = load_cohort(args.source, skip_bad=args.skip_bad, structural=args.structural,
                             require_structural=args.drive != "chi")
        template = _cli_template(args)
        log.to_file(out, argv)
        nonlinear = False if args.affine_only else True if args.nonlinear else None
        if args.build_template:
            template = build_template(cohort, n_iterations=args.build_template, template=template,
                                      engine=args.engine, drive=args.drive, nonlinear=nonlinear,
                                      units=args.units, hybrid_mu=args.hybrid_mu,
                                      registration_resolution=args.registration_resolution,
                                      rng=args.seed, verbose=not args.quiet)
            template.save(f"{out}/templates")
        result = normalize_cohort(
            cohort, out, template=template, engine=args.engine, drive=args.drive,
            nonlinear=nonlinear, resolution=args.resolution,
            registration_resolution=args.registration_resolution,
            reference=args.reference, reference_mask_img=args.reference_mask,
            reference_statistic=args.reference_statistic, interpolation=args.interpolation,
            hybrid_mu=args.hybrid_mu, units=args.units, outlier_z=args.outlier_z,
            qc_floor=args.qc_floor, n_jobs=args.n_jobs, rng=args.seed, verbose=not args.quiet,
            overwrite=args.overwrite)
    except ListedError as err:
        raise ListedError(_with_flags(err.head, _NORMALIZE_FLAGS), err.items,
                          _with_flags(err.tail, _NORMALIZE_FLAGS), sep=err.sep) from None
    except (ValueError, ImportError) as err:
        raise ValueError(_with_flags(str(err), _NORMALIZE_FLAGS)) from None
    table = result.table
    print(f"{len(table)} subject(s): {int((table['status'] == 'normalized').sum())} normalized, "
          f"{int((table['status'] == 'existing').sum())} already complete, "
          f"{int(table['outlier'].sum())} flagged as outliers; quality in {result.quality_path}")
    if cohort.skipped:
        print(f"skipped {len(cohort.skipped)}: "
              + summarize(s.reason for s in cohort.skipped)
              + (f" (all in {log.path})" if len(cohort.skipped) > N_EXAMPLES else ""))
    return 0


def _cli_template(args):
    """The template of ``qsm normalize``: a packaged space, the user's files, or nilearn's."""
    from qsm.template import SPACE_TEMPLATES, load_space_template, load_template

    if args.template in SPACE_TEMPLATES:
        tpl = load_space_template(args.template, resolution=args.template_resolution)
    elif args.template is not None:
        return load_template(args.template, args.template_mask, space=args.space,
                             chi_img=args.template_chi)
    else:
        tpl = load_template(resolution=args.template_resolution)
    if args.template_chi:
        tpl = load_template(tpl.img, tpl.mask_img, space=tpl.space, chi_img=args.template_chi)
    return tpl


def _atlas(args, log: _Logging, argv) -> int:
    """Run ``qsm atlas transfer`` (qsm.cli_atlas); returns the exit code."""
    from qsm import cli_atlas

    out = _out_dir(args.out)
    log.to_file(out, argv)
    return cli_atlas.run(args)


def _log_folder(args):
    """The folder that holds (or would hold) the log of a command's run."""
    return getattr(args, "out", None) or getattr(args, "out_dir", None)


_RUNNERS = {"run": _run, "demo": _demo, "normalize": _normalize, "atlas": _atlas}


def main(argv=None) -> int:
    """Entry point of the ``qsm`` command; returns the exit code.

    0: success; 1: bad input data or a failed run (one line on stderr naming the
    file or setting); 2: a usage error, a flag's value or a combination of flags
    that cannot work whatever the data (argparse's or :class:`UsageError`, one
    line naming the flag); 130: interrupted (Ctrl-C). ``voxstats`` uses the same
    codes.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _get_parser().parse_args(argv)
    log = _Logging()
    try:
        return _RUNNERS[args.command](args, log, ["qsm", *argv])
    except UsageError as exc:
        print(f"qsm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        message = " ".join(str(exc).split("\n")[0].split()) or type(exc).__name__
        if isinstance(exc, ListedError) and len(exc.items) > N_EXAMPLES:
            path = log.path or log.to_file_quietly(_log_folder(args), argv)
            if path is not None:
                logging.getLogger("qsm").error("%s", exc.full_text(), extra={"console": False})
                message += f" All {len(exc.items)} are listed in {path.resolve()}."
        print(f"qsm {args.command}: error: {message}", file=sys.stderr)
        logging.getLogger("qsm").error("%s", message, extra={"console": False})
        return 1
    except KeyboardInterrupt:
        print(f"qsm {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        log.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
