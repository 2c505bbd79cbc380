"""The ``qsm`` command: ``qsm run``, ``qsm demo`` and ``qsm normalize``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qsm", description="QSM thalamus study: simulate, normalize and analyse cohorts.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a study from its TOML config")
    run.add_argument("config", help="study config (TOML), see qsm/data/demo_study.toml")
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument("--n-perm", type=int, default=None, help="override [voxelwise] n_perm")

    demo = sub.add_parser("demo", help="simulate the 6-group cohort and run the study on it")
    demo.add_argument("--out", required=True, help="output folder (data in OUT/data)")
    demo.add_argument("--n-per-group", type=int, default=None,
                      help="subjects per group (default from the demo config: 40)")
    demo.add_argument("--n-perm", type=int, default=None,
                      help="permutations (default from the demo config)")
    demo.add_argument("--seed", type=int, default=None, help="simulation seed")
    demo.add_argument("--no-effects", action="store_true", help="plant no disease effects")

    norm = sub.add_parser("normalize", help="normalize a cohort's χ maps to a template")
    _configure_normalize(norm)
    return parser


def _configure_normalize(parser: argparse.ArgumentParser) -> None:
    """Add the ``qsm normalize`` arguments to ``parser``."""
    parser.add_argument("source", help="BIDS derivatives folder or participants table (TSV/CSV)")
    parser.add_argument("out_dir", help="output BIDS-derivatives folder")
    tpl = parser.add_argument_group("template")
    tpl.add_argument("--template", help="user template image (default: bundled MNI152 2009a)")
    tpl.add_argument("--template-mask", help="brain mask of the user template")
    tpl.add_argument("--space", help="space name of the user template (BIDS label)")
    tpl.add_argument("--template-resolution", type=int, choices=(1, 2), default=2,
                     help="voxel size (mm) of the bundled MNI template (default 2)")
    tpl.add_argument("--build-template", type=int, default=0, metavar="N",
                     help="first build a study template with N group-wise iterations")
    reg = parser.add_argument_group("registration")
    reg.add_argument("--engine", choices=("dipy", "ants"), default="dipy")
    reg.add_argument("--drive", choices=("structural", "chi", "hybrid"), default="structural")
    reg.add_argument("--hybrid-weight", type=float, default=0.5)
    reg.add_argument("--affine-only", action="store_true", help="no nonlinear (SyN) stage")
    reg.add_argument("--resolution", type=float, help="output voxel size in mm (default: template)")
    reg.add_argument("--interpolation", choices=("linear", "cubic", "quintic"), default="linear")
    ref = parser.add_argument_group("reference region")
    ref.add_argument("--reference", choices=("whole_brain", "csf", "wm", "mask"),
                     default="whole_brain")
    ref.add_argument("--reference-mask", help="reference region mask (with --reference mask)")
    ref.add_argument("--reference-statistic", choices=("mean", "median"), default="mean")
    run_ = parser.add_argument_group("run")
    run_.add_argument("--skip-bad", action="store_true", help="skip invalid subjects with a warning")
    run_.add_argument("--structural", choices=("auto", "T1w", "magnitude"), default="auto")
    run_.add_argument("--n-jobs", type=int, default=1)
    run_.add_argument("--seed", type=int, default=0)
    run_.add_argument("--overwrite", action="store_true", help="redo complete subjects")
    run_.add_argument("--outlier-z", type=float, default=3.5)
    run_.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _normalize(args: argparse.Namespace) -> int:
    """Run ``qsm normalize`` (a thin layer on qsm.normalize); returns the exit code."""
    from qsm.cohort import load_cohort
    from qsm.normalize import build_template, normalize_cohort
    from qsm.template import load_template

    try:
        cohort = load_cohort(args.source, skip_bad=args.skip_bad, structural=args.structural)
        if args.template is not None:
            template = load_template(args.template, args.template_mask, space=args.space)
        else:
            template = load_template(resolution=args.template_resolution)
        if args.build_template:
            template = build_template(cohort, n_iterations=args.build_template, template=template,
                                      engine=args.engine, drive=args.drive,
                                      nonlinear=not args.affine_only, rng=args.seed,
                                      verbose=not args.quiet)
            template.save(f"{args.out_dir}/templates")
        result = normalize_cohort(
            cohort, args.out_dir, template=template, engine=args.engine, drive=args.drive,
            nonlinear=not args.affine_only, resolution=args.resolution,
            reference=args.reference, reference_mask_img=args.reference_mask,
            reference_statistic=args.reference_statistic, interpolation=args.interpolation,
            hybrid_weight=args.hybrid_weight, outlier_z=args.outlier_z, n_jobs=args.n_jobs,
            rng=args.seed, verbose=not args.quiet, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"qsm normalize: error: {err}", file=sys.stderr)
        return 1
    table = result.table
    print(f"{len(table)} subject(s): {int((table['status'] == 'normalized').sum())} normalized, "
          f"{int((table['status'] == 'existing').sum())} already complete, "
          f"{int(table['outlier'].sum())} flagged as outliers; quality in {result.quality_path}")
    for s in cohort.skipped:
        print(f"skipped: {s.reason}")
    return 0


def _run(args) -> int:
    from qsm.config import load_config
    from qsm.pipeline import run_study

    overrides = {"voxelwise": {"n_perm": args.n_perm}} if args.n_perm else None
    config = load_config(args.config, overrides=overrides)
    result = run_study(config, args.out, verbose=not args.quiet)
    print(f"Report: {result.report_path} ({result.timings['total']:.1f} s)")
    return 0


def _demo(args) -> int:
    from qsm.config import load_config
    from qsm.pipeline import run_study
    from qsm.simulate import simulate_cohort

    t0 = time.perf_counter()
    out = Path(args.out)
    config = load_config()
    n = args.n_per_group or config.simulation.n_per_group
    seed = config.simulation.seed if args.seed is None else args.seed
    overrides = {"voxelwise": {"n_perm": args.n_perm}} if args.n_perm else {}
    cohort = simulate_cohort(out / "data", n_per_group=n, rng=seed,
                             effects=0 if args.no_effects else None,
                             native=config.simulation.native, verbose=not args.quiet)
    config = load_config(overrides=overrides, base_dir=cohort.root)
    result = run_study(config, out, verbose=not args.quiet)
    print(f"Simulated {len(cohort.participants)} subjects (seed {seed}) in {out / 'data'}; "
          f"ground truth: {cohort.truth_path}")
    if result.voxelwise_table is not None:
        vt = result.voxelwise_table
        for _, row in vt[vt.region == config.voxelwise.region].iterrows():
            print(f"  {row.patient_group} vs {row.control_group}: {row.n_sig_lower} voxels lower"
                  f", {row.n_sig_higher} higher (TFCE FWE p<{config.voxelwise.alpha}) of "
                  f"{row.n_voxels}")
    print(f"Report: {result.report_path}; total {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv=None) -> int:
    """Entry point of the ``qsm`` command; returns the exit code."""
    parser = _get_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "demo":
            return _demo(args)
        return _normalize(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"qsm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
