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

import jax.numpy as jnp

from jaxdiff import likelihood
from jaxdiff.objectives.base import Objective

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


def autoencoder_loss(key, model, x, *, reconstruction: str, decoder_std: float, kl_weight: float):
  """(loss, per-example loss, metrics) of `model(x, None, key=key) -> (x̂, mean, logvar)`."""
  recon, mean, logvar = model(x, None, key=key)
  axes = tuple(range(1, x.ndim))
  dims = math.prod(x.shape[1:])
  if reconstruction == "l2":
    rec = jnp.mean(jnp.square(x - recon), axis=axes) / (2.0 * decoder_std**2)
  else:
    rec = jnp.mean(jnp.abs(x - recon), axis=axes) / decoder_std
  kl = kl_to_standard_normal(mean, logvar) / dims
  per_example = rec + kl_weight * kl
  metrics = {
    "mse": jnp.mean(jnp.square(x - recon)),
    "kl_per_dim": jnp.mean(kl),
    "elbo_bpd": jnp.mean(elbo_bits_per_dim(x, recon, mean, logvar, decoder_std=decoder_std)),
  }
  return jnp.mean(per_example), per_example, metrics


def autoencoder(config, schedule) -> Objective:
  """The objective of an autoencoder run (model.arch='autoencoder'): the `vae.*` settings."""
  del schedule  # no diffusion here
  v = config.vae

  def loss(key, networks, x0, *, t=None, weights=None):
    if t is not None:
      raise ValueError("The autoencoder objective samples no timesteps: use uniform sampling.")
    return autoencoder_loss(
      key,
      networks["model"],
      x0,
      reconstruction=v.reconstruction,
      decoder_std=v.decoder_std,
      kl_weight=v.kl_weight,
    )

  return Objective(loss)


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
