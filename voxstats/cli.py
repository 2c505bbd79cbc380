"""The ``voxstats`` command: ``randomise``, ``tfce`` and ``cluster``.

A thin layer over :func:`voxstats.randomise`, :func:`voxstats.tfce` and
:func:`voxstats.cluster_table.cluster_table`.  ``voxstats randomise`` takes
FSL randomise's option names and writes randomise's output names and value
conventions (1 - p, or -log10 p with ``--logp``), so a randomise user only
changes the command name (every randomise flag: :mod:`voxstats._cli_randomise`).
PALM's variance groups (``--vg``), FWE over contrasts (``--corrcon``) and
two-tailed tests (``--twotail``) come with PALM's output names (``vstat``,
``gstat``, ``_cfwep_``).

Every input goes through the readers of :mod:`voxstats.loading`; every output
is checked before any long work, locked while the run writes it, and written
atomically (:mod:`voxstats.outputs`). Errors are one line naming the file or
the command-line flag (library parameter names are translated). The heavy
modules (numba, SciPy, nibabel) are imported only once a command runs, so
``voxstats --help`` is quick.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import re
import sys
from pathlib import Path

import voxstats
from voxstats._cli_randomise import FLAGS as _RANDOMISE_FLAGS
from voxstats._cli_randomise import UsageError

logger = logging.getLogger(__name__)

__all__ = ["main"]

_VERSIONED = ("voxstats", "numpy", "scipy", "numba", "nibabel", "pandas")

# Library parameter -> command-line flag, per subcommand, for error messages.
_FLAGS = {
    "randomise": _RANDOMISE_FLAGS,
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
        "mask_img": "--mask", "left_surf": "--left-surf", "right_surf": "--right-surf",
        "left_area": "--left-area", "right_area": "--right-area",
    },
}
# A negative number as an option's value (argparse reads "-5" as an unknown option in a parser that
# has a number-like option, such as randomise's -1).
_NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|-inf|-nan", re.IGNORECASE)
# Choices that start with '-'.
_DASHED_CHOICES = ("-log10(p)",)


class CLIError(Exception):
    """An error reported as one line on stderr, exit code 1."""


class _Parser(argparse.ArgumentParser):
    """argparse, with negative numbers read as values ("-n -5", "--tfce_H -2") unless they are flags (-1).

    A value out of range then meets the command's own one-line error, which names the flag.
    """

    def _parse_optional(self, arg_string):
        if _NEGATIVE_NUMBER.fullmatch(arg_string) and arg_string not in self._option_string_actions:
            return None
        return super()._parse_optional(arg_string)


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
    parser = _Parser(
        prog="voxstats",
        description="Voxel-wise permutation inference with exact TFCE. Run 'voxstats COMMAND --help' "
        "for a command's options.",
        epilog="Exit codes: 0 success; 1 bad input data or a failed run; 2 a usage error (a flag's value "
        "or a combination of flags); 130 interrupted. Same as qsm.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"voxstats {voxstats.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{randomise,tfce,cluster}")

    from voxstats._cli_randomise import add_parser as add_randomise

    add_randomise(sub, _HelpFormatter)

    t = sub.add_parser(
        "tfce", formatter_class=_HelpFormatter, help="TFCE transform of a map (like fslmaths -tfce)",
        description="Threshold-free cluster enhancement (Smith & Nichols 2009) of one statistic map (3D "
        "NIfTI, surface or CIFTI), written in the input's format and space. The exact integral by default "
        "(volumes, surfaces and CIFTI alike); --mode fsl gives fslmaths -tfce's stepped sum (not multiplied "
        "by the step). Both signs are enhanced (negative values keep their sign) unless --positive-only.")
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
        description="Table the connected clusters of a statistic map (TSV, one row per cluster, "
        "largest first), like FSL's cluster. A voxel is in a cluster when its statistic has the "
        "chosen sign, |STAT| exceeds --threshold (if given) and its p on PMAP is below --alpha (if "
        "--p is given). How PMAP stores p is read from its JSON sidecar ('p_convention') or from "
        "the voxstats randomise record beside it; otherwise --p-convention is required.")
    c.add_argument("input", metavar="STAT", help="3D statistic map, a surface map (GIFTI, curv, MGH/MGZ, with "
                   "--surf) or a CIFTI map (.dscalar.nii, with --left-surf/--right-surf)")
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
    c.add_argument("--surf", nargs="+", metavar="SURF [AREA]",
                   help="surface STAT: its mesh (.surf.gii or FreeSurfer surface), on which peaks are reported, "
                   "optionally followed by vertex areas (a per-vertex file or a number), as randomise --surf")
    c.add_argument("--area", metavar="AREA", help="surface STAT: vertex areas (file or number) for the "
                   "cluster areas (default: the mesh's)")
    c.add_argument("--mask", metavar="MASK", help="surface STAT: vertices that may join clusters "
                   "(per-vertex file or .label); CIFTI: a .dscalar.nii")
    c.add_argument("--left-surf", metavar="SURF", help="CIFTI STAT: the left hemisphere's mesh")
    c.add_argument("--right-surf", metavar="SURF", help="CIFTI STAT: the right hemisphere's mesh")
    c.add_argument("--left-area", metavar="AREA", help="CIFTI STAT: the left mesh's vertex areas")
    c.add_argument("--right-area", metavar="AREA", help="CIFTI STAT: the right mesh's vertex areas")
    c.add_argument("--atlas", metavar="LABELS", help="integer atlas image, to name each peak's region "
                   "(surfaces: FreeSurfer .annot or .label.gii; CIFTI: .dlabel.nii)")
    c.add_argument("--atlas-labels", metavar="LUT", help="TSV with 'index' and 'name' columns")
    c.add_argument("-o", "--output", metavar="TSV", help="output table (default: stdout)")
    c.add_argument("--out-index", metavar="IMG", help="write the cluster index image (surfaces: .label.gii; "
                   "CIFTI: .dlabel.nii or .dscalar.nii)")
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


def _run_tfce(args):
    import nibabel as nib
    import numpy as np

    from voxstats.image import check_img, read_data
    from voxstats.loading import check_mask
    from voxstats.outputs import save_img_atomic
    from voxstats.tfce import tfce

    if args.dh is not None and args.mode != "fsl":
        raise UsageError("--dh sets a fixed step, which needs --mode fsl.")
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


def _write_cluster_table(res, args):
    """--out-index labels, then the table to -o (TSV) or standard output; exit status 0."""
    if args.out_index:
        res.save_labels(args.out_index)
    if args.output:
        res.to_tsv(args.output)
    else:
        sys.stdout.write(res.table.to_csv(sep="\t", index=False, float_format="%.6g"))
    return 0


def _run_cluster(args):
    from voxstats.cluster_table import cluster_table
    from voxstats.outputs import save_img_atomic

    if args.atlas_labels and not args.atlas:
        raise UsageError("--atlas-labels needs --atlas.")
    if args.p_img is None and args.threshold is None:
        raise UsageError("give --threshold, --p PMAP, or both, to define clusters.")
    _check_outputs([p for p in (args.output, args.out_index) if p], args.overwrite, "-o/--out-index")
    from voxstats.surface_loading import input_kind

    kind = input_kind(args.input, name="STAT")
    if kind != "cifti":
        for flag, value in (("--left-surf", args.left_surf), ("--right-surf", args.right_surf),
                            ("--left-area", args.left_area), ("--right-area", args.right_area)):
            if value is not None:
                raise CLIError(f"{flag}: only for a CIFTI STAT (.dscalar.nii)")
    if kind == "cifti":
        from voxstats.cifti_clusters import cifti_cluster_table

        for flag, value in (("--surf", args.surf), ("--area", args.area)):
            if value is not None:
                raise CLIError(f"{flag}: a CIFTI STAT takes one mesh per hemisphere: --left-surf, --right-surf")
        if args.out_index and not str(args.out_index).lower().endswith((".dlabel.nii", ".dscalar.nii")):
            raise CLIError(f"--out-index: CIFTI clusters are written over the grayordinates: give a name ending "
                           f"in .dlabel.nii or .dscalar.nii, got {args.out_index}")
        res = cifti_cluster_table(
            args.input, left_surf=args.left_surf, right_surf=args.right_surf,
            left_area=_area_value(args.left_area, "--left-area"),
            right_area=_area_value(args.right_area, "--right-area"), p_img=args.p_img,
            p_convention=args.p_convention, alpha=args.alpha, threshold=args.threshold, sign=args.sign,
            mask_img=args.mask, connectivity=args.connectivity,
            min_size=0.0 if args.min_size is None else args.min_size, atlas_img=args.atlas,
            atlas_labels=None if args.atlas_labels is None else _lut(args.atlas_labels))
        return _write_cluster_table(res, args)
    if kind == "surface":
        from voxstats.surface_clusters import surface_cluster_table

        surface = _surface_kwargs(args)
        if "surf" not in surface:
            raise CLIError("--surf: a surface map needs the mesh it is on")
        if args.out_index and not str(args.out_index).lower().endswith(".label.gii"):
            raise CLIError(f"--out-index: surface clusters are written as GIFTI labels: give a name ending in "
                           f".label.gii, got {args.out_index}")
        res = surface_cluster_table(
            args.input, surface["surf"], p_img=args.p_img, p_convention=args.p_convention, alpha=args.alpha,
            threshold=args.threshold, sign=args.sign, mask_img=args.mask, areas=surface.get("areas"),
            min_area=0.0 if args.min_size is None else args.min_size, atlas_img=args.atlas,
            atlas_labels=None if args.atlas_labels is None else _lut(args.atlas_labels))
        return _write_cluster_table(res, args)
    for flag, value in (("--surf", args.surf), ("--area", args.area), ("--mask", args.mask)):
        if value is not None:
            raise CLIError(f"{flag}: only for a surface STAT (GIFTI, FreeSurfer curv or MGH/MGZ)")
    min_size = 1 if args.min_size is None else args.min_size
    if int(min_size) != min_size:
        raise UsageError(f"--min-size: expected a whole number of voxels, got {args.min_size}")
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


def _subparsers(parser):
    """{command: its parser}."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _join_dashed_values(argv, parser):
    """``-n -1`` -> ``-n=-1``, ``--p-convention -log10(p)`` -> ``--p-convention=-log10(p)``.

    Only after an option that takes one value: argparse would read ``-1`` as
    randomise's one-sample flag and ``-log10(p)`` as an unknown option.
    """
    out = list(argv)
    command = next((a for a in out if not a.startswith("-")), None)
    sub = _subparsers(parser).get(command)
    if sub is None:
        return out
    takes_one = {flag for action in sub._actions if isinstance(action, argparse._StoreAction)
                 and action.nargs is None for flag in action.option_strings}
    i = out.index(command) + 1
    while i < len(out) - 1:
        if out[i] in takes_one and (_NEGATIVE_NUMBER.fullmatch(out[i + 1]) or out[i + 1] in _DASHED_CHOICES):
            out[i:i + 2] = [f"{out[i]}={out[i + 1]}"]
        i += 1
    return out


