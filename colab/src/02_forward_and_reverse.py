# ruff: noqa: F821 (the names the shared install cell defines: jax, ROOT, os, …)
# %% [markdown]
# # 02 · The forward and the reverse process, in pictures
#
# A diffusion model is two processes. The forward process q(x_t | x_0) adds Gaussian noise to a
# data point over T = 1000 steps until nothing of it is left; it has no parameters. The reverse
# process walks back from pure noise, one step at a time, and needs at each step a guess of the
# clean image x_0 (or of the noise ε in it): that guess is what a network learns.
#
# This notebook draws both on real digits with jaxdiff's pure functions (`jaxdiff.schedules`,
# `jaxdiff.diffusion`, `jaxdiff.samplers`). For the reverse process it needs no training: it uses
# the *ideal* denoiser of the training set, which computes E[x_0 | x_t] exactly. It runs in well
# under a minute anywhere; `QUICK` only shrinks the final grid.

# %% [parameters]
QUICK = False  # True: fewer samples in the last grid

# %% [install]

# %%
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from jaxdiff import diffusion, samplers, schedules
from jaxdiff.metrics.digits_classifier import digits_split

images, labels = digits_split("train")  # jaxdiff's `digits` training split, uint8 (N, 16, 16, 1)
x_data = images.astype(np.float32) / 127.5 - 1  # the model's range, [-1, 1]
print("training digits:", x_data.shape, "labels", np.bincount(labels))


