# ruff: noqa: F821 (the names the shared install cell defines: jax, ROOT, os, …)
# %% [markdown]
# # 08 · VAE, GAN and diffusion on stacked digits: 1,000 modes
#
# The seed's closing comparison. Three families of generative models, and the way each is said
# to fail:
# - a **VAE** (Kingma & Welling 2014) maximises a bound on the likelihood of every training
#   image, so it has to leave room for all of them: it *covers* the modes. But its Gaussian
#   decoder *hedges*: where several images are plausible it predicts their mean, and its samples
#   are blurred.
# - a **GAN** (Goodfellow et al. 2014) has no likelihood. Its generator only has to fool a
#   discriminator, which is satisfied by sharp images of *some* modes: samples are sharp, but
#   nothing asks for every mode, so some are dropped (mode collapse), and the two-player game
#   can diverge outright.
# - a **diffusion model** is trained, like the VAE, on a (weighted) likelihood bound, so it
#   covers; and it samples by many small denoising steps, each of which is close to Gaussian,
#   so predicting its mean loses nothing: the hedging that blurs a VAE's one big step is spread
#   over steps too small to blur. *Diffusion: no collapse, no hedging*. Its price is speed: ten or more network evaluations
#   per image where the other two need one. (Xiao et al. 2022 call quality, coverage and speed
#   the generative learning trilemma: each family gets two.)
#
# These are claims; `benchmarks/trilemma.py` measures whether they hold, on a dataset built to
# make mode dropping countable: **stacked digits**, three digits as the R, G and B channels of
# one image, 1,000 digit triples, so 1,000 modes. This notebook walks through that comparison at
# a small scale: it trains a VAE, a GAN and a pixel diffusion model with jaxdiff's own configs
# from the command line, draws samples from each, counts the modes they cover, measures their
# sharpness and likelihood, and prints the benchmark's table for the three of them.
#
# `QUICK = True` trains each model 8 steps at a tiny width and draws 100 samples: the images are
# noise and the numbers say nothing about the families, but every cell runs on a CPU in a few
# minutes (that is how CI runs this notebook). `QUICK = False` uses the configs' own networks and
# step counts and draws 10,000 samples per model, the number at which mode counts start to mean
# something; it is meant for a GPU or TPU runtime.

# %% [parameters]
QUICK = False  # True: 8 steps per model at tiny widths, 100 samples (CI, a first look)

# %% [install]

# %% [markdown]
# ## Stacked digits and the mode counter
#
# `stacked_digits` (`jaxdiff/data/stacked_digits.py`) is Stacked MNIST (Metz et al. 2017,
# Srivastava et al. 2017, Lin et al. 2018) on scikit-learn's digits: each image holds three
# 16×16 digits as its R, G and B channels, and its mode is the triple, 100·a + 10·b + c. It is
# built on first use, in seconds, like `digits`: 50,000 training and 10,000 test triples.
#
# `jaxdiff.metrics.ModeCounter` reads a sample's mode with the digits classifier (a small MLP fit
# on the digits' test split, in seconds) applied to each channel, and reports two numbers for N
# samples: the modes covered, of 1,000, and the KL divergence of their mode histogram from
# uniform, in nats (0: every mode equally often; ln 1000 ≈ 6.91: a single mode). Both depend on
# N, and the classifier misreads some real digits, so the reference is the real data at the same
# N: N real training triples, scored the same way (`ModeCounter.real_floor(N)`). Below, three
# real triples, their channels, and the modes the counter reads.

# %%
import json
import tempfile

import matplotlib.pyplot as plt
import numpy as np

from jaxdiff import metrics
from jaxdiff.data import stacked_digits
from jaxdiff.metrics.digits_classifier import DigitsFeatures

NUM_SAMPLES = 100 if QUICK else 10_000  # per model; the benchmark scores 10,000 too
real, real_modes = stacked_digits.stacked_split("test")  # uint8 (10000, 16, 16, 3), 100a+10b+c
features = DigitsFeatures()  # fits the digits classifier
counter = metrics.ModeCounter(features)
print(f"real test triples {real.shape}; classifier accuracy on held-out digits:", end=" ")
print(f"{features.train_accuracy:.3f}")

