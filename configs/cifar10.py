"""DDPM on CIFAR-10: Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models", §4 and
Appendix B (FID 3.17, IS 9.46 at 800k steps).

The 35.7M-parameter U-Net (ch 128, mult 1,2,2,2, two res blocks per level, attention at 16×16,
dropout 0.1), linear β from 1e-4 to 0.02 over T = 1000, ε-prediction with L_simple, Adam at 2e-4
with 5,000 warmup steps, batch 128, gradient clipping at 1, EMA 0.9999, random horizontal flips.

Prepare the data once: `tfds build cifar10 --file_format=array_record` (see BUILD.md).
"""

from jaxdiff.config import default_config


def get_config():
  c = default_config()
  c.data.name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.num_classes = 10
  c.data.batch_size = 128
  c.data.random_flip = True
  c.model.base_channels = 128
  c.model.channel_mult = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (16,)
  c.model.dropout = 0.1
  c.model.class_conditional = False
  c.diffusion.schedule = "linear"
  c.diffusion.num_timesteps = 1000
  c.diffusion.prediction = "epsilon"
  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 5000
  c.optim.grad_clip_norm = 1.0
  c.train.num_steps = 800_000
  c.train.log_every = 100
  c.train.checkpoint_every = 10_000
  c.train.sample_every = 50_000
  c.train.ema_decay = 0.9999
  c.train.ema_warmup = False
  c.sample.sampler = "ddpm"
  c.sample.num_steps = 1000
  c.sample.num_samples = 50_000
  c.sample.batch_size = 500
  return c
