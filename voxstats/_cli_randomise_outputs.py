"""The files ``voxstats randomise`` writes, named and formatted as FSL randomise 2.9 writes them.

Images (``tstat1``, ``vox_corrp_tstat1``, ``tfce_tstat1`` with ``-R``, ...), the
``-N`` and ``-P`` text files (one value per line, ``%f`` and a space; a
permutation row gives each subject's design row, 1-based), ``--glm_output``'s
4D images, the JSON record and the printed summary.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from voxstats._cli_randomise import CLIError

_RAW = ("stat", "z", "tfce", "clustere", "clusterm", "clustern", "tfcen", "clusternorm_sum", "clusternorm_samp",
        "clusternorm_post", "tfcenorm_sum", "tfcenorm_samp", "tfcenorm_post")


def randomise_stat_name(kind, index):
    return f"{kind}stat{index}"


def stat_name(kind, index, welch):
    """randomise's tstat1/fstat1, or PALM's vstat1/gstat1 with variance groups."""
    if welch:
        return f"{'v' if kind == 't' else 'g'}stat{index}"
    return randomise_stat_name(kind, index)


def image_outputs(args, contrasts, tfce, welch=False, suffix=".nii.gz"):
    """{(kind, index): {key: path}} of the images each contrast writes, as randomise names them.

    With variance groups the statistics are named as PALM names them (``vstat``,
    ``gstat``) with their z maps (``zvstat``, ``zgstat``); ``--corrcon`` adds
    ``*_cfwep_*`` maps (PALM's name; values in the p convention of the others).
    """
    out = {}
    for kind, index in contrasts:
        stat = stat_name(kind, index, welch)
        ext, mass = (args.cluster_e, args.cluster_m) if kind == "t" else (args.cluster_e_f, args.cluster_m_f)
        names = {"stat": stat}
        if welch:
            names["z"] = f"z{stat}"
        if args.vox_corrp:
            names["vox_corrp"] = f"vox_corrp_{stat}"
            if args.uncorrp:
                names["vox_p"] = f"vox_p_{stat}"
            if args.corrcon:
                names["vox_cfwep"] = f"vox_cfwep_{stat}"
        if tfce:
            names["tfce_corrp"] = f"tfce_corrp_{stat}"
            if args.corrcon:
                names["tfce_cfwep"] = f"tfce_cfwep_{stat}"
            if args.uncorrp:
                names["tfce_p"] = f"tfce_p_{stat}"
            if args.raw:
                names["tfce"] = f"tfce_{stat}"
        if ext is not None:
            names["clustere_corrp"] = f"clustere_corrp_{stat}"
            if args.corrcon:
                names["clustere_cfwep"] = f"clustere_cfwep_{stat}"
            if args.raw:
                names["clustere"] = f"clustere_{stat}"
        if mass is not None:
            names["clusterm_corrp"] = f"clusterm_corrp_{stat}"
            if args.corrcon:
                names["clusterm_cfwep"] = f"clusterm_cfwep_{stat}"
            if args.raw:
                names["clusterm"] = f"clusterm_{stat}"
        if args.twopass and kind == "t":
            # randomise's names, including the double underscore of the normalisers
            if ext is not None:
                names.update({f"clusternorm_{part}": f"_clusternorm_{stat}{part}" for part in ("sum", "samp", "post")})
                names["clustern_corrp"] = f"clustern_corrp_{stat}"
                if args.raw:
                    names["clustern"] = f"clustern_{stat}"
            if tfce:
                names.update({f"tfcenorm_{part}": f"_tfcenorm_{stat}{part}" for part in ("sum", "samp", "post")})
                names["tfcen_corrp"] = f"tfcen_corrp_{stat}"
                if args.uncorrp:
                    names["tfcen_p"] = f"tfcen_p_{stat}"
                if args.raw:
                    names["tfcen"] = f"tfcen_{stat}"
        out[(kind, index)] = {key: Path(f"{args.output}_{name}{suffix}") for key, name in names.items()}
    return out


def text_outputs(args, contrasts, tfce, welch=False):
    """{(kind, index): {key: path}} of the -N and -P text files."""
    out = {}
    for kind, index in contrasts:
        stat = stat_name(kind, index, welch)
        ext, mass = (args.cluster_e, args.cluster_m) if kind == "t" else (args.cluster_e_f, args.cluster_m_f)
        names = {}
        if args.text_null:
            if args.vox_corrp:
                names["null_max"] = f"vox_corrp_{stat}"
            if tfce:
                names["null_max_tfce"] = f"tfce_corrp_{stat}"
            if ext is not None:
                names["null_max_extent"] = f"clustere_corrp_{stat}"
            if mass is not None:
                names["null_max_mass"] = f"clusterm_corrp_{stat}"
            if args.twopass and kind == "t" and ext is not None:
                names["null_max_clustern"] = f"clustern_corrp_{stat}"
            if args.twopass and kind == "t" and tfce:
                names["null_max_tfcen"] = f"tfcen_corrp_{stat}"
        if args.text_perm:
            names["perm"] = f"perm_{stat}"
        out[(kind, index)] = {key: Path(f"{args.output}_{name}.txt") for key, name in names.items()}
    return out


def glm_outputs(args):
    if not args.glm_output:
        return {}
    return {key: Path(f"{args.output}_glm_{key}.nii.gz") for key in ("pe", "cope", "varcope", "sigmasqr")}


def p_values(p, logp):
    import numpy as np

    p = np.asarray(p, dtype=np.float64)
    return -np.log10(p) if logp else 1.0 - p


def column_text(values):
    """One value per line as randomise writes a column (``%f`` and a space)."""
    return "".join(f"{float(v):f} \n" for v in values)


def permutation_text(schedule):
    """randomise's -P rows: design row (1-based) of each subject; signs for sign flipping."""
    import numpy as np

    lines = []
    for start in range(0, schedule.n_perm, 4096):
        perms, signs = schedule.rows(start, min(start + 4096, schedule.n_perm))
        for perm, sign in zip(perms, signs):
            inverse = np.empty_like(perm)
            inverse[perm] = np.arange(perm.size)
            if not schedule.permute:  # pure sign flipping: randomise writes the signs
                row = sign.astype(float)
            elif schedule.sign_flip:  # both (not in randomise): signed design rows
                row = sign[inverse] * (inverse + 1.0)
            else:
                row = inverse + 1.0
            lines.append(" ".join(f"{v:f}" for v in row) + " \n")
    return "".join(lines)


def save_4d(masker, rows, path):
    import nibabel as nib
    import numpy as np

    from voxstats.outputs import save_img_atomic

    if not hasattr(masker, "affine"):
        raise CLIError("--glm_output writes 4D NIfTI images and needs volume inputs.")
    volumes = [np.asarray(masker.unmask(np.asarray(row, dtype=np.float32)).dataobj) for row in rows]
    # one volume is written 3D, as randomise's save_volume4D does
    data = volumes[0] if len(volumes) == 1 else np.stack(volumes, axis=-1)
    img = nib.Nifti1Image(data.astype(np.float32), masker.affine)
    img.set_data_dtype(np.float32)
    save_img_atomic(img, path)


def output_maps(contrast, names, logp):
    two = contrast.twopass
    values = {
        "stat": contrast.stat, "tfce": contrast.tfce, "clustere": contrast.cluster_extent,
        "clusterm": contrast.cluster_mass,
        "vox_p": contrast.p, "vox_corrp": contrast.p_fwe, "tfce_p": contrast.tfce_p,
        "tfce_corrp": contrast.tfce_p_fwe, "clustere_corrp": contrast.cluster_extent_p_fwe,
        "clusterm_corrp": contrast.cluster_mass_p_fwe, "z": contrast.z,
        "vox_cfwep": contrast.p_cfwe, "tfce_cfwep": contrast.tfce_p_cfwe,
        "clustere_cfwep": contrast.cluster_extent_p_cfwe, "clusterm_cfwep": contrast.cluster_mass_p_cfwe,
    }
    if two is not None:
        values.update({
            "clustern": two.clustern, "clustern_corrp": two.clustern_p_fwe, "tfcen": two.tfcen,
            "tfcen_p": two.tfcen_p, "tfcen_corrp": two.tfcen_p_fwe,
            "clusternorm_sum": two.cluster_sum, "clusternorm_samp": two.cluster_samp,
            "clusternorm_post": two.cluster_mean, "tfcenorm_sum": two.tfce_sum,
            "tfcenorm_samp": two.tfce_samp, "tfcenorm_post": two.tfce_mean,
        })
    return {key: values[key] if key in _RAW else p_values(values[key], logp) for key in names}


def run_record(args, options, res, seed, n_subjects, imgs, tcons, fcons, tfce, written, p_maps, summary,
            critical, groups):
    import numpy as np

    from voxstats.cli import _sha256, _versions

    inputs = [args.input] + ([] if isinstance(imgs, str) else imgs)
    inputs += [p for p in (args.design, args.tcon, args.fcon, args.mask, args.blocks, args.eb,
                           args.effective_design) if p]
    from voxstats.cli import _surface_kwargs

    inputs += [p for key, p in _surface_kwargs(args).items() if isinstance(p, str) and Path(p).is_file()]
    if args.vg and args.vg != "auto":
        inputs.append(args.vg)
    inputs += [] if not args.vxf else [f.strip() for f in args.vxf.split(",") if f.strip()]
    call = {k: v for k, v in options.items()
            if k not in ("f_contrasts", "exchangeability_blocks", "variance_groups", "effective_design")}
    return {
        "command": "voxstats randomise",
        "argv": args.argv,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "argv")},
        "library_call": call,
        "seed": seed,
        "n_perm_requested": args.n_perm,
        "n_perm": int(res.n_perm),
        "exhaustive": bool(res.exhaustive),
        "n_possible": int(res.n_possible),
        "enumeration": res.enumeration,
        "scheme": res.scheme,
        "variance_groups": None if groups is None else {
            "labels": [str(v) for v in groups.labels], "sizes": groups.sizes.tolist(),
            "of_subject": groups.codes.tolist()},
        "tail": "two-sided" if args.twotail else "greater",
        "tfce_mode": None if tfce is None else tfce["tfce_mode"],
        "cluster_connectivity": args.cluster_connectivity,
        "df": res.df if isinstance(res.df, (int, float, type(None))) else np.asarray(res.df).tolist(),
        "n_subjects": n_subjects,
        "n_voxels": int(res.masker.n_elements),
        "t_contrasts": {k: np.asarray(v).tolist() for k, v in tcons.items()},
        "f_contrasts": None if not fcons else {k: np.asarray(v).tolist() for k, v in fcons.items()},
        "p_convention": "-log10(p)" if args.logp else "1-p",
        "critical_values": {name: value for name, value, _ in critical},
        "critical_value_scales": {name: scale for name, _, scale in critical},  # 'z' when compared on z
        "versions": _versions(),
        "sha256": {str(p): _sha256(p) for p in inputs},
        "outputs": written,
        "p_maps": p_maps,
        "summary": summary,
    }


