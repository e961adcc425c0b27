"""DDPM on MNIST (28×28): the CIFAR-10 recipe of Ho et al. (2020) scaled down to one channel.

A 3-level U-Net (ch 64, mult 1,2,2, two res blocks, attention at 14×14), linear schedule T = 1000,
ε-prediction, Adam 2e-4, batch 128, EMA 0.9999, 50k steps; class-conditional with classifier-free
guidance (Ho & Salimans 2022) so samples can be asked for by digit.

Prepare the data once: `tfds build mnist --file_format=array_record`.
"""

from jaxdiff.config import default_config


def get_config():
  c = default_config()
  c.data.name = "mnist"
  c.data.image_size = 28
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.batch_size = 128
  c.model.base_channels = 64
  c.model.channel_mult = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (14,)
  c.model.dropout = 0.1
  c.model.class_conditional = True
  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 1000
  c.train.num_steps = 50_000
  c.train.log_every = 100
  c.train.checkpoint_every = 5000
  c.train.sample_every = 10_000
  c.train.ema_decay = 0.9999
  c.sample.sampler = "ddim"
  c.sample.num_steps = 50
  c.sample.num_samples = 10_000
  c.sample.batch_size = 500
  c.sample.guidance_scale = 2.0
  return c