read = counter.modes(real[:3])
fig, axes = plt.subplots(3, 4, figsize=(5.2, 4.2))
for r in range(3):
  axes[r, 0].imshow(real[r])
  axes[r, 0].set_ylabel(f"mode {real_modes[r]:03d}\nread {read[r]:03d}", rotation=0, ha="right")
  for k, colour in enumerate("RGB"):
    axes[r, k + 1].imshow(real[r, ..., k], cmap="gray", vmin=0, vmax=255)
    axes[0, k + 1].set_title(f"channel {colour}")
  for ax in axes[r]:
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_title("image")
plt.tight_layout()
plt.show()

# the reference at this N: as many real training triples (the same as counter.real_floor(N))
real_train = stacked_digits.stacked_split("train")[0][:NUM_SAMPLES]
floor_ids = counter.modes(real_train)
floor = metrics.mode_statistics(floor_ids)
print(
  f"{NUM_SAMPLES} real training triples cover {floor['modes']} of 1000 modes, KL to uniform "
  f"{floor['kl_to_uniform']:.3f} nats"
)

# %% [markdown]
# ## The three models
#
# Each is a shipped config run by `python -m jaxdiff.main` into a temporary workdir; the flags
# that fix its network (`model.*`, the data's shape) are given again to `--mode=sample` and
# `--mode=eval`, which check them against the run's `config.json`. All three are unconditional:
# told the mode, a sampler's coverage would mean nothing.
#
# - **VAE**: `configs/digits_vae.py`, notebook 05's KL-autoencoder with β = 1 (its loss is
#   −ELBO, a Gaussian decoder with σ_x = 0.1), made to take stacked digits: 3 channels, no labels
#   (`data.num_classes=0`: the command line cannot write None, and an unconditional run reads no
#   labels either way). It works at 32×32, the stacked images resized, so its samples are
#   averaged 2×2 back to 16×16 before they are scored, as the benchmark does. Its samples are
#   decode(z), z ~ N(0, I).
# - **GAN**: `configs/stacked_digits_gan.py`, a DCGAN-family generator and a normalization-free
#   discriminator, the non-saturating loss with the R1 penalty, an EMA of the generator, Adam
#   with β₁ = 0. The benchmark also sweeps the discriminator/generator learning-rate ratio (1, 2,
#   4) and keeps the best; here it is the config's 1.
# - **pixel diffusion**: `configs/stacked_digits.py`, the digits default made unconditional with
#   3 channels: a U-Net on 2×2 patches, cosine schedule, v-prediction with Min-SNR-5, UniPC in 10
#   steps.
#
# With `QUICK = True` each network shrinks (the U-Net to one level of 32 channels, the narrowest
# its 32-group normalisation allows) and trains 8 steps of batch 16, one step per compiled call.
# With `QUICK = False` each trains its config's own steps (VAE 1000, GAN 2000, diffusion 800),
# which are not equal budgets; the benchmark instead measures each family's training rate and
# gives every one the same wall-clock.

# %%
WORKDIR = pathlib.Path(tempfile.mkdtemp(prefix="jaxdiff-trilemma-"))
FAMILIES = ("VAE", "GAN", "pixel diffusion")
DIRS = {"VAE": WORKDIR / "vae", "GAN": WORKDIR / "gan", "pixel diffusion": WORKDIR / "diffusion"}
# the flags that fix each network: given to train, sample and eval alike
MODEL = {
  "VAE": [
    "--config=configs/digits_vae.py",
    "--config.data.name=stacked_digits",
    "--config.data.channels=3",
    "--config.data.num_classes=0",  # no labels (None, which the command line cannot write)
    "--config.model.class_conditional=False",
  ],
  "GAN": ["--config=configs/stacked_digits_gan.py"],
  "pixel diffusion": ["--config=configs/stacked_digits.py"],
}
if QUICK:
  MODEL["VAE"] += [
    "--config.model.block_out_channels=(8,16,16)",
    "--config.model.norm_num_groups=4",
  ]
  MODEL["GAN"] += [
    "--config.model.latent_dim=8",
    "--config.model.generator_channels=16",
    "--config.model.discriminator_channels=8",
  ]
  MODEL["pixel diffusion"] += [
    "--config.model.base_channels=32",
    "--config.model.channel_mult=(1,)",
  ]
