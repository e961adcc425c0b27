# ruff: noqa: F821 (the names the shared install cell defines: jax, ROOT, os, …)
# %% [markdown]
# # 03 · Samplers: every one of them on the same model
#
# A trained diffusion model is a function; a *sampler* decides where along the noise levels to
# call it and how to combine the answers into the next state. jaxdiff has DDPM (ancestral), DDIM,
# Euler, Heun and Euler-ancestral (Karras et al.'s σ-space solvers), DPM-Solver++ and UniPC, each
# one compiled `lax.scan` that follows its diffusers scheduler step for step. Here they all sample
# one trained digits model at a few budgets of network evaluations (NFE), side by side, and a
# small held-out digits classifier scores each set (its Fréchet distance to the training digits,
# the digits stand-in for FID).
#
# `QUICK = True` trains 30 steps instead of 800 and tries one budget (5 NFE) with 100 samples:
# the numbers then say nothing, but every cell runs on a CPU in about a minute.

# %% [parameters]
QUICK = False  # True: a barely trained model and one NFE budget (CI, a first look)

# %% [install]

# %% [markdown]
# ## A model to sample
#
# The digits default (`configs/digits.py`), trained in this process with `jaxdiff.train.loop`
# (the function behind `python -m jaxdiff.main`): 800 steps take about four minutes on two CPU
# cores and seconds on a GPU or TPU.

# %%
import dataclasses
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np

from jaxdiff import generate, metrics, samplers
from jaxdiff import run as run_lib
from jaxdiff.metrics import digits_classifier
from jaxdiff.train import loop


config = load_config("digits")
config.train.num_steps = 30 if QUICK else 800
if QUICK:
  config.train.steps_per_call = 1  # compiles faster; more steps per call pay off over hundreds
WORKDIR = tempfile.mkdtemp(prefix="jaxdiff-samplers-")
loop.train(config, WORKDIR)
run = run_lib.setup(config, WORKDIR)
step, state = run_lib.restore_for_inference(run)
print(f"EMA parameters of step {step}")

# %% [markdown]
# ## The samplers
#
# Each variant is a `sample.sampler` name from jaxdiff's sampler table with a few `sample.*`
# options, and the number of steps that spends a given NFE (Heun calls the network twice a step
# but once in the last: 2n − 1). 'trailing' spacing starts from t = T − 1; Heun gets 'leading',
# because on the cosine schedule its first trailing step is unstable (see benchmarks/RESULTS.md).
# DDIM runs without clipping x̂_0 (with guidance, clipping costs it a lot). The cell checks that
# every sampler of the table is here but the consistency sampler, which needs a distilled model.

