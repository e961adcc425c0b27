"""configs/digits.py with a Diffusion Transformer (Peebles & Xie 2023) in place of the U-Net.

Everything but the network and the learning rate is the digits default (data, cosine schedule,
v-prediction with Min-SNR-5, EMA, UniPC-10 with guidance 1.5), read from digits.py itself so the
two cannot drift apart. The network is a DiT shrunk to CPU size: 128 wide, 6 blocks of 4 heads, on
4×4 patches (4×4 = 16 tokens for the 16×16 digits, each 2×2 pixels of the 8×8 scans), 1.87M
parameters. The transformer takes a higher learning rate than the U-Net (3e-3; AdamW without
weight decay, as the paper) with the same warmup and cosine decay. Measured (benchmarks/RESULTS.md,
800 steps, 1000 samples): digits Fréchet distance 1.07 in 86 s of training, against 2.54 in 104 s
for the 64-wide, 4-block DiT on 2×2 patches this config had first (64 tokens cost more than the
wider blocks); learning rates 1e-3 / 6e-3 scored 8.29 / 1.07.
"""

import pathlib

from jaxdiff.config import default_config, load_file


def get_config():
  c = load_file(pathlib.Path(__file__).with_name("digits.py"))
  c.model = default_config(arch="dit").model  # the DiT's model.* keys, none of the U-Net's
  c.model.class_conditional = True
  c.model.class_dropout = 0.1
  c.model.hidden_size = 128
  c.model.depth = 6
  c.model.num_heads = 4
  c.model.patch_size = 4
  c.optim.learning_rate = 3e-3
  return c