# QUICK's training overrides: 8 steps of batch 16, one per compiled call (compiles faster than
# the configs' 4 unrolled steps), no learning-rate warmup
TRAIN = []
if QUICK:
  TRAIN = [
    "--config.train.num_steps=8",
    "--config.train.steps_per_call=1",
    "--config.train.log_every=4",
    "--config.data.batch_size=16",
    "--config.optim.warmup_steps=0",
  ]
exit_codes = {}


def records(name):
  """The lines of a family's metrics.jsonl: training logs, then eval results."""
  lines = (DIRS[name] / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def train(name):
  """Trains family `name` into its workdir. A run whose loss turns NaN or Inf stops (exit code 1)
  and keeps its last good checkpoint: QUICK insists on success, the real run notes it and goes
  on, since a run that fails is what the stability row counts."""
  code = jaxdiff_main(*MODEL[name], f"--workdir={DIRS[name]}", *TRAIN)
  assert code == 0 or not QUICK, f"{name}: exit code {code}"
  if code != 0:
    print(f">>> {name}: the run stopped (exit code {code}); its last checkpoint is used")
  exit_codes[name] = code


train("VAE")

# %%
train("GAN")

# %%
train("pixel diffusion")

# %% [markdown]
# ## Samples
#
# `--mode=sample` draws `sample.num_samples` images from each run's EMA weights into
# `samples/<what made them>/samples_NxSxSx3.npz`: the VAE decodes prior draws, the GAN computes
# G(z), both in one network evaluation per image; the diffusion model integrates from noise with
# UniPC (4 steps with `QUICK`, its config's 10 otherwise), one evaluation per step.


# %%
def to_16x16(images):
  """uint8 (N, S, S, C) → (N, 16, 16, C): 2×2 means for S = 32 (the VAE's size), as
  benchmarks/trilemma.py scores it."""
  if images.shape[1] == 16:
    return images
  x = images.astype(np.float64).reshape(-1, 16, 2, 16, 2, images.shape[-1])
  return np.round(x.mean(axis=(2, 4))).astype(np.uint8)


DIFFUSION_STEPS = 4 if QUICK else load_config("stacked_digits").sample.num_steps
NFE = {"VAE": 1, "GAN": 1, "pixel diffusion": DIFFUSION_STEPS}  # network evaluations per image


def draw(name):
  """The family's samples, uint8 (NUM_SAMPLES, 16, 16, 3); None if it has no checkpoint."""
  flags = [
    f"--config.sample.num_samples={NUM_SAMPLES}",
    f"--config.sample.batch_size={min(NUM_SAMPLES, 500)}",
  ]
  if name == "pixel diffusion":
    flags.append(f"--config.sample.num_steps={DIFFUSION_STEPS}")
  code = jaxdiff_main(*MODEL[name], f"--workdir={DIRS[name]}", "--mode=sample", *flags)
  assert code == 0 or not QUICK, f"{name}: exit code {code}"
  if code != 0:
    return None
  written = (DIRS[name] / "samples").glob(f"*/samples_{NUM_SAMPLES}x*.npz")
  return to_16x16(np.load(max(written, key=lambda p: p.stat().st_mtime))["arr_0"])


samples = {name: draw(name) for name in FAMILIES}
samples = {name: images for name, images in samples.items() if images is not None}
for name, images in samples.items():
  print(f"{name:16s} {images.shape} {images.dtype}")

# %% [markdown]
# ## Quality and coverage
#
# Three measurements of each set of samples, the benchmark's:
# - **modes** covered of 1,000 and **KL to uniform** (the counter above), beside the real
#   triples' at the same N;
# - **sharpness**: the mean absolute difference between neighbouring pixels (intensities in
#   [0, 1], both directions, all channels), beside the real images'. A model that hedges, paints
#   a grey mean where it is unsure, and has less edge energy than the data;
# - **Fréchet distance** between Gaussians fitted to the digits classifier's hidden features of
#   the samples and of the 10,000 real test triples (each channel's 64 features side by side):
#   the digits stand-in for FID, lower is better. Like FID it is biased upwards at small N, so
#   compare it only at equal N.


# %%
def sharpness(images):
  """Mean |∇x| (finite differences, both directions) of uint8 images, in [0, 1] units."""
  x = np.asarray(images, np.float64) / 255.0
  return float((np.abs(np.diff(x, axis=2)).mean() + np.abs(np.diff(x, axis=1)).mean()) / 2)


def classifier_features(images):
  """The digits classifier's hidden features of each channel, side by side: (N, 3 × 64)."""
  return np.concatenate([features.features(images[..., k : k + 1]) for k in range(3)], axis=-1)


real_features = classifier_features(real)
real_sharpness = sharpness(real)
scores = {}
for name, images in samples.items():
  ids = counter.modes(images)
  scores[name] = {
    **metrics.mode_statistics(ids),
    "mode_ids": ids,
    "sharpness": sharpness(images),
    "frechet_distance": metrics.fid_from_features(classifier_features(images), real_features),
  }
  print(
    f"{name:16s} modes {scores[name]['modes']:4d}  KL {scores[name]['kl_to_uniform']:.3f}  "
    f"sharpness {scores[name]['sharpness']:.4f}  FD {scores[name]['frechet_distance']:.2f}"
  )
print(f"{'real':16s} modes {floor['modes']:4d}  KL {floor['kl_to_uniform']:.3f}  ", end="")
print(f"sharpness {real_sharpness:.4f}")

# %% [markdown]
# The first 100 samples of each, beside 100 real triples: a VAE's blur, a GAN's repeated images
# and a diffusion model's variety are visible before any number is. Then each set's mode
# histogram, sorted: a model that covers the modes evenly stays close to the real triples' curve;
# one that collapses piles its samples on a few modes (a tall head) and leaves the rest at zero
# (a short tail).

# %%
panels = {
  "real test triples": real[:100],
  **{name: images[:100] for name, images in samples.items()},
}
fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.9))
for ax, (name, images) in zip(axes, panels.items()):
  grid = images.reshape(10, 10, 16, 16, 3).swapaxes(1, 2).reshape(160, 160, 3)
  ax.imshow(grid)
  if name in scores:
    name = f"{name}\n{scores[name]['modes']} modes in {NUM_SAMPLES}"
  ax.set_title(name)
  ax.axis("off")
