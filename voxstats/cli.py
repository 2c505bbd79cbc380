"""The ``voxstats`` command: ``randomise``, ``tfce`` and ``cluster``.

A thin layer over :func:`voxstats.randomise`, :func:`voxstats.tfce` and
:func:`voxstats.cluster_table.cluster_table`.  ``voxstats randomise`` takes
FSL randomise's option names and writes randomise's output names and value
conventions (1 - p, or -log10 p with ``--logp``), so a randomise user only
changes the command name. PALM's variance groups (``--vg``), FWE over
contrasts (``--corrcon``) and two-tailed tests (``--twotail``) come with
PALM's output names (``vstat``, ``gstat``, ``_cfwep_``).

Every input goes through the readers of :mod:`voxstats.loading`; every output
is checked before any long work, locked while the run writes it, and written
atomically (:mod:`voxstats.outputs`). Errors are one line naming the file or
the command-line flag (library parameter names are translated). The heavy
modules (numba, SciPy, nibabel) are imported only once a command runs, so
``voxstats --help`` is quick.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import platform
import re
import shlex
import sys
from pathlib import Path

import voxstats

logger = logging.getLogger(__name__)

__all__ = ["main"]

_VERSIONED = ("voxstats", "numpy", "scipy", "numba", "nibabel", "pandas")

# Library parameter -> command-line flag, per subcommand, for error messages.
_FLAGS = {
    "randomise": {
        "imgs": "-i", "mask_img": "-m", "design": "-d", "contrasts": "-t", "f_contrasts": "-f",
        "exchangeability_blocks": "-e", "n_perm": "-n", "tfce_H": "--tfce_H", "tfce_E": "--tfce_E",
        "H": "--tfce_H", "E": "--tfce_E", "tfce_dh": "--tfce_D", "dh": "--tfce_D",
        "connectivity": "--tfce_C", "tfce_mode": "--tfce-mode", "mode": "--tfce-mode",
        "n_jobs": "--n-jobs", "checkpoint_dir": "--checkpoint-dir", "scheduler": "--scheduler",
        "executor": "--executor", "cluster_threshold": "-c/-C", "cluster_threshold_f": "-F/-S",
        "rng": "--seed", "output": "-o", "variance_groups": "--vg",
        "correct_across_contrasts": "--corrcon", "two_sided": "--twotail", "surf": "--surf", "areas": "--area",
        "left_surf": "--left-surf", "right_surf": "--right-surf", "left_area": "--left-area",
        "right_area": "--right-area",
    },
    "tfce": {
        "stat": "IN", "stat_img": "IN", "mask": "--mask", "mask_img": "--mask", "E": "-E", "H": "-H",
        "dh": "--dh", "mode": "--mode", "connectivity": "--connectivity", "output": "OUT",
        "surf": "--surf", "areas": "--area", "left_surf": "--left-surf", "right_surf": "--right-surf",
        "left_area": "--left-area", "right_area": "--right-area", "imgs": "IN",
    },
    "cluster": {
        "stat_img": "STAT", "p_img": "--p", "p_convention": "--p-convention", "alpha": "--alpha",
        "threshold": "--threshold", "sign": "--sign", "connectivity": "--connectivity",
        "min_size": "--min-size", "atlas_img": "--atlas", "atlas_labels": "--atlas-labels",
        "output": "-o/--out-index", "surf": "--surf", "areas": "--area", "min_area": "--min-size",
        "mask_img": "--mask",
    },
}
# Options whose value may start with '-' (argparse would read "-1" as an option).
_DASHED_VALUES = ("--n-jobs", "--p-convention")


class CLIError(Exception):
    """An error reported as one line on stderr, exit code 1."""


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default, unless its help already says it or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, False)
                or action.default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


# --------------------------------------------------------------------------- parser


def _get_parser():
    parser = argparse.ArgumentParser(
        prog="voxstats",
        description="Voxel-wise permutation inference with exact TFCE. Run 'voxstats COMMAND --help' "
        "for a command's options.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"voxstats {voxstats.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{randomise,tfce,cluster}")

    r = sub.add_parser(
        "randomise",
        formatter_class=_HelpFormatter,
        help="permutation GLM with FSL randomise's options and outputs",
        description="Permutation inference with FSL randomise's option names, output names "
        "and value conventions (t contrasts are one-sided, positive).",
    )
    r.add_argument("-i", dest="input", required=True, metavar="IN",
                   help="4D NIfTI, or a text file listing 3D NIfTI paths one per line; surfaces: GIFTI, "
                   "FreeSurfer curv or MGH/MGZ per-vertex maps (one file per subject, listed, or one file "
                   "holding all); CIFTI: .dscalar.nii/.dtseries.nii")
    r.add_argument("-o", dest="output", required=True, metavar="OUT", help="output prefix")
    r.add_argument("-d", dest="design", metavar="DESIGN", help="design.mat (VEST) or CSV/TSV with a header")
    r.add_argument("-t", dest="tcon", metavar="CON", help="t contrasts: design.con or CSV/TSV naming design columns")
    r.add_argument("-f", dest="fcon", metavar="FTS", help="F contrasts: design.fts or CSV/TSV naming t contrasts")
    r.add_argument("-m", dest="mask", metavar="MASK",
                   help="mask image: voxels finite and non-zero (default: voxels not constant across "
                   "subjects and finite in all, as randomise)")
    r.add_argument("--norcmask", action="store_true",
                   help="without -m, keep voxels that are constant across subjects (as randomise)")
    _surface_options(r)
    r.add_argument("-e", dest="blocks", metavar="GRP", help="exchangeability blocks (design.grp)")
    r.add_argument("--permuteBlocks", dest="whole_blocks", action="store_true",
                   help="permute whole blocks (with -e) instead of within blocks")
    r.add_argument("--eb", metavar="CSV",
                   help="PALM's multi-level exchangeability blocks (-eb): one row per input image, one "
                        "column per level; positive indices shuffle the next level as whole blocks")
    r.add_argument("-n", dest="n_perm", type=int, default=5000,
                   help="number of permutations; 0: all distinct rearrangements (exhaustive)")
    r.add_argument("--vg", dest="vg", metavar="FILE|auto",
                   help="variance groups (PALM -vg): one label per subject, or 'auto' for PALM's groups from -e; "
                   "t becomes Aspin-Welch v and F becomes G, compared as z")
    r.add_argument("--corrcon", action="store_true",
                   help="also FWE-correct over all contrasts (PALM -corrcon): *_cfwep_* outputs")
    r.add_argument("--twotail", action="store_true",
                   help="two-tailed t/v tests (PALM -twotail: |t|); default one-sided positive as randomise")
    r.add_argument("-T", dest="tfce", action="store_true",
                   help="TFCE (H=2, E=0.5, 6-connectivity; on surfaces E=1, area-weighted, mesh neighbours)")
    r.add_argument("--T2", dest="tfce2d", action="store_true", help="2D TFCE (H=2, E=1, 26-connectivity)")
    r.add_argument("-x", dest="vox_corrp", action="store_true", help="write voxel-wise FWE-corrected p")
    r.add_argument("--uncorrp", action="store_true", help="write uncorrected p")
    r.add_argument("-c", dest="cluster_e", type=float, metavar="THR", help="cluster extent FWE p, t threshold")
    r.add_argument("-C", dest="cluster_m", type=float, metavar="THR", help="cluster mass FWE p, t threshold")
    r.add_argument("-F", dest="cluster_e_f", type=float, metavar="THR", help="cluster extent FWE p, F threshold")
    r.add_argument("-S", dest="cluster_m_f", type=float, metavar="THR", help="cluster mass FWE p, F threshold")
    r.add_argument("-D", dest="demean", action="store_true", help="demean data and design")
    r.add_argument("-1", dest="one_sample", action="store_true", help="one-sample group mean (sign flipping)")
    r.add_argument("--seed", type=int, help="random seed (drawn and recorded when omitted)")
    r.add_argument("--tfce_H", type=float, help="TFCE height power (default 2)")
    r.add_argument("--tfce_E", type=float,
                   help="TFCE extent power (default 0.5, 1 with --T2 and on surfaces; CIFTI: 1 on cortex, "
                   "0.5 in volume structures)")
    r.add_argument("--tfce_C", type=int, choices=(6, 18, 26), help="TFCE connectivity (default 6, 26 with --T2)")
    r.add_argument("--tfce_D", type=float, metavar="DH", help="TFCE fixed step; implies --tfce-mode fsl")
    r.add_argument("--tfce-mode", choices=("exact", "fsl"), default=None,
                   help="TFCE integral (default exact; fsl with --tfce_D)")
    r.add_argument("--n-jobs", type=int, default=1,
                   help="threads, -1 for all; with --executor dask and no --scheduler, worker processes")
    r.add_argument("--checkpoint-dir", metavar="DIR",
                   help="write each finished chunk of permutations to DIR, so that a killed run can resume")
    r.add_argument("--resume", action="store_true",
                   help="continue the run checkpointed in --checkpoint-dir (same inputs and options)")
    r.add_argument("--executor", choices=("local", "dask"), default="local",
                   help="run chunks here (local) or on a Dask cluster (needs voxstats[distributed])")
    r.add_argument("--scheduler", metavar="ADDRESS",
                   help="Dask scheduler address (tcp://host:8786); default: start a LocalCluster")
    r.add_argument("--logp", action="store_true", help="write -log10 p instead of 1 - p")
    r.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier run (and remove those its record lists that "
                   "this run does not write)")
    r.set_defaults(func=_run_randomise)

    t = sub.add_parser(
        "tfce", formatter_class=_HelpFormatter, help="TFCE transform of a map (like fslmaths -tfce)",
        description="Threshold-free cluster enhancement (Smith & Nichols 2009) of one 3D statistic map, "
        "written as a NIfTI image in the input's space. The exact integral by default; --mode fsl gives "
        "fslmaths -tfce's stepped sum. Both signs are enhanced (negative values keep their sign) unless "
        "--positive-only.")
    t.add_argument("input", metavar="IN", help="3D statistic map, or one map on a surface (GIFTI, curv, "
                   "MGH/MGZ, with --surf) or CIFTI (.dscalar.nii, with --left-surf/--right-surf)")
    t.add_argument("output", metavar="OUT", help="output TFCE map, in IN's format (.nii/.nii.gz, .func.gii, "
                   ".mgh/.mgz, .dscalar.nii)")
    t.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=6,
                   help="voxel neighbourhood: faces (6), edges (18) or corners (26)")
    t.add_argument("-E", dest="E", type=float, default=None,
                   help="extent power (default 0.5; 1 on surfaces; CIFTI: 1 on cortex, 0.5 in volume structures)")
    t.add_argument("-H", dest="H", type=float, default=2.0, help="height power")
    t.add_argument("--mode", choices=("exact", "fsl"), default="exact",
                   help="exact integral, or FSL's sum over fixed steps")
    t.add_argument("--dh", type=float, help="fixed step (fsl mode; default: max of the map / 100)")
    t.add_argument("--mask", help="mask image: voxels finite and non-zero are enhanced, others are 0 "
                   "(default: every voxel)")
    t.add_argument("--positive-only", action="store_true",
                   help="enhance positive values only, as fslmaths -tfce (default: both signs)")
    _surface_options(t)
    t.add_argument("--overwrite", action="store_true", help="replace an existing output")
    t.set_defaults(func=_run_tfce)

    c = sub.add_parser(
        "cluster", formatter_class=_HelpFormatter, help="cluster table of a statistic map and a p map",
        description="Table the connected clusters of a 3D statistic map (TSV, one row per cluster, "
        "largest first), like FSL's cluster. A voxel is in a cluster when its statistic has the "
        "chosen sign, |STAT| exceeds --threshold (if given) and its p on PMAP is below --alpha (if "
        "--p is given). How PMAP stores p is read from its JSON sidecar ('p_convention') or from "
        "the voxstats randomise record beside it; otherwise --p-convention is required.")
    c.add_argument("input", metavar="STAT", help="3D statistic map")
    c.add_argument("--p", dest="p_img", metavar="PMAP", help="p map in the space of STAT")
    c.add_argument("--p-convention", choices=("p", "1-p", "-log10(p)", "logp"), default=None,
                   help="how PMAP stores p: p, randomise's 1-p, or -log10(p) (logp: the same) "
                   "(default: from PMAP's JSON sidecar or randomise record; required otherwise)")
    c.add_argument("--alpha", type=float, default=0.05, help="significance level on PMAP")
    c.add_argument("--threshold", type=float, help="cluster-forming threshold on |STAT| (default: none)")
    c.add_argument("--sign", choices=("pos", "neg", "both"), default="pos",
                   help="positive clusters, negative ones, or both (labelled apart)")
    c.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=26,
                   help="voxel neighbourhood: faces (6), edges (18) or corners (26, as FSL's cluster)")
    c.add_argument("--min-size", type=float, default=None,
                   help="smallest cluster kept: voxels (default 1), or mm² on surfaces (default 0)")
    c.add_argument("--surf", metavar="SURF", help="surface STAT: its mesh (.surf.gii or FreeSurfer surface); "
                   "peaks are reported on it")
    c.add_argument("--area", metavar="AREA", help="surface STAT: vertex areas (file or number) for the "
                   "cluster areas (default: the mesh's)")
    c.add_argument("--mask", metavar="MASK", help="surface STAT: vertices that may join clusters "
                   "(per-vertex file or .label)")
    c.add_argument("--atlas", metavar="LABELS", help="integer atlas image, to name each peak's region "
                   "(surfaces: FreeSurfer .annot or .label.gii)")
    c.add_argument("--atlas-labels", metavar="LUT", help="TSV with 'index' and 'name' columns")
    c.add_argument("-o", "--output", metavar="TSV", help="output table (default: stdout)")
    c.add_argument("--out-index", metavar="IMG", help="write the cluster index image (surfaces: .label.gii)")
    c.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    c.set_defaults(func=_run_cluster)
    return parser


def _surface_options(parser):
    """Meshes and vertex areas of surface and CIFTI inputs (PALM's -s surf [area])."""
    parser.add_argument("--surf", nargs="+", metavar="SURF [AREA]",
                        help="surface input: the mesh the maps are on (.surf.gii or FreeSurfer surface such as "
                        "lh.white), optionally followed by vertex areas (a per-vertex file or a number), as "
                        "PALM's -s surf [area]")
    parser.add_argument("--area", metavar="AREA",
                        help="surface input: vertex areas for cluster extents and TFCE (file or number; "
                        "default: a third of each adjacent triangle's area on --surf)")
    parser.add_argument("--left-surf", metavar="SURF", help="CIFTI input: the left hemisphere's mesh")
    parser.add_argument("--right-surf", metavar="SURF", help="CIFTI input: the right hemisphere's mesh")
    parser.add_argument("--left-area", metavar="AREA", help="CIFTI input: the left mesh's vertex areas")
    parser.add_argument("--right-area", metavar="AREA", help="CIFTI input: the right mesh's vertex areas")


def _area_value(text, flag="--area"):
    """An area option: a number (every vertex weighs that) or a file name."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    if not value > 0:
        raise CLIError(f"{flag}: expected a file or a number > 0, got {text}")
    return value


def _surface_kwargs(args):
    """The library's surface options from --surf [AREA], --area, --left-surf, ... (only those given)."""
    surf = getattr(args, "surf", None)
    areas = _area_value(getattr(args, "area", None))
    if surf:
        if len(surf) > 2:
            raise CLIError(f"--surf: expected a mesh and optionally vertex areas, got {len(surf)} values")
        if len(surf) == 2:
            if areas is not None:
                raise CLIError("--surf SURF AREA and --area both give vertex areas; give one")
            areas = _area_value(surf[1], "--surf")
        surf = surf[0]
    out = {"surf": surf, "areas": areas, "left_surf": getattr(args, "left_surf", None),
           "right_surf": getattr(args, "right_surf", None),
           "left_area": _area_value(getattr(args, "left_area", None), "--left-area"),
           "right_area": _area_value(getattr(args, "right_area", None), "--right-area")}
    return {key: value for key, value in out.items() if value is not None}


# --------------------------------------------------------------------------- helpers


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions():
    import importlib.metadata

    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = getattr(sys.modules.get(name), "__version__", None)
    out["voxstats"] = voxstats.__version__
    return out


def _check_outputs(paths, overwrite, flag):
    """Every output can be written (and none exists unless --overwrite), before any long work."""
    from voxstats.outputs import check_outputs

    check_outputs(paths, overwrite=overwrite, flag=flag)


def _earlier_outputs(json_path, prefix):
    """Files the earlier run's record lists under this -o prefix (to remove once replaced).

    Only files named ``<prefix>_*`` in the prefix's folder are ever removed,
    whatever a hand-edited record says. An unreadable record stops the run:
    its outputs cannot be told apart from others.
    """
    if not json_path.exists():
        return []
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
        listed = record["outputs"]
        if not isinstance(listed, list):
            raise TypeError("'outputs' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"-o {prefix}: --overwrite cannot tell which files the earlier run wrote: its "
                       f"record {json_path} is unreadable ({type(exc).__name__}: {exc}); remove the earlier "
                       "outputs by hand or choose another -o") from None
    prefix = Path(prefix)
    own = []
    for item in listed:
        path = Path(str(item))
        if path.parent.resolve() == prefix.parent.resolve() and path.name.startswith(f"{prefix.name}_"):
            own.append(prefix.parent / path.name)
    return own


def _p_values(p, logp):
    import numpy as np

    p = np.asarray(p, dtype=np.float64)
    return -np.log10(p) if logp else 1.0 - p


def _element_name(masker):
    """What the masker's elements are called in the summary."""
    return {"surface": "vertices", "cifti": "grayordinates"}.get(getattr(masker, "kind", "volume"), "voxels")


def _jsonable_index(index):
    """A masker position's index as JSON: [i, j, k], a vertex number, or [structure, vertex or [i, j, k]]."""
    if isinstance(index, (int, float)) or hasattr(index, "__index__"):
        return int(index)
    return [_jsonable_index(v) if not isinstance(v, str) else v for v in index]


def _where(index):
    """'voxel (i, j, k)', 'vertex 123' or 'CIFTI_STRUCTURE_... vertex 123 / voxel (i, j, k)'."""
    if isinstance(index, int):
        return f"vertex {index}"
    if index and isinstance(index[0], str):
        structure, element = index
        return f"{structure} {_where(element)}"
    return f"voxel {tuple(index)}"


def _peak(masker, values):
    """Return (max, index, xyz) of ``values`` over the masker's elements."""
    import numpy as np

    k = int(np.argmax(values))
    index, xyz = masker.position(k)
    return float(values[k]), index, xyz


# --------------------------------------------------------------------------- randomise


def _tfce_settings(args):
    if args.tfce and args.tfce2d:
        raise CLIError("-T and --T2 are exclusive; give one of them.")
    tuning = (args.tfce_H, args.tfce_E, args.tfce_C, args.tfce_D, args.tfce_mode)
    if not (args.tfce or args.tfce2d):
        if any(v is not None for v in tuning):
            raise CLIError("--tfce_H, --tfce_E, --tfce_C, --tfce_D and --tfce-mode need -T or --T2.")
        return None
    # E None: by element kind in the library (0.5 in volumes, 1 on surfaces)
    E, H, C = (1.0, 2.0, 26) if args.tfce2d else (None, 2.0, 6)
    mode = args.tfce_mode or ("fsl" if args.tfce_D is not None else "exact")
    if args.tfce_D is not None and mode != "fsl":
        raise CLIError("--tfce_D sets a fixed step, which needs --tfce-mode fsl (or no --tfce-mode).")
    if args.tfce_D is not None and not args.tfce_D > 0:
        raise CLIError(f"--tfce_D: expected a step > 0, got {args.tfce_D}.")
    return {
        "tfce_E": E if args.tfce_E is None else args.tfce_E,
        "tfce_H": H if args.tfce_H is None else args.tfce_H,
        "connectivity": C if args.tfce_C is None else args.tfce_C,
        "tfce_mode": mode,
        "tfce_dh": args.tfce_D,
    }


def _one_threshold(a, b, flag_a, flag_b):
    if a is not None and b is not None and a != b:
        raise CLIError(f"{flag_a} {a} and {flag_b} {b}: extent and mass share one cluster-forming "
                       "threshold here; give the same value or run twice.")
    return a if a is not None else b


def _load_model(args):
    """Design, t contrasts, F contrasts and blocks from the option files."""
    import numpy as np

    from voxstats.design_files import read_contrasts, read_design, read_f_contrasts

    if args.one_sample:
        if args.design or args.tcon or args.fcon:
            raise CLIError("-1 is a one-sample test on its own design; do not combine it with -d, -t or -f.")
        return None, {"C1": np.array([1.0])}, None
    if not args.design or not args.tcon:
        raise CLIError("randomise needs -d DESIGN and -t CONTRASTS (or -1 for a one-sample test).")
    design = read_design(args.design)
    tcons = read_contrasts(args.tcon, design_columns=list(design.columns))
    fcons = read_f_contrasts(args.fcon, t_contrasts=tcons) if args.fcon else None
    return design, tcons, fcons


def _randomise_outputs(args, n_t, n_f, tfce, welch=False, suffix=".nii.gz"):
    """Output file names per (kind, index): {(kind, i): {suffix: path}}.

    With variance groups the statistics are named as PALM names them: ``vstat``
    (t contrasts) and ``gstat`` (F contrasts), with their z maps ``zvstat``,
    ``zgstat``. ``--corrcon`` adds ``*_cfwep_*`` maps (PALM's name; the
    values follow the p convention of the other maps).
    """
    out = {}
    for kind, n, cl_e, cl_m in (("t", n_t, args.cluster_e, args.cluster_m),
                                ("f", n_f, args.cluster_e_f, args.cluster_m_f)):
        for i in range(1, n + 1):
            stat = f"{'vg'[kind == 'f'] if welch else kind}stat{i}"
            names = {"stat": stat}
            if welch:
                names["z"] = f"z{stat}"
            if args.uncorrp:
                names["vox_p"] = f"vox_p_{stat}"
            if args.vox_corrp:
                names["vox_corrp"] = f"vox_corrp_{stat}"
                if args.corrcon:
                    names["vox_cfwep"] = f"vox_cfwep_{stat}"
            if tfce:
                names["tfce"] = f"tfce_{stat}"
                names["tfce_corrp"] = f"tfce_corrp_{stat}"
                if args.uncorrp:
                    names["tfce_p"] = f"tfce_p_{stat}"
                if args.corrcon:
                    names["tfce_cfwep"] = f"tfce_cfwep_{stat}"
            if cl_e is not None:
                names["clustere_corrp"] = f"clustere_corrp_{stat}"
                if args.corrcon:
                    names["clustere_cfwep"] = f"clustere_cfwep_{stat}"
            if cl_m is not None:
                names["clusterm_corrp"] = f"clusterm_corrp_{stat}"
                if args.corrcon:
                    names["clusterm_cfwep"] = f"clusterm_cfwep_{stat}"
            out[(kind, i)] = {key: Path(f"{args.output}_{name}{suffix}") for key, name in names.items()}
    return out


def _randomise_inputs(args):
    """-i as the library takes it, and the number of subjects (headers only)."""
    from voxstats.image import check_img
    from voxstats.loading import is_image_path, read_image_list
    from voxstats.surface_loading import count_maps, input_kind

    if input_kind(args.input, name="-i") != "volume":  # surface or CIFTI maps, one per subject
        imgs = str(args.input)
        n_subjects = count_maps(args.input, name="-i")
    elif is_image_path(args.input):
        imgs, n_subjects = str(args.input), check_img(args.input, name="-i", ndim=4).shape[3]
    else:
        imgs = [str(p) for p in read_image_list(args.input, name="-i")]
        n_subjects = len(imgs)
    if n_subjects < 2:
        raise CLIError(f"-i: expected at least 2 subjects, got {n_subjects} in {args.input}")
    return imgs, n_subjects


def _run_randomise(args):
    import numpy as np

    from voxstats.checkpoint import RunInterrupted, recorded_seed
    from voxstats.design_files import read_blocks, read_exchangeability_blocks
    from voxstats.exchangeability import ExchangeabilityTree
    from voxstats.executor import ExecutorLost
    from voxstats.variance_groups import read_variance_groups, resolve_variance_groups
    from voxstats.outputs import atomic_write_text

    if args.n_perm < 0:
        raise CLIError(f"-n: expected a number of permutations >= 0 (0 enumerates all distinct "
                       f"rearrangements, as does any number at least as large), got {args.n_perm}.")
    tfce = _tfce_settings(args)
    thr_t = _one_threshold(args.cluster_e, args.cluster_m, "-c", "-C")
    thr_f = _one_threshold(args.cluster_e_f, args.cluster_m_f, "-F", "-S")
    if args.eb and (args.blocks or args.whole_blocks):
        raise CLIError("--eb defines every level of shuffling itself; do not combine it with -e or --permuteBlocks.")
    if args.whole_blocks and not args.blocks:
        raise CLIError("--permuteBlocks needs -e BLOCKS.")
    if args.resume and not args.checkpoint_dir:
        raise CLIError("--resume needs --checkpoint-dir DIR.")
    if args.scheduler and args.executor != "dask":
        raise CLIError("--scheduler needs --executor dask.")
    design, tcons, fcons = _load_model(args)
    if (args.cluster_e_f is not None or args.cluster_m_f is not None) and not fcons:
        raise CLIError("-F and -S need F contrasts (-f).")

    imgs, n_subjects = _randomise_inputs(args)
    if design is None:  # -1
        design = np.ones((n_subjects, 1))
    if len(design) != n_subjects:
        raise CLIError(f"{args.design}: expected {n_subjects} rows (one per input image), got {len(design)}.")
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
    groups = None
    if args.vg == "auto":
        if blocks is None:
            raise CLIError("--vg auto derives variance groups from exchangeability blocks: give -e BLOCKS or --eb CSV.")
        groups = resolve_variance_groups("auto", n_subjects, exchangeability_blocks=blocks,
                                         whole_blocks=args.whole_blocks)
    elif args.vg:
        labels = read_variance_groups(args.vg)
        if len(labels) != n_subjects:
            raise CLIError(f"{args.vg}: expected {n_subjects} variance group labels (one per input image), "
                           f"got {len(labels)}.")
        groups = resolve_variance_groups(labels, n_subjects)

    from voxstats.surface_loading import output_suffix

    suffix = output_suffix(imgs, name="-i")
    if tfce is not None and tfce["tfce_E"] is None:  # CIFTI: None, E by structure in the library
        tfce["tfce_E"] = {".nii.gz": 0.5, ".dscalar.nii": None}.get(suffix, 1.0)
    outputs = _randomise_outputs(args, len(tcons), len(fcons or {}), tfce is not None, welch=groups is not None,
                                 suffix=suffix)
    json_path = Path(f"{args.output}.json")
    _check_outputs([p for names in outputs.values() for p in names.values()] + [json_path], args.overwrite, "-o")
    earlier = _earlier_outputs(json_path, args.output) if args.overwrite else []
    if args.norcmask and args.mask:
        logger.warning("--norcmask has no effect with -m (as in randomise): the mask is -m's")

    seed = args.seed
    if seed is None and args.resume:
        seed = recorded_seed(args.checkpoint_dir)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**32))
    options = dict(
        f_contrasts=fcons,
        mask_img=args.mask,
        keep_constant=args.norcmask,
        n_perm=args.n_perm,
        tfce=tfce is not None,
        cluster_threshold=thr_t,
        cluster_threshold_f=thr_f,
        two_sided=bool(args.twotail),
        variance_groups=groups,
        correct_across_contrasts=bool(args.corrcon),
        demean=args.demean,
        sign_flip=args.one_sample,
        exchangeability_blocks=blocks,
        whole_blocks=args.whole_blocks,
        rng=seed,
        n_jobs=args.n_jobs,
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        executor=args.executor,
        scheduler=args.scheduler,
        verbose=not args.quiet,
    )
    if tfce is not None:
        options.update(tfce)
    options.update(_surface_kwargs(args))
    again = list(args.argv) + ([] if args.resume else ["--resume"])
    again += [] if args.seed is not None else ["--seed", str(seed)]
    try:
        res = voxstats.randomise(imgs, design, tcons, **options)
    except RunInterrupted as stop:
        print(f"voxstats randomise: stopped by {stop.signal_name}; finished chunks are kept in "
              f"{args.checkpoint_dir}. To continue: voxstats {shlex.join(again)}", file=sys.stderr)
        return 128 + stop.signum
    except ExecutorLost as lost:
        kept = (f"finished chunks are kept in {args.checkpoint_dir}. To continue: voxstats {shlex.join(again)}"
                if args.checkpoint_dir else "no chunk was kept (run with --checkpoint-dir DIR to keep them)")
        print(f"voxstats randomise: error: {lost}; {kept}", file=sys.stderr)
        return 1

    written, p_maps = [], []
    summary = []
    counts = {"t": 0, "f": 0}
    for contrast in res.contrasts:
        kind = "t" if contrast.kind in ("t", "v") else "f"
        counts[kind] += 1
        index = counts[kind]
        names = outputs[(kind, index)]
        stat_name = names["stat"].name[len(Path(args.output).name) + 1:-len(suffix)]

        def cfwe(values):
            return None if values is None else _p_values(values, args.logp)

        maps = {
            "stat": contrast.stat,
            "z": contrast.z,
            "vox_cfwep": cfwe(contrast.p_cfwe),
            "tfce_cfwep": cfwe(contrast.tfce_p_cfwe),
            "clustere_cfwep": cfwe(contrast.cluster_extent_p_cfwe),
            "clusterm_cfwep": cfwe(contrast.cluster_mass_p_cfwe),
            "vox_p": None if "vox_p" not in names else _p_values(contrast.p, args.logp),
            "vox_corrp": None if "vox_corrp" not in names else _p_values(contrast.p_fwe, args.logp),
            "tfce": contrast.tfce,
            "tfce_corrp": None if contrast.tfce_p_fwe is None else _p_values(contrast.tfce_p_fwe, args.logp),
            "tfce_p": None if contrast.tfce_p is None else _p_values(contrast.tfce_p, args.logp),
            "clustere_corrp": None if contrast.cluster_extent_p_fwe is None
            else _p_values(contrast.cluster_extent_p_fwe, args.logp),
            "clusterm_corrp": None if contrast.cluster_mass_p_fwe is None
            else _p_values(contrast.cluster_mass_p_fwe, args.logp),
        }
        for key, path in names.items():
            res.masker.save(np.asarray(maps[key], dtype=np.float32), path)
            written.append(str(path))
            if key not in ("stat", "tfce"):
                p_maps.append(str(path))
        peak, ijk, xyz = _peak(res.masker, np.asarray(contrast.stat))
        summary.append({
            "name": contrast.name,
            "output": stat_name,
            "statistic": contrast.kind,
            "df2_range": None if contrast.df2 is None else [float(np.min(contrast.df2)), float(np.max(contrast.df2))],
            "n_fwe_voxel": int(np.sum(np.asarray(contrast.p_fwe) < 0.05)),
            "n_fwe_tfce": None if contrast.tfce_p_fwe is None else int(np.sum(np.asarray(contrast.tfce_p_fwe) < 0.05)),
            "max_stat": peak,
            "max_voxel": _jsonable_index(ijk),
            "max_mm": [round(float(v), 3) for v in xyz],
            "tfce_dh": contrast.tfce_dh,
        })

    inputs = [args.input] + ([] if isinstance(imgs, str) else imgs)
    inputs += [p for p in (args.design, args.tcon, args.fcon, args.mask, args.blocks, args.eb) if p]
    inputs += [p for key, p in _surface_kwargs(args).items() if isinstance(p, str) and Path(p).is_file()]
    if args.vg and args.vg != "auto":
        inputs.append(args.vg)
    record = {
        "command": "voxstats randomise",
        "argv": args.argv,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "argv")},
        "library_call": {k: v for k, v in options.items()
                         if k not in ("f_contrasts", "exchangeability_blocks", "variance_groups")},
        "variance_groups": None if groups is None else {
            "labels": [str(v) for v in groups.labels], "sizes": groups.sizes.tolist(),
            "of_subject": groups.codes.tolist()},
        "seed": seed,
        "n_perm_requested": args.n_perm,
        "n_perm": int(res.n_perm),
        "exhaustive": bool(res.exhaustive),
        "n_possible": int(res.n_possible),
        "enumeration": res.enumeration,
        "scheme": res.scheme,
        "df": res.df if isinstance(res.df, (int, float, type(None))) else np.asarray(res.df).tolist(),
        "n_subjects": n_subjects,
        "n_voxels": int(res.masker.n_elements),
        "t_contrasts": {k: np.asarray(v).tolist() for k, v in tcons.items()},
        "f_contrasts": None if not fcons else {k: np.asarray(v).tolist() for k, v in fcons.items()},
        "p_convention": "-log10(p)" if args.logp else "1-p",
        "tail": "two-sided" if args.twotail else "greater",
        "versions": _versions(),
        "sha256": {str(p): _sha256(p) for p in inputs},
        "outputs": written,
        "p_maps": p_maps,
        "summary": summary,
    }
    atomic_write_text(json_path, json.dumps(record, indent=2, default=str) + "\n")
    for stale in earlier:  # --overwrite: what the earlier run wrote and this one did not
        if str(stale) not in written and stale.exists():
            stale.unlink()
            logger.info("Removed %s, written by the earlier run and not by this one", stale)
    if not args.quiet:
        exact = "exhaustive" if res.exhaustive else "random"
        print(f"{res.n_perm} permutations ({exact}, {res.scheme}), seed {seed}, "
              f"{record['n_voxels']} {_element_name(res.masker)}; outputs {args.output}_*{suffix} and {json_path}")
        for s in summary:
            tfce_txt = "" if s["n_fwe_tfce"] is None else f", TFCE {s['n_fwe_tfce']}"
            mm = ", ".join(f"{v:.1f}" for v in s["max_mm"])
            print(f"{s['output']} ({s['name']}): FWE p<0.05 {_element_name(res.masker)}: voxel "
                  f"{s['n_fwe_voxel']}{tfce_txt}; max {s['max_stat']:.4g} at {_where(s['max_voxel'])} = ({mm}) mm")
    return 0


