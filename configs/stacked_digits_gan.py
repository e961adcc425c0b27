"""The GAN on stacked digits, the mode-collapse benchmark (configs/stacked_digits.py says what it
is): configs/digits_gan.py's generator, discriminator and stabilisers (non-saturating loss, R1,
generator EMA, Adam β₁ = 0), unconditional and with 3 channels. `--mode=eval` counts the modes of
eval.num_samples samples (of 1,000) and their KL to uniform, as for diffusion.
"""

import pathlib

from jaxdiff.config import load_file


def get_config():
  c = load_file(pathlib.Path(__file__).with_name("digits_gan.py"))
  c.data.name = "stacked_digits"
  c.data.channels = 3
  c.data.num_classes = None  # unconditional: the generator must find the modes itself
  c.model.class_conditional = False
  c.eval.num_samples = 10_000  # the mode counter's N
  return c