plt.tight_layout()
plt.show()

fig, ax = plt.subplots(figsize=(7, 3.2))
histograms = {"real training triples": floor_ids}
histograms.update({name: s["mode_ids"] for name, s in scores.items()})
for name, ids in histograms.items():
  counts = np.sort(np.bincount(ids, minlength=stacked_digits.NUM_MODES))[::-1]
  ax.plot(np.arange(1, len(counts) + 1), counts, label=name)
ax.axhline(NUM_SAMPLES / stacked_digits.NUM_MODES, color="gray", ls=":", label="uniform")
ax.set(xscale="log", xlabel="mode, by rank", ylabel=f"samples of {NUM_SAMPLES}")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Likelihood
#
# `--mode=eval` reports a bound on −log₂ p(x) per dimension on the test triples: the VAE's ELBO
# (its Gaussian decoder integrated over each pixel's 8-bit bin) and the diffusion model's
# variational bound, here estimated from random timesteps per image (`eval.num_timesteps`, an
# unbiased estimate of the sum over all 1,000), both in bits/dim, where 8 is a uniform model. A
# GAN defines no likelihood at all, so it has no entry. The VAE's bound is on the 32×32 images it
# models, the diffusion model's on the 16×16 ones, so the two are only roughly comparable.

# %%
EVAL_EXAMPLES = 16 if QUICK else 256  # test triples; the benchmark's default is 256


