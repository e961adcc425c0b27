# ruff: noqa: F821 (the names the shared install cell defines: jax, ROOT, os, …)
# %% [markdown]
# # 06 · A Diffusion Transformer (DiT) on digits
#
# The Diffusion Transformer of Peebles & Xie (2023) replaces the U-Net by a plain vision
# transformer: the image is cut into p×p patches, each patch becomes a token, and a stack of
# transformer blocks, conditioned on the timestep and the class through adaLN-Zero (a scale,
# shift and gate per block computed from the conditioning), predicts the output patch by patch.
#
# This notebook trains `configs/digits_dit.py` (a 1.57M-parameter DiT: 4×4 patches, so 16 tokens
# for a 16×16 digit; hidden size 128, 5 blocks of 4 heads), shows classifier-free guidance scales
# side by side, looks at the patch tokens and at what each block attends to, and, if you give it
# the path of a published DiT checkpoint, samples from that.
#
# `QUICK = True` trains 30 steps instead of 800 (noise-like samples, but every cell runs on a CPU
# in about two minutes).

# %% [parameters]
QUICK = False  # True: a barely trained model (CI, a first look)
# A published DiT, optional: facebookresearch/DiT's DiT-XL-2-256x256.pt (needs torch), a diffusers
# DiTTransformer2DModel folder (e.g. facebook/DiT-XL-2-256's transformer/), or a folder written by
# `python -m jaxdiff.convert dit-checkpoint/diffusers-dit`. "" skips that section.
DIT_CHECKPOINT = ""
# Its latents are decoded by Stable Diffusion's VAE: a diffusers AutoencoderKL folder (e.g.
# stabilityai/sd-vae-ft-ema) or a `python -m jaxdiff.convert diffusers-vae` folder. "": show latents.
VAE_CHECKPOINT = ""
DIT_CLASS_LABELS = [207, 360, 387, 974, 88, 979, 417, 279]  # ImageNet classes, as DiT's sample.py
DIT_GUIDANCE, DIT_NUM_STEPS = 4.0, 250  # DiT's sample.py: guidance 4, DDPM on 250 respaced steps

# %% [install]

# %% [markdown]
# ## Train
#
# `configs/digits_dit.py` is the digits default (data, cosine schedule, v-prediction with
# Min-SNR-5, EMA, UniPC-10) with the DiT in place of the U-Net, sampled at guidance 1.2 where the
# U-Net takes 1.5 (the scales are compared below). It trains in this process with
# `jaxdiff.train.loop`, as `python -m jaxdiff.main --config=configs/digits_dit.py` would.

# %%
import tempfile

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from jaxdiff import diffusion, generate, guidance, metrics, models, samplers
from jaxdiff import run as run_lib
from jaxdiff.metrics import digits_classifier
from jaxdiff.models.dit import LAYER_NORM_EPS, sincos_position_embedding
from jaxdiff.train import loop


config = load_config("digits_dit")
config.train.num_steps = 30 if QUICK else config.train.num_steps
if QUICK:
  config.train.steps_per_call = 1  # compiles faster; more steps per call pay off over hundreds
WORKDIR = tempfile.mkdtemp(prefix="jaxdiff-dit-")
loop.train(config, WORKDIR)
run = run_lib.setup(config, WORKDIR)
step, state = run_lib.restore_for_inference(run)
print(f"{models.parameter_count(state.ema_params):,} parameters; EMA of step {step}")

# %% [markdown]
# ## Classifier-free guidance, scale by scale
#
# The DiT is trained with 10% of its labels replaced by a null class, so one network is both a
# conditional and an unconditional model. Guidance mixes the two at every step:
# out = out(∅) + s · (out(y) − out(∅)) (`jaxdiff.guidance.classifier_free`). s = 0 ignores the
# label, s = 1 is the plain conditional model, larger s trades diversity for fidelity to the
# class. One compiled sampler takes the scale as an argument; every row starts from the same noise.

# %%
s = config.sample
COUNT = 100  # ten of each digit per scale


@jax.jit
def sample(params, scale, x_T, labels):
  model = run.model_def.bind(params)
  model.eval()
  guided = guidance.classifier_free(
    model, labels, guidance_scale=scale, null_label=config.data.num_classes
  )
  return samplers.unipc(
    guided,
    run.schedule,
    x_T,
    num_steps=s.num_steps,
    order=s.order,
    solver_type=s.unipc_solver_type,
    spacing=s.spacing,
    prediction=config.diffusion.prediction,
  )


SCALES = [0.0, 1.0, 1.5, 3.0, 6.0]
x_T = jax.random.normal(jax.random.key(0), (COUNT, 16, 16, 1))
labels = jnp.arange(COUNT) % 10
by_scale = {g: generate.to_uint8(sample(state.ema_params, g, x_T, labels)) for g in SCALES}

