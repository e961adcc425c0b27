# ruff: noqa: F821 (the names the shared install cell defines: jax, ROOT, os, …)
# %% [markdown]
# # 07 · Consistency distillation: one step against the teacher's ten
#
# A diffusion model samples by integrating an ODE (or SDE) from noise to data over many network
# evaluations. A consistency model (Song et al. 2023) learns the ODE's whole solution map instead:
# f(x_σ, σ) ≈ x_0 for every point of a trajectory, so one evaluation at σ = 80 is a sample, and a
# second one after re-noising to a smaller σ refines it.
#
# Consistency distillation (CD) trains such a student from a trained diffusion model, the teacher:
# each step takes one teacher ODE step between two adjacent noise levels, and pulls the student's
# output at the upper level towards a slowly moving copy of itself (the target network) at the
# lower one. This notebook, on the digits:
# 1. trains the teacher, `configs/digits.py` (sampled with UniPC in 10 steps, guidance 1.5);
# 2. distils it with `configs/digits_cd.py --config.teacher.workdir=TEACHER`;
# 3. draws 100 digits from each (the teacher with UniPC-10, the student in 1 and in 2 steps) and
#    shows them side by side with their sampling wall time.
#
# `QUICK = True` trains the teacher 40 steps instead of 800 and the student 20 instead of 500:
# every sample is a blob, but each cell runs on a CPU and the whole notebook in about two minutes
# (that is how CI runs it). The real step counts are meant for a GPU or TPU runtime.

# %% [parameters]
QUICK = False  # True: a few dozen steps per stage (CI, a first look); False: the configs' own

# %% [install]

# %% [markdown]
# ## The teacher
#
# The digits default, trained from the command line into a temporary workdir.

# %%
import tempfile
import time

WORKDIR = pathlib.Path(tempfile.mkdtemp(prefix="jaxdiff-consistency-"))
TEACHER_DIR, CD_DIR = WORKDIR / "teacher", WORKDIR / "cd"


def quick_flags(steps):
  """QUICK's overrides: a few steps, one per compiled call (compiles faster than the default's 4
  unrolled steps, which pay off only over hundreds)."""
  if not QUICK:
    return []
  return [
    f"--config.train.num_steps={steps}",
    "--config.train.steps_per_call=1",
    "--config.train.log_every=10",
  ]


TEACHER_FLAGS = ["--config=configs/digits.py", f"--workdir={TEACHER_DIR}"]
# with QUICK also a short learning-rate warmup (the student's config has none)
teacher_quick = quick_flags(40) + (["--config.optim.warmup_steps=10"] if QUICK else [])
assert jaxdiff_main(*TEACHER_FLAGS, *teacher_quick) == 0

# %% [markdown]
# ## Distilling it
#
# `configs/digits_cd.py` keeps the teacher's network, data, schedule and v-prediction, and starts
# the student from the teacher's EMA weights, wrapped in the consistency boundary condition so
# that it begins as the teacher's denoiser. Each step draws two adjacent points of an 11-point
# grid (σ from 0.002 to 80 through the σ's of the teacher's timesteps 99, 199, …, 899: the grid on
# which the teacher's own few-step sampling is best), takes one DDIM step of the teacher between
# them with the teacher's guidance 1.5 folded into the target (so the student is sampled
# unguided), and pulls the student towards the target network (an EMA of the student, μ = 0.95)
# under the pseudo-Huber distance. The checkpoint holds the frozen teacher too: the teacher's workdir is
# read once, at the start.

# %%
CD_FLAGS = [
  "--config=configs/digits_cd.py",
  f"--workdir={CD_DIR}",
  f"--config.teacher.workdir={TEACHER_DIR}",
]
assert jaxdiff_main(*CD_FLAGS, *quick_flags(20)) == 0

