"""The one config schema every experiment shares; `configs/*.py` override its values.

Keys cannot be added from the command line (`--config.a.b=v` on an unknown key is an error), so
every option any part of jaxdiff reads is declared here with its default.
"""

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # JAX's persistent compilation cache: a second start skips XLA compilation. '' turns it off.
  c.compilation_cache_dir = "~/.cache/jaxdiff/xla"

  c.data = d = ml_collections.ConfigDict()
  d.name = "digits"  # a TFDS dataset name, prepared as array_record
  d.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default dir
  d.split = "train"
  d.eval_split = "test"
  d.batch_size = 128  # global, over all devices and processes
  d.image_size = 16  # images are center-cropped and resized to this when they differ
  d.channels = 1
  d.num_classes = ml_collections.FieldReference(10, field_type=int)  # None: no labels
  d.random_flip = False
  d.num_workers = 0  # grain worker processes; 0 reads in the main process

  c.model = m = ml_collections.ConfigDict()
  m.base_channels = 32
  m.channel_mult = (1, 2)
  m.num_res_blocks = 1
  m.attention_resolutions = ()  # feature-map sizes that get self-attention
  m.num_heads = ml_collections.config_dict.placeholder(int)
  m.head_channels = ml_collections.config_dict.placeholder(int)
  m.dropout = 0.0
  m.class_conditional = False
  m.class_dropout = 0.1  # share of labels replaced by the null class (guidance training)
  m.learn_sigma = False
  m.use_scale_shift_norm = False
  m.resample_with_conv = True
  m.patch_size = 1  # >1 folds p×p pixel patches into channels (p² less compute)
  # activation rematerialization per res/attention block: '' off, 'full' (keep only block
  # inputs), 'dots' (keep conv/matmul outputs, recompute norms and activations)
  m.remat = ""

  c.diffusion = f = ml_collections.ConfigDict()
  f.schedule = "linear"
  f.num_timesteps = 1000
  f.prediction = "epsilon"
  f.min_snr_gamma = 0.0  # >0: Min-SNR-γ loss weighting (Hang et al. 2023); 0: L_simple
  # 'mse' (L_simple), 'hybrid' (+ λ·L_vlb) or 'vlb' (L_vlb alone); the last two need learn_sigma
  f.loss = "mse"
  f.vlb_weight = 0.001  # λ of L_hybrid (improved DDPM)
  # 'uniform' t, or 'loss_second_moment': p_t ∝ √E[L_t²] over the last loss_history_size losses
  # per step (improved DDPM §3.3, for L_vlb); the history is kept in the checkpoints
  f.timestep_sampler = "uniform"
  f.loss_history_size = 10

  c.optim = o = ml_collections.ConfigDict()
  o.learning_rate = 2e-4
  o.schedule = "constant"  # after warmup: 'constant' or 'cosine' (decay to 0 at the end)
  o.warmup_steps = 0
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.weight_decay = 0.0
  o.grad_clip_norm = 1.0  # 0 disables clipping

  c.train = t = ml_collections.ConfigDict()
  t.num_steps = 1000
  t.steps_per_call = 1  # optimizer steps per jitted call, unrolled
  t.log_every = 50
  t.checkpoint_every = 500
  t.sample_every = 0  # 0: no sample grids during training
  t.keep_checkpoints = 3
  t.ema_decay = 0.999
  t.ema_warmup = True
  t.compute_dtype = "float32"  # or 'bfloat16' (parameters stay float32)
  t.num_devices = ml_collections.config_dict.placeholder(int)  # None: all visible devices
  # devices along the mesh's `fsdp` axis: parameters, EMA and optimizer state are split over them
  # (jaxdiff/parallel.py); 1 replicates them (plain data parallelism)
  t.fsdp = 1

  c.sample = s = ml_collections.ConfigDict()
  s.sampler = "ddim"  # 'ddim' or 'ddpm'
  s.num_steps = 50  # DDIM steps; DDPM respaces to this many (ADM), T for the full chain
  s.eta = 0.0
  s.spacing = "leading"  # DDIM timestep spacing: 'leading', 'trailing', 'linspace'
  # σ² of DDPM steps and of η-scaled DDIM steps: 'fixed_small' (β̃), 'fixed_large' (β) or
  # 'learned_range' (the model's interpolation; needs model.learn_sigma)
  s.variance = "fixed_small"
  s.clip_denoised = True
  s.num_samples = 100
  s.batch_size = 100
  s.guidance_scale = 1.0  # classifier-free guidance; 1 = the conditional model
  s.class_labels = ml_collections.config_dict.placeholder(tuple)  # None: cycle 0..num_classes-1
  s.grid_samples = 100  # images in the grids written during training

  c.eval = e = ml_collections.ConfigDict()
  e.num_timesteps = 0  # --mode=eval: 0 = the full bound over all steps, K = an unbiased
  e.batch_size = 64  # estimate from K random steps per example
  e.num_examples = 0  # 0 = the whole data.eval_split
  e.bits_per_dim = True  # the bound above; False skips it
  # sample quality of this many EMA samples (drawn with the sample.* settings); 0 skips it
  e.num_samples = 0
  # FID/IS/precision-recall need the FID Inception as safetensors (README: Sample quality);
  # without it only the digits dataset is scored, by a small digits classifier
  e.inception_weights = ""
  # a guided-diffusion reference batch npz (arr_0) to compare with; '' = the training split,
  # whose statistics are cached in <workdir>/reference_stats/
  e.reference_batch = ""
  return c


CHOICES = {
  "diffusion.schedule": ("linear", "cosine", "scaled_linear"),
  "diffusion.prediction": ("epsilon", "x0", "v"),
  "optim.schedule": ("constant", "cosine"),
  "train.compute_dtype": ("float32", "bfloat16"),
  "sample.sampler": ("ddim", "ddpm"),
  "sample.spacing": ("leading", "trailing", "linspace"),
  "sample.variance": ("fixed_small", "fixed_large", "learned_range"),
  "diffusion.loss": ("mse", "hybrid", "vlb"),
  "model.remat": ("", "full", "dots"),
  "diffusion.timestep_sampler": ("uniform", "loss_second_moment"),
}


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects values no part of jaxdiff accepts, before any work starts (one ValueError)."""
  for key, allowed in CHOICES.items():
    section, name = key.split(".")
    value = config[section][name]
    if value not in allowed:
      raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}.")
  positive = (
    "data.batch_size",
    "train.num_steps",
    "train.steps_per_call",
    "train.fsdp",
    "train.log_every",
    "train.checkpoint_every",
    "sample.num_steps",
    "sample.num_samples",
    "sample.batch_size",
  )
  for key in positive:
    section, name = key.split(".")
    if config[section][name] < 1:
      raise ValueError(f"{key} must be at least 1, got {config[section][name]}.")
  if config.model.class_conditional and not config.data.num_classes:
    raise ValueError("model.class_conditional needs data.num_classes.")
  if config.sample.variance == "learned_range" and not config.model.learn_sigma:
    raise ValueError("sample.variance='learned_range' needs model.learn_sigma=True.")
  if config.diffusion.loss in ("hybrid", "vlb") and not config.model.learn_sigma:
    raise ValueError(f"diffusion.loss={config.diffusion.loss!r} needs model.learn_sigma=True.")
  if config.diffusion.loss_history_size < 1:
    raise ValueError(
      f"diffusion.loss_history_size must be at least 1, got {config.diffusion.loss_history_size}."
    )
  if not 0.0 <= config.sample.eta <= 1.0:
    raise ValueError(f"sample.eta must lie in [0, 1], got {config.sample.eta}.")