# --------------------------------------------------------------------------- tfce, cluster


def _run_tfce(args):
    import nibabel as nib
    import numpy as np

    from voxstats.image import check_img, read_data
    from voxstats.loading import check_mask
    from voxstats.outputs import save_img_atomic
    from voxstats.tfce import tfce

    if args.dh is not None and args.mode != "fsl":
        raise CLIError("--dh sets a fixed step, which needs --mode fsl.")
    _check_outputs([args.output], args.overwrite, "OUT")
    from voxstats.surface_loading import input_kind, output_suffix

    surface = _surface_kwargs(args)
    if input_kind(args.input, name="IN") != "volume":
        from voxstats.surface_loading import load_surface_map, surface_tfce

        suffix = output_suffix(args.input, name="IN")
        if not str(args.output).lower().endswith(".gii" if suffix == ".func.gii" else suffix):
            raise CLIError(f"OUT: {args.input} is written in its own format: give a name ending in {suffix}")
        values, masker = load_surface_map(args.input, args.mask, name="IN", mask_name="--mask", **surface)
        out = surface_tfce(values, masker, connectivity=args.connectivity, E=args.E, H=args.H, mode=args.mode,
                           dh=args.dh, two_sided=not args.positive_only)
        masker.save(np.asarray(out, dtype=np.float32), args.output)
        return 0
    if surface:
        raise CLIError(f"--{next(iter(surface)).replace('_', '-').replace('areas', 'area')}: only for surface "
                       "(GIFTI, FreeSurfer) or CIFTI input")
    img = check_img(args.input, name="IN", ndim=3)
    mask = None if args.mask is None else check_mask(args.mask, name="--mask", reference=img)[0]
    data = read_data(img, name="IN", dtype=np.float64)
    out = tfce(data, mask=mask, connectivity=args.connectivity, E=0.5 if args.E is None else args.E, H=args.H,
               mode=args.mode, dh=args.dh, two_sided=not args.positive_only)
    out_img = nib.Nifti1Image(np.asarray(out, dtype=np.float32), img.affine, img.header)
    out_img.set_data_dtype(np.float32)
    save_img_atomic(out_img, args.output)
    return 0