def bits_per_dim(name, *flags):
  """The bound on the first EVAL_EXAMPLES test triples, in bits/dim (None if none)."""
  if name not in samples:  # no checkpoint
    return None
  code = jaxdiff_main(
    *MODEL[name],
    f"--workdir={DIRS[name]}",
    "--mode=eval",
    "--config.eval.num_samples=0",  # the bound only: the samples were scored above
    f"--config.eval.num_examples={EVAL_EXAMPLES}",
    f"--config.eval.batch_size={min(EVAL_EXAMPLES, 64)}",
    *flags,
  )
  assert code == 0, f"{name}: exit code {code}"
  return next(r["eval_bpd"] for r in reversed(records(name)) if "eval_bpd" in r)


bpd = {
  "VAE": bits_per_dim("VAE"),
  "GAN": None,
  "pixel diffusion": bits_per_dim(
    "pixel diffusion", f"--config.eval.num_timesteps={10 if QUICK else 100}"
  ),
}
print({name: value for name, value in bpd.items() if value is not None})

# %% [markdown]
# ## The table
#
# The benchmark's columns for these three runs, and the real data's where it has one.

# %%
LOSS = {
  "VAE": "−ELBO: ‖x − x̂‖²/2σ² + KL(q(z|x) ‖ N(0, I))",
  "GAN": "non-saturating GAN loss + R1 (γ/2·‖∇D(x)‖²)",
  "pixel diffusion": "v-prediction MSE, Min-SNR-5 (a weighted ELBO)",
}
print(
  f"| model | steps | finished | modes (of 1000) | KL to uniform | sharpness (real "
  f"{real_sharpness:.4f}) | Fréchet distance | bits/dim | NFE | loss |"
)
print("|---" * 10 + "|")
real_row = [f"{NUM_SAMPLES} real triples", "", "", floor["modes"], f"{floor['kl_to_uniform']:.3f}"]
print("| " + " | ".join(map(str, real_row + [f"{real_sharpness:.4f}", "", "", "", ""])) + " |")
for name in FAMILIES:
  steps = max((r["step"] for r in records(name) if "loss" in r), default=0)
  finished = "yes" if exit_codes[name] == 0 else f"no (exit {exit_codes[name]})"
  if name not in scores:
    print(f"| {name} | {steps} | {finished} | no samples | | | | | {NFE[name]} | {LOSS[name]} |")
    continue
  s = scores[name]
  likelihood = "none" if bpd[name] is None else f"{bpd[name]:.3f}"
  print(
    f"| {name} | {steps} | {finished} | {s['modes']} | {s['kl_to_uniform']:.3f} | "
    f"{s['sharpness']:.4f} | {s['frechet_distance']:.2f} | {likelihood} | {NFE[name]} | "
    f"{LOSS[name]} |"
  )

# %% [markdown]
# ### What each row of the seed's table means
#
# - **Stability**: does training work without babysitting? A GAN's two-player game can diverge
#   (the loss turns NaN) or collapse onto a few modes partway through; a likelihood model's loss
#   only goes down. One run says little: the benchmark trains each family with 3 seeds × 2
#   learning rates (its config's and 2×) and counts the runs that failed, a non-finite loss or
#   fewer than half the modes of the family's best run, and the spread of the Fréchet distance
#   of the others. Here, only whether each run finished.
# - **Quality**: the Fréchet distance (the samples' features against the real images') and the
#   sharpness (against the real images'). Hedging shows as sharpness below the real images'.
# - **Mode coverage**: modes covered and the KL of the mode histogram to uniform, beside the real
#   triples' at the same N. Collapse shows as fewer modes and a larger KL than the real triples'.
# - **Likelihood**: a bound on bits/dim on held-out images, which the VAE and the diffusion model
#   report and the GAN cannot: it says how much of the data's probability the model accounts for,
#   which is another way to ask for coverage.
# - **Speed**: network evaluations per image (the benchmark also times the milliseconds per
#   image after compilation, at batch 500): one for the VAE and the GAN, the sampler's steps for
#   diffusion.
# - **Loss**: what each family minimises. Two are likelihood bounds (the VAE's −ELBO, and
#   diffusion's MSE, which is a weighted ELBO); the GAN's is a game.
#
# The seed's claims, in these terms: the GAN's sharpness is near the real images' but it covers
# fewer modes than the real triples (and some of its runs fail); the VAE covers about as many
# modes as the real triples but its sharpness is well below theirs; diffusion is near the real
# triples on both, at ten or more evaluations per image. With `QUICK = True` the table above is
# noise (8 training steps); with `QUICK = False` it is one run of each at the configs' own
# budgets, not the benchmark's equal ones.
#
# ## The full benchmark
#
# `benchmarks/trilemma.py` (in a checkout of the repository; it is not part of the installed
# package) makes the comparison properly: it trains the VAE, the GAN, pixel diffusion, a
# flow-matching model (the same U-Net trained on straight paths, as SD3 trains), latent diffusion
# on the VAE's latents and the consistency-distilled student of the pixel model (one step), each
# for the same measured wall-clock budget, sweeps the GAN's learning-rate ratio,
# reruns every family over seeds and learning rates for the stability columns, scores 10,000
# samples per model and writes a figure. Its measured table, the answer to whether the claims
# hold, is recorded in `benchmarks/RESULTS.md`.

