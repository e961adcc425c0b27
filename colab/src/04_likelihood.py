# ruff: noqa: F821 (the names the shared install cell defines: jax, ROOT, os, …)
# %% [markdown]
# # 04 · Likelihood: the bound in bits/dim, step by step
#
# A diffusion model is a latent-variable model, and its training objective descends from a
# variational bound on the negative log-likelihood: −log p(x_0) ≤ L_prior + Σ_t L_t, where L_t is
# the KL divergence between the true posterior q(x_{t−1} | x_t, x_0) and the model's reverse step
# p(x_{t−1} | x_t), and L_0 the likelihood of the pixels' 256 levels. Reported per dimension in
# bits, it is the number DDPM and improved DDPM compare models by (8 bits/dim is a uniform model).
#
# This notebook computes that bound for two digits models and plots where it comes from:
# - `configs/digits.py`: fixed reverse variances (Σ = β̃_t), trained on the plain denoising loss;
# - `configs/digits_hybrid.py`: the same U-Net also outputs its variances, trained with improved
#   DDPM's L_hybrid = L_simple + 0.001 · L_vlb (Nichol & Dhariwal 2021).
#
# `QUICK = True` trains each for 30 steps instead of 800 and estimates the bound from fewer steps
# and digits; every cell then runs on a CPU in about two minutes.

# %% [parameters]
QUICK = False  # True: barely trained models and a coarse bound (CI, a first look)

# %% [install]

# %% [markdown]
# ## Two models
#
# Both train in this process with `jaxdiff.train.loop` (what `python -m jaxdiff.main` runs), each
# in its own working directory.

# %%
import math
import tempfile

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from jaxdiff import diffusion, evaluation, likelihood
from jaxdiff import run as run_lib
from jaxdiff.metrics.digits_classifier import digits_split
from jaxdiff.train import loop


MODELS = {"fixed variances": "digits", "learned variances": "digits_hybrid"}
runs = {}
for label, name in MODELS.items():
  config = load_config(name)
  config.train.num_steps = 30 if QUICK else 800
  if QUICK:
    config.train.steps_per_call = 1  # compiles faster; more steps per call pay off over hundreds
  workdir = tempfile.mkdtemp(prefix=f"jaxdiff-{name}-")
  print(f"--- {label}: configs/{name}.py")
  loop.train(config, workdir)
  runs[label] = (config, workdir)

# %% [markdown]
# ## The bound on the test split
#
# `python -m jaxdiff.main --mode=eval` (here its function, `jaxdiff.evaluation.evaluate`) scores
# the EMA model on the 270 test digits, which training never sees. With
# `eval.num_timesteps = 0` it sums every one of the 1000 terms; with K > 0 it estimates the sum
# without bias from K random steps per digit, which `QUICK` uses.

# %%
results = {}
for label, (config, workdir) in runs.items():
  config.eval.num_samples = 0  # no sample quality here: only the bound
  config.eval.num_timesteps = 20 if QUICK else 0
  config.eval.num_examples = 64 if QUICK else 0  # 0: the whole test split
  results[label] = evaluation.evaluate(config, workdir)
for label, r in results.items():
  print(f"{label:18s} {r['eval_bpd']:.3f} ± {r['eval_bpd_stderr']:.3f} bits/dim", end=" ")
  print(f"({r['eval_examples']} test digits, {r['eval_timesteps']} steps)")

# %% [markdown]
# ## Where the bound comes from
#
# Each term L_t can be computed on its own: draw x_t ~ q(x_t | x_0), run the network once, and
# compare the two Gaussians (`likelihood.vlb_term`). The next cell does that for a batch of test
# digits at every step (QUICK: at 50 steps spread over the 1000) and also records the variance the
# learned model chose at each step.

# %%
test_images, test_labels = digits_split("test")
batch = 16 if QUICK else 64
x0 = jnp.asarray(test_images[:batch], jnp.float32) / 127.5 - 1
labels = jnp.asarray(test_labels[:batch])
steps = np.linspace(0, 999, 50).round().astype(int) if QUICK else np.arange(1000)
to_bits = 1 / (math.prod(x0.shape[1:]) * math.log(2))


def per_step(label):
  """(L_t in bits/dim, mean over the batch; mean learned interpolation (v + 1)/2 or None) per t."""
  config, workdir = runs[label]
  run = run_lib.setup(config, workdir)
  _, state = run_lib.restore_for_inference(run)
  learned = config.model.learn_sigma
  variance = "learned_range" if learned else config.sample.variance

  @jax.jit
  def terms(params):
    model = run.model_def.bind(params)
    model.eval()

    def one(t_value):
      t = jnp.full((batch,), t_value)
      noise = jax.random.normal(jax.random.fold_in(jax.random.key(0), t_value), x0.shape)
      x_t = diffusion.q_sample(x0, t, noise, schedule=run.schedule)
      out = model(x_t, t, labels)
      term = likelihood.vlb_term(
        out,
        x0,
        x_t,
        t,
        schedule=run.schedule,
        prediction=config.diffusion.prediction,
        variance=variance,
      )
      channels = x0.shape[-1]  # a learned-variance model outputs v ∈ [-1, 1] after them
      fraction = (out[..., channels:].mean() + 1) / 2 if learned else jnp.nan
      return term.mean() * to_bits, fraction

    return jax.lax.map(one, jnp.asarray(steps))

  values, fractions = terms(state.ema_params)
  prior = float(likelihood.prior_kl(x0, schedule=run.schedule).mean() * to_bits)
  return np.asarray(values), (np.asarray(fractions) if learned else None), prior


curves = {label: per_step(label) for label in runs}
for label, (values, _, prior) in curves.items():
  print(f"{label:18s} L_0 = {values[0]:.3f}, L_prior = {prior:.2e} bits/dim")

# %% [markdown]
# Most of the bound sits in the first few steps, where the model must resolve the last bits of
# detail (L_0 is the likelihood of the pixel levels themselves); the terms then fall by orders of
# magnitude, and L_prior, the mismatch between q(x_T | x_0) and N(0, I), is negligible. The early
# terms are what improved DDPM learns variances for: with Σ fixed, the reverse steps near t = 0
# cannot match the true posterior's spread, and the bound pays for it there.

# %%
fig, (ax_terms, ax_var) = plt.subplots(1, 2, figsize=(12, 4))
for label, (values, _, _) in curves.items():
  ax_terms.plot(steps[1:], values[1:], label=label)
  ax_terms.scatter([0], values[:1], s=20)
ax_terms.set(xscale="symlog", yscale="log", xlabel="t", ylabel="L_t (bits/dim)")
ax_terms.set_title("the bound's terms (dots: L_0)")
ax_terms.legend()
_, fractions, _ = curves["learned variances"]
ax_var.plot(steps, fractions)
ax_var.set(xscale="symlog", ylim=(-0.05, 1.05), xlabel="t", ylabel="(v + 1) / 2")
ax_var.set_title("learned Σ_t between β̃_t (0) and β_t (1)")
plt.tight_layout()
plt.show()

# %% [markdown]
# The right panel is the learned model's interpolation between the two fixed choices DDPM
# considered, the posterior variance β̃_t and β_t (log Σ = frac · log β_t + (1 − frac) · log β̃_t).
# The two only differ by much near t = 0, where the bound's terms are largest. Learned variances
# are also what lets DDPM sample well in fewer steps: `sample.variance=learned_range` with
# `sample.sampler=ddpm` uses them (see docs/guides/training.md).
