# ruff: noqa: F821 (the names the shared install cell defines: jax, ROOT, os, …)
# %% [markdown]
# # 05 · Latent diffusion: an autoencoder, then diffusion on its latents
#
# Latent diffusion (Rombach et al. 2022) splits image generation in two. A KL-autoencoder — a VAE
# (Kingma & Welling 2014) — learns to squeeze an image into a small grid of latents and back;
# then a diffusion model learns the distribution of those latents, and its samples are decoded.
# Stable Diffusion is this recipe at scale: 512×512×3 pixels become 64×64×4 latents.
#
# On the digits, jaxdiff's two configs are the same recipe in miniature:
# - `configs/digits_vae.py`: a 0.68M-parameter KL-autoencoder on the digits resized to 32×32,
#   f = 4, so 8×8×4 = 256 latents for 1,024 pixels; trained on reconstruction + β·KL with β = 0.1;
# - `configs/digits_latent.py`: the digits default's U-Net, schedule and sampler, trained on those
#   8×8×4 latents instead of pixels.
#
# This notebook trains both from the command line, looks at the reconstructions and at the
# latents themselves, and then puts the VAE's own samples beside latent diffusion's: the classic
# contrast between a VAE's blurry samples and a diffusion model's sharp ones, and between the
# VAE's likelihood bound (its ELBO) and a diffusion model's. If you give it the path of Stable
# Diffusion's VAE, it also runs that one on a photograph.
#
# `QUICK = True` trains the autoencoder 40 steps instead of 1000 (on batches of 32, not 64) and
# the latent model 30 instead of 800: reconstructions are rough and samples are blobs, but every
# cell runs on a CPU in about two minutes (that is how CI runs this notebook). The real step
# counts are meant for a GPU or TPU runtime; on a CPU they take much longer.

# %% [parameters]
QUICK = False  # True: a few dozen steps per stage (CI, a first look); False: the configs' own
# Stable Diffusion's VAE, optional: a diffusers AutoencoderKL folder (e.g. stabilityai/sd-vae-ft-ema)
# or a folder written by `python -m jaxdiff.convert diffusers-vae SRC DST`. "" skips that section.
SD_VAE_PATH = ""

# %% [install]

# %% [markdown]
# ## Stage 1: the autoencoder
#
# The autoencoder is trained by the same trainer, checkpointing and EMA as any diffusion run; only
# the network (`model.arch=autoencoder`) and the objective (`diffusion.loss=autoencoder`) differ.
# Its loss per dimension is ‖x − x̂‖² / (2σ_x²) + β·KL(q(z|x) ‖ N(0, I)) with σ_x = 0.1: a Gaussian
# decoder, and a KL term that pulls each digit's posterior over latents toward the prior. β = 1
# would be the VAE's true objective; β = 0.1 keeps reconstructions sharp, which latent diffusion
# needs, at the price of a latent space further from N(0, I), as we will see.

# %%
import json
import tempfile

WORKDIR = pathlib.Path(tempfile.mkdtemp(prefix="jaxdiff-latent-"))
VAE_DIR, LATENT_DIR = WORKDIR / "vae", WORKDIR / "latent"


def quick_flags(steps):
  """QUICK's overrides: a few steps, one per compiled call (compiles faster than the default's 4
  unrolled steps, which pay off only over hundreds), and a short learning-rate warmup."""
  if not QUICK:
    return []
  return [
    f"--config.train.num_steps={steps}",
    "--config.train.steps_per_call=1",
    "--config.train.log_every=10",
    "--config.optim.warmup_steps=10",
  ]


VAE_FLAGS = ["--config=configs/digits_vae.py", f"--workdir={VAE_DIR}"]
if QUICK:
  # also half the batch: the autoencoder's steps, at full 32×32 resolution, are the slow ones
  VAE_FLAGS.append("--config.data.batch_size=32")
assert jaxdiff_main(*VAE_FLAGS, *quick_flags(40)) == 0

# %% [markdown]
# ## Reconstructions
#
# `jaxdiff.codecs.autoencoder.load_autoencoder` loads the newest checkpoint's EMA weights of an
# autoencoder workdir (or a converted Stable Diffusion VAE) as an `AutoencoderKL` module:
# `encode(x)` gives the posterior q(z|x) = N(mean, exp(logvar)), `decode(z)` an image. Below,
# the first 100 test digits (which training never saw), their reconstructions decode(mean), and
# decode(z) for one random draw z from each posterior: the posterior is narrow, so the two agree.

# %%
import jax.numpy as jnp
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
from flax import nnx

from jaxdiff import generate
from jaxdiff import run as run_lib
from jaxdiff.codecs.autoencoder import load_autoencoder
from jaxdiff.models.autoencoder import sample_posterior
from jaxdiff.objectives.autoencoder import elbo_bits_per_dim, kl_to_standard_normal

