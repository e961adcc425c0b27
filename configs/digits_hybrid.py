"""The digits default with learned variances and L_hybrid: Nichol & Dhariwal (2021), §3.1.

Same data, U-Net, schedule and budget as configs/digits.py, but the U-Net also outputs the
variance interpolation v (learn_sigma), trained by L_hybrid = L_simple + 0.001·L_vlb with the
stop-gradient on the mean; the likelihood bound and DDPM sampling (`--config.sample.sampler=ddpm`)
use the learned variances. It samples with 50 DDIM steps on the 'leading' grid (the digits
default's sampler when this config was made; at η = 0 DDIM does not use the variance).
Compare the test-split bound of the two with `--mode=eval` (see docs/guides/bits_per_dim.md).
"""

import pathlib

from jaxdiff.config import load_file


def get_config():
  c = load_file(pathlib.Path(__file__).with_name("digits.py"))
  c.model.learn_sigma = True
  c.diffusion.loss = "hybrid"
  c.diffusion.vlb_weight = 0.001
  c.sample.variance = "learned_range"
  c.sample.sampler, c.sample.num_steps, c.sample.spacing = "ddim", 50, "leading"
  c.sample.order, c.sample.unipc_solver_type = 2, "bh2"  # UniPC's, unread by DDIM: defaults
  return c
