"""Improved DDPM on ImageNet 64×64: Nichol & Dhariwal (2021), "Improved Denoising Diffusion
Probabilistic Models", §2–4 and Appendix A (their ImageNet-64 run).

The paper's ImageNet-64 U-Net: ch 128, mult 1,2,3,4, three res blocks per level, attention at 16×16
and 8×8 with 4 heads, scale-shift norm, learned variances (6 output channels); cosine schedule with
T = 4000; L_hybrid (λ = 0.001) training the learned variances; Adam at 1e-4, batch 128,
EMA 0.9999; DDPM sampling with the learned variances. Class-conditional training is an option:
`--config.model.class_conditional=True` (labels dropped 10% of the time for guidance).

Prepare the data once: `tfds build imagenet_resized/64x64 --file_format=array_record`.
"""

from jaxdiff.config import default_config


def get_config():
  c = default_config()
  c.data.name = "imagenet_resized/64x64"
  c.data.image_size = 64
  c.data.channels = 3
  c.data.num_classes = 1000
  c.data.batch_size = 128
  c.data.random_flip = False
  c.model.base_channels = 128
  c.model.channel_mult = (1, 2, 3, 4)
  c.model.num_res_blocks = 3
  c.model.attention_resolutions = (16, 8)
  c.model.num_heads = 4
  c.model.dropout = 0.0
  c.model.use_scale_shift_norm = True
  c.model.learn_sigma = True
  c.model.class_conditional = False
  c.diffusion.schedule = "cosine"
  c.diffusion.num_timesteps = 4000
  c.diffusion.prediction = "epsilon"
  c.diffusion.loss = "hybrid"
  c.diffusion.vlb_weight = 0.001
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 0
  c.optim.grad_clip_norm = 0.0
  c.train.num_steps = 1_500_000
  c.train.log_every = 100
  c.train.checkpoint_every = 10_000
  c.train.sample_every = 50_000
  c.train.ema_decay = 0.9999
  c.train.ema_warmup = False
  c.sample.sampler = "ddpm"
  c.sample.variance = "learned_range"
  c.sample.num_steps = 250
  c.sample.num_samples = 50_000
  c.sample.batch_size = 500
  return c
