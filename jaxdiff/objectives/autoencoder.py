"""The KL-autoencoder's objective (Kingma & Welling 2014; the first stage of Rombach et al. 2022):
reconstruction + β·KL(q(z|x) ‖ N(0, I)), and the ELBO in bits/dim.

With the decoder p(x|z) = N(x̂(z), σ_x² I) and β = 1 the loss is the negative ELBO per dimension
(in nats, up to the constant ½·ln 2πσ_x²): ‖x − x̂‖²/(2σ_x²·D) + KL/D. β < 1 weighs the prior less
(sharper reconstructions, a latent space further from N(0, I)); L1 swaps the Gaussian decoder for a
Laplace one of scale σ_x, as LDM's autoencoders train with. Whatever was trained, the reported
`elbo_bpd` is the bound with the Gaussian decoder N(x̂, σ_x²) integrated over each 8-bit bin (as
DDPM's L_0 does), so it is a true upper bound on −log₂ p(x) per dimension, in the units of the
diffusion models' bits/dim, and comparable with them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from jaxdiff import likelihood
from jaxdiff.objectives.base import Objective
from jaxdiff.objectives.perceptual import Perceptual

RECONSTRUCTIONS = ("l2", "l1")


def kl_to_standard_normal(mean, logvar):
  """KL(N(mean, e^logvar) ‖ N(0, I)) per example, summed over all but the batch axis, in nats."""
  per_dim = likelihood.normal_kl(mean, logvar, 0.0, 0.0)
  return jnp.sum(per_dim, axis=tuple(range(1, per_dim.ndim)))


def elbo_bits_per_dim(x, reconstruction, mean, logvar, *, decoder_std: float):
  """−ELBO/(D·ln 2) per example: the discretized Gaussian decoder N(x̂, σ_x²) on x's bin plus the
  posterior's KL, with the KL and likelihood of one posterior draw (an unbiased estimate)."""
  log_p = likelihood.discretized_gaussian_log_likelihood(
    x, mean=reconstruction, log_scale=jnp.full_like(reconstruction, math.log(decoder_std))
  )
  dims = math.prod(x.shape[1:])
  nll = -jnp.sum(log_p, axis=tuple(range(1, x.ndim))) + kl_to_standard_normal(mean, logvar)
  return nll / (dims * math.log(2.0))


def reconstruction_error(x, recon, *, reconstruction: str, decoder_std: float, perceptual=None):
  """Per-example −log p(x|z) up to its constant, in nats per dimension: ‖x − x̂‖²/(2σ_x²·D) (l2)
  or |x − x̂|₁/(σ_x·D) (l1); with `perceptual` (per-example LPIPS·weight) that distance is added
  to the per-pixel error before the scaling, as the LDM recipe adds LPIPS to |x − x̂|."""
  axes = tuple(range(1, x.ndim))
  if reconstruction == "l2":
    error, scale = jnp.mean(jnp.square(x - recon), axis=axes), 2.0 * decoder_std**2
  else:
    error, scale = jnp.mean(jnp.abs(x - recon), axis=axes), decoder_std
  if perceptual is not None:
    error = error + perceptual
  return error / scale


def autoencoder_loss(
  key, model, x, *, reconstruction: str, decoder_std: float, kl_weight: float, perceptual=None
):
  """(loss, per-example loss, metrics) of `model(x, None, key=key) -> (x̂, mean, logvar)`;
  `perceptual(x, x̂) -> (B,)` adds a weighted perceptual distance (LPIPS) to the reconstruction."""
  loss, per_example, metrics, _ = _vae_terms(
    key, model, x, reconstruction=reconstruction, decoder_std=decoder_std, kl_weight=kl_weight,
    perceptual=perceptual,
  )  # fmt: skip
  return loss, per_example, metrics


def _vae_terms(key, model, x, *, reconstruction, decoder_std, kl_weight, perceptual):
  recon, mean, logvar = model(x, None, key=key)
  dims = math.prod(x.shape[1:])
  distance = None if perceptual is None else perceptual(x, recon)
  rec = reconstruction_error(
    x, recon, reconstruction=reconstruction, decoder_std=decoder_std, perceptual=distance
  )
  kl = kl_to_standard_normal(mean, logvar) / dims
  per_example = rec + kl_weight * kl
  metrics = {
    "mse": jnp.mean(jnp.square(x - recon)),
    "kl_per_dim": jnp.mean(kl),
    "elbo_bpd": jnp.mean(elbo_bits_per_dim(x, recon, mean, logvar, decoder_std=decoder_std)),
  }
  if distance is not None:
    metrics["lpips"] = jnp.mean(distance)
  return jnp.mean(per_example), per_example, metrics, recon


