"""The embedded default: class-conditional DDPM on scikit-learn's handwritten digits, CPU-sized.

Real 8×8 digits (1,797 of them, shipped inside scikit-learn) upsampled to 16×16, a small ADM-style
U-Net trained with the DDPM loss (Ho et al. 2020) and classifier-free guidance (Ho & Salimans 2022),
sampled with 50 DDIM steps. Sized so the README's main command finishes in minutes on 2 CPU cores.
"""

from jaxdiff.config import default_config


def get_config():
  c = default_config()
  c.data.name = "digits"
  c.data.image_size = 16
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.batch_size = 64
  c.model.base_channels = 32
  c.model.channel_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = ()
  c.model.class_conditional = True
  c.model.class_dropout = 0.1
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.schedule = "cosine"
  c.train.num_steps = 3000
  c.train.steps_per_call = 4
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  c.train.sample_every = 1000
  c.train.ema_decay = 0.995
  c.sample.sampler = "ddim"
  c.sample.num_steps = 50
  c.sample.num_samples = 100
  c.sample.batch_size = 100
  c.sample.guidance_scale = 2.0
  return c
