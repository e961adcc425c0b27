"""Consistency distillation of the digits default (Song et al. 2023, CD), sampled in one step.

    python -m jaxdiff.main --workdir=workdir/digits                     # the teacher first
    python -m jaxdiff.main --config=configs/digits_cd.py --workdir=workdir/digits_cd \
      --config.teacher.workdir=workdir/digits
    python -m jaxdiff.main --config=configs/digits_cd.py --workdir=workdir/digits_cd --mode=sample

The student is configs/digits.py's network, data and v-prediction on the cosine schedule, started
from the teacher's EMA weights (read from --config.teacher.workdir's newest checkpoint) and kept a
discrete v-model wrapped in the consistency boundary condition (preconditioning.student_function),
so it starts as the teacher's denoiser. Each step draws a pair of adjacent points of an N-point
grid, takes one teacher ODE step between them (DDIM = Euler in σ), guided at 1.5 as the teacher
samples (guidance folded into the targets, so the student samples unguided), and pulls the student
at the upper point towards the target network (an EMA of the student, μ = 0.95) at the lower one
under the pseudo-Huber distance (Song & Dhariwal 2024). The grid is the teacher's own ('timesteps':
σ_max = 80, the σ's of 9 trailing timesteps 899, 799, …, 99, then σ_min), on which this teacher's
10-step Euler sampling scores 0.55 where 10 Karras steps (the paper's grid) score 1.87: the student
learns the teacher's ODE as the grid discretises it.
Samples: the consistency sampler, one step at σ = 80, x̂_0 clipped; `--config.sample.num_steps=2`
adds one re-noising to σ = 1.38 (CD ImageNet 64's two steps) at γ = 0.7: 0.7 of fresh noise plus
0.71 (√(1 − γ²)) of the noise the first x̂_0 came from, rather than Algorithm 1's fresh noise alone
(`--config.sample.gamma=1`), which this student does worse with.

Measured (benchmarks/RESULTS.md, 1000 samples, the digits default as teacher, whose best DDIM-50
scores 0.452): digits Fréchet distance 0.868 in one step (1.92×), 0.629 in two (1.39×; 0.770 with
Algorithm 1); on the Karras grid at lr 3e-4 (this config before) 1.40 and 1.22. Training took
78.7 s against the teacher's 89.7 s (both from a cold compilation cache, one after the other).
"""

import pathlib

from jaxdiff.config import load_file


def get_config():
  c = load_file(pathlib.Path(__file__).with_name("digits.py"))
  c.diffusion.loss = "consistency_distillation"
  c.diffusion.min_snr_gamma = 0.0  # a diffusion loss's weighting, not read by CD
  c.consistency.num_scales = 11  # 10 teacher jumps: fewer links for consistency to travel up
  c.consistency.grid = "timesteps"
  c.consistency.teacher_solver = "ddim"
  c.consistency.teacher_guidance = 1.5
  c.consistency.target_ema = 0.95
  c.consistency.distance = "pseudo_huber"
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  # a CD step costs ~2 teacher steps (the student's forward and backward, the target's forward, the
  # guided teacher's two halves): 500 of them take ~0.9× the teacher's 800 steps' wall-clock
  c.train.num_steps = 500
  c.train.steps_per_call = 1  # the unrolled 4-step program took 40 s to compile against 13 s
  c.train.ema_decay = 0.995
  c.sample.sampler = "consistency"
  c.sample.num_steps = 1
  c.sample.clip_denoised = True
  c.sample.gamma = 0.7  # multistep re-noising: CTM's γ-sampling (samplers/consistency.py)
  c.sample.guidance_scale = 1.0  # the teacher's guidance is in the student already
  # UniPC's options, unread by the consistency sampler: back to their defaults
  c.sample.spacing, c.sample.order, c.sample.unipc_solver_type = "leading", 2, "bh2"
  c.eval.bits_per_dim = False  # a consistency model has no likelihood bound
  return c
