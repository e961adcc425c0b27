"""Improved consistency training on the digits, from scratch (Song & Dhariwal 2024, iCT).

    python -m jaxdiff.main --config=configs/digits_ict.py --workdir=workdir/digits_ict
    python -m jaxdiff.main --config=configs/digits_ict.py --workdir=workdir/digits_ict --mode=sample

The digits default's data and U-Net (configs/digits.py, the same size), trained as the raw network
F of a consistency model (diffusion.prediction='consistency': EDM's c_in, t_in = 250·ln σ, the
consistency models' c_skip and c_out, so f(x, σ_min) = x). No teacher and no target network: each
step pulls f at the upper of two adjacent Karras points towards f itself (gradient stopped) at the
lower one, under the pseudo-Huber distance with c = 0.00054·√256, pairs drawn from the lognormal
P_mean = −1.1, P_std = 2.0 and weighted by 1/(σ_{n+1} − σ_n). The curriculum is cut short for a
CPU-sized run: iCT's s0 = 10 but s1 = 20 rather than 1280, so the grid has 11 points for the first
1000 steps and 21 for the last 1000 (finer grids lower the target's bias but raise its variance,
and 2000 steps do not average enough of it away).
Samples: the consistency sampler, two steps (σ = 80, then re-noised to σ = 1.584), x̂_0 clipped.
The network only ever sees the grid's σ's (t_in = 250·ln σ moves ~115 between neighbours): it is
sampled at points of its last grid, here its 12th of 21; between points it can be far off (at σ
= 2.0, between 1.58 and 2.52, the two-step distance was 3.7 in one run).

Measured (benchmarks/RESULTS.md, benchmarks/consistency_nfe.py, 1000 samples, quiet machine): digits
Fréchet distance 0.668 in two steps (0.691 at the sampler's default σ = 1.38) and 1.55 in one, in
213 s of training, against the digits default's best DDIM-50 0.452 (1.48×) in 89.7 s (2.38×).
With s1 = 320 and 1600 steps (this config before) the two-step distance was 1.60.
"""

import pathlib

from jaxdiff.config import load_file
from jaxdiff.preconditioning import SIGMA_MIN, karras_sigmas


def get_config():
  c = load_file(pathlib.Path(__file__).with_name("digits.py"))
  c.diffusion.loss = "improved_consistency_training"
  c.diffusion.prediction = "consistency"
  c.diffusion.min_snr_gamma = 0.0  # a diffusion loss's weighting, not read by iCT
  c.consistency.distance = "pseudo_huber"
  # iCT's s0 = 10 with s1 = 20 rather than 1280 for a short run: 11 grid points, then 21
  c.consistency.start_scales, c.consistency.end_scales = 10, 20
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.schedule = "constant"
  # an iCT step (one forward without gradient, one with) costs ~4/3 of the default's, which also
  # unrolls 4 steps per call: 2000 steps take ~2.5× its 800 steps' wall-clock
  c.train.num_steps = 2000
  c.train.ema_decay = 0.999
  c.sample.sampler = "consistency"
  c.sample.num_steps = 2
  # σ_max, then the last grid's 12th point (1.584): a σ the network was trained at
  cm = c.consistency
  last_grid = karras_sigmas(cm.sigma_max, SIGMA_MIN, cm.end_scales + 1, rho=cm.rho)
  c.sample.sigmas = (float(last_grid[0]), float(last_grid[11]))
  c.sample.clip_denoised = True
  c.sample.guidance_scale = 1.0
  # UniPC's options, unread by the consistency sampler: back to their defaults
  c.sample.spacing, c.sample.order, c.sample.unipc_solver_type = "leading", 2, "bh2"
  c.eval.bits_per_dim = False  # a consistency model has no likelihood bound
  return c