# %% [markdown]
# ## Sampling: teacher, CD in 1 step, CD in 2 steps
#
# `--mode=sample` would write each set to its workdir's `samples/` (the student's as
# `--config.sample.sampler=consistency --config.sample.num_steps=1`, or `=2`). Here the three are
# drawn in this process with jaxdiff's Python API, as `benchmarks/consistency_nfe.py` does:
# `run.setup` on the workdir's own config.json, `run.restore_for_inference` for the newest
# checkpoint's EMA weights, and a `generate.Generator` with the sampler changed. Each is drawn
# once to compile, then timed on a second draw of the same 100 digits (labels 0–9, ten each).

# %%
import dataclasses

import matplotlib.pyplot as plt

from jaxdiff import generate
from jaxdiff import run as run_lib


def draw(workdir, **sample):
  """(100 uint8 samples, seconds after compilation) of a workdir's newest EMA weights, with its
  config's sample.* options overridden by `sample`."""
  run = run_lib.setup(run_lib.saved_config(workdir), workdir)
  step, state = run_lib.restore_for_inference(run)
  config = run.config.copy_and_resolve_references()
  for name, value in sample.items():
    config.sample[name] = value
  generator = generate.Generator(dataclasses.replace(run, config=config), 100)
  key = generate.sample_key(config, step)
  jax.block_until_ready(generator.batch(state.ema_params, key, 0))  # compiles
  start = time.perf_counter()
  images, _ = generator.batch(state.ema_params, key, 0)
  seconds = time.perf_counter() - start
  run.checkpointer.close()
  return images, seconds


results = {
  "teacher, UniPC 10 steps": draw(TEACHER_DIR),  # as configs/digits.py samples
  "CD, 1 step": draw(CD_DIR, sampler="consistency", num_steps=1),
  "CD, 2 steps": draw(CD_DIR, sampler="consistency", num_steps=2),
}
for name, (images, seconds) in results.items():
  print(f"{name:25s} {images.shape[0]} samples in {seconds:.3f} s")

# %%
fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.6))
for ax, (name, (images, seconds)) in zip(axes, results.items()):
  grid = images[..., 0].reshape(10, 10, *images.shape[1:3]).swapaxes(1, 2)
  ax.imshow(grid.reshape(10 * images.shape[1], 10 * images.shape[2]), cmap="gray", vmin=0, vmax=255)
  ax.set_title(f"{name}\n{seconds:.3f} s for 100")
  ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# With the real step counts (`QUICK = False`), `configs/digits_cd.py` records a digits Fréchet
# distance of 0.87 in one step and 0.63 in two, against 0.45 for the teacher at its best DDIM-50
# (and 0.44 for UniPC in 5 steps), at a small fraction of the teacher's sampling time: one network
# evaluation per sample instead of ten (UniPC, each guided, so two) or fifty. Its distillation
# took less wall-clock than the teacher's training (79 s against 90 s). The second step re-noises
# x̂_0 to σ = 1.38 with `sample.gamma = 0.7` (the config's): part fresh noise, part the noise the
# first x̂_0 came from, which scores 0.63 where Algorithm 1's fresh noise alone (`gamma=1`) scores
# 0.77.
#
# ## Without a teacher: improved consistency training
#
# A consistency model can also be trained from data alone. `configs/digits_ict.py` is improved
# consistency training (iCT, Song & Dhariwal 2024): the same U-Net as the raw network of the
# consistency parameterisation, no teacher and no target network, each step pulling f at the upper
# of two adjacent Karras points towards f itself (gradient stopped) at the lower one, on a grid that
# doubles from 11 to 21 points halfway through its 2000 steps. It samples best in two steps
# (Fréchet distance 0.67, 1.48× the teacher's best DDIM-50, in 2.4× its training time; 1.55 in
# one), at σ's of its last grid: the network is trained at the grid's σ's only. Train it with
# `python -m jaxdiff.main --config=configs/digits_ict.py --workdir=runs/ict`.
#
# ## Next
#
# - `python benchmarks/consistency_nfe.py --teacher=… --cd=… --ict=…` scores the teacher (DDIM-50,
#   UniPC), CD in 1, 2 and 4 steps and iCT in 1 and 2 on 1000 samples each.
# - docs/guides/consistency.md lists the `consistency.*` options: the grid, the distance, the
#   teacher's solver and guidance.