def _lut(path):
    from voxstats.cluster_table import read_atlas_labels

    return read_atlas_labels(path)


def _run_cluster(args):
    from voxstats.cluster_table import cluster_table
    from voxstats.outputs import save_img_atomic

    if args.atlas_labels and not args.atlas:
        raise CLIError("--atlas-labels needs --atlas.")
    if args.p_img is None and args.threshold is None:
        raise CLIError("give --threshold, --p PMAP, or both, to define clusters.")
    _check_outputs([p for p in (args.output, args.out_index) if p], args.overwrite, "-o/--out-index")
    from voxstats.surface_loading import input_kind

    kind = input_kind(args.input, name="STAT")
    if kind == "cifti":
        raise CLIError("STAT: cluster tables of CIFTI maps are not supported; separate the cortical "
                       "structures (wb_command -cifti-separate) and give each with its --surf")
    if kind == "surface":
        from voxstats.surface_clusters import surface_cluster_table

        if args.surf is None:
            raise CLIError("--surf: a surface map needs the mesh it is on")
        if args.out_index and not str(args.out_index).lower().endswith(".label.gii"):
            raise CLIError(f"--out-index: surface clusters are written as GIFTI labels: give a name ending in "
                           f".label.gii, got {args.out_index}")
        res = surface_cluster_table(
            args.input, args.surf, p_img=args.p_img, p_convention=args.p_convention, alpha=args.alpha,
            threshold=args.threshold, sign=args.sign, mask_img=args.mask, areas=_area_value(args.area),
            min_area=0.0 if args.min_size is None else args.min_size, atlas_img=args.atlas,
            atlas_labels=None if args.atlas_labels is None else _lut(args.atlas_labels))
        if args.out_index:
            res.save_labels(args.out_index)
        if args.output:
            res.to_tsv(args.output)
        else:
            sys.stdout.write(res.table.to_csv(sep="\t", index=False, float_format="%.6g"))
        return 0
    for flag, value in (("--surf", args.surf), ("--area", args.area), ("--mask", args.mask)):
        if value is not None:
            raise CLIError(f"{flag}: only for a surface STAT (GIFTI, FreeSurfer curv or MGH/MGZ)")
    min_size = 1 if args.min_size is None else args.min_size
    if int(min_size) != min_size:
        raise CLIError(f"--min-size: expected a whole number of voxels, got {args.min_size}")
    res = cluster_table(
        args.input, p_img=args.p_img, p_convention=args.p_convention, alpha=args.alpha,
        threshold=args.threshold, sign=args.sign, connectivity=args.connectivity,
        min_size=int(min_size), atlas_img=args.atlas, atlas_labels=args.atlas_labels,
    )
    if args.out_index:
        save_img_atomic(res.labels_img, args.out_index)
    if args.output:
        res.to_tsv(args.output)
    else:
        sys.stdout.write(res.table.to_csv(sep="\t", index=False, float_format="%.6g"))
    return 0


