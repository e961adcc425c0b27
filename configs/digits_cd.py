"""Consistency distillation of the digits default (Song et al. 2023, CD), sampled in one step.

    python -m jaxdiff.main --workdir=workdir/digits                     # the teacher first
    python -m jaxdiff.main --config=configs/digits_cd.py --workdir=workdir/digits_cd \
      --config.teacher.workdir=workdir/digits
    python -m jaxdiff.main --config=configs/digits_cd.py --workdir=workdir/digits_cd --mode=sample

The student is configs/digits.py's network, data and v-prediction on the cosine schedule, started
from the teacher's EMA weights (read from --config.teacher.workdir's newest checkpoint) and kept a
discrete v-model wrapped in the consistency boundary condition (preconditioning.student_function),
so it starts as the teacher's denoiser. Each step draws a pair of adjacent points of an N-point
Karras grid, takes one teacher ODE step between them (DDIM = Euler in σ), guided at 1.5 as the
teacher samples (guidance folded into the targets, so the student samples unguided), and pulls the
student at the upper point towards the target network (an EMA of the student, μ = 0.95) at the
lower one under the pseudo-Huber distance (Song & Dhariwal 2024).
Samples: the consistency sampler (Algorithm 1), one step at σ = 80, x̂_0 clipped;
`--config.sample.num_steps=2` adds one re-noising to σ = 1.38 (CD ImageNet 64's two steps).

Measured once on the shared 2-core machine (benchmarks/consistency_nfe.py, 1000 samples, the
digits default as teacher): digits Fréchet distance 1.40 in one step and 1.22 in two, against the
teacher's 1.52 with DDIM-50 as `sample.sampler=ddim` draws (leading, clipped) and 0.45 at its best
(trailing, unclipped; UniPC reaches 0.44 in 5 steps); 1000 samples in 0.6 s against ~50 s for
DDIM-50. 800 steps (N = 11) gave 1.18 and 1.20, N = 18 at lr 1e-4 gave 1.26 and 1.10.
"""

import pathlib

from jaxdiff.config import load_file


def get_config():
  c = load_file(pathlib.Path(__file__).with_name("digits.py"))
  c.diffusion.loss = "consistency_distillation"
  c.diffusion.min_snr_gamma = 0.0  # a diffusion loss's weighting, not read by CD
  c.consistency.num_scales = 11  # 10 teacher jumps: fewer links for consistency to travel up
  c.consistency.teacher_solver = "ddim"
  c.consistency.teacher_guidance = 1.5
  c.consistency.target_ema = 0.95
  c.consistency.distance = "pseudo_huber"
  c.optim.learning_rate = 3e-4
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  # a CD step costs ~1.7 teacher steps (student, target, two guided teacher halves): 500 of them
  # take about the teacher's 800 steps' wall-clock
  c.train.num_steps = 500
  c.train.ema_decay = 0.995
  c.sample.sampler = "consistency"
  c.sample.num_steps = 1
  c.sample.clip_denoised = True
  c.sample.guidance_scale = 1.0  # the teacher's guidance is in the student already
  # UniPC's options, unread by the consistency sampler: back to their defaults
  c.sample.spacing, c.sample.order, c.sample.unipc_solver_type = "leading", 2, "bh2"
  c.eval.bits_per_dim = False  # a consistency model has no likelihood bound
  return c