def show_row(axes, pictures, titles):
  for ax, picture, title in zip(axes, pictures, titles):
    ax.imshow(np.asarray(picture)[..., 0], cmap="gray", vmin=-1, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


# %% [markdown]
# ## Forward: q(x_t | x_0)
#
# Because each step only scales and adds Gaussian noise, any x_t can be drawn in one go:
# x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε with ε ~ N(0, I), where ᾱ_t is the product of the first t
# (1 − β). `diffusion.q_sample` does exactly this. Here the same digit and the same ε under the
# two schedules jaxdiff uses most: DDPM's linear β and improved DDPM's cosine ᾱ.

# %%
T = 1000
linear = schedules.make("linear", T)
cosine = schedules.make("cosine", T)
steps = [0, 50, 100, 250, 500, 750, 999]
x0 = jnp.asarray(x_data[:1])
noise = jnp.asarray(np.random.default_rng(0).standard_normal(x0.shape), jnp.float32)

fig, axes = plt.subplots(2, len(steps), figsize=(1.6 * len(steps), 3.8))
for row, (name, s) in zip(axes, [("linear", linear), ("cosine", cosine)]):
  noisy = [diffusion.q_sample(x0, jnp.array([t]), noise, schedule=s)[0] for t in steps]
  show_row(row, noisy, [f"{name}, t={t}" for t in steps])
plt.tight_layout()
plt.show()

# %% [markdown]
# The linear schedule destroys the digit by t ≈ 250 and spends the remaining three quarters of
# its steps on what is already noise; the cosine schedule fades it out evenly. The curves say the
# same: ᾱ_t, and the signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) in log scale.

# %%
fig, (ax_a, ax_snr) = plt.subplots(1, 2, figsize=(11, 3.5))
for name, s in [("linear", linear), ("cosine", cosine)]:
  a = s.alphas_cumprod
  ax_a.plot(a, label=name)
  ax_snr.plot(np.log(a / (1 - a)), label=name)
ax_a.set(xlabel="t", ylabel="ᾱ_t", title="ᾱ_t: how much of x_0 is left")
ax_snr.set(xlabel="t", ylabel="log SNR", title="log(ᾱ_t / (1 − ᾱ_t))")
ax_a.legend()
ax_snr.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Reverse: DDPM and DDIM
#
# To go back, a sampler needs at each step x̂_0 = E[x_0 | x_t]. For a finite training set this
# expectation has a closed form: a softmax-weighted average of the training images, weighted by
# how likely each one is to have produced x_t. That *ideal denoiser* is a perfectly good
# `model_fn(x, t)` for jaxdiff's samplers (with `prediction="x0"`); a trained network approximates
# it, and, unlike it, does not simply reproduce training images.

# %%
flat_data = jnp.asarray(x_data.reshape(len(x_data), -1))
alphas_cumprod = jnp.asarray(cosine.alphas_cumprod, jnp.float32)


def ideal_denoiser(x_t, t):
  """E[x_0 | x_t] under the training digits: the x0-prediction a perfect network would make."""
  a = alphas_cumprod[t][:, None]
  flat = x_t.reshape(len(x_t), -1)
  distances = jnp.sum((flat[:, None, :] - jnp.sqrt(a)[:, :, None] * flat_data[None]) ** 2, -1)
  weights = jax.nn.softmax(-distances / (2 * (1 - a)), axis=-1)
  return (weights @ flat_data).reshape(x_t.shape)


x_T = jax.random.normal(jax.random.key(1), (1, 16, 16, 1))
ddpm_path = samplers.ddpm(
  ideal_denoiser, cosine, x_T, key=jax.random.key(2), prediction="x0", return_trajectory=True
)
ddim_path = samplers.ddim(
  ideal_denoiser,
  cosine,
  x_T,
  num_steps=50,
  prediction="x0",
  spacing="trailing",
  return_trajectory=True,
)
print("DDPM:", ddpm_path.shape[0], "steps; DDIM:", ddim_path.shape[0], "steps")

# %% [markdown]
# The same x_T, denoised by DDPM (1000 stochastic ancestral steps) and by DDIM (50 deterministic
# steps). Each row shows the state after a fraction of the steps; the last column is x_0.

# %%
fractions = [0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0]
fig, axes = plt.subplots(2, len(fractions), figsize=(1.6 * len(fractions), 3.8))
for row, (name, path) in zip(axes, [("DDPM", ddpm_path), ("DDIM", ddim_path)]):
  picks = [max(0, round(f * len(path)) - 1) for f in fractions]
  show_row(
    row,
    [x_T[0]] + [path[i][0] for i in picks[1:]],
    [f"{name} x_T"] + [f"step {i + 1}" for i in picks[1:]],
  )
plt.tight_layout()
plt.show()

nearest = lambda x: int(jnp.argmin(jnp.sum((flat_data - x.reshape(1, -1)) ** 2, -1)))
for name, path in [("DDPM", ddpm_path), ("DDIM", ddim_path)]:
  i = nearest(path[-1][0])
  gap = float(jnp.abs(path[-1][0].reshape(-1) - flat_data[i]).max())
  print(f"{name}: x_0 is training digit #{i} (a {labels[i]}), largest pixel difference {gap:.3f}")

# %% [markdown]
# Both end on a training digit: the ideal denoiser memorises. A network trained on these digits
# (notebook 01) is a smoother function and produces digits that are not in the training set.
# Here is a grid of DDIM samples of the ideal denoiser, drawn in one batch:

# %%
count = 8 if QUICK else 32
x_T = jax.random.normal(jax.random.key(3), (count, 16, 16, 1))
grid = samplers.ddim(ideal_denoiser, cosine, x_T, num_steps=50, prediction="x0", spacing="trailing")
fig, axes = plt.subplots(count // 8, 8, figsize=(8, count // 8 + 0.2), squeeze=False)
show_row(axes.ravel(), grid, [""] * count)
plt.show()

# %% [markdown]
# ## What the network predicts: ε, x_0 or v
#
# A network can be trained to output the noise ε (DDPM), the clean image x_0, or
# v = √ᾱ_t · ε − √(1 − ᾱ_t) · x_0 (Salimans & Ho 2022; the digits default). Given x_t, each one
# determines the other two, so samplers accept any of them (`prediction=`); what differs is what
# the network finds easy and how its errors are amplified. Below: one noisy digit at three
# noise levels and the three targets a network would be trained to output there
# (`diffusion.target`).

# %%
picks = [100, 500, 900]
x0 = jnp.asarray(x_data[7:8])
fig, axes = plt.subplots(len(picks), 4, figsize=(6.6, 1.8 * len(picks)))
for row, t_value in zip(axes, picks):
  t = jnp.array([t_value])
  x_t = diffusion.q_sample(x0, t, noise, schedule=cosine)
  targets = {
    p: diffusion.target(x0, noise, t, schedule=cosine, prediction=p) for p in ("epsilon", "x0", "v")
  }
  for p, out in targets.items():  # each one gives back x_0 and ε exactly
    x0_back, eps_back = diffusion.x0_and_eps(out, x_t, t, schedule=cosine, prediction=p)
    assert np.allclose(x0_back, x0, atol=1e-4) and np.allclose(eps_back, noise, atol=1e-3)
  show_row(row, [x_t[0]] + [targets[p][0] for p in targets], [f"x_t, t={t_value}", "ε", "x_0", "v"])
plt.tight_layout()
plt.show()

# %% [markdown]
# Where the three differ is error amplification. If the network's output is off by δ, the x̂_0 a
# sampler derives from it is off by δ·√((1 − ᾱ)/ᾱ) for ε-prediction (huge near t = T, where x_t is
# nearly pure noise), and the ε̂ it derives is off by δ·√(ᾱ/(1 − ᾱ)) for x_0-prediction (huge near
# t = 0). With v-prediction the two are off by δ·√(1 − ᾱ) and δ·√ᾱ: never more than δ, at any t,
# which is also why zero-terminal-SNR schedules (ᾱ_T = 0) need v (or x_0) prediction.

# %%
a = cosine.alphas_cumprod
factors = {
  "ε-pred → error of x̂_0": np.sqrt((1 - a) / a),
  "x_0-pred → error of ε̂": np.sqrt(a / (1 - a)),
  "v-pred → error of x̂_0": np.sqrt(1 - a),
  "v-pred → error of ε̂": np.sqrt(a),
}
plt.figure(figsize=(7, 3.8))
for name, factor in factors.items():
  plt.plot(factor, label=name, ls="--" if name.startswith("v") else "-")
plt.yscale("log")
plt.xlabel("t (cosine schedule)")
plt.ylabel("amplification of an output error δ")
plt.legend(fontsize=8)
plt.tight_layout()
plt.show()
