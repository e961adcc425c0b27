"""Latent diffusion on the digits (Rombach et al. 2022): configs/digits.py's diffusion model trained
on the 8×8×4 latents of the digits autoencoder (configs/digits_vae.py) instead of 16×16 pixels.

Two stages, each a run of the same trainer:

    python -m jaxdiff.main --config=configs/digits_vae.py --workdir=runs/vae
    python -m jaxdiff.main --config=configs/digits_latent.py --workdir=runs/latent \\
        --config.autoencoder.path=runs/vae --config.autoencoder.cache=runs/vae_latents
    python -m jaxdiff.main --config=configs/digits_latent.py --workdir=runs/latent \\
        --config.autoencoder.path=runs/vae --mode=sample

Data, schedule, v-prediction with Min-SNR-5, guidance, EMA and the UniPC-10 sampler are the digits
default's, read from digits.py itself; the learning rate is twice the default's (4e-3: latents
took it better than 1e-3 and 2e-3, as well as 6e-3 and 8e-3; benchmarks/RESULTS.md). With the
latent cache (`autoencoder.cache`, encoded once in a second or two) a latent step costs what a
pixel step does, so the run takes the default's wall-clock. The images are the 32×32 digits the autoencoder was trained
on; the network sees 8×8×4 latents scaled to unit variance (autoencoder.scale_factor unset: 1/std
of the training latents, measured once and stored in the workdir's codec.json), drawn from the
posterior each step as LDM and DiT do. The U-Net is the default's (32 channels, ×1 ×2) on 1×1
patches of the 8×8 latents — the same 8×8 grid the pixel default reaches with its 2×2 patches.
UniPC does not clip its x̂_0 (latents are not in [-1, 1]); decoded images are clipped.
"""

import pathlib

from jaxdiff.config import load_file


def get_config():
  c = load_file(pathlib.Path(__file__).with_name("digits.py"))
  c.data.image_size = 32
  c.codec.name = "autoencoder"
  c.autoencoder.path = ""  # required: --config.autoencoder.path=WORKDIR_OF_digits_vae
  c.model.patch_size = 1
  c.optim.learning_rate = 4e-3
  c.eval.bits_per_dim = False  # the bound is on pixels; a latent run has none (its VAE has an ELBO)
  return c
