"""Stacked digits, the mode-collapse benchmark: unconditional pixel diffusion over 1,000 modes.

Stacked MNIST (Metz et al. 2017, Srivastava et al. 2017, Lin et al. 2018) on scikit-learn's digits:
three 16×16 digits as the R, G and B channels, whose digit triple (1,000 of them) is the mode
(jaxdiff/data/stacked_digits.py: 50,000 train and 10,000 test triples, built on first use). The
model is unconditional — coverage means nothing when the sampler is told the mode — and
`--mode=eval` counts the modes of eval.num_samples samples with the digits classifier applied per
channel: modes covered of 1,000 and KL(mode histogram ‖ uniform) in nats (jaxdiff/metrics/modes.py;
the papers use 26,000 samples, and at least 10,000 are needed for the counts to mean much).

Otherwise the recipe of the digits default (configs/digits.py), unchanged and untuned here: the
same 2×2-patch U-Net with 3 input channels, cosine schedule, v-prediction with Min-SNR-5, and
UniPC-10 on the trailing grid, without classifier-free guidance (there are no labels to guide by).
"""

import pathlib

from jaxdiff.config import load_file


def get_config():
  c = load_file(pathlib.Path(__file__).with_name("digits.py"))
  c.data.name = "stacked_digits"
  c.data.channels = 3
  c.data.num_classes = None  # no labels are read: the model must find the modes itself
  c.model.class_conditional = False
  c.model.class_dropout = 0.0
  c.sample.guidance_scale = 1.0
  # the mode counter's N (--mode=eval draws them with the sample.* settings)
  c.eval.num_samples = 10_000
  # the full bound (1,000 steps) on all 10,000 test triples would take hours on a CPU: 512 of them
  c.eval.num_examples = 512
  return c