def print_summary(args, res, seed, record, summary, tfce, json_path, suffix=".nii.gz"):
    from voxstats.cli import _element_name, _where

    exact = "exhaustive" if res.exhaustive else "random"
    tfce_txt = "" if tfce is None else f", TFCE {tfce['tfce_mode']}"
    tail = "two-sided (|t|)" if args.twotail else "one-sided (t > 0)"
    elements = _element_name(res.masker)
    print(f"{res.n_perm} permutations ({exact}, {res.scheme}, {tail}{tfce_txt}), seed {seed}, "
          f"{record['n_voxels']} {elements}; outputs {args.output}_*{suffix} and {json_path}")
    for s in summary:
        tfce_count = "" if s["n_fwe_tfce"] is None else f", TFCE {s['n_fwe_tfce']}"
        where = ""
        if s["peak_voxel"] is not None:
            where = f" at {_where(s['peak_voxel'])}"
        if s["peak_mm"] is not None:
            where += " = ({}) mm".format(", ".join(f"{v:.1f}" for v in s["peak_mm"]))
        word = "peak" if s["tail"] == "two-sided" else "max"  # two-sided: the signed value of largest |stat|
        print(f"{s['output']} ({s['name']}): FWE p<0.05 {elements}: voxel {s['n_fwe_voxel']}{tfce_count}; "
              f"{word} {s['peak_stat']:.4g}{where}")


def peak(masker, values, tail="greater"):
    """(index in the image, mm) of the peak of ``values`` for ``tail`` (voxstats.results.peak_index)."""
    from voxstats.results import peak_index

    k = peak_index(values, tail)
    if k is None:
        return None, None
    if not hasattr(masker, "position"):
        return (k,), None
    return masker.position(k)
