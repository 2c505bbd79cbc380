# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Validating the voxstats engine
#
# The evidence a reviewer would ask for before trusting the numbers:
#
# 1. **TFCE values.** A case computed by hand; FSL's stepped TFCE checked against an
#    independent implementation (`scipy.ndimage.label` at every threshold); and the
#    exact integral approached by the stepped sums × `dh` as the step shrinks (the
#    error falls to zero, linearly in `dh`).
# 2. **Family-wise error control.** Under the null hypothesis, the proportion of
#    simulated datasets with any voxel at FWE p ≤ 0.05 must lie inside the binomial
#    band around 5 %, for TFCE and for the voxel-wise maximum t.
# 3. **The GLM.** t and F statistics equal statsmodels' at every voxel; permutation
#    p-values agree with the parametric ones when the errors are Gaussian.
# 4. **Speed.** `bench/bench_randomise.py` on nilearn's MNI152 2 mm brain mask.
#
# `VOXSTATS_NOTEBOOK_SMALL=1` runs fewer datasets and permutations and a tiny
# benchmark (what CI runs); the default is the full size (about 5 minutes on 2
# cores).

# %%
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import statsmodels.api as sm
from IPython.display import display
from scipy import ndimage, stats

import voxstats

SMALL = os.environ.get("VOXSTATS_NOTEBOOK_SMALL", "0") == "1"
N_DATASETS = 200 if SMALL else 1000     # null datasets for the FWE rate
N_PERM_NULL = 100 if SMALL else 500     # permutations per null dataset
N_PERM_GLM = 2000 if SMALL else 10000   # permutations for the p-value comparison
BENCH_ARGS = (["--n", "24", "--tiny", "--n-perm", "8", "24"] if SMALL
              else ["--n", "240", "--n-perm", "96", "480"])
