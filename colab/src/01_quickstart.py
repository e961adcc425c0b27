# ruff: noqa: F821 (the names the shared install cell defines: jax, ROOT, os, …)
# %% [markdown]
# # 01 · Quickstart: train a diffusion model on handwritten digits
#
# This notebook trains jaxdiff's embedded default, `configs/digits.py`, and draws digits from it.
# The data are the 1,797 real 8×8 handwritten digits that ship inside scikit-learn (upsampled to
# 16×16, no download); the model is a class-conditional, 0.65M-parameter U-Net on v-prediction
# with classifier-free guidance, sampled with UniPC in 10 steps. On two CPU cores the whole
# notebook takes about five minutes; on a Colab GPU or TPU, about one.
#
# Along the way: which devices JAX sees, what a run writes to its working directory, the loss
# curve, and what happens when training is interrupted (it resumes exactly where it stopped).
#
# `QUICK = True` below trains 40 steps instead of 800: the samples are still noise, but every
# cell runs in a minute on a CPU (that is how CI runs this notebook).

# %% [parameters]
QUICK = False  # True: a few dozen training steps (CI, a first look); False: the real 800

# %% [markdown]
# ## Install
#
# The next cell finds jaxdiff: in Colab it clones `JAXDIFF_SOURCE` and installs it (with the JAX
# build for the runtime's TPU or GPU); run from a checkout of the repository it uses that
# checkout. If pip ever asks you to restart the runtime, restart it and run the notebook again:
# the second time nothing is installed.

# %% [install]

# %% [markdown]
# ## Devices
#
# JAX lists what it will compute on: `TpuDevice`s on a TPU runtime (8 cores on a v2-8), a
# `CudaDevice` on a GPU runtime, otherwise one `CpuDevice`. jaxdiff's training step splits each
# batch over all of them; nothing in the commands below changes between the three.

# %%
for device in jax.devices():
  print(device.platform, device.device_kind, device)
print(jax.device_count(), "device(s) in", jax.process_count(), "process(es)")

# %% [markdown]
# ## Train
#
# Training is one command, `python -m jaxdiff.main --workdir=DIR`, which defaults to
# `configs/digits.py`; any config value can be changed with `--config.section.key=value`. The
# working directory receives the config, Orbax checkpoints, `metrics.jsonl` and TensorBoard
# events. (In Python the same run is `jaxdiff.train.loop.train(config, workdir)`; notebooks 03,
# 04 and 06 use that form.)
#
# The runs here go to a temporary folder. To keep one across Colab sessions, point `WORKDIR` at a
# folder of your Google Drive instead.

# %%
import tempfile

WORKDIR = pathlib.Path(tempfile.mkdtemp(prefix="jaxdiff-quickstart-"))
STEPS = 40 if QUICK else 800  # configs/digits.py's own value is 800
TRAIN_FLAGS = [f"--workdir={WORKDIR}", f"--config.train.num_steps={STEPS}"]
TRAIN_FLAGS.append(f"--config.train.log_every={10 if QUICK else 50}")
if QUICK:
  # One optimizer step per compiled call compiles faster than the default's 4 unrolled steps,
  # which pays off only over hundreds of steps; checkpoint early so the interruption below has one.
  TRAIN_FLAGS += ["--config.train.steps_per_call=1", "--config.train.checkpoint_every=10"]


def checkpoint_steps():
  folder = WORKDIR / "checkpoints"
  return (
    sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
  )


# %% [markdown]
# We start training and, to see what an interruption does, stop it on purpose once it has written
# its first checkpoint, as a preempted TPU or a closed laptop would. jaxdiff catches the signal,
# saves a checkpoint of the step it is at and exits with status 75 ("try again") and a line that
# says how to go on.

# %%
code = jaxdiff_main(*TRAIN_FLAGS, interrupt_when=lambda: bool(checkpoint_steps()))
print("\nexit code", code, "| checkpoints at steps", checkpoint_steps())
assert code in (0, 75), code  # 75: stopped by the signal; 0: finished before it arrived

# %% [markdown]
# ## Resume
#
# Running the same command again picks up the newest checkpoint: parameters, EMA, optimizer
# state, step, random key and the data iterator's position. The finished run's parameters are
# bit-identical to those of a run that was never interrupted (`tests/test_train.py` checks this,
# also after a `kill -9`).

# %%
assert jaxdiff_main(*TRAIN_FLAGS) == 0
print("checkpoints at steps", checkpoint_steps())

# %% [markdown]
# ## Sample
#
# `--mode=sample` loads the newest checkpoint's EMA parameters and writes `sample.num_samples`
# images (100 here, ten of each digit) as `samples_100x16x16x1.npz`, the format standard FID tools
# read, and a grid as `grid.png`, in a folder of `samples/` named by what made them (checkpoint
# step, sampler and steps, guidance, seed, and a digest of the other `sample.*` settings), so
# sampling again with other settings never overwrites them.

# %%
assert jaxdiff_main(f"--workdir={WORKDIR}", "--mode=sample") == 0

# %%
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

(SAMPLES,) = (WORKDIR / "samples").glob("step*/samples_100x16x16x1.npz")
print(SAMPLES.parent.name)
samples = np.load(SAMPLES)
print(
  "images",
  samples["arr_0"].shape,
  samples["arr_0"].dtype,
  "| asked-for labels",
  samples["arr_1"][:10],
  "…",
)
plt.figure(figsize=(6, 6))
plt.imshow(Image.open(SAMPLES.parent / "grid.png"), cmap="gray")
plt.title(f"digits 0–9 in each row, after {checkpoint_steps()[-1]} training steps")
plt.axis("off")
plt.show()

# %% [markdown]
# ## The loss curve
#
# `metrics.jsonl` has one JSON line per logged step (loss, gradient norm, learning rate,
# throughput), and one line with the parameter count each time a process starts training: the
# dashed line marks where the second process resumed. The same numbers are in TensorBoard
# (`%load_ext tensorboard` then `%tensorboard --logdir {WORKDIR}/tensorboard` in Colab).

# %%
import json

records = [json.loads(line) for line in (WORKDIR / "metrics.jsonl").read_text().splitlines()]
logged = [r for r in records if "loss" in r]
starts = [r["step"] for r in records if "params" in r]
fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 3.5))
ax_loss.plot([r["step"] for r in logged], [r["loss"] for r in logged], "o-")
ax_loss.set(xlabel="step", ylabel="training loss (v-prediction, Min-SNR-5)", title="loss")
ax_lr.plot([r["step"] for r in logged], [r["lr"] for r in logged], "o-")
ax_lr.set(xlabel="step", ylabel="learning rate", title="warmup, then cosine decay")
for ax in (ax_loss, ax_lr):
  for step in starts[1:]:
    ax.axvline(step, color="gray", ls="--", lw=1, label=f"resumed at step {step}")
  if starts[1:]:
    ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Next
#
# - `python -m jaxdiff.main --workdir=DIR --mode=eval` scores the run: the test split's
#   likelihood bound in bits/dim and, on the digits, a small held-out classifier's Fréchet
#   distance (notebook 04 looks at the bound).
# - Notebook 02 shows what the model learned to undo; 03 compares every sampler on one model;
#   06 swaps the U-Net for a Diffusion Transformer; 08 puts diffusion beside a VAE and a GAN.
# - Larger configs (`configs/cifar10.py`, `configs/imagenet64.py`) run the same way; see
#   `09_tpu_pod_imagenet64.md` for ImageNet 64×64 on a TPU pod.