def hinge_discriminator_loss(logits_real, logits_fake):
  """½(E[relu(1 − D(x))] + E[relu(1 + D(x̂))]) (Lim & Ye 2017; the LDM recipe's 'hinge')."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def adaptive_weight(rec_fn, gan_fn, recon, *, max_weight: float = 1e4):
  """‖∇L_rec‖ / (‖∇L_G‖ + 1e-4), clipped to [0, max_weight], no gradient: the LDM recipe's balance
  of the adversarial against the reconstruction term (Esser et al. 2021, eq. 7). LDM takes both
  gradients at the decoder's last layer's weights; here they are taken at its output x̂, the last
  point every parameter's gradient passes through, which needs no access to the parameters."""
  g_rec = jax.grad(rec_fn)(jax.lax.stop_gradient(recon))
  g_gan = jax.grad(gan_fn)(jax.lax.stop_gradient(recon))
  weight = optax.tree.norm(g_rec) / (optax.tree.norm(g_gan) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))


def autoencoder(config, schedule, lpips=None) -> Objective:
  """The objective of an autoencoder run (model.arch='autoencoder'): the `vae.*` settings, with
  LPIPS (`lpips`, a metrics.LPIPS module, when vae.perceptual_weight > 0) and the patch
  discriminator's hinge loss from step vae.discriminator_start on (vae.discriminator_weight > 0)."""
  del schedule  # no diffusion here
  v = config.vae
  perceptual_weight = v.perceptual_weight
  use_gan = v.discriminator_weight > 0
  lpips_net = Perceptual(lpips, config.lpips.resolution, "vae.perceptual_weight > 0")

  def loss(key, networks, x0, *, t=None, weights=None, step=None, frozen=None):
    if t is not None:
      raise ValueError("The autoencoder objective samples no timesteps: use uniform sampling.")
    model = networks["model"]
    perceptual = None
    if perceptual_weight > 0:
      distance = lpips_net.distance(frozen)
      perceptual = lambda a, b: perceptual_weight * distance(a, b)
    terms = dict(
      reconstruction=v.reconstruction, decoder_std=v.decoder_std, kl_weight=v.kl_weight,
      perceptual=perceptual,
    )  # fmt: skip
    loss, per_example, metrics, recon = _vae_terms(key, model, x0, **terms)
    if not use_gan:
      return loss, per_example, metrics
    on = (step >= v.discriminator_start).astype(jnp.float32)

    def rec_fn(r):
      rec = reconstruction_error(
        x0, r, reconstruction=v.reconstruction, decoder_std=v.decoder_std,
        perceptual=None if perceptual is None else perceptual(x0, r),
      )  # fmt: skip
      return jnp.mean(rec)

    def gan_fn(r):  # the generator's loss −E[D(x̂)], the discriminator held fixed
      return -jnp.mean(model(r, None, critic=True, frozen_critic=True))

    weight = v.discriminator_weight * adaptive_weight(rec_fn, gan_fn, recon)
    g_loss = gan_fn(recon)
    d_loss = hinge_discriminator_loss(
      model(x0, None, critic=True), model(jax.lax.stop_gradient(recon), None, critic=True)
    )
    metrics = {**metrics, "vae_loss": loss, "g_loss": g_loss, "d_loss": d_loss, "d_weight": weight}
    return loss + on * (weight * g_loss + d_loss), per_example, metrics

  context = ("step",) if use_gan else ()
  if perceptual_weight > 0:
    context += ("frozen",)
  return Objective(loss, context=context, frozen_params=lpips_net.params)


def bound(config, schedule):
  """fn(model_fn, images, labels, key) -> per-example ELBO bits/dim, for --mode=eval."""
  del schedule
  decoder_std = config.vae.decoder_std

  def per_example(model, images, labels, key):
    del labels
    recon, mean, logvar = model(images, None, key=key)
    return elbo_bits_per_dim(images, recon, mean, logvar, decoder_std=decoder_std)

  return per_example


def check(config) -> None:
  """ValueError for `vae.*` settings the objective cannot use."""
  v = config.vae
  if v.reconstruction not in RECONSTRUCTIONS:
    raise ValueError(
      f"vae.reconstruction must be one of {list(RECONSTRUCTIONS)}, got {v.reconstruction!r}."
    )
  if v.decoder_std <= 0 or v.kl_weight < 0:
    raise ValueError(
      f"vae.decoder_std must be > 0 and vae.kl_weight ≥ 0, got {v.decoder_std} and {v.kl_weight}."
    )
  if v.perceptual_weight < 0 or v.discriminator_weight < 0 or v.discriminator_start < 0:
    raise ValueError(
      "vae.perceptual_weight, vae.discriminator_weight and vae.discriminator_start must be ≥ 0."
    )
  layers = config.model.get("discriminator_layers", 0)
  if (v.discriminator_weight > 0) != (layers > 0):
    raise ValueError(
      f"vae.discriminator_weight={v.discriminator_weight} needs a discriminator and "
      f"model.discriminator_layers={layers} makes one: set both (> 0) or neither."
    )


def uses_lpips(config) -> bool:
  return config.vae.perceptual_weight > 0
