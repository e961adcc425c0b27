"""The embedded default: class-conditional diffusion on scikit-learn's handwritten digits, CPU-sized.

Real 8×8 digits (1,797 of them, shipped inside scikit-learn) upsampled to 16×16. A 0.65M-parameter
DDPM-family U-Net (Ho et al. 2020) on 2×2 patches, the cosine schedule (Nichol & Dhariwal 2021),
v-prediction (Salimans & Ho 2022) with Min-SNR-5 weighting (Hang et al. 2023), classifier-free
guidance (Ho & Salimans 2022) at 1.5, sampled with UniPC (bh2, order 2; Zhao et al. 2023) in 10
steps on the 'trailing' grid (Lin et al. 2024).

Tuned for a fixed wall-clock on 2 CPU cores (the README's main command: ~4 minutes of training):
each choice below won a same-budget comparison measured with benchmarks/digits_quality.py, see
benchmarks/RESULTS.md. More steps beat more capacity here; learning rates of 1e-3 and 4e-3 and
guidance scales of 1, 2 and 3 did worse than 2e-3 and 1.5. The sampler won
benchmarks/sampler_nfe.py's comparison (benchmarks/RESULTS.md): from 5 network evaluations on it
gives a digits Fréchet distance ~3.5× lower than the 50 clipped DDIM steps this default drew
before, and as low as unclipped DDIM-50's.
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
  # The digits are 8×8 scans upsampled 2×: 2×2 patches lose nothing and cut compute 4×.
  c.model.patch_size = 2
  c.diffusion.schedule = "cosine"
  c.diffusion.prediction = "v"
  c.diffusion.min_snr_gamma = 5.0
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 100
  c.optim.schedule = "cosine"
  c.train.num_steps = 800
  c.train.steps_per_call = 4
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  c.train.sample_every = 0
  c.train.ema_decay = 0.995
  c.sample.sampler = "unipc"
  c.sample.unipc_solver_type = "bh2"
  c.sample.order = 2
  c.sample.spacing = "trailing"
  c.sample.num_steps = 10
  c.sample.num_samples = 100
  c.sample.batch_size = 100
  c.sample.guidance_scale = 1.5
  # --mode=eval also scores 200 samples by a small digits classifier's Fréchet distance (not FID)
  c.eval.num_samples = 200
  return c