# %%
VARIANTS = {  # label: (sampler, options, NFE → steps, or None where the NFE cannot be spent)
  "DDPM (respaced)": ("ddpm", {}, lambda nfe: nfe),
  "DDIM": ("ddim", {"spacing": "trailing", "clip_denoised": False}, lambda nfe: nfe),
  "Euler": ("euler", {"spacing": "trailing"}, lambda nfe: nfe),
  "Euler ancestral": ("euler_ancestral", {"spacing": "trailing"}, lambda nfe: nfe),
  "Heun": ("heun", {"spacing": "leading"}, lambda nfe: (nfe + 1) // 2 if nfe % 2 else None),
  "DPM-Solver++ 2M": ("dpm_solver", {"spacing": "trailing", "order": 2}, lambda nfe: nfe),
  "UniPC bh2": ("unipc", {"spacing": "trailing", "order": 2}, lambda nfe: nfe),
}
FLOW_ONLY = {n for n, e in samplers.SAMPLERS.items() if e.predictions == ("flow",)}  # below
missing = set(samplers.SAMPLERS) - {v[0] for v in VARIANTS.values()} - {"consistency"} - FLOW_ONLY
assert not missing, f"add a variant for {missing}"

NFES = [5] if QUICK else [3, 5, 9, 15, 25, 49]
GRID_NFES = [5] if QUICK else [5, 15]  # the budgets shown as grids
COUNT = 100 if QUICK else 250  # samples per point; ≤ 270 so that real test digits give a floor
BATCH = 100 if QUICK else 250


def draw(sampler, options, num_steps, model=None):
  """COUNT samples of the EMA model (the one above unless `model` = (config, run, step, state)),
  through the one generation path --mode=sample uses."""
  base, base_run, base_step, base_state = model or (config, run, step, state)
  c = base.copy_and_resolve_references()
  for name, option in samplers.OPTIONS.items():  # the config's sampler options, reset
    c.sample[name] = option.default
  c.sample.sampler, c.sample.num_steps = sampler, num_steps
  c.sample.update(options)
  generator = generate.Generator(dataclasses.replace(base_run, config=c), BATCH)
  key = generate.sample_key(c, base_step)
  batches = [generator.batch(base_state.ema_params, key, b)[0] for b in range(-(-COUNT // BATCH))]
  return np.concatenate(batches)[:COUNT]


drawn = {}
for label, (sampler, options, steps_for) in VARIANTS.items():
  for nfe in NFES:
    if steps_for(nfe) is not None:
      start = time.perf_counter()
      drawn[label, nfe] = draw(sampler, options, steps_for(nfe))
      print(f"{label:18s} NFE {nfe:2d}: {time.perf_counter() - start:5.1f} s with compilation")

# %% [markdown]
# ## Side by side
#
# The first ten samples of each variant (the labels cycle 0–9, guidance 1.5), at each budget.
# All start from the same x_T, so differences come from the samplers alone.

# %%
for nfe in GRID_NFES:
  rows = [label for label in VARIANTS if (label, nfe) in drawn]
  fig, axes = plt.subplots(len(rows), 10, figsize=(8, 0.66 * len(rows) + 0.4))
  for r, label in enumerate(rows):
    for c in range(10):
      axes[r, c].imshow(drawn[label, nfe][c, ..., 0], cmap="gray", vmin=0, vmax=255)
      axes[r, c].set_xticks([])
      axes[r, c].set_yticks([])
    axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
  fig.suptitle(f"{nfe} network evaluations")
  fig.subplots_adjust(left=0.2, right=0.99, top=1 - 0.4 / fig.get_figheight(), bottom=0.01)
  fig.subplots_adjust(wspace=0.05, hspace=0.05)
  plt.show()

# %% [markdown]
# ## Quality against NFE
#
# The score: a 64-unit MLP that jaxdiff fits on the digits *test* split (which the diffusion
# model never sees) gives features, and the Fréchet distance between the samples' features and
# the training digits' is the number (lower is better; comparable only at equal N, and not FID).
# The dashed line is the same distance for as many real, unseen test digits: the floor.

# %%
features = digits_classifier.DigitsFeatures()
score = lambda images: metrics.fid_from_features(features.features(images), features.train_features)
test_images, _ = digits_classifier.digits_split("test")
rng = np.random.default_rng(0)
floor = np.mean(
  [score(test_images[rng.choice(len(test_images), COUNT, replace=False)]) for _ in range(5)]
)
distances = {key: score(images) for key, images in drawn.items()}

plt.figure(figsize=(7.5, 4.5))
for label in VARIANTS:
  points = [(nfe, distances[label, nfe]) for nfe in NFES if (label, nfe) in distances]
  plt.plot(*zip(*points), "o-", label=label)
plt.axhline(floor, color="gray", ls="--", label=f"{COUNT} real test digits")
plt.xscale("log")
plt.yscale("log")
plt.minorticks_off()
plt.xticks(NFES, [str(n) for n in NFES])
plt.xlabel("network evaluations (NFE)")
plt.ylabel("digits classifier Fréchet distance")
plt.title(f"{COUNT} samples per point, model after {step} steps")
plt.legend(fontsize=8)
plt.tight_layout()
plt.show()

print(f"{'':18s}" + "".join(f"{'NFE ' + str(n):>9s}" for n in NFES))
for label in VARIANTS:
  cells = [f"{distances[label, n]:9.2f}" if (label, n) in distances else f"{'—':>9s}" for n in NFES]
  print(f"{label:18s}" + "".join(cells))

# %% [markdown]
# On the fully trained model (`QUICK = False`) the multistep solvers (UniPC, DPM-Solver++) reach
# in 5–9 evaluations what DDIM and Euler need 25–50 for, and ancestral sampling (DDPM, Euler
# ancestral) needs the most: its fresh noise at every step must be averaged out by many small
# steps. That is why the digits default samples with UniPC in 10 steps. `benchmarks/sampler_nfe.py`
# runs the same comparison with 1000 samples per point; its results are in benchmarks/RESULTS.md.

# %% [markdown]
# ## A flow-matching model and its samplers
#
# `configs/digits_flow.py` trains the same U-Net with flow matching (rectified flow, as SD3, Flux
# and SiT do): x_σ = (1 − σ)·x_0 + σ·ε on a straight line, the network predicts the velocity
# ε − x_0, σ drawn from a logit-normal. Its samplers integrate dx/dσ = v from σ = 1 to 0: the
# FlowMatch Euler and Heun schedulers of diffusers, and UniPC and DPM-Solver++ on flow σ's
# (diffusers' `use_flow_sigmas`), each equal to its diffusers scheduler step for step. Same
# training budget as the model above, same scoring.

# %%
flow_config = load_config("digits_flow")
flow_config.train.num_steps = config.train.num_steps
flow_config.train.steps_per_call = config.train.steps_per_call
FLOW_WORKDIR = tempfile.mkdtemp(prefix="jaxdiff-flow-")
loop.train(flow_config, FLOW_WORKDIR)
flow_run = run_lib.setup(flow_config, FLOW_WORKDIR)
flow_step, flow_state = run_lib.restore_for_inference(flow_run)
FLOW_MODEL = (flow_config, flow_run, flow_step, flow_state)

FLOW_VARIANTS = {  # label: (sampler, options, NFE → steps)
  "flow Euler": ("flow_euler", {}, lambda nfe: nfe),
  "flow Heun": ("flow_heun", {}, lambda nfe: (nfe + 1) // 2 if nfe % 2 else None),
  "DPM-Solver++ 2M (flow σ's)": ("dpm_solver", {"order": 2}, lambda nfe: nfe),
  "UniPC bh2 (flow σ's)": ("unipc", {"order": 2}, lambda nfe: nfe),
}
assert FLOW_ONLY <= {v[0] for v in FLOW_VARIANTS.values()}


print(f"{'':28s}" + "".join(f"{'NFE ' + str(n):>9s}" for n in NFES))
for label, (sampler, options, steps_for) in FLOW_VARIANTS.items():
  cells = []
  for nfe in NFES:
    steps = steps_for(nfe)
    cells.append(
      f"{score(draw(sampler, options, steps, FLOW_MODEL)):9.2f}" if steps else f"{'—':>9s}"
    )
  print(f"{label:28s}" + "".join(cells))

# %% [markdown]
# The flow model's straight paths suit few steps: trained for the same steps, digits_flow sampled
# with UniPC at 10 evaluations scores about 0.33 where the default scores 0.44 (1000 samples;
# benchmarks/RESULTS.md). The samplers and their options are in docs/guides/flow_samplers.md.