vae = load_autoencoder(VAE_DIR)
vae_config = ml_collections.ConfigDict(json.loads((VAE_DIR / "config.json").read_text()))
# the weights enter the compiled programs as an argument, not as constants
graphdef, params, rest = nnx.split(vae, nnx.Param, ...)
encode = jax.jit(lambda params, x: nnx.merge(graphdef, params, rest).encode(x))
decode = jax.jit(lambda params, z: nnx.merge(graphdef, params, rest).decode(z))

test_set = run_lib.make_dataset(
  vae_config,
  "test",
  shuffle=False,
  num_epochs=1,
  batch_size=100,
  drop_remainder=False,
  random_flip=False,
)
batch = next(iter(test_set))
x, labels = batch["image"], batch["label"]  # 100 test digits, 32×32×1 in [-1, 1]
mean, logvar = encode(params, x)
z = sample_posterior(mean, logvar, jax.random.normal(jax.random.key(0), mean.shape))
reconstructions, drawn = decode(params, mean), decode(params, z)
print(f"images {x.shape} -> latents {mean.shape}, {x[0].size // mean[0].size}× fewer numbers")
print(f"posterior σ: mean {np.exp(0.5 * logvar).mean():.3f}")
print(
  f"reconstruction mean squared error (pixels in [-1, 1]): {np.mean((reconstructions - x) ** 2):.4f}"
)