# %%
BENCHMARK = "python benchmarks/trilemma.py --out=runs/trilemma --figure=trilemma.png"
print("The full benchmark, from the repository's root (about an hour on 2 CPU cores):")
print("  " + BENCHMARK)
print("Every row at toy budgets, a check that it runs (minutes):")
print("  python benchmarks/trilemma.py --out=runs/trilemma_quick --quick")
print("The same on the 10-mode digits instead of stacked digits: add --data=digits")
if ROOT is not None and (ROOT / "benchmarks" / "trilemma.py").is_file():
  print("this checkout has it:", ROOT / "benchmarks" / "trilemma.py")
else:
  print(f"benchmarks/ comes with a checkout: git clone {JAXDIFF_SOURCE}")

# %% [markdown]
# ### Reading its output
#
# It prints one JSON line per result as it goes (the setting, the real training triples' mode
# count at N = 10,000, each GAN ratio, each headline run, each stability run), then the line
# `GAN discriminator/generator learning-rate ratio chosen: …`, then one markdown table with a row
# per model: VAE, GAN, pixel diffusion, latent diffusion, consistency (1 step). Its columns:
#
# | column | row of the seed's table | what to look for |
# |---|---|---|
# | failed of runs | stability | failed of 6 runs (3 seeds × 2 learning rates): a non-finite loss, or fewer than half the modes of the family's best run |
# | FD spread | stability | min–max Fréchet distance of the runs that did not fail, on 1,000 samples: how much a seed or a learning rate changes the result |
# | Fréchet distance | quality | lower is better; 10,000 samples against the real test triples |
# | sharpness (real …) | quality | against the real images' value in the header: well below it is blur |
# | modes (of 1000), KL to uniform | mode coverage | against the real triples' line printed at the start (`real_train_triples`) |
# | bits/dim | likelihood | the VAE's ELBO and pixel diffusion's bound; `none` for the GAN, the consistency model and latent diffusion (whose bound is on latents) |
# | NFE, ms/image | speed | network evaluations and milliseconds per image after compilation |
# | loss | loss | what the family minimises |
#
# `--figure` draws every model at (ms per image, Fréchet distance), both on log scales, with a
# marker whose area grows with the modes covered: the trilemma in one picture. The claims put
# the GAN to the left (fast) with a small marker (few modes), the VAE to the left with a large
# marker but high up (blur raises the Fréchet distance), diffusion low with a large marker but to
# the right (slow), and the consistency student where distillation tries to move diffusion: to
# the left.
#
# ## Next
#
# - Notebook 05 looks inside the VAE (reconstructions, latents, its ELBO split into its two terms)
#   and turns it into latent diffusion; notebook 07 distils a diffusion model into the one-step
#   student the benchmark's last row uses.
# - docs/guides/vae_gan_diffusion.md lists the GAN's
#   options (`gan.*`) and the mode counter's.