SEED = 2009
OUT = Path(os.environ.get("VOXSTATS_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="voxstats_nb03_"))
OUT = OUT / "03_engine_validation"
OUT.mkdir(parents=True, exist_ok=True)
pd.set_option("display.precision", 4)
print(f"{'small mode' if SMALL else 'full mode'}: {N_DATASETS} null datasets x {N_PERM_NULL} "
      f"permutations; {N_PERM_GLM} permutations for the p-value check")

# %% [markdown]
# ## 1. TFCE values
#
# ### A case by hand
#
# A single cluster of 10 voxels, all at height 2, in an otherwise empty volume:
# the cluster has 10 voxels at every threshold below 2, so
# TFCE = ∫₀² 10^E h^H dh = 10^0.5 · 2³ / 3 ≈ 8.433 at each of its voxels (E = 0.5,
# H = 2). A second cluster of 5 voxels at height 2 gets 5^0.5 · 8/3.

# %%
hand = np.zeros((10, 10, 10))
hand[1, 1, 0:10] = 2.0
hand[6, 6, 0:5] = 2.0
enhanced = voxstats.tfce(hand)
expected_10, expected_5 = np.sqrt(10) * 8 / 3, np.sqrt(5) * 8 / 3
print(f"10-voxel cluster: {enhanced[1, 1, 0]:.6f} (by hand {expected_10:.6f}); "
      f"5-voxel cluster: {enhanced[6, 6, 0]:.6f} (by hand {expected_5:.6f})")
assert np.allclose(enhanced[1, 1, :], expected_10, rtol=1e-12)
assert np.allclose(enhanced[6, 6, :5], expected_5, rtol=1e-12)
assert np.all(enhanced[hand == 0] == 0)

# %% [markdown]
# ### Stepped TFCE against an independent implementation
#
# FSL randomise's convention, as its `tfce()` loop runs: the map in single precision,
# thresholds `h = 0, dh, 2dh, …` accumulated in single precision (`h += dh` in float),
# voxels strictly above `h`, each step adds `e(h)^E h^H` (no multiplication by `dh`),
# and the volume's outermost layer left out (FSL visits indices 1..dim−2 only). The
# reference below labels the thresholded map with `scipy.ndimage.label`
# (6-connectivity) at every step, each sign separately. The test map is smooth noise
# on a 24³ grid.

# %%
def stepped_tfce_reference(values, dh, *, E=0.5, H=2.0):
    """FSL-style stepped TFCE with scipy.ndimage.label at every threshold."""
    values = values.astype(np.float32)
    inner = np.zeros_like(values)
    inner[1:-1, 1:-1, 1:-1] = values[1:-1, 1:-1, 1:-1]
    step = np.float32(dh)
    out = np.zeros(values.shape)
    for sign in (1, -1):
        v = sign * inner
        h = np.float32(0)
        while (above := v > h).any():
            labels, n = ndimage.label(above)
            sizes = np.bincount(labels.ravel())
            height = float(np.float32(np.float64(h) ** H))  # FSL: pow() of two floats
            out[above] += sign * sizes[labels[above]] ** E * height
            h = np.float32(h + step)
    return out


rng = np.random.default_rng(SEED)
field = ndimage.gaussian_filter(rng.standard_normal((24, 24, 24)), 2.0)
field *= 4.0 / np.abs(field).max()
top = np.abs(field).max()
rows = []
for n_steps in (10, 30, 100, 300):
    dh = top / n_steps
    mine = voxstats.tfce(field, mode="fsl", dh=dh)
    ref = stepped_tfce_reference(field, dh)
    rows.append({"steps": n_steps, "dh": dh,
                 "max |voxstats − reference| / max |reference|":
                     np.abs(mine - ref).max() / np.abs(ref).max()})
agreement = pd.DataFrame(rows)
display(agreement)
assert agreement.iloc[:, -1].max() < 1e-12

# %% [markdown]
# ### The stepped sums converge to the exact integral
#
# The stepped sum × `dh` is a Riemann sum of the TFCE integral; its error should
# fall to zero in proportion to `dh`. FSL's limit is the exact TFCE of the map
# without its outermost layer.

# %%
interior = np.zeros_like(field)
interior[1:-1, 1:-1, 1:-1] = field[1:-1, 1:-1, 1:-1]
exact = voxstats.tfce(interior)
steps = np.array([10, 30, 100, 300, 1000, 3000, 10000])
errors = []
for n_steps in steps:
    dh = top / n_steps
    stepped = voxstats.tfce(field, mode="fsl", dh=dh) * dh
    errors.append(np.abs(stepped - exact).max() / np.abs(exact).max())
errors = np.array(errors)
slope = np.polyfit(np.log(top / steps), np.log(errors), 1)[0]
display(pd.DataFrame({"steps": steps, "dh": top / steps, "max relative error": errors}))
print(f"log-log slope of the error against dh: {slope:.2f} (1 = first order)")

fig, ax = plt.subplots(figsize=(5, 3.6))
ax.loglog(top / steps, errors, "o-", label="max |stepped·dh − exact| / max exact")
ax.loglog(top / steps, errors[0] * (steps[0] / steps), "k--", lw=0.8, label="∝ dh")
ax.set(xlabel="step dh", ylabel="relative error", title="stepped TFCE → exact TFCE")
ax.legend(fontsize=8)
plt.show()
assert np.all(np.diff(errors) < 0)
assert 0.8 < slope < 1.2
assert errors[-1] < 1e-3

# %% [markdown]
# ## 2. Family-wise error rate under the null
#
# Each dataset: 20 subjects of smooth Gaussian noise on a 16³ grid (4,096 voxels),
# design `1 + group + age` with an age effect in the data (a nuisance), contrast
# on group, both signs, Freedman–Lane permutations. A dataset is a false positive
# when any voxel has FWE p ≤ 0.05. With `N` independent datasets the count is
# Binomial(`N`, 0.05) if the test is exact; the band below holds 95 % of that
# distribution.

# %%
shape = (16, 16, 16)
mask = np.ones(shape, bool)
n_subjects = 20
rng = np.random.default_rng(SEED + 1)
hits = {"TFCE": [], "max t": []}
t0 = time.perf_counter()
for _ in range(N_DATASETS):
    noise = ndimage.gaussian_filter(rng.standard_normal((n_subjects,) + shape), (0, 1.5, 1.5, 1.5))
    age = rng.uniform(20, 60, n_subjects) - 40
    design = np.column_stack([np.ones(n_subjects), np.repeat([0.0, 1.0], n_subjects // 2), age])
    data = noise[:, mask] / noise.std() + 0.02 * age[:, None]
    res = voxstats.permuted_glm(data, design, [0, 1, 0], mask=mask, tfce=True,
                                n_perm=N_PERM_NULL, rng=rng)
    hits["TFCE"].append(res[0].tfce_p_fwe.min() <= 0.05)
    hits["max t"].append(res[0].p_fwe.min() <= 0.05)
elapsed = time.perf_counter() - t0
lo95, hi95 = stats.binom.interval(0.95, N_DATASETS, 0.05)
lo99, hi99 = stats.binom.interval(0.99, N_DATASETS, 0.05)
fwe = pd.DataFrame({name: {"false positives": int(np.sum(h)), "datasets": N_DATASETS,
                           "rate": np.mean(h), "95 % band": f"{lo95 / N_DATASETS:.3f}–"
                           f"{hi95 / N_DATASETS:.3f}",
                           "inside the 95 % band": bool(lo95 <= np.sum(h) <= hi95)}
                    for name, h in hits.items()}).T
display(fwe)
print(f"scheme {res.scheme}; {elapsed:.0f} s for {N_DATASETS} datasets")

fig, ax = plt.subplots(figsize=(5, 3.4))
ks = np.arange(0, int(hi99) + 6)
ax.bar(ks / N_DATASETS, stats.binom.pmf(ks, N_DATASETS, 0.05), width=0.6 / N_DATASETS,
       color="0.7", label="Binomial(N, 0.05)")
for (name, h), colour in zip(hits.items(), ("C0", "C3")):
    ax.axvline(np.mean(h), color=colour, lw=2, label=f"{name}: {np.mean(h):.3f}")
ax.axvspan(lo95 / N_DATASETS, hi95 / N_DATASETS, color="C2", alpha=0.15, label="95 % band")
ax.set(xlabel="family-wise false-positive rate", ylabel="probability",
       title=f"{N_DATASETS} null datasets")
ax.legend(fontsize=8)
plt.show()
for name, h in hits.items():  # the 99 % band, so that a legitimate change rarely trips it
    assert lo99 <= np.sum(h) <= hi99, (name, np.sum(h))

# %% [markdown]
# ## 3. The GLM against statsmodels
#
# Thirty subjects, design intercept + two group indicators (three groups) + age +
# sex, 40 voxels of Gaussian noise with an age effect; t contrasts on the second
# group's indicator and on age, and an F contrast on both group indicators. voxstats'
# statistics must equal statsmodels' `OLS(...).t_test` / `f_test` at every voxel,
# and with Gaussian errors the permutation p-values must approach the parametric
# ones (up to Monte Carlo error, about sqrt(p(1 − p) / n_perm)).

# %%
rng = np.random.default_rng(SEED + 2)
n = 30
age = rng.uniform(20, 60, n)
sex = rng.integers(0, 2, n).astype(float)
group = np.repeat([0, 1, 2], n // 3)
design = pd.DataFrame({"intercept": 1.0, "g1": (group == 1) * 1.0, "g2": (group == 2) * 1.0,
                       "age": age, "sex": sex})
Y = rng.standard_normal((n, 40)) + 0.03 * age[:, None]
# contrast names differ from the design's column names: a dict whose keys are all
# column names would be read as one contrast {column: weight}
t_contrasts = {"group1": [0, 1, 0, 0, 0], "age_slope": [0, 0, 0, 1, 0]}
F = np.array([[0, 1, 0, 0, 0], [0, 0, 1, 0, 0]], float)
res = voxstats.permuted_glm(Y, design, t_contrasts, f_contrasts={"group": F},
                            n_perm=N_PERM_GLM, rng=SEED)
reference = {name: [] for name in ("group1", "age_slope", "group")}
ref_p = {name: [] for name in ("group1", "age_slope", "group")}
for v in range(Y.shape[1]):
    fit = sm.OLS(Y[:, v], design).fit()
    for name, c in t_contrasts.items():
        tt = fit.t_test(np.asarray(c, float))
        reference[name].append(float(tt.tvalue.item()))
        ref_p[name].append(float(tt.pvalue.item()))
    ft = fit.f_test(F)
    reference["group"].append(float(ft.fvalue))
    ref_p["group"].append(float(ft.pvalue))
mc = 3 * np.sqrt(0.25 / res.n_perm)
glm = pd.DataFrame({name: {"kind": res[name].kind,
                           "max |stat − statsmodels|": np.abs(res[name].stat - reference[name]).max(),
                           "max |p_perm − p_statsmodels|": np.abs(res[name].p - ref_p[name]).max(),
                           "3 Monte Carlo SDs at p = 0.5": mc}
                    for name in reference}).T
with pd.option_context("display.float_format", "{:.3g}".format):
    display(glm)
print(f"residual df {res.df} (statsmodels {int(fit.df_resid)}); scheme {res.scheme}, "
      f"{res.n_perm} permutations")

fig, ax = plt.subplots(figsize=(4.2, 4))
for name in reference:
    ax.plot(ref_p[name], res[name].p, ".", label=name)
ax.plot([0, 1], [0, 1], "k-", lw=0.8)
ax.set(xlabel="statsmodels parametric p", ylabel="voxstats permutation p",
       title="uncorrected p-values")
ax.legend(fontsize=8)
plt.show()
assert res.df == int(fit.df_resid)
assert glm["max |stat − statsmodels|"].max() < 1e-9
# permutation (Freedman-Lane) vs parametric: Monte Carlo error plus a small excess
assert glm["max |p_perm − p_statsmodels|"].max() < mc + 0.03

# %% [markdown]
# ## 4. Speed: `bench/bench_randomise.py`
#
# The benchmark of `bench/` (see `bench/README.md`): nilearn's MNI152 2 mm brain
# mask (235,375 voxels), `n` synthetic smooth maps, design `1 + group + age + sex`,
# exact TFCE with 6-connectivity, both signs, Freedman–Lane, at 1 and 2 threads.
# The figures are measured now, on this machine, by running the script (small:
# 24 subjects on a cropped mask, 8 and 24 permutations; full: 240 subjects, 96 and 480). Recorded results found in
# `bench/` (JSON written by `--out`) are shown too.

# %%
def _find_bench():
    starts = [Path.cwd(), Path(voxstats.__file__).resolve().parent]
    for start in starts:
        for folder in (start, *start.parents):
            if (folder / "bench" / "bench_randomise.py").is_file():
                return folder / "bench"
    return None


bench = _find_bench()
if bench is None:
    print("bench/ not found (voxstats installed without its repository): skipping the "
          "benchmark; clone the repository to run it.")
else:
    for recorded in sorted(bench.glob("**/*.json")):
        content = json.loads(recorded.read_text())
        if isinstance(content, dict) and "rows" in content and "n" in content:
            print(f"recorded in {recorded.relative_to(bench.parent)} (n = {content.get('n')}):")
            display(pd.DataFrame(content["rows"]))
    out_json = OUT / "bench_randomise.json"
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, str(bench / "bench_randomise.py"), *BENCH_ARGS,
                          "--out", str(out_json)], capture_output=True, text=True, check=False)
    print(run.stdout)
    if run.returncode != 0:
        raise RuntimeError(f"bench_randomise.py failed:\n{run.stderr[-2000:]}")
    figures = json.loads(out_json.read_text())
    speed = pd.DataFrame(figures["rows"]).set_index("threads")
    display(speed)
    print(f"benchmark wall time {time.perf_counter() - t0:.0f} s; peak memory "
          f"{speed['peak_mb'].max():.0f} MB for a {speed['data_mb'].max():.0f} MB data matrix "
          f"({speed['peak_over_data'].max():.2f}x)")
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar(speed.index.astype(str), speed["ms_per_perm"], color="C0")
    ax.set(xlabel="threads", ylabel="ms per permutation",
           title=f"R2 problem, n = {figures['n']}" + (" (cropped mask)" if SMALL else ", 235,375 voxels"))
    plt.show()
    # a slope between two short runs can be noise-dominated in small mode: check it is a number
    assert np.all(np.isfinite(speed["ms_per_perm"])) and np.all(speed["peak_mb"] > 0)