def _parse(argv):
    """Parsed arguments; a usage error names the subcommand ("voxstats cluster: error: ...")."""
    parser = _get_parser()
    args, extra = parser.parse_known_args(_join_dashed_values(argv, parser))
    if extra:
        _subparsers(parser)[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _message(err, command):
    """One line, with the library's parameter names replaced by this command's flags."""
    flags = _FLAGS.get(command, {})
    text = err.renamed(flags) if hasattr(err, "renamed") else str(err)
    if isinstance(err, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]

    def flag(match):
        return flags.get(match.group(1), match.group(0))

    text = re.sub(r"\b\w+=True \((--[\w-]+)\)", r"\1", text)  # "resume=True (--resume)" -> "--resume"
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
        0 on success, 1 on bad input data or a failed run (one line on stderr
        naming the file or the flag), 2 on a usage error, a flag's value or a
        combination of flags that cannot work whatever the data (argparse's, or
        ``UsageError``; one line naming the flag), 130 when interrupted. ``qsm``
        uses the same codes.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse(argv)
    args.argv = argv
    if not getattr(args, "quiet", False):
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with _output_lock(args):
            return args.func(args)
    except UsageError as err:
        print(f"voxstats {args.command}: error: {_message(err, args.command)}", file=sys.stderr)
        return 2
    except (CLIError, ValueError, OSError, ImportError) as err:
        print(f"voxstats {args.command}: error: {_message(err, args.command)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"voxstats {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
