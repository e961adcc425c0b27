"""A GAN on the digits, the third family of the VAE/GAN/diffusion comparison: a DCGAN-family
generator and discriminator (models/gan.py) trained with the non-saturating loss, the R1 penalty
on real digits, an EMA of the generator, and Adam with β₁ = 0, β₂ = 0.99 (objectives/gan.py).

The stabilisers are the ones GANs are trained with today (StyleGAN2, R3GAN): R1 instead of any
normalization in the discriminator, β₁ = 0 (momentum hurts the two-player game), an EMA of the
generator's weights for sampling, no learning-rate decay. Class-conditional like the digits
default (a label embedding in the generator, a projection discriminator), unconditional on
stacked digits (configs/stacked_digits_gan.py). `--mode=sample` draws G(z), one network evaluation
per image; a GAN has no likelihood, so eval scores samples only.
"""

from jaxdiff.config import default_config


def get_config():
  c = default_config(arch="gan")
  c.data.name = "digits"
  c.data.image_size = 16
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.batch_size = 64
  c.model.latent_dim = 64
  c.model.generator_channels = 128
  c.model.discriminator_channels = 32
  c.model.class_conditional = True
  c.model.class_dropout = 0.0  # a GAN is not guided: every label is a real one
  c.diffusion.loss = "gan"
  c.gan.loss = "non_saturating"
  c.gan.r1_gamma = 0.1
  c.gan.discriminator_lr_ratio = 1.0
  c.optim.learning_rate = 2e-4
  c.optim.b1 = 0.0
  c.optim.b2 = 0.99
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  c.train.num_steps = 2000
  c.train.steps_per_call = 4
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  c.train.sample_every = 0
  c.train.ema_decay = 0.999
  c.sample.num_samples = 100
  c.sample.batch_size = 100
  c.eval.bits_per_dim = False  # a GAN defines no likelihood
  c.eval.num_samples = 200
  return c