def show_rows(rows, per_row=10, size=0.8):
  """A figure with one row per (name, images in [-1, 1] or uint8) pair, per_row images each."""
  fig, axes = plt.subplots(len(rows), per_row, figsize=(per_row * size, len(rows) * size * 1.1))
  for r, (name, images) in enumerate(rows):
    images = generate.to_uint8(images) if images.dtype != np.uint8 else images
    for c in range(per_row):
      axes[r, c].imshow(images[c, ..., 0], cmap="gray", vmin=0, vmax=255)
      axes[r, c].set_xticks([])
      axes[r, c].set_yticks([])
    axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center")
  fig.subplots_adjust(left=0.2, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
  plt.show()


show_rows([("test digits", x), ("decode(mean)", reconstructions), ("decode(z), z ~ q(z|x)", drawn)])

# %% [markdown]
# ## What the latents look like
#
# Each digit becomes an 8×8 grid of 4 numbers: four 8×8 "images", shown here in a diverging
# colour map (blue negative, red positive; the same scale for all). An f = 4 autoencoder keeps
# the layout of the image, so the channels trace the digit's strokes (more clearly the longer it
# trains): the encoder re-codes each 4×4 patch and its surroundings. This spatial structure is what lets a U-Net or a DiT work on latents
# exactly as on pixels.

# %%
rows = 4
limit = float(np.abs(mean[:rows]).max())
fig, axes = plt.subplots(rows, 5, figsize=(7.5, 1.6 * rows))
for r in range(rows):
  axes[r, 0].imshow(x[r, ..., 0], cmap="gray", vmin=-1, vmax=1)
  axes[r, 0].set_ylabel(f"digit {int(labels[r])}")
  for c in range(4):
    axes[r, c + 1].imshow(mean[r, ..., c], cmap="RdBu_r", vmin=-limit, vmax=limit)
    if r == 0:
      axes[r, c + 1].set_title(f"latent channel {c}")
  for ax in axes[r]:
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_title("32×32 image")
plt.tight_layout()
plt.show()
print("std of the posterior means per channel:", np.round(np.std(mean, axis=(0, 1, 2)), 2))

# %% [markdown]
# ## The VAE's likelihood: its ELBO in bits/dim
#
# `--mode=eval` scores an autoencoder run by its evidence lower bound on the 270 test digits,
# −log p(x) ≤ E_q[−log p(x|z)] + KL(q(z|x) ‖ N(0, I)), with the Gaussian decoder N(x̂, σ_x²)
# integrated over each pixel's 8-bit bin as DDPM's last step is: an upper bound on the negative
# log-likelihood in bits per dimension, in the same units as a diffusion model's bound (8 bits/dim
# is a uniform model). It is a true bound whatever β the model was trained with. The next cell
# runs it and then splits the bound of the 100 digits above into its two terms.

# %%
assert jaxdiff_main(*VAE_FLAGS, "--mode=eval") == 0
records = [json.loads(line) for line in (VAE_DIR / "metrics.jsonl").read_text().splitlines()]
elbo = next(r for r in reversed(records) if "eval_bpd" in r)
print(f"\nELBO on the test split: {elbo['eval_bpd']:.3f} ± {elbo['eval_bpd_stderr']:.3f} bits/dim")

decoder_std = vae_config.vae.decoder_std
total = elbo_bits_per_dim(x, drawn, mean, logvar, decoder_std=decoder_std)
kl = kl_to_standard_normal(mean, logvar) / (x[0].size * np.log(2.0))
print(f"these 100 digits: {np.mean(total):.3f} bits/dim =")
print(
  f"  {np.mean(total - kl):.3f} reconstruction (−log p(x|z), one draw z) + {np.mean(kl):.3f} KL"
)

# %% [markdown]
# ## Stage 2: diffusion on the latents
#
# `configs/digits_latent.py` is the digits default (v-prediction with Min-SNR-5, cosine
# schedule, class labels with classifier-free guidance 1.5, UniPC in 10 steps) with
# `codec.name=autoencoder`: every training batch is encoded by the frozen EMA autoencoder named by
# `--config.autoencoder.path`, a latent is drawn from each posterior, and the U-Net learns to
# denoise latents rather than pixels. Samples are latents, decoded before they are written.
#
# Diffusion schedules assume data of about unit variance, and these latents are not (see the
# standard deviations printed above). The run measures 1/std of the training latents once, scales
# by it and stores it with the autoencoder's fingerprint in the workdir's `codec.json` (Stable
# Diffusion's VAE carries its own, 0.18215).

# %%
LATENT_FLAGS = [
  "--config=configs/digits_latent.py",
  f"--workdir={LATENT_DIR}",
  f"--config.autoencoder.path={VAE_DIR}",
]
assert jaxdiff_main(*LATENT_FLAGS, *quick_flags(30)) == 0
print((LATENT_DIR / "codec.json").read_text())

# %%
assert jaxdiff_main(*LATENT_FLAGS, "--mode=sample") == 0
(written,) = (np.load(p) for p in (LATENT_DIR / "samples").glob("*/samples_100x32x32x1.npz"))
latent_samples, latent_labels = written["arr_0"], written["arr_1"]  # uint8 images, asked-for labels
print("latent diffusion samples", latent_samples.shape, latent_samples.dtype)

# %% [markdown]
# ## The VAE's samples against latent diffusion's
#
# A VAE is a generative model by itself: draw z from the prior N(0, I) and decode it (what
# `--mode=sample` of the autoencoder run writes; the next cell draws 100 in-process with the
# `decode` compiled above). Latent diffusion keeps the same decoder and replaces only the prior:
# its z come from a diffusion model of the latents the encoder actually produces. Shown: one test
# digit of each class, the VAE's prior samples (unconditional), and latent diffusion's (conditioned
# on the digits 0–9).

# %%
prior_z = jax.random.normal(jax.random.key(1), mean.shape)
prior_samples = np.clip(decode(params, prior_z), -1, 1)
one_each = [int(np.flatnonzero(np.asarray(labels) == d)[0]) for d in range(10)]
latent_each = [int(np.flatnonzero(latent_labels == d)[0]) for d in range(10)]
show_rows(
  [
    ("real digits", x[np.array(one_each)]),
    ("VAE: decode(z), z ~ N(0, I)", prior_samples),
    ("latent diffusion", latent_samples[latent_each]),
  ]
)

# %% [markdown]
# ### Blurry against sharp
#
# "VAE samples are blurry" can be measured: the mean absolute difference between neighbouring
# pixels (intensities in [0, 1], on the 16×16 grid the digits were scanned at), the sharpness of
# `benchmarks/vae_vs_diffusion.py`. A blurry model has less edge energy than the real digits.
# Two reasons, both visible above: a Gaussian decoder predicts the *mean* of the pixels it is
# unsure about, a grey smear; and with β < 1 the encoder's latents do not fill N(0, I) (their
# standard deviations above are not 1), so most prior draws land where the decoder never saw a
# digit. The diffusion prior only proposes latents like the encoder's, and the decoder turns those
# into digits as sharp as its reconstructions.


# %%
def sharpness(images):
  """Mean |∇x| (finite differences, both directions) of images, on the 16×16 grid in [0, 1]."""
  images = np.asarray(generate.to_uint8(images) if images.dtype != np.uint8 else images)
  small = images[..., 0].astype(np.float64).reshape(-1, 16, 2, 16, 2).mean(axis=(2, 4)) / 255
  return (np.abs(np.diff(small, axis=2)).mean() + np.abs(np.diff(small, axis=1)).mean()) / 2


for name, images in [
  ("real test digits", x),
  ("VAE reconstructions", reconstructions),
  ("VAE prior samples", prior_samples),
  ("latent diffusion samples", latent_samples),
]:
  print(f"{name:25s} sharpness {sharpness(images):.4f}")

# %% [markdown]
# ### ELBO against the diffusion bound
#
# The two families also differ in the likelihood they can report. The VAE's ELBO printed above
# is an upper bound on −log₂ p(x) per pixel, for the model that samples from N(0, I) — the one
# with the blurry samples. A pixel-space diffusion model has its own bound, a sum of per-step
# terms (notebook 04 computes and plots it; `benchmarks/RESULTS.md` has 4.72 bits/dim for
# `configs/digits.py` and 4.23 for the learned-variance `digits_hybrid.py`, on 16×16 digits, so
# only roughly comparable with this 32×32 VAE). A latent diffusion model has neither: its
# diffusion bound is on latents, and the path from latents to pixels (a deterministic decoder)
# gives no pixel likelihood, so `--mode=eval` of a latent run refuses `eval.bits_per_dim` with one
# sentence. That is the trade latent diffusion makes: sharper samples and a far cheaper network,
# no likelihood. `benchmarks/vae_vs_diffusion.py` puts the three models (VAE, pixel diffusion,
# latent diffusion) in one table: Fréchet distance, sharpness, bits/dim, time per image.
#
# ## Stable Diffusion's VAE (optional)
#
# `SD_VAE_PATH` in the first cell names a Stable Diffusion VAE: a diffusers `AutoencoderKL` folder
# (the `vae/` of a Stable Diffusion repository, or `stabilityai/sd-vae-ft-ema`), read by
# `jaxdiff.convert.load_diffusers_vae`, or a folder `python -m jaxdiff.convert diffusers-vae`
# wrote, read by `jaxdiff.convert.load_converted`. The same `AutoencoderKL` class runs it (its
# weights converted by name). It encodes a 256×256 photograph that ships with scikit-learn to
# 32×32×4 latents and decodes them again; the same folder passed as `--config.autoencoder.path`
# trains a latent diffusion model in its latent space, scaled by its own `scaling_factor`.

# %%
from jaxdiff import convert

if SD_VAE_PATH:
  from sklearn.datasets import load_sample_image

  sd_path = pathlib.Path(SD_VAE_PATH).expanduser()
  if (sd_path / "network_config.json").is_file():
    sd_vae = convert.load_converted(sd_path)
  else:
    sd_vae = convert.load_diffusers_vae(sd_path)
  photo = load_sample_image("china.jpg")  # 427×640×3 uint8
  top, left = (photo.shape[0] - 256) // 2, (photo.shape[1] - 256) // 2
  photo = photo[top : top + 256, left : left + 256]
  sd_x = jnp.asarray(photo[None], jnp.float32) / 127.5 - 1
  sd_graphdef, sd_params, sd_rest = nnx.split(sd_vae, nnx.Param, ...)

  @jax.jit
  def sd_round_trip(params, images):
    model = nnx.merge(sd_graphdef, params, sd_rest)
    latent_mean, _ = model.encode(images)
    return latent_mean, model.decode(latent_mean)

  sd_mean, sd_reconstruction = sd_round_trip(sd_params, sd_x)
  print(
    f"{sd_path.name}: f = {sd_vae.downsampling_factor}, {sd_x.shape[1:]} -> {sd_mean.shape[1:]}, "
    f"scaling_factor {sd_vae.scaling_factor}"
  )
  print(f"reconstruction mean squared error: {np.mean((sd_reconstruction - sd_x) ** 2):.4f}")
  sd_scaled = np.asarray((sd_mean[0] - sd_vae.shift_factor) * sd_vae.scaling_factor)
  print("std of the scaled latents per channel:", np.round(sd_scaled.std(axis=(0, 1)), 2))
  fig, axes = plt.subplots(
    1, 2 + sd_scaled.shape[-1], figsize=(2.2 * (2 + sd_scaled.shape[-1]), 2.6)
  )
  axes[0].imshow(photo)
  axes[0].set_title("photograph")
  axes[1].imshow(generate.to_uint8(sd_reconstruction[0]))
  axes[1].set_title("decode(encode(x))")
  for c in range(sd_scaled.shape[-1]):
    axes[2 + c].imshow(sd_scaled[..., c], cmap="RdBu_r", vmin=-3, vmax=3)
    axes[2 + c].set_title(f"latent channel {c}")
  for ax in axes:
    ax.axis("off")
  plt.tight_layout()
  plt.show()
else:
  print("SD_VAE_PATH is empty: nothing to load.")

# %% [markdown]
# ## Next
#
# - The real runs: set `QUICK = False` (1000 autoencoder steps, 800 latent steps), or on the
#   command line, the five commands of docs/guides/latent.md.
# - `python benchmarks/vae_vs_diffusion.py --pixel=… --vae=… --latent=…` scores the VAE, pixel
#   diffusion and latent diffusion on 1000 samples each.
# - A latent run works with the DiT as with the U-Net; notebook 06 trains a DiT on pixels and
#   samples a published latent DiT through Stable Diffusion's VAE.
