"""The GAN objective (model.arch='gan'): the generator's and the discriminator's losses in one
backward pass, with the R1 penalty on real data.

    L_D = E[f(−D(x))] + E[f(D(G(z)))] + γ/2 · E‖∇_x D(x)‖²       (R1: Mescheder et al. 2018)
    L_G = E[f(−D(G(z)))]

with f = softplus, the non-saturating loss of Goodfellow et al. 2014 (`gan.loss='non_saturating'`),
or the hinge loss (`'hinge'`, Lim & Ye 2017): L_D = E[relu(1 − D(x))] + E[relu(1 + D(G(z)))],
L_G = −E[D(G(z))]. The step minimises L_G + L_D over both networks' parameters: L_G reads the
discriminator through stop_gradient (`frozen_critic`), L_D sees G(z) behind stop_gradient, so each
loss trains only its own network — simultaneous gradient descent, the update GANs are analysed
with (Mescheder et al. 2018), in one optimizer, one EMA and one checkpoint, as the autoencoder's
discriminator is trained.

The discriminator's learning rate is `gan.discriminator_lr_ratio` × optim.learning_rate: its
updates are scaled by that ratio after Adam (`Objective.update_scales`). Adam's step does not
depend on the gradient's scale, so this is exactly Adam with the discriminator's own learning rate
(the two-time-scale rule of Heusel et al. 2017), with no second optimizer state to checkpoint.
The EMA of the generator (Karras et al. 2018; Yazıcı et al. 2019) is the run's EMA: sampling reads
the EMA parameters as for every network.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.objectives.base import Objective

# gan.loss → (discriminator's per-example loss of (D(x), D(G(z))), generator's of D(G(z)))
LOSSES = {
  "non_saturating": (
    lambda real, fake: jax.nn.softplus(-real) + jax.nn.softplus(fake),
    lambda fake: jax.nn.softplus(-fake),
  ),
  "hinge": (
    lambda real, fake: jax.nn.relu(1.0 - real) + jax.nn.relu(1.0 + fake),
    lambda fake: -fake,
  ),
}


def discriminator_terms(logits_real, logits_fake, kind: str):
  """Per-example discriminator loss of `gan.loss` `kind`, without the penalty."""
  return LOSSES[kind][0](logits_real, logits_fake)


def generator_terms(logits_fake, kind: str):
  """Per-example generator loss of `gan.loss` `kind`."""
  return LOSSES[kind][1](logits_fake)


def r1_penalty(critic, x):
  """Per-example ‖∇_x D(x)‖² at the real images x, differentiable in D's parameters; and D(x)."""
  grads, logits = jax.grad(lambda v: _sum_and_logits(critic, v), has_aux=True)(x)
  return jnp.sum(jnp.square(grads), axis=tuple(range(1, x.ndim))), logits


def _sum_and_logits(critic, x):
  logits = critic(x)
  return jnp.sum(logits), logits


def gan(config, schedule) -> Objective:
  """The objective of a GAN run: the `gan.*` settings."""
  del schedule  # no diffusion here
  g = config.gan
  latent_dim = config.model.latent_dim

  def loss(key, networks, x0, *, t=None, weights=None, labels=None):
    if t is not None:
      raise ValueError("The GAN objective samples no timesteps: use uniform timestep sampling.")
    model = networks["model"]
    z = jax.random.normal(key, (x0.shape[0], latent_dim), jnp.float32)
    fake = model(z, None, labels)
    # the generator's loss, the discriminator held fixed
    g_per = generator_terms(model(fake, None, labels, critic=True, frozen_critic=True), g.loss)
    # the discriminator's, the generator's images held fixed; R1 at the real images
    logits_fake = model(jax.lax.stop_gradient(fake), None, labels, critic=True)
    penalty, logits_real = r1_penalty(lambda v: model(v, None, labels, critic=True), x0)
    d_per = discriminator_terms(logits_real, logits_fake, g.loss) + 0.5 * g.r1_gamma * penalty
    per_example = g_per + d_per
    metrics = {
      "g_loss": jnp.mean(g_per),
      "d_loss": jnp.mean(d_per),
      "r1": jnp.mean(penalty),
      "d_real": jnp.mean(logits_real),
      "d_fake": jnp.mean(logits_fake),
    }
    return jnp.mean(per_example), per_example, metrics

  return Objective(
    loss,
    context=("labels",),
    update_scales={"discriminator": float(g.discriminator_lr_ratio)},
  )


def no_bound(config, schedule):
  """--mode=eval's bits/dim: a GAN defines no likelihood."""
  raise ValueError(
    "a GAN (diffusion.loss='gan') defines no likelihood to bound; set "
    "--config.eval.bits_per_dim=False."
  )


def check(config) -> None:
  """ValueError for `gan.*` settings the objective cannot use."""
  g = config.gan
  if g.loss not in LOSSES:
    raise ValueError(f"gan.loss must be one of {list(LOSSES)}, got {g.loss!r}.")
  if g.r1_gamma < 0 or g.discriminator_lr_ratio <= 0:
    raise ValueError(
      f"gan.r1_gamma must be ≥ 0 and gan.discriminator_lr_ratio > 0, got {g.r1_gamma} and "
      f"{g.discriminator_lr_ratio}."
    )
