"""Speed of area-weighted TFCE on a cortical-size mesh, next to the volume engine.

Surface problem: a geodesic sphere of 163,842 vertices (FreeSurfer fsaverage's
vertex count and icosahedral structure, 7 subdivisions; fsaverage itself is
not shipped with any installed package, so it is built here with numpy),
radius 80 mm (about the area of one fsaverage white hemisphere), n smooth
noise maps with a planted blob, a one-sample test (sign flipping), exact
area-weighted TFCE with E = 1, H = 2, both signs.

Volume problem, in the same run: nilearn's MNI152 2 mm mask (235,375 voxels),
the same n, one-sample sign flipping, exact TFCE with E = 0.5, H = 2,
6-connectivity, both signs.

The per-permutation time is the slope between a short and a long run (which
removes the fixed costs), measured ``--repeats`` times with the two problems
interleaved; the minimum is printed, with the time per element and the ratio
of surface to volume per element.

    python bench/bench_surface.py [--n 100] [--n-perm 32 160] [--threads 1 2] [--repeats 3]
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


def surface_problem(n_subjects, subdivisions=7, *, radius=80.0, effect=0.5, rng=0):
    """(data (n, n_vertices) float32, masker) on a geodesic sphere."""
    from voxstats.surface import icosphere
    from voxstats.surface_io import SurfaceFormat, SurfaceMasker

    mesh = icosphere(subdivisions, radius=radius)
    adjacency = mesh.adjacency.astype(np.float32)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    rng = np.random.default_rng(rng)
    data = rng.standard_normal((mesh.n_vertices, n_subjects), dtype=np.float32)
    for _ in range(10):  # smooth: each vertex averaged with its neighbours
        data = (data + adjacency @ data) / (1 + degree)[:, None]
    data /= data.std(axis=1, keepdims=True)
    centre = mesh.coordinates[0]
    distance = np.linalg.norm(mesh.coordinates - centre, axis=1)
    data += (effect * np.exp(-0.5 * (distance / 15.0) ** 2)).astype(np.float32)[:, None]
    masker = SurfaceMasker(mesh=mesh, mask=np.ones(mesh.n_vertices, bool), areas=mesh.vertex_areas,
                           fmt=SurfaceFormat("gifti", ".func.gii"))
    return np.ascontiguousarray(data.T), masker


def _time(data, mask, n_perm, threads, tfce_E):
    import voxstats

    start = time.perf_counter()
    result = voxstats.permuted_glm(data, np.ones((data.shape[0], 1)), [1.0], mask=mask, n_perm=n_perm,
                                   tfce=True, tfce_E=tfce_E, tfce_H=2.0, two_sided=True, rng=0,
                                   n_jobs=threads)
    return time.perf_counter() - start, result.n_perm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="subjects (default 100)")
    parser.add_argument("--subdivisions", type=int, default=7,
                        help="icosphere subdivisions (7: 163,842 vertices, fsaverage's count)")
    parser.add_argument("--n-perm", type=int, nargs=2, default=[32, 160], metavar=("SHORT", "LONG"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="small problems (for tests)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from _problem import make_problem

    surf_data, masker = surface_problem(args.n, 3 if args.tiny else args.subdivisions)
    volume = make_problem(args.n, rng=0, **({"box": 8} if args.tiny else {}))
    problems = {"surface": (surf_data, masker, 1.0),
                "volume": (np.ascontiguousarray(volume["data"]), volume["mask"], 0.5)}
    for data, mask, E in problems.values():  # compile the kernels before timing
        _time(data, mask, 8, 1, E)
    rows = []
    for threads in args.threads:
        slopes = {name: [] for name in problems}
        for _ in range(args.repeats):
            for name, (data, mask, E) in problems.items():
                t_short, k_short = _time(data, mask, args.n_perm[0], threads, E)
                t_long, k_long = _time(data, mask, args.n_perm[1], threads, E)
                slopes[name].append((t_long - t_short) / (k_long - k_short))
        for name, (data, _, _) in problems.items():
            best = min(slopes[name])
            rows.append({"problem": name, "threads": threads, "elements": int(data.shape[1]),
                         "ms_per_perm": 1000 * best, "ns_per_element": 1e9 * best / data.shape[1],
                         "all_ms_per_perm": [1000 * s for s in slopes[name]]})
    print(f"n = {args.n}, one-sample sign flipping, exact TFCE, two-sided; min of {args.repeats} "
          "interleaved slopes")
    print(f"{'problem':>8} {'threads':>7} {'elements':>9} {'ms/perm':>8} {'ns/element':>10}")
    for row in rows:
        print(f"{row['problem']:>8} {row['threads']:>7} {row['elements']:>9,} {row['ms_per_perm']:8.1f} "
              f"{row['ns_per_element']:10.1f}")
    for threads in args.threads:
        pair = {r["problem"]: r for r in rows if r["threads"] == threads}
        print(f"{threads} thread(s): surface / volume time per element = "
              f"{pair['surface']['ns_per_element'] / pair['volume']['ns_per_element']:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "n": args.n, "machine": platform.processor(),
                                        "cpus": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