# --------------------------------------------------------------------------- entry point


def _join_dashed_values(argv):
    """``--n-jobs -1`` -> ``--n-jobs=-1``: argparse takes ``-1`` for an option otherwise."""
    out = list(argv)
    i = 0
    while i < len(out) - 1:
        if out[i] in _DASHED_VALUES and re.fullmatch(r"-\d+|-log10\(p\)", out[i + 1]):
            out[i:i + 2] = [f"{out[i]}={out[i + 1]}"]
        i += 1
    return out


def _message(err, command):
    """One line, with the library's parameter names replaced by this command's flags."""
    flags = _FLAGS.get(command, {})
    text = err.renamed(flags) if hasattr(err, "renamed") else str(err)
    if isinstance(err, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]

    def flag(match):
        return flags.get(match.group(1), match.group(0))

    text = re.sub(r"^(\w+):", lambda m: f"{flags[m.group(1)]}:" if m.group(1) in flags else m.group(0), text)
    text = re.sub(r"the '(\w+)' parameter", lambda m: flag(m) if m.group(1) in flags else m.group(0), text)
    text = re.sub(r"'(\w+)'", lambda m: flags[m.group(1)] if m.group(1) in flags else m.group(0), text)
    return " ".join(text.split())


def _output_lock(args):
    """The lock on this command's outputs while it runs (see voxstats.outputs.output_lock)."""
    import contextlib

    target = getattr(args, "output", None) or getattr(args, "out_index", None)
    if target is None:
        return contextlib.nullcontext()
    from voxstats.outputs import output_lock

    flag = {"randomise": "-o", "tfce": "OUT", "cluster": "-o"}.get(args.command, "output")
    return output_lock(target, flag=flag)


def main(argv=None):
    """Run the ``voxstats`` command.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after the program name (``sys.argv[1:]`` when omitted).

    Returns
    -------
    int
        0 on success, 1 on a reported error (one line on stderr naming the file
        or the flag), 130 when interrupted; argparse exits with 2 on a usage
        error.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _get_parser().parse_args(_join_dashed_values(argv))
    args.argv = argv
    if not getattr(args, "quiet", False):
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with _output_lock(args):
            return args.func(args)
    except (CLIError, ValueError, OSError, ImportError) as err:
        print(f"voxstats {args.command}: error: {_message(err, args.command)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"voxstats {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