fig, axes = plt.subplots(len(SCALES), 10, figsize=(8, 0.72 * len(SCALES)))
for r, g in enumerate(SCALES):
  for c in range(10):
    axes[r, c].imshow(by_scale[g][c, ..., 0], cmap="gray", vmin=0, vmax=255)
    axes[r, c].set_xticks([])
    axes[r, c].set_yticks([])
  axes[r, 0].set_ylabel(f"s = {g}", rotation=0, ha="right", va="center")
fig.subplots_adjust(left=0.12, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
plt.show()

# %% [markdown]
# A held-out digits classifier (fit by jaxdiff on the test split) measures both sides of the
# trade: how often it reads the digit that was asked for, and the Fréchet distance of its features
# to the training digits (lower is better; it also punishes a lack of diversity).

# %%
features = digits_classifier.DigitsFeatures()
for g, images in by_scale.items():
  accuracy = np.mean(features.predict(images) == np.asarray(labels))
  fd = metrics.fid_from_features(features.features(images), features.train_features)
  print(f"s = {g:3}: asked-for digit read back {accuracy:4.0%}, Fréchet distance {fd:7.2f}")

# %% [markdown]
# ## Patches and tokens
#
# The network never sees pixels one by one: a stride-p convolution turns each 4×4 patch into a
# 128-wide token, a fixed 2-D sine-cosine position embedding is added, and the 16 tokens go through
# the blocks as a sequence. Left: a training digit cut into its 4×4 grid of patches (the digits
# are 8×8 scans upsampled 2×, so each patch holds 2×2 original pixels). Right: the
# similarity of the position embedding of one patch (the red square) to those of all others,
# which is how the model knows where a token sits.

# %%
digit = digits_classifier.digits_split("train")[0][0]
dit = run.model_def.bind(state.ema_params)
dit.eval()
g, p, hidden = dit.grid_size, dit.patch_size, dit.hidden_size
positions = sincos_position_embedding(hidden, g)
query = (g // 2 - 1) * g + g // 2  # a patch near the middle (row g/2 − 1, column g/2)
similarity = (
  positions
  @ positions[query]
  / np.linalg.norm(positions, axis=1)
  / np.linalg.norm(positions[query])
)

fig, (ax_patch, ax_pos) = plt.subplots(1, 2, figsize=(8, 4))
ax_patch.imshow(digit[..., 0], cmap="gray")
for k in range(1, g):
  ax_patch.axhline(k * p - 0.5, color="tab:orange", lw=0.8)
  ax_patch.axvline(k * p - 0.5, color="tab:orange", lw=0.8)
ax_patch.set_title(f"{g}×{g} = {g * g} patches of {p}×{p} pixels")
ax_pos.imshow(similarity.reshape(g, g), cmap="viridis")
ax_pos.add_patch(
  plt.Rectangle((query % g - 0.5, query // g - 0.5), 1, 1, fill=False, color="red", lw=2)
)
ax_pos.set_title("position embedding: cosine similarity")
for ax in (ax_patch, ax_pos):
  ax.set_xticks([])
  ax.set_yticks([])
plt.show()

# %% [markdown]
# ## What each block attends to
#
# The next cell runs the DiT's forward pass block by block, as `jaxdiff.models.dit.DiT.__call__`
# does, and keeps each block's attention weights softmax(q kᵀ / √d), averaged over the heads. It
# checks itself twice: the attention output it rebuilds equals `jax.nn.dot_product_attention`'s,
# and the final output equals the model's. Shown: for two query patches (red), where each block
# looks in a half-noised digit (t = 400).


# %%
def layer_norm(x):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + LAYER_NORM_EPS)


def attention_maps(dit, x, t, y):
  """(output, attention weights (B, depth, heads, tokens, tokens)) of the DiT on x at t with y."""
  b, n = x.shape[0], g * g
  tokens = dit.x_embedder(x).reshape(b, n, hidden) + positions[None]
  c = dit.t_embedder(t) + dit.y_embedder(y)
  maps = []
  for block in dit.blocks:
    shift, scale = jnp.split(block.modulation(nnx.silu(c)), 6, axis=-1)[:2]
    heads = block.attn.num_heads
    qkv = block.attn.qkv(layer_norm(tokens) * (1 + scale[:, None]) + shift[:, None])
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, heads, hidden // heads), 2, 0)
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hidden // heads), -1)
    rebuilt = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    assert np.allclose(rebuilt, jax.nn.dot_product_attention(q, k, v), atol=1e-4)
    maps.append(weights)
    tokens = block(tokens, c)
  out = dit.final_layer(tokens, c).reshape(b, g, g, p, p, -1).transpose(0, 1, 3, 2, 4, 5)
  return out.reshape(b, g * p, g * p, -1), jnp.stack(maps, 1)


x0 = jnp.asarray(digit[None], jnp.float32) / 127.5 - 1
t = jnp.array([400])
x_t = diffusion.q_sample(
  x0, t, jax.random.normal(jax.random.key(1), x0.shape), schedule=run.schedule
)
y = jnp.asarray(digits_classifier.digits_split("train")[1][:1])
out, maps = attention_maps(dit, x_t, t, y)
assert np.allclose(out, dit(x_t, t, y), atol=1e-4)

queries = [(g // 4) * g + g // 4, (3 * g // 4) * g + 3 * g // 4]  # upper left, lower right
depth = maps.shape[1]
fig, axes = plt.subplots(len(queries), depth + 1, figsize=(2 * (depth + 1), 2.1 * len(queries)))
for r, q in enumerate(queries):
  axes[r, 0].imshow(x_t[0, ..., 0], cmap="gray")
  axes[r, 0].set_title("x_t, t = 400" if r == 0 else "")
  for d in range(depth):
    axes[r, d + 1].imshow(maps[0, d, :, q].mean(0).reshape(g, g), cmap="magma")
    axes[r, d + 1].set_title(f"block {d + 1}" if r == 0 else "")
  for ax in axes[r]:
    ax.set_xticks([])
    ax.set_yticks([])
  axes[r, 1].add_patch(
    plt.Rectangle((q % g - 0.5, q // g - 0.5), 1, 1, fill=False, color="red", lw=2)
  )
plt.tight_layout()
plt.show()

# %% [markdown]
# ## A published DiT (optional)
#
# jaxdiff loads the released DiT checkpoints in both formats (`jaxdiff.convert`): the original
# `.pt` files (`load_dit_checkpoint`, needs torch) and diffusers' `DiTTransformer2DModel` folders
# (`load_diffusers_dit`), or a folder one of them was converted to (`load_converted`). Set
# `DIT_CHECKPOINT` (and `VAE_CHECKPOINT` to see images rather than latents) in the first cell and
# rerun. The sampling below is DiT's own `sample.py`: DDPM on 250 respaced steps of the linear
# schedule with the learned variances, guidance 4 on the first three latent channels. DiT-XL/2
# at 256×256 wants a GPU or TPU runtime.

# %%
from jaxdiff import convert, schedules

if DIT_CHECKPOINT:
  path = pathlib.Path(DIT_CHECKPOINT)
  if path.suffix == ".pt":
    big = convert.load_dit_checkpoint(path)
  elif (path / "network_config.json").exists():
    big = convert.load_converted(path)
  else:
    big = convert.load_diffusers_dit(path)
  big.eval()
  size, channels = big.grid_size * big.patch_size, big.in_channels
  assert max(DIT_CLASS_LABELS) < big.num_classes, f"this DiT has {big.num_classes} classes"
  print(
    f"{models.parameter_count(nnx.state(big, nnx.Param)):,} parameters, latents {size}×{size}×{channels}"
  )

  graphdef, weights = nnx.split(big)  # weights enter the program as an argument, not constants

  @jax.jit
  def sample_published(weights, x_T, labels, key):
    guided = guidance.classifier_free(
      nnx.merge(graphdef, weights),
      labels,
      guidance_scale=DIT_GUIDANCE,
      null_label=big.num_classes,
      num_guided_channels=min(3, channels),
    )
    respaced = schedules.respace(schedules.make("linear", 1000), f"{DIT_NUM_STEPS}")
    learned = big.out_channels == 2 * channels
    return samplers.ddpm(
      guided,
      respaced,
      x_T,
      key=key,
      variance="learned_range" if learned else "fixed_small",
      clip_denoised=False,
    )

  labels = jnp.asarray(DIT_CLASS_LABELS)
  x_T = jax.random.normal(jax.random.key(0), (len(labels), size, size, channels))
  latents = sample_published(weights, x_T, labels, jax.random.key(1))
  if VAE_CHECKPOINT:
    vae_path = pathlib.Path(VAE_CHECKPOINT)
    if (vae_path / "network_config.json").exists():
      vae = convert.load_converted(vae_path)
    else:
      vae = convert.load_diffusers_vae(vae_path)
    pictures = vae.decode(latents / vae.scaling_factor + vae.shift_factor)
    pictures = generate.to_uint8(pictures)
  else:  # the first three latent channels, each stretched to the full range
    low, high = latents.min((0, 1, 2)), latents.max((0, 1, 2))
    pictures = np.asarray((latents - low) / (high - low))[..., :3]
  fig, axes = plt.subplots(1, len(labels), figsize=(2 * len(labels), 2.3), squeeze=False)
  for ax, picture, label in zip(axes[0], pictures, DIT_CLASS_LABELS):
    ax.imshow(picture)
    ax.set_title(f"class {label}")
    ax.axis("off")
  plt.show()
else:
  print("DIT_CHECKPOINT is empty: nothing to load.")
