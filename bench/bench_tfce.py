"""Where a permutation's time goes: TFCE, statistics and exceedance counts, with ratios to peers.

On the R2 problem (nilearn's MNI152 2 mm mask, 235,375 voxels, n = 240, design
1 + group + age + sex, Freedman-Lane, one t contrast, both signs, 6-connectivity)
the script computes a set of permuted t maps with the engine, then times on
those same maps, in interleaved rounds:

- one exact TFCE pass per map: voxstats (``mode='exact'`` and ``'fsl'``) and the
  PyPI ``tfce`` package (exact, CAT12's authors), each given one map per call;
- the engine's pieces per permutation at one thread: the statistics (blocked
  float32 GEMM + t), the exceedance counts and maxima of the statistic and of
  TFCE;
- a whole chunk (``engine.run_chunk``) at 1 and 2 threads.

Each figure is the minimum over rounds of the CPU time (what the work
costs, least disturbed by other users) and of the wall time; per-map figures
are the median over maps of those minima. The load average at the start and
the end is printed: on a shared machine read the CPU figures and the ratios.

    python bench/bench_tfce.py [--n 240] [--maps 16] [--rounds 5] [--tiny] [--out results.json]
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _timed(fn):
    """(thread CPU seconds, wall seconds) of one call."""
    cpu, wall = time.thread_time(), time.perf_counter()
    fn()
    return time.thread_time() - cpu, time.perf_counter() - wall


def _process_timed(fn):
    """(process CPU seconds, wall seconds) of one call (all threads)."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def _problem(args):
    from _problem import make_problem

    from voxstats import engine, make_schedule
    from voxstats.design import make_contrasts, make_design
    from voxstats.graph import grid_graph
    from voxstats.randomise import make_job

    prob = make_problem(args.n, rng=0, **({"box": 10} if args.tiny else {}))
    design = make_design(prob["design"])
    (contrast,) = make_contrasts(prob["contrast"], design)
    graph = grid_graph(prob["mask"], 6)
    job = make_job(prob["data"], design, contrast, graph, tfce=True)
    schedule = make_schedule(args.n, max(args.chunk, args.maps) + 1, rng=1)
    maps = engine.statistics(job, schedule, 1, args.maps + 1)
    return prob, job, schedule, maps, graph


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=240, help="subjects (default 240)")
    parser.add_argument("--maps", type=int, default=16, help="permuted maps timed one by one (default 16)")
    parser.add_argument("--chunk", type=int, default=64, help="permutations per engine chunk (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--tiny", action="store_true", help="a small cropped problem (seconds; for tests)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    from voxstats import engine
    from voxstats.tfce import batch_tfce

    load_start = os.getloadavg()
    prob, job, schedule, maps, graph = _problem(args)
    mask = prob["mask"]
    dh = float(np.float32(np.abs(maps[0]).max() / 100))
    out = np.empty_like(maps)
    volumes = []
    for row in maps:
        vol = np.zeros(mask.shape, dtype=np.float32)
        vol[mask] = row
        volumes.append(vol)
    try:
        import tfce as tfce_package
    except ImportError:
        tfce_package = None

    per_map = {"voxstats exact": lambda i: batch_tfce(maps[i:i + 1], graph, out=out[i:i + 1]),
               "voxstats fsl": lambda i: batch_tfce(maps[i:i + 1], graph, fsl=True, dh=dh,
                                                    out=out[i:i + 1])}
    if tfce_package is not None:
        per_map["tfce package"] = lambda i: tfce_package.tfce(volumes[i], connectivity=6, two_sided=True)
    observed = engine.observed_maps(job, schedule, 1)
    chunk_maps = engine.statistics(job, schedule, 0, args.chunk)
    chunk_tfce = engine.tfce_maps(job, chunk_maps)
    pieces = {
        "statistics": lambda: engine.statistics(job, schedule, 0, args.chunk),
        "exceedances (statistic)": lambda: engine._exceedances(job, chunk_maps, observed.stat),
        "exceedances (TFCE)": lambda: engine._exceedances(job, chunk_tfce, observed.tfce),
    }
    pools = {1: None, 2: engine.make_pool(2)}

    best_map = {name: np.full((len(maps), 2), np.inf) for name in per_map}
    best_piece = {name: np.full(2, np.inf) for name in pieces}
    best_chunk = {t: np.full(2, np.inf) for t in pools}
    with threadpool_limits(limits=1, user_api="blas"):
        for name, fn in per_map.items():  # warm-up: compile and load
            fn(0)
        engine.run_chunk(job, schedule, 0, args.chunk, observed, 1)
        for r in range(args.rounds):
            names = list(per_map)
            names = names[r % len(names):] + names[:r % len(names)]  # rotate the order
            for name in names:
                for i in range(len(maps)):
                    best_map[name][i] = np.minimum(best_map[name][i], _process_timed(lambda: per_map[name](i)))
            for name, fn in pieces.items():
                best_piece[name] = np.minimum(best_piece[name], np.array(_timed(fn)) / args.chunk)
            for threads in (pools if r % 2 == 0 else list(pools)[::-1]):
                run = lambda: engine.run_chunk(job, schedule, 0, args.chunk, observed, threads, pools[threads])
                best_chunk[threads] = np.minimum(best_chunk[threads], np.array(_process_timed(run)) / args.chunk)
    pools[2].shutdown()
    load_end = os.getloadavg()

    ms = lambda x: 1000 * float(x)
    report = {"n": args.n, "n_voxels": int(maps.shape[1]), "maps": len(maps), "rounds": args.rounds,
              "load_start": load_start, "load_end": load_end, "cpus": os.cpu_count(),
              "machine": platform.processor(),
              "per_map_ms": {k: {"cpu": ms(np.median(v[:, 0])), "wall": ms(np.median(v[:, 1]))}
                             for k, v in best_map.items()},
              "pieces_ms_per_perm": {k: {"cpu": ms(v[0]), "wall": ms(v[1])} for k, v in best_piece.items()},
              "chunk_ms_per_perm": {str(t): {"cpu": ms(v[0]), "wall": ms(v[1])} for t, v in best_chunk.items()}}
    print(f"R2 problem: n = {args.n}, {maps.shape[1]:,} voxels; {len(maps)} permuted maps, {args.rounds} rounds; "
          f"load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end ({os.cpu_count()} CPUs)")
    print("\nOne TFCE pass (median over maps of the minimum over rounds):")
    print(f"{'':24}{'CPU ms':>10}{'wall ms':>10}{'CPU ratio':>11}")
    ref = report["per_map_ms"]["voxstats exact"]["cpu"]
    for name, v in report["per_map_ms"].items():
        print(f"{name:24}{v['cpu']:10.2f}{v['wall']:10.2f}{v['cpu'] / ref:10.2f}x")
    print("\nEngine pieces, one thread, per permutation:")
    for name, v in report["pieces_ms_per_perm"].items():
        print(f"{name:24}{v['cpu']:10.2f}{v['wall']:10.2f}")
    total = sum(v["cpu"] for v in report["pieces_ms_per_perm"].values()) + ref
    print(f"{'sum with exact TFCE':24}{total:10.2f}")
    print("\nengine.run_chunk per permutation (process CPU of all threads, wall):")
    for t, v in report["chunk_ms_per_perm"].items():
        print(f"{t + ' thread(s)':24}{v['cpu']:10.2f}{v['wall']:10.2f}")
    w1, w2 = (report["chunk_ms_per_perm"][t]["wall"] for t in ("1", "2"))
    print(f"2 threads / 1 thread, wall: {w2 / w1:.2f}")
    if "tfce package" in report["per_map_ms"]:
        print(f"tfce package / voxstats exact, one pass: {report['per_map_ms']['tfce package']['cpu'] / ref:.1f}x (CPU)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
