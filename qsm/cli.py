"""The ``qsm`` command: ``qsm run``, ``qsm demo`` and (when available) ``qsm normalize``."""

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

    try:
        from qsm import _cli_normalize
    except ImportError:
        _cli_normalize = None
    if _cli_normalize is not None:
        norm = sub.add_parser("normalize", help="normalize a cohort to the template")
        _cli_normalize.configure_parser(norm)
        norm.set_defaults(_runner=_cli_normalize.run)
    return parser


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
        return int(args._runner(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"qsm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
