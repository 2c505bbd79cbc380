"""``voxstats randomise``: FSL randomise's command line on voxstats' engine.

Every randomise 2.9 flag is accepted with randomise's meaning, output names
and value conventions (1 - p; ``--logp`` writes -log10 p); the critical values
are printed at the end as randomise prints them. The few flags voxstats does
not implement stop with one line saying why and what to use instead. The
command only translates: every option maps to an argument of
:func:`voxstats.randomise`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["FLAGS", "add_parser", "run"]

#: Library parameter -> command-line flag, for error messages.
FLAGS = {
    "imgs": "-i", "mask_img": "-m", "design": "-d", "contrasts": "-t", "f_contrasts": "-f",
    "exchangeability_blocks": "-e", "n_perm": "-n", "tfce_H": "--tfce_H", "tfce_E": "--tfce_E",
    "H": "--tfce_H", "E": "--tfce_E", "tfce_dh": "--tfce_D", "dh": "--tfce_D",
    "connectivity": "--tfce_C", "tfce_mode": "--tfce-mode", "mode": "--tfce-mode",
    "cluster_connectivity": "--cluster-connectivity", "n_jobs": "--n-jobs",
    "checkpoint_dir": "--checkpoint-dir", "scheduler": "--scheduler", "executor": "--executor",
    "cluster_threshold": "-c", "cluster_mass_threshold": "-C", "cluster_threshold_f": "-F",
    "cluster_mass_threshold_f": "-S", "variance_smoothing": "-v", "voxelwise_evs": "--vxl/--vxf",
    "rng": "--seed", "output": "-o", "demean": "-D", "variance_groups": "--vg",
    "correct_across_contrasts": "--corrcon", "two_sided": "--twotail", "surf": "--surf", "areas": "--area",
    "left_surf": "--left-surf", "right_surf": "--right-surf", "left_area": "--left-area",
    "right_area": "--right-area", "effective_design": "--effective_design",
}

# randomise flags voxstats does not implement: flag -> why, and what to use instead
_UNSUPPORTED = {
    "parallel_info": ("-Q", "prints randomise_parallel's job split; voxstats splits the work itself: "
                      "use --n-jobs, or --executor dask for a cluster"),
    "permout": ("--permout", "would write one statistic image per permutation; use -N for the null "
                "distributions or --checkpoint-dir to keep the work"),
    "multi": ("--multi", "multivariate (Pillai) statistics are not implemented"),
    "detect_null": ("--detectNull", "is not implemented (every row is permuted)"),
    "film": ("--film", "FEAT-style output names and z images are not implemented"),
}


def add_parser(sub, formatter_class=argparse.HelpFormatter):
    """Add the ``randomise`` subcommand to an argparse subparsers object."""
    r = sub.add_parser(
        "randomise",
        formatter_class=formatter_class,
        help="permutation GLM with FSL randomise's options and outputs",
        description="Permutation inference with FSL randomise 2.9's options, output names and value "
        "conventions: t contrasts are one-sided (positive), maps store 1-p, TFCE is randomise's "
        "stepped sum in volumes (--tfce-mode exact for the exact integral) and the exact integral on "
        "surfaces and CIFTI (randomise has none), clusters are 26-connected.",
    )
    add = r.add_argument
    add("-i", dest="input", required=True, metavar="IN",
        help="4D NIfTI, or a text file listing 3D NIfTI paths one per line; surfaces: GIFTI, FreeSurfer curv "
        "or MGH/MGZ per-vertex maps (one file per subject, listed, or one file holding all); CIFTI: "
        ".dscalar.nii/.dtseries.nii")
    add("-o", dest="output", required=True, metavar="OUT", help="output prefix")
    add("-d", dest="design", metavar="DESIGN", help="design.mat (VEST) or CSV/TSV with a header")
    add("-t", dest="tcon", metavar="CON", help="t contrasts: design.con or CSV/TSV naming design columns")
    add("-f", dest="fcon", metavar="FTS", help="F contrasts: design.fts or CSV/TSV naming t contrasts")
    add("-m", dest="mask", metavar="MASK", help="mask image: voxels finite and non-zero (default: voxels "
        "not constant across subjects, as randomise)")
    add("--norcmask", action="store_true", help="without -m, keep voxels constant across subjects")
    from voxstats.cli import _surface_options

    _surface_options(r)
    add("-e", dest="blocks", metavar="GRP", help="exchangeability blocks (design.grp)")
    add("--permuteBlocks", dest="whole_blocks", action="store_true",
        help="permute whole blocks (with -e) instead of within blocks")
    add("--eb", metavar="CSV",
        help="PALM's multi-level exchangeability blocks (-eb): one row per input image, one column per "
        "level; positive indices shuffle the next level as whole blocks")
    add("--effective_design", metavar="MAT",
        help="alternative design whose rows decide which rearrangements are distinct")
    add("-q", dest="how_many", action="store_true",
        help="print how many permutations an exhaustive test needs, and exit")
    add("-n", dest="n_perm", type=int, default=5000,
        help="number of permutations; 0 for all distinct ones (exhaustive)")
    add("-x", dest="vox_corrp", action="store_true", help="write voxel-wise FWE-corrected p")
    add("--fonly", action="store_true", help="F contrasts only (skip the t contrasts)")
    add("-T", dest="tfce", action="store_true",
        help="TFCE (H=2, E=0.5, 6-connectivity; on surfaces E=1, area-weighted, mesh neighbours)")
    add("--T2", dest="tfce2d", action="store_true", help="2D TFCE (H=2, E=1, 26-connectivity)")
    add("-c", dest="cluster_e", type=float, metavar="THR", help="cluster extent FWE p at this t threshold")
    add("-C", dest="cluster_m", type=float, metavar="THR", help="cluster mass FWE p at this t threshold")
    add("-F", dest="cluster_e_f", type=float, metavar="THR", help="cluster extent FWE p at this F threshold")
    add("-S", dest="cluster_m_f", type=float, metavar="THR", help="cluster mass FWE p at this F threshold")
    add("--tfce_H", type=float, help="TFCE height power (default 2)")
    add("--tfce_E", type=float,
        help="TFCE extent power (default 0.5, 1 with --T2 and on surfaces; CIFTI: 1 on cortex, 0.5 in volume "
        "structures)")
    add("--tfce_C", type=int, choices=(6, 18, 26), help="TFCE connectivity (default 6, 26 with --T2)")
    add("--tfce_D", type=float, metavar="DH", help="TFCE step (default: max of the unpermuted map / 100)")
    add("-v", dest="var_smooth", type=float, metavar="MM",
        help="variance smoothing for t contrasts (pseudo-t), Gaussian sigma in mm")
    add("--quiet", action="store_true", help="no progress bars, messages or summary")
    add("--twopass", action="store_true",
        help="cluster normalisation: a second pass normalising cluster sizes (-c) and TFCE by their "
        "voxel-wise means over the permutations (t contrasts; clustern_, tfcen_ outputs)")
    add("-R", "--raw", dest="raw", action="store_true",
        help="also write the raw TFCE and cluster-size/mass images (tfce_tstat1, clustere_tstat1, ...)")
    add("--uncorrp", action="store_true", help="write uncorrected p (vox_p_ with -x, tfce_p_ with -T)")
    add("-P", dest="text_perm", action="store_true",
        help="write the permutation vectors (perm_tstat1.txt: design row of each subject, 1-based)")
    add("-N", dest="text_null", action="store_true",
        help="write the null distribution of each maximum (vox_corrp_tstat1.txt, ...)")
    add("--seed", type=int, help="random seed (drawn and recorded when omitted)")
    add("--vxl", metavar="N,N", help="positions (1-based) of voxel-wise EVs in the design, comma-separated")
    add("--vxf", metavar="IMG,IMG", help="4D images of the voxel-wise EVs, in --vxl's order, comma-separated")
    add("--glm_output", action="store_true", help="write the unpermuted GLM's PE, COPE, VARCOPE, sigma^2")
    add("-D", dest="demean", action="store_true", help="demean data and design (df = n - rank - 1)")
    add("-1", dest="one_sample", action="store_true",
        help="one-sample test by sign flipping (of the -d design if given, else a column of ones)")
    add("--skipTo", type=int, metavar="K",
        help="analyse only contrast K (F contrasts first, then t, numbered from 1)")
    add("-U", dest="confound_mode", type=int, default=1,
        help="confound mode; only 1 (Freedman-Lane, randomise's default) is implemented")
    add("--debug", action="store_true", help="debug messages")
    add("-V", dest="verbose_old", action="store_true", help="ignored (randomise: deprecated)")
    for dest, (flag, _) in _UNSUPPORTED.items():
        add(flag, dest=dest, action="store_true", help=argparse.SUPPRESS)
    # voxstats' additions
    add("--tfce-mode", choices=("fsl", "exact"), default=None,
        help="TFCE integral: fsl (randomise's sum over steps of max/100 fixed from the unpermuted map, not "
        "multiplied by the step; the default in volumes) or exact (the integral, no step error; the default "
        "on surfaces and CIFTI: PALM's surface TFCE is a sum multiplied by the step, which approximates it)")
    add("--cluster-connectivity", type=int, choices=(6, 18, 26), default=26,
        help="cluster neighbourhood (randomise: 26, whatever --tfce_C)")
    add("--n-jobs", type=int, default=1,
        help="threads, -1 for all; with --executor dask and no --scheduler, worker processes")
    add("--checkpoint-dir", metavar="DIR",
        help="write each finished chunk of permutations to DIR, so that a killed run can resume")
    add("--resume", action="store_true",
        help="continue the run checkpointed in --checkpoint-dir (same inputs and options)")
    add("--executor", choices=("local", "dask"), default="local",
        help="run chunks here (local) or on a Dask cluster (needs voxstats[distributed])")
    add("--scheduler", metavar="ADDRESS",
        help="Dask scheduler address (tcp://host:8786); default: start a LocalCluster")
    add("--vg", dest="vg", metavar="FILE|auto",
        help="variance groups (PALM -vg): one label per subject, or 'auto' for PALM's groups from -e; "
        "t becomes Aspin-Welch v and F becomes G, compared as z")
    add("--corrcon", action="store_true",
        help="also FWE-correct over all contrasts (PALM -corrcon): *_cfwep_* outputs")
    add("--twotail", action="store_true",
        help="two-tailed t/v tests (PALM -twotail: |t|); default one-sided positive as randomise")
    add("--logp", action="store_true", help="write -log10 p instead of 1 - p")
    add("--overwrite", action="store_true", help="replace existing outputs")
    r.set_defaults(func=run)
    return r


class CLIError(ValueError):
    """An error reported as one line on stderr, exit code 1 (a ValueError, as ``main`` reports them)."""


class UsageError(CLIError):
    """A command line that cannot work whatever the data (a flag's value or a combination of flags):
    one line on stderr, exit code 2, as argparse's own usage errors (``qsm`` uses the same codes)."""


# --------------------------------------------------------------------------- options


def _check_flags(args):
    for dest, (flag, why) in _UNSUPPORTED.items():
        if getattr(args, dest):
            raise UsageError(f"{flag} {why}.")
    if args.confound_mode != 1:
        raise UsageError(f"-U {args.confound_mode}: only Freedman-Lane (-U 1, randomise's default) is "
                       "implemented.")
    if args.twopass and not (args.tfce or args.tfce2d or args.cluster_e is not None):
        raise UsageError("--twopass normalises cluster sizes (-c) and TFCE (-T): give one of them.")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed: expected an integer >= 0, got {args.seed}.")
    if args.n_jobs == 0 or args.n_jobs < -1:
        raise UsageError(f"Invalid value for --n-jobs: got {args.n_jobs}, expected >= 1 or -1 (all cores).")
    if args.n_perm < 0:
        raise UsageError(f"-n: expected a number of permutations >= 0 (0: all distinct ones), got {args.n_perm}.")
    if args.eb and (args.blocks or args.whole_blocks):
        raise UsageError("--eb defines every level of shuffling itself; do not combine it with -e or --permuteBlocks.")
    if args.whole_blocks and not args.blocks:
        raise UsageError("--permuteBlocks needs -e BLOCKS.")
    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir DIR.")
    if args.scheduler and args.executor != "dask":
        raise UsageError("--scheduler needs --executor dask.")
    if args.fonly and not args.fcon:
        raise UsageError("--fonly needs F contrasts (-f).")
    if (args.cluster_e_f is not None or args.cluster_m_f is not None) and not args.fcon:
        raise UsageError("-F and -S need F contrasts (-f).")
    if bool(args.vxl) != bool(args.vxf):
        raise UsageError("--vxl and --vxf go together: give both, with as many entries.")
    if args.var_smooth is not None and not args.var_smooth > 0:
        raise UsageError(f"-v: expected a sigma > 0 mm, got {args.var_smooth}.")
    for flag, value in (("-c", args.cluster_e), ("-C", args.cluster_m), ("-F", args.cluster_e_f),
                        ("-S", args.cluster_m_f)):
        if value is not None and not value > 0:
            raise UsageError(f"{flag}: expected a cluster-forming threshold > 0, got {value}.")


def _tfce_settings(args):
    if args.tfce and args.tfce2d:
        raise UsageError("-T and --T2 are exclusive; give one of them.")
    tuning = (args.tfce_H, args.tfce_E, args.tfce_C, args.tfce_D, args.tfce_mode)
    if not (args.tfce or args.tfce2d):
        if any(v is not None for v in tuning):
            raise UsageError("--tfce_H, --tfce_E, --tfce_C, --tfce_D and --tfce-mode need -T or --T2.")
        return None
    # E None: by element kind (0.5 in volumes, 1 on surfaces), set once the input is known
    E, H, C = (1.0, 2.0, 26) if args.tfce2d else (None, 2.0, 6)
    # mode None: randomise's stepped sum in volumes, the exact integral on surfaces and CIFTI (set
    # once the input is known; randomise has no surfaces, and PALM's surface TFCE is the integral)
    mode = "fsl" if args.tfce_D is not None and args.tfce_mode is None else args.tfce_mode
    if args.tfce_D is not None and mode != "fsl":
        raise UsageError("--tfce_D sets a fixed step, which needs --tfce-mode fsl (the default in volumes).")
    if args.tfce_D is not None and not args.tfce_D > 0:
        raise UsageError(f"--tfce_D: expected a step > 0, got {args.tfce_D}.")
    return {"tfce_E": E if args.tfce_E is None else args.tfce_E,
            "tfce_H": H if args.tfce_H is None else args.tfce_H,
            "connectivity": C if args.tfce_C is None else args.tfce_C,
            "tfce_mode": mode, "tfce_dh": args.tfce_D}


def _load_model(args, n_subjects):
    """Design (DataFrame or ones), t contrasts and F contrasts, as dicts in file order."""
    import numpy as np
    import pandas as pd

    from voxstats.design_files import read_contrasts, read_design, read_f_contrasts

    if args.design:
        design = read_design(args.design)
    elif args.one_sample:
        design = pd.DataFrame({"EV1": np.ones(n_subjects)})
    else:
        raise CLIError("randomise needs -d DESIGN and -t CONTRASTS (or -1 for a one-sample test).")
    if len(design) != n_subjects:
        raise CLIError(f"{args.design}: expected {n_subjects} rows (one per input image), got {len(design)}.")
    if args.tcon:
        tcons = read_contrasts(args.tcon, design_columns=list(design.columns))
    elif args.one_sample and not args.design:
        tcons = {"C1": np.array([1.0])}
    else:
        raise CLIError("randomise needs -d DESIGN and -t CONTRASTS (or -1 for a one-sample test).")
    fcons = read_f_contrasts(args.fcon, t_contrasts=tcons) if args.fcon else {}
    return design, tcons, fcons


def _selected(args, tcons, fcons):
    """The contrasts to analyse after --fonly and --skipTo: (t dict, F dict)."""
    if args.fonly:
        tcons = {}
    if args.skipTo:
        k = args.skipTo
        n_f = len(fcons)
        if not 1 <= k <= n_f + len(tcons):
            raise CLIError(f"--skipTo {k}: expected 1..{n_f + len(tcons)} (F contrasts first, then t).")
        if k <= n_f:
            name = list(fcons)[k - 1]
            return {}, {name: fcons[name]}
        name = list(tcons)[k - n_f - 1]
        return {name: tcons[name]}, {}
    return tcons, fcons


def _blocks(args, n_subjects):
    """-e labels, or --eb's exchangeability tree."""
    from voxstats.design_files import read_blocks, read_exchangeability_blocks
    from voxstats.exchangeability import ExchangeabilityTree

    blocks = read_blocks(args.blocks) if args.blocks else None
    if blocks is not None and len(blocks) != n_subjects:
        raise CLIError(f"{args.blocks}: expected {n_subjects} block labels (one per input image), got {len(blocks)}.")
    if args.eb:
        matrix = read_exchangeability_blocks(args.eb)
        if len(matrix) != n_subjects:
            raise CLIError(f"--eb {args.eb}: expected {n_subjects} rows (one per input image), got {len(matrix)}.")
        try:
            blocks = ExchangeabilityTree.from_matrix(matrix)
        except ValueError as err:
            raise CLIError(f"--eb {args.eb}: {str(err).removeprefix('exchangeability_blocks: ')}.") from None
    return blocks


def _variance_groups(args, blocks, n_subjects):
    from voxstats.variance_groups import read_variance_groups, resolve_variance_groups

    if args.vg == "auto":
        if blocks is None:
            raise CLIError("--vg auto derives variance groups from exchangeability blocks: give -e BLOCKS or --eb CSV.")
        return resolve_variance_groups("auto", n_subjects, exchangeability_blocks=blocks,
                                       whole_blocks=args.whole_blocks)
    if args.vg:
        labels = read_variance_groups(args.vg)
        if len(labels) != n_subjects:
            raise CLIError(f"{args.vg}: expected {n_subjects} variance group labels (one per input image), "
                           f"got {len(labels)}.")
        return resolve_variance_groups(labels, n_subjects)
    return None


def _voxelwise(args, design):
    if not args.vxl:
        return None
    try:
        numbers = [int(v) for v in args.vxl.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"--vxl: expected comma-separated EV numbers, got {args.vxl!r}.") from None
    files = [f.strip() for f in args.vxf.split(",") if f.strip()]
    if len(numbers) != len(files):
        raise CLIError(f"--vxl has {len(numbers)} entries but --vxf has {len(files)}; give one image per EV.")
    out = {}
    for number, path in zip(numbers, files):
        if not 1 <= number <= design.shape[1]:
            raise CLIError(f"--vxl {number}: expected an EV number from 1 to {design.shape[1]} (the design's "
                           "columns); negative positions are not implemented.")
        if not Path(path).is_file():
            raise CLIError(f"--vxf: file not found: {path}")
        out[number - 1] = path
    return out


# --------------------------------------------------------------------------- outputs


# --------------------------------------------------------------------------- run


def _inputs(args):
    """-i as the library takes it, and the number of subjects (headers only)."""
    from voxstats.image import check_img
    from voxstats.loading import is_image_path, read_image_list
    from voxstats.surface_loading import count_maps, input_kind

    if input_kind(args.input, name="-i") != "volume":  # surface or CIFTI maps, one per subject
        n_subjects = count_maps(args.input, name="-i")
        if n_subjects < 2:
            raise CLIError(f"-i: expected at least 2 subjects, got {n_subjects} in {args.input}")
        return str(args.input), n_subjects
    if is_image_path(args.input):
        if not Path(args.input).exists():
            raise CLIError(f"-i: file not found: {args.input}")
        n_subjects = check_img(args.input, name="-i", ndim=4).shape[3]
        if n_subjects < 2:
            raise CLIError(f"-i: expected at least 2 subjects, got {n_subjects} in {args.input}")
        return str(args.input), n_subjects
    imgs = [str(p) for p in read_image_list(args.input, name="-i")]
    if len(imgs) < 2:
        raise CLIError(f"-i: expected at least 2 subjects, got {len(imgs)} in {args.input}")
    return imgs, len(imgs)


def _check_input_files(args, imgs, surface):
    """Files the library reads only later (-m, meshes, area files), checked before anything is printed.

    -m on volumes is read as the mask it is (3D, on the inputs' grid, not empty).
    """
    from voxstats.errors import MissingFileError
    from voxstats.image import check_img
    from voxstats.loading import check_mask
    from voxstats.surface_loading import input_kind

    flags = {"surf": "--surf", "areas": "--area", "left_surf": "--left-surf", "right_surf": "--right-surf",
             "left_area": "--left-area", "right_area": "--right-area"}
    for key, value in surface.items():
        if isinstance(value, str) and not Path(value).exists():
            raise MissingFileError(flags[key], value)
    if args.mask is None:
        return
    if not Path(args.mask).exists():
        raise MissingFileError("-m", args.mask)
    if input_kind(imgs, name="-i") == "volume":
        first = imgs if isinstance(imgs, str) else imgs[0]
        check_mask(args.mask, name="-m", reference=check_img(first, name="-i"), reference_name="-i")


def _print_how_many(n_possible, contrasts, flipping, randomise_counts=None):
    """randomise's ``-q`` lines, then a note where randomise would count differently (see _randomise_counts)."""
    from voxstats.permutation import MANY_REARRANGEMENTS

    if flipping:
        print("One-sample design detected; sign-flipping instead of permuting.")
    what = "sign-flips" if flipping else "permutations"
    for kind, index in contrasts:
        test = "t-test" if kind == "t" else "f-test"
        print(f"{n_possible} {what} required for exhaustive test of {test} {index}")
    differ = {key: count for key, count in (randomise_counts or {}).items() if count != n_possible}
    if differ:
        theirs = ", ".join(f"{count} for {'t-test' if kind == 't' else 'f-test'} {index}"
                           for (kind, index), count in differ.items())
        print(f"Note: voxstats (as PALM) counts the distinct rearrangements of the whole design's rows; randomise "
              f"counts those of the tested regressors only and would report {theirs}. They differ because the "
              "design has regressors besides the tested ones whose values differ between subjects (e.g. a "
              "continuous covariate such as age); --effective_design with the tested regressors counts as "
              "randomise does.")
    if n_possible > MANY_REARRANGEMENTS:
        print(f"Note: -n 0 (or -n {n_possible} or more) would enumerate all {n_possible} rearrangements; "
              "give -n N (e.g. -n 5000) for a random subset.")


def _randomise_counts(design, blocks, whole_blocks, tcons, fcons, contrasts):
    """randomise's count for each contrast: distinct rearrangements of the rows of ``(X - mean(X)) C'``.

    randomise v2.9 (``randomise.cc``) builds its permutation scheme from
    ``remmean(dm) * inputContrast.t()``, the tested regressors only. None with
    PALM's multi-level blocks (``--eb``), which randomise does not have.
    """
    import numpy as np

    from voxstats.exchangeability import ExchangeabilityTree, as_tree

    if isinstance(blocks, ExchangeabilityTree):
        return None
    matrix = np.asarray(design, dtype=float)
    tree = as_tree(blocks, matrix.shape[0], whole_blocks=whole_blocks)
    centred = matrix - matrix.mean(axis=0)
    t_list, f_list = list(tcons.values()), list(fcons.values())
    counts = {}
    for kind, index in contrasts:
        weights = np.atleast_2d(np.asarray((t_list if kind == "t" else f_list)[index - 1], dtype=float))
        counts[(kind, index)] = tree.count(centred @ weights.T)
    return counts


def _n_possible(args, design, blocks):
    """(number of distinct rearrangements, sign flipping?) as the library will count them."""
    import numpy as np

    from voxstats import make_schedule

    matrix = np.asarray(design, dtype=float)
    flipping = bool(args.one_sample or np.all(matrix == matrix[0]))
    schedule = make_schedule(len(design), 1, permute=not flipping, sign_flip=flipping,
                             exchangeability_blocks=blocks, whole_blocks=args.whole_blocks, design=matrix,
                             rng=0)
    return schedule.n_possible, flipping


def _critical_scale(label, on_z):
    """What a critical value of the ``label`` null (vox, tfce, clustere, ...) is measured in.

    With ``on_z`` the statistics were converted to z before any comparison
    (v and G, or ``--corrcon`` across contrasts of different kinds or ranks,
    as PALM's ``-zstat``): the voxel critical value is a z, TFCE is of z, and
    cluster masses are sums of z. Cluster extents are voxel counts either way.
    """
    stat = "z" if on_z else "statistic"
    return {"vox": stat, "tfce": f"TFCE of {stat}", "tfcen": f"normalised TFCE of {stat}",
            "clusterm": f"cluster mass of {stat}", "clustere": "cluster extent (voxels)",
            "clustern": "normalised cluster extent"}[label]


def run(args):
    """Run ``voxstats randomise`` with parsed arguments; returns the exit code."""
    import numpy as np

    import voxstats
    from voxstats.checkpoint import RunInterrupted, recorded_seed
    from voxstats.cli import _earlier_outputs, _jsonable_index
    from voxstats.design_files import read_design
    from voxstats.executor import ExecutorLost
    from voxstats.outputs import atomic_write_text, check_outputs
    from voxstats.results import critical_value

    from voxstats._cli_randomise_outputs import (column_text, glm_outputs, image_outputs, output_maps, peak,
                                                 permutation_text, print_summary, run_record, save_4d,
                                                 stat_name, text_outputs)

    _check_flags(args)
    tfce = _tfce_settings(args)
    if args.debug:
        logging.getLogger("voxstats").setLevel(logging.DEBUG)
    imgs, n_subjects = _inputs(args)
    design, tcons, fcons = _load_model(args, n_subjects)
    tsel, fsel = _selected(args, tcons, fcons)
    contrasts = [("f", list(fcons).index(k) + 1) for k in fsel] + [("t", list(tcons).index(k) + 1) for k in tsel]
    blocks = _blocks(args, n_subjects)
    effective = None
    if args.effective_design:
        effective = read_design(args.effective_design).to_numpy()
        if len(effective) != n_subjects:
            raise CLIError(f"{args.effective_design}: expected {n_subjects} rows (one per input image), "
                           f"got {len(effective)}.")
    if args.how_many:
        n_possible, flipping = _n_possible(args, design if effective is None else effective, blocks)
        theirs = (None if flipping or effective is not None
                  else _randomise_counts(design, blocks, args.whole_blocks, tcons, fcons, contrasts))
        _print_how_many(n_possible, contrasts, flipping, theirs)
        return 0
    groups = _variance_groups(args, blocks, n_subjects)
    voxelwise = _voxelwise(args, design)

    from voxstats.cli import _surface_kwargs
    from voxstats.surface_loading import output_suffix

    suffix = output_suffix(imgs, name="-i")
    if tfce is not None and tfce["tfce_E"] is None:  # CIFTI: None, E by structure in the library
        tfce["tfce_E"] = {".nii.gz": 0.5, ".dscalar.nii": None}.get(suffix, 1.0)
    if tfce is not None and tfce["tfce_mode"] is None:
        tfce["tfce_mode"] = "fsl" if suffix == ".nii.gz" else "exact"
    outputs = image_outputs(args, contrasts, tfce is not None, welch=groups is not None, suffix=suffix)
    texts = text_outputs(args, contrasts, tfce is not None, welch=groups is not None)
    glm_paths = glm_outputs(args)
    json_path = Path(f"{args.output}.json")
    every = ([p for names in outputs.values() for p in names.values()]
             + [p for names in texts.values() for p in names.values()] + list(glm_paths.values()) + [json_path])
    check_outputs(every, overwrite=args.overwrite, flag="-o")
    earlier = _earlier_outputs(json_path, args.output) if args.overwrite else []
    _check_input_files(args, imgs, _surface_kwargs(args))  # before any warning is printed
    if args.norcmask and args.mask:
        logger.warning("--norcmask has no effect with -m (as in randomise): the mask is -m's")

    any_output = (args.vox_corrp or tfce is not None
                  or any(v is not None for v in (args.cluster_e, args.cluster_m, args.cluster_e_f, args.cluster_m_f)))
    n_perm = args.n_perm if any_output else 1
    seed = args.seed
    if seed is None and args.resume:
        seed = recorded_seed(args.checkpoint_dir)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**32))
    options = dict(
        f_contrasts={k: np.asarray(v) for k, v in fsel.items()} or None,
        mask_img=args.mask, keep_constant=args.norcmask, n_perm=n_perm, tfce=tfce is not None,
        cluster_threshold=args.cluster_e, cluster_mass_threshold=args.cluster_m,
        cluster_threshold_f=args.cluster_e_f, cluster_mass_threshold_f=args.cluster_m_f,
        cluster_connectivity=args.cluster_connectivity, two_sided=bool(args.twotail), demean=args.demean,
        sign_flip=args.one_sample, permute=False if args.one_sample else None,
        exchangeability_blocks=blocks, whole_blocks=args.whole_blocks, effective_design=effective,
        variance_groups=groups, correct_across_contrasts=bool(args.corrcon),
        variance_smoothing=args.var_smooth, voxelwise_evs=voxelwise, glm_output=args.glm_output,
        twopass=args.twopass,
        rng=seed, n_jobs=args.n_jobs, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
        executor=args.executor, scheduler=args.scheduler, verbose=not args.quiet,
    )
    if tfce is not None:
        options.update(tfce)
    options.update(_surface_kwargs(args))
    again = list(args.argv) + ([] if args.resume else ["--resume"])
    again += [] if args.seed is not None else ["--seed", str(seed)]
    try:
        res = voxstats.randomise(imgs, design, {k: np.asarray(v) for k, v in tsel.items()} or None, **options)
    except RunInterrupted as stop:
        print(f"voxstats randomise: stopped by {stop.signal_name}; finished chunks are kept in "
              f"{args.checkpoint_dir}. To continue: voxstats {shlex.join(again)}", file=sys.stderr)
        return 128 + stop.signum
    except ExecutorLost as lost:
        kept = (f"finished chunks are kept in {args.checkpoint_dir}. To continue: voxstats {shlex.join(again)}"
                if args.checkpoint_dir else "no chunk was kept (run with --checkpoint-dir DIR to keep them)")
        print(f"voxstats randomise: error: {lost}; {kept}", file=sys.stderr)
        return 1

    if not any_output and not args.quiet:  # randomise's words, once every input has been read
        print("Warning! No output options selected. Outputing raw tstat only")
    # results come t first then F; randomise's order (and numbering) is F first, then t
    by_key = {}
    t_results = [c for c in res.contrasts if c.kind in ("t", "v")]
    f_results = [c for c in res.contrasts if c.kind in ("F", "G")]
    for (kind, index), contrast in zip([k for k in contrasts if k[0] == "t"], t_results):
        by_key[(kind, index)] = contrast
    for (kind, index), contrast in zip([k for k in contrasts if k[0] == "f"], f_results):
        by_key[(kind, index)] = contrast
    written, p_maps, summary, critical = [], [], [], []
    for key in contrasts:  # randomise's order: F contrasts first, then t (critical values, summary, record)
        contrast, names = by_key[key], outputs[key]
        stat = stat_name(*key, groups is not None)
        for name, values in output_maps(contrast, names, args.logp).items():
            res.masker.save(np.asarray(values, dtype=np.float32), names[name])
            written.append(str(names[name]))
            if name.endswith(("_p", "_corrp")):
                p_maps.append(str(names[name]))
        for name, path in texts[key].items():
            source = contrast.twopass if name in ("null_max_clustern", "null_max_tfcen") else contrast
            text = permutation_text(res.schedule) if name == "perm" else column_text(getattr(source, name))
            atomic_write_text(path, text)
            written.append(str(path))
        for label, field, wanted in (("vox", "null_max", args.vox_corrp),
                                     ("clustere", "null_max_extent", "clustere_corrp" in names),
                                     ("clusterm", "null_max_mass", "clusterm_corrp" in names),
                                     ("clustern", "null_max_clustern", "clustern_corrp" in names),
                                     ("tfce", "null_max_tfce", tfce is not None),
                                     ("tfcen", "null_max_tfcen", "tfcen_corrp" in names)):
            source = contrast.twopass if label in ("clustern", "tfcen") else contrast
            if wanted and res.n_perm > 1:
                critical.append((f"{args.output}_{label}_{stat}", critical_value(getattr(source, field)),
                                 _critical_scale(label, contrast.z is not None)))
        index, xyz = peak(res.masker, np.asarray(contrast.stat))
        index = None if index is None else _jsonable_index(index)
        peak_at, peak_xyz = peak(res.masker, np.asarray(contrast.stat), contrast.tail)
        peak_at = None if peak_at is None else _jsonable_index(peak_at)
        summary.append({
            "name": contrast.name, "output": stat, "kind": contrast.kind, "statistic": contrast.kind,
            "tail": contrast.tail,
            "df2_range": None if contrast.df2 is None else [float(np.min(contrast.df2)), float(np.max(contrast.df2))],
            "n_fwe_voxel": int(np.sum(np.asarray(contrast.p_fwe) < 0.05)),
            "n_fwe_tfce": None if contrast.tfce_p_fwe is None else int(np.sum(contrast.tfce_p_fwe < 0.05)),
            "max_stat": float(np.max(contrast.stat)) if contrast.stat.size else None,
            "max_voxel": index,
            "max_mm": None if xyz is None else [round(float(v), 3) for v in xyz],
            # the peak the test refers to: two-sided, the signed value of largest |stat|; one-sided, the max
            "peak_stat": contrast.peak,
            "peak_voxel": peak_at,
            "peak_mm": None if peak_xyz is None else [round(float(v), 3) for v in peak_xyz],
            "tfce_dh": contrast.tfce_dh,
        })
    if res.glm is not None:
        rows = {"pe": res.glm.pe, "cope": res.glm.cope, "varcope": res.glm.varcope,
                "sigmasqr": res.glm.sigmasqr[np.newaxis]}
        for key, path in glm_paths.items():
            save_4d(res.masker, rows[key], path)
            written.append(str(path))

    record = run_record(args, options, res, seed, n_subjects, imgs, tcons, fcons, tfce, written, p_maps,
                     summary, critical, groups)
    atomic_write_text(json_path, json.dumps(record, indent=2, default=str) + "\n")
    for stale in earlier:  # --overwrite: what the earlier run wrote and this one did not
        if str(stale) not in written and stale.exists():
            stale.unlink()
            logger.info("Removed %s, written by the earlier run and not by this one", stale)
    if not args.quiet:
        for name, value, scale in critical:  # in randomise's order (F contrasts first), as the summary below
            # randomise's line; statistics converted to z (--corrcon across kinds, --vg) say so
            print(f"Critical Value for: {name} is: {value:g}" + (f" ({scale})" if "z" in scale.split() else ""))
        print_summary(args, res, seed, record, summary, tfce, json_path, suffix)
    return 0


