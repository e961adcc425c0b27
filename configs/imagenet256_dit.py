"""DiT-XL/2 on ImageNet 256×256 in the latent space of Stable Diffusion's VAE: Peebles & Xie (2023),
"Scalable Diffusion Models with Transformers", §3–5 and their released train.py/sample.py.

The paper's recipe: DiT-XL/2 (Table 4: 28 blocks, hidden 1152, 16 heads, 2×2 patches of the
32×32×4 latents; 675M parameters), class-conditional with labels dropped 10% of the time for
guidance, learned Σ trained with improved DDPM's L_simple + L_vlb (`hybrid`), the linear schedule
with T = 1000 (β 1e-4 → 2e-2), AdamW at a constant 1e-4 without weight decay or warmup, batch 256,
EMA 0.9999, horizontal flips; sampling with 250 respaced DDPM steps and the learned variances,
guidance 1.5 (the FID-50K setting of Table 4) on the first three latent channels as the released
sample.py does (`sample.guided_channels=3`; 0 guides all four, the standard choice).

Latents: images are center-cropped and resized to 256×256 (ADM's preprocessing) and encoded by
the VAE the paper used, stabilityai/sd-vae-ft-ema (or -mse), converted once and named on the
command line; its scale 0.18215 comes with the converted folder:

    python -m jaxdiff.convert diffusers-vae path/to/sd-vae-ft-ema converted/sd-vae-ft-ema
    tfds build imagenet2012 --file_format=array_record        # needs the manual download
    python -m jaxdiff.main --config=configs/imagenet256_dit.py --workdir=runs/dit-xl-2 \\
        --config.autoencoder.path=converted/sd-vae-ft-ema

Without `autoencoder.path` the run stops with one sentence saying so, before any work.

The released DiT-XL/2 (256×256) is this config's network: converted once
(`python -m jaxdiff.convert dit-checkpoint DiT-XL-2-256x256.pt converted/DiT-XL-2-256`), one command
draws the paper's FID-50K samples from it (the `sample.*` settings below) without the dataset, into
the workdir's samples/step0_ddpm250_guidance1.5_seed0_*/samples_50000x256x256x3.npz
(docs/guides/published_checkpoints.md):

    python -m jaxdiff.main --config=configs/imagenet256_dit.py --mode=sample \\
        --workdir=runs/dit-xl-2-256-released --config.init_from=converted/DiT-XL-2-256 \\
        --config.autoencoder.path=converted/sd-vae-ft-ema

Scale: `--config.train.fsdp=N` splits the weights by their logical axes, `model.remat=full` and
`train.compute_dtype=bfloat16` (float32 parameters) fit the batch on smaller accelerators.
"""

from jaxdiff.config import default_config


def get_config():
  c = default_config(arch="dit")
  c.data.name = "imagenet2012"
  c.data.image_size = 256
  c.data.channels = 3
  c.data.num_classes = 1000
  c.data.batch_size = 256
  c.data.random_flip = True
  c.codec.name = "autoencoder"
  c.autoencoder.path = ""  # required: a `python -m jaxdiff.convert diffusers-vae` folder
  c.autoencoder.scale_factor = 0.18215
  c.autoencoder.sample_posterior = True
  # The SD VAE's latent shape (f = 8, 4 channels): --mode=describe needs no weights, and a run
  # checks them against the converted folder's network_config.json.
  c.autoencoder.downsampling_factor = 8
  c.autoencoder.latent_channels = 4
  c.model.preset = "DiT-XL/2"
  c.model.class_conditional = True
  c.model.class_dropout = 0.1
  c.model.learn_sigma = True
  c.diffusion.schedule = "linear"
  c.diffusion.num_timesteps = 1000
  c.diffusion.prediction = "epsilon"
  c.diffusion.loss = "hybrid"
  # DiT adds one bits/dim term L_t to the mse (its diffusion/gaussian_diffusion.py, as ADM), which is
  # λ·N·L_t with λ = 1/N: improved DDPM's 0.001 at T = 1000
  c.diffusion.vlb_weight = 0.001
  c.optim.learning_rate = 1e-4
  c.optim.weight_decay = 0.0
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  c.optim.grad_clip_norm = 0.0
  c.train.num_steps = 400_000
  c.train.log_every = 100
  c.train.checkpoint_every = 50_000
  c.train.sample_every = 0
  c.train.ema_decay = 0.9999
  c.train.ema_warmup = False
  c.sample.sampler = "ddpm"
  c.sample.num_steps = 250
  c.sample.variance = "learned_range"
  c.sample.clip_denoised = False
  c.sample.guidance_scale = 1.5
  c.sample.guided_channels = 3
  c.sample.num_samples = 50_000
  c.sample.batch_size = 250
  c.eval.bits_per_dim = False
  c.eval.num_samples = 0
  return c
