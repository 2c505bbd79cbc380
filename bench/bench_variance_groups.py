"""Cost of variance groups (Aspin-Welch v, and G, as z) against the t and F engines, per permutation, on R2.

The R2 problem (``_problem.py``: nilearn's MNI152 2 mm mask, 235,375 voxels,
design 1 + group + age + sex, contrast on group), two-sided, exact TFCE,
6-connectivity, Freedman-Lane. The variance groups are the two groups
(n/2 each), so the statistic is Welch's v converted to z with each voxel's
Welch-Satterthwaite degrees of freedom. With ``--f``, also an F contrast of
rank 2 (group and age) against its G statistic (Welch's generalisation,
Winkler et al. 2014, converted to z with each voxel's df).

Both engines reduce the same chunk of rearrangements (``engine.run_chunk``:
statistics, TFCE, maxima and exceedance counts) in rounds whose order
alternates; the figure is the minimum over rounds of seconds per
rearrangement (wall and CPU), and the ratio v / t. The statistic part alone
(``engine.statistics``) is timed the same way.

    python bench/bench_variance_groups.py [--n 240] [--chunk 64] [--rounds 5] [--threads 1] [--f]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=240, help="subjects (default 240)")
    parser.add_argument("--chunk", type=int, default=64, help="rearrangements per timed chunk (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--f", action="store_true", help="also an F contrast (rank 2) against G")
    parser.add_argument("--tiny", action="store_true", help="a small cropped problem (for tests)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from _problem import make_problem

    from voxstats import engine, make_schedule
    from voxstats._numba import n_threads
    from voxstats.design import make_contrasts, make_design
    from voxstats.graph import grid_graph
    from voxstats.randomise import make_job

    problem = make_problem(args.n, rng=0, **({"box": 8} if args.tiny else {}))
    data = np.ascontiguousarray(problem["data"], dtype=np.float32)
    design = make_design(problem["design"])
    contrasts = make_contrasts(problem["contrast"], design,
                               f_contrasts={"group, age": [[0, 1, 0, 0], [0, 0, 1, 0]]} if args.f else None)
    contrast = next(c for c in contrasts if c.kind == "t")
    f_contrast = next((c for c in contrasts if c.kind == "F"), None)
    groups = problem["design"][:, 1]
    graph = grid_graph(problem["mask"], 6)
    schedule = make_schedule(design.n_subjects, 10 * args.chunk, rng=0)
    jobs = {}
    build = {}
    pairs = [("t", "v")] + ([("F", "G")] if args.f else [])
    for name, c, extra in (("t", contrast, {}), ("v", contrast, {"groups": groups}), ("F", f_contrast, {}),
                           ("G", f_contrast, {"groups": groups})):
        if c is None:
            continue
        start = time.perf_counter()
        jobs[name] = make_job(data, design, c, graph, tfce=True, two_sided=True, **extra)
        build[name] = time.perf_counter() - start
    figures = {name: {"chunk": [], "chunk_cpu": [], "stats": [], "stats_cpu": []} for name in jobs}
    with n_threads(args.threads) as threads:
        pool = engine.make_pool(threads)
        try:
            observed = {name: engine.observed_maps(job, schedule, threads, pool) for name, job in jobs.items()}
            for name, job in jobs.items():  # warm-up: compile and touch everything once
                engine.run_chunk(job, schedule, 0, engine.GROUP, observed[name], threads, pool)
            lo, hi = engine.GROUP, engine.GROUP + args.chunk
            for r in range(args.rounds):
                for name in [n for pair in pairs for n in (pair if r % 2 == 0 else pair[::-1])]:
                    job = jobs[name]
                    wall, cpu = _timed(lambda: engine.run_chunk(job, schedule, lo, hi, observed[name], threads,
                                                                pool))
                    figures[name]["chunk"].append(wall / args.chunk)
                    figures[name]["chunk_cpu"].append(cpu / args.chunk)
                    wall, cpu = _timed(lambda: engine.statistics(job, schedule, lo, hi, pool))
                    figures[name]["stats"].append(wall / args.chunk)
                    figures[name]["stats_cpu"].append(cpu / args.chunk)
        finally:
            if pool is not None:
                pool.shutdown()
    best = {name: {k: 1000 * min(v) for k, v in f.items()} for name, f in figures.items()}
    print(f"R2 problem: n = {args.n}, {data.shape[1]:,} voxels, two-sided, exact TFCE, 6-connectivity, "
          f"{args.threads} thread(s); minimum of {args.rounds} rounds of {args.chunk} rearrangements")
    for plain, welch in pairs:
        print(f"{'':24}{plain + ' engine':>10}{welch + ' (2 groups)':>14}{welch + ' / ' + plain:>8}")
        for key, label in (("chunk", "whole, ms/perm (wall)"), ("chunk_cpu", "whole, ms/perm (CPU)"),
                           ("stats", "statistic, ms/perm"), ("stats_cpu", "statistic, ms/perm CPU")):
            print(f"{label:24}{best[plain][key]:10.2f}{best[welch][key]:14.2f}"
                  f"{best[welch][key] / best[plain][key]:8.2f}")
        table = jobs[welch].welch.table
        print(f"job set-up (residualise, basis, z table {table.table.shape[0]} x {table.table.shape[1]}): "
              f"{plain} {build[plain]:.2f} s, {welch} {build[welch]:.2f} s")
    if args.out:
        args.out.write_text(json.dumps({"n": args.n, "threads": args.threads, "best_ms": best,
                                        "rounds": figures, "setup_s": build}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
