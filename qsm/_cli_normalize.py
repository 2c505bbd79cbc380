"""``qsm normalize``: bring a cohort's χ maps into template space (thin layer on qsm.normalize)."""

from __future__ import annotations

import argparse
import logging
import sys


def configure_parser(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
    """Run ``qsm normalize``; returns the exit code."""
    from qsm.cohort import load_cohort
    from qsm.normalize import build_template, normalize_cohort
    from qsm.template import load_template

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
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


def main(argv=None) -> int:
    """Stand-alone entry point (the ``qsm`` dispatcher calls configure_parser/run)."""
    parser = argparse.ArgumentParser(prog="qsm normalize", description=__doc__)
    configure_parser(parser)
    return run(parser.parse_args(argv))
