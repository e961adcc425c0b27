"""The one config schema every experiment shares; `configs/*.py` override its values.

Keys cannot be added from the command line (`--config.a.b=v` on an unknown key is an error), so
every option any part of jaxdiff reads is declared here with its default — or in the table it
belongs to: the network's keys (`model.*`) come from the network table, the samplers' options
(`sample.*`) from the sampler table, and the allowed values of names (`model.arch`,
`diffusion.loss`, `sample.sampler`, …) from the tables that define them.
"""

import dataclasses
import importlib.util
import pathlib
import typing

import ml_collections

from jaxdiff import codecs, data, flow, models, objectives, preconditioning, samplers, schedules
from jaxdiff.objectives import probability_flow
from jaxdiff.state import COMPUTE_DTYPES


def load_file(path: str | pathlib.Path, *args) -> ml_collections.ConfigDict:
  """The config of a config file (configs/*.py): its `get_config(*args)`, as --config= reads it.
  A config that derives from another (digits_latent from digits) loads that one with this."""
  spec = importlib.util.spec_from_file_location(f"config_{pathlib.Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def default_config(arch: str = "unet") -> ml_collections.ConfigDict:
  """Every key with its default; `model.*` holds the keys of network `arch` (models/table.py)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # JAX's persistent compilation cache: a second start skips XLA compilation. '' turns it off.
  c.compilation_cache_dir = "~/.cache/jaxdiff/xla"

  c.data = d = ml_collections.ConfigDict()
  d.name = "digits"  # a TFDS dataset name, prepared as array_record
  d.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS default dir
  # a folder of PNG/JPEG images (flat, or one subfolder per class; local or a bucket URL), used
  # instead of data.name: prepared once into data.data_dir as array_record (data/folder.py)
  d.folder = ""
  d.split = "train"
  d.eval_split = "test"
  d.batch_size = 128  # global, over all devices and processes
  d.image_size = 16  # images are center-cropped and resized to this when they differ
  d.channels = 1
  d.num_classes = ml_collections.FieldReference(10, field_type=int)  # None: no labels
  d.random_flip = False
  d.num_workers = 0  # grain worker processes; 0 reads in the main process

  # the keys every network shares, then those of model.arch's config dataclass (models/table.py)
  c.model = model_section(arch)

  # between data space and diffusion space (codecs.py): 'identity' diffuses pixels
  c.codec = ml_collections.ConfigDict()
  c.codec.name = "identity"  # or 'autoencoder': latent diffusion (Rombach et al. 2022)

  # the autoencoder codec: the network whose latents are diffused (read when codec.name='autoencoder')
  c.autoencoder = a = ml_collections.ConfigDict()
  a.path = (
    ""  # a jaxdiff autoencoder workdir, or a folder of `python -m jaxdiff.convert diffusers-vae`
  )
  # latents = (z − shift)·scale_factor, z ~ q(z|x); None: the autoencoder's own (a converted SD
  # VAE's 0.18215), else 1/std of the training latents, measured once and stored in the workdir
  a.scale_factor = ml_collections.config_dict.placeholder(float)
  a.sample_posterior = True  # z drawn from q(z|x) each step (LDM, DiT); False: its mean
  # the autoencoder's downsampling factor f and latent channels (Stable Diffusion's VAE: 8 and 4):
  # 0 reads them from autoencoder.path; set, they must be its own, and let --mode=describe run
  # without autoencoder.path (its weights are never needed for shapes)
  a.downsampling_factor = 0
  a.latent_channels = 0
  # a folder: the training split is encoded once into it (array_record posterior moments, keyed by
  # the autoencoder and the data; codecs/cache.py) and steps read latents instead of running the
  # encoder; '' encodes every batch
  a.cache = ""

  # the autoencoder objective (diffusion.loss='autoencoder', model.arch='autoencoder')
  c.vae = v = ml_collections.ConfigDict()
  v.reconstruction = "l2"  # 'l2': Gaussian decoder (the ELBO); 'l1': Laplace (LDM's choice)
  v.decoder_std = 0.1  # σ_x of the decoder N(x̂, σ_x²), in [-1, 1] pixel units
  v.kl_weight = 1.0  # β; 1: the loss is the negative ELBO
  # the LDM recipe's extras: LPIPS added to the per-pixel error (needs lpips.path; LDM: 1.0), and
  # the patch discriminator's hinge loss (needs model.discriminator_layers; LDM: weight 0.5, with
  # the adaptive weight, switched on after discriminator_start steps)
  v.perceptual_weight = 0.0
  v.discriminator_weight = 0.0
  v.discriminator_start = 0

  # the GAN objective (diffusion.loss='gan', model.arch='gan'; objectives/gan.py)
  c.gan = g = ml_collections.ConfigDict()
  g.loss = "non_saturating"  # or 'hinge'
  g.r1_gamma = 1.0  # γ of the R1 penalty γ/2·E‖∇_x D(x)‖² on real data (Mescheder et al. 2018)
  g.discriminator_lr_ratio = 1.0  # the discriminator's learning rate / optim.learning_rate

  # the LPIPS network (Zhang et al. 2018) of vae.perceptual_weight and consistency.distance='lpips':
  # a file of `python -m jaxdiff.convert lpips VGG16.pth LINEAR.pth DST.safetensors`; none bundled
  c.lpips = ml_collections.ConfigDict()
  c.lpips.path = ""
  c.lpips.resolution = 0  # > 0: images are resized (bilinear) to this first (the CM paper: 224)

  c.diffusion = f = ml_collections.ConfigDict()
  f.schedule = "linear"
  f.num_timesteps = 1000
  # Lin et al. 2024: rescale β so that ᾱ_T = 0 (the last step is pure noise); needs v- or
  # x0-prediction; pair with sample.spacing='trailing' and sample.guidance_rescale
  f.rescale_zero_terminal_snr = False
  f.prediction = "epsilon"
  f.min_snr_gamma = 0.0  # >0: Min-SNR-γ loss weighting (Hang et al. 2023); 0: L_simple
  # 'mse' (L_simple), 'hybrid' (+ λ·L_vlb) or 'vlb' (L_vlb alone); the last two need learn_sigma
  f.loss = "mse"
  f.vlb_weight = 0.001  # λ of L_hybrid (improved DDPM)
  # 'uniform' t, or 'loss_second_moment': p_t ∝ √E[L_t²] over the last loss_history_size losses
  # per step (improved DDPM §3.3, for L_vlb); the history is kept in the checkpoints
  f.timestep_sampler = "uniform"
  f.loss_history_size = 10

  # consistency models (diffusion.loss='consistency_distillation', 'consistency_training' or
  # 'improved_consistency_training'; objectives/consistency.py). Pairs of adjacent points of a
  # Karras grid from σ_min = 0.002 (the boundary of f, shared with the sampler) to sigma_max.
  c.consistency = cm = ml_collections.ConfigDict()
  cm.num_scales = 18  # CD's N grid points (Song et al. 2023: 18 on CIFAR-10, 40 on ImageNet 64)
  cm.start_scales = 0  # s0 of CT's and iCT's N(k); 0: the paper's (CT 2, iCT 10)
  cm.end_scales = 0  # s1 of N(k); 0: the paper's (CT 150, iCT 1280)
  cm.target_ema = 0.95  # μ of CD's target network, μ0 of CT's μ(k); iCT has no target network
  # 'l2', 'l1', 'pseudo_huber' (iCT's) or 'lpips' (CD's best; pixel runs; needs lpips.path)
  cm.distance = "pseudo_huber"
  cm.huber_c = 0.0  # c of the pseudo-Huber distance; 0: 0.00054·√d, d the data's dimension
  # λ(σ_n): 'uniform' or 'inverse_gap' 1/(σ_{n+1} − σ_n); '': the paper's (iCT's inverse_gap,
  # else uniform)
  cm.weighting = ""
  # CD's teacher ODE step σ_{n+1} → σ_n: 'euler', 'heun' (the paper's) or 'ddim' (the same point
  # as Euler for a discrete teacher)
  cm.teacher_solver = "heun"
  # CD: classifier-free guidance of the teacher, folded into the student's targets (latent
  # consistency models); sample the student with sample.guidance_scale=1 then. 1: off
  cm.teacher_guidance = 1.0
  cm.sigma_max = 80.0  # the consistency sampler's default σ's start at 80: set sample.sigmas too
  # CD's grid: 'karras' (ρ = rho, the paper's) or 'timesteps' (the teacher's trailing timesteps
  # between σ_min and sigma_max, where a discrete teacher's own few-step sampling is best)
  cm.grid = "karras"
  cm.rho = 7.0
  cm.p_mean = -1.1  # iCT's lognormal over the grid's pairs
  cm.p_std = 2.0

  # CD's teacher: a jaxdiff run's workdir with the student's network, data shape and prediction;
  # a fresh distillation reads its config.json and newest EMA parameters (a resumed one does not)
  c.teacher = ml_collections.ConfigDict()
  c.teacher.workdir = ""

  # the weights a new workdir starts from, in every mode: a `python -m jaxdiff.convert` folder or
  # another jaxdiff run's workdir (its newest EMA weights), checked against model.* and the data;
  # saved as checkpoint 0 (fresh optimizer state). Read only while the workdir has no checkpoint
  c.init_from = ""

  # the sections only one objective reads (ObjectiveEntry.section), documented there: flow
  # matching's `flow.*` (diffusion.loss='flow_matching'; objectives/flow_matching.py)
  for entry in objectives.OBJECTIVES.values():
    if entry.section is not None:
      name, keys = entry.section
      c[name] = section = ml_collections.ConfigDict()
      for key, value in keys.items():  # None: a float left unset, a placeholder of its own
        section[key] = ml_collections.config_dict.placeholder(float) if value is None else value

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
  s.sampler = "ddim"  # a name in the sampler table (samplers/table.py)
  for name, option in samplers.OPTIONS.items():  # the options the samplers read, documented there
    # an option unset by default (None) is a placeholder of its kind, settable from the flags
    unset = option.default is None
    s[name] = ml_collections.config_dict.placeholder(option.kind) if unset else option.default
  s.num_samples = 100
  s.batch_size = 100
  s.guidance_scale = 1.0  # classifier-free guidance; 1 = the conditional model
  s.guidance_rescale = 0.0  # φ of Lin et al. 2024 §3.4: guided output's std pulled to the cond's
  # channels of the prediction that guidance mixes: 0 = all of them (the standard choice); the DiT
  # paper's released sample.py guides only the first 3 of the 4 latent channels ("for exact
  # reproducibility"), which is guided_channels=3. A learned variance is never guided.
  s.guided_channels = 0
  s.class_labels = ml_collections.config_dict.placeholder(tuple)  # None: cycle 0..num_classes-1
  s.grid_samples = 100  # images in the grids written during training

  c.eval = e = ml_collections.ConfigDict()
  e.num_timesteps = 0  # --mode=eval: 0 = the full bound over all steps, K = an unbiased
  e.batch_size = 64  # estimate from K random steps per example
  e.num_examples = 0  # 0 = the whole data.eval_split
  e.bits_per_dim = True  # the bound above; False skips it
  # bits/dim through the probability-flow ODE (likelihood_ode.py, docs/guides/likelihood.md): a
  # flow model's eval.bits_per_dim is this (it has no bound); True adds it beside a diffusion
  # model's bound. Divergence 'exact' (a jvp per dimension: small images) or Hutchinson's
  # 'rademacher'/'gaussian' with ode_probes probes per image (their spread is reported); solver
  # 'dopri5' (adaptive, ode_rtol/ode_atol) or 'rk4' (ode_steps equal steps)
  e.ode_bits_per_dim = False
  e.ode_divergence = "rademacher"
  e.ode_probes = 4
  e.ode_solver = "dopri5"
  e.ode_rtol = 1e-5
  e.ode_atol = 1e-5
  e.ode_steps = 100
  # sample quality of this many EMA samples (drawn with the sample.* settings); 0 skips it
  e.num_samples = 0
  # FID/IS/precision-recall need the FID Inception as safetensors (docs/guides/evaluation.md);
  # without it only digits (a digits classifier's Fréchet distance) and stacked_digits (modes
  # covered of 1000 and KL to uniform, by that classifier per channel) are scored
  e.inception_weights = ""
  # a guided-diffusion reference batch npz (arr_0) to compare with; '' = the training split,
  # whose statistics are cached in <workdir>/reference_stats/
  e.reference_batch = ""
  return c


def model_section(arch: str) -> ml_collections.ConfigDict:
  """`model.*`: the keys every network shares and those of `arch`'s typed config, with defaults.

  A field whose default is None becomes a placeholder of its annotated type, so that
  `--config.model.num_heads=4` parses as an int.
  """
  m = ml_collections.ConfigDict({**models.table.COMMON, "arch": arch})
  typed = models.table.architecture(arch).config
  hints = typing.get_type_hints(typed)
  for field in dataclasses.fields(typed):
    default = field.default
    if default is None:
      kind = typing.get_args(hints[field.name])[0]  # X of `X | None`
      default = ml_collections.config_dict.placeholder(kind)
    m[field.name] = default
  return m


def choices() -> dict[str, tuple]:
  """The allowed values of every key that has a fixed set, most of them read from the tables."""
  return {
    "model.arch": tuple(models.ARCHITECTURES),
    "codec.name": tuple(codecs.CODECS),
    "diffusion.schedule": tuple(schedules.SCHEDULES),
    "diffusion.prediction": (*preconditioning.STUDENT_PREDICTIONS, flow.PREDICTION),
    "diffusion.loss": tuple(objectives.OBJECTIVES),
    "diffusion.timestep_sampler": ("uniform", "loss_second_moment"),
    "flow.time_sampling": flow.TIME_SAMPLINGS,
    "flow.weighting": tuple(flow.WEIGHTINGS),
    "optim.schedule": ("constant", "cosine"),
    "train.compute_dtype": tuple(COMPUTE_DTYPES),
    "sample.sampler": tuple(samplers.SAMPLERS),
  }


def _plain(value):
  return tuple(value) if isinstance(value, list) else value


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects values no part of jaxdiff accepts, before any work starts (one ValueError)."""
  for key, allowed in choices().items():
    section, name = key.split(".")
    value = config[section][name]
    if value not in allowed:
      raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}.")
  _check_built_dataset(config)
  models.table.typed_config(config.model)  # model.arch's keys, checked by its config dataclass
  network, objective = (
    models.architecture(config.model.arch),
    objectives.OBJECTIVES[config.diffusion.loss],
  )
  if network.denoiser != objective.trains_denoiser:
    raise ValueError(
      f"diffusion.loss={config.diffusion.loss!r} cannot train model.arch={config.model.arch!r}: "
      + (
        "a denoiser needs a diffusion loss (mse, hybrid, vlb, …)."
        if network.denoiser
        else "this network has its own objective (an autoencoder: diffusion.loss='autoencoder')."
      )
    )
  if objective.check is not None:
    objective.check(config)
  if config.diffusion.prediction not in objective.predictions:
    prediction = config.diffusion.prediction
    able = [n for n, e in objectives.OBJECTIVES.items() if prediction in e.predictions]
    raise ValueError(
      f"diffusion.loss={config.diffusion.loss!r} does not train diffusion.prediction="
      f"{config.diffusion.prediction!r}; use diffusion.loss in {able} or diffusion.prediction in "
      f"{list(objective.predictions)}."
    )
  for name, entry in objectives.OBJECTIVES.items():  # another objective's own section is unread
    if entry.section is not None and entry.section is not objective.section:
      section, keys = entry.section
      for key, default in keys.items():
        if config[section][key] != default:
          raise ValueError(
            f"{section}.{key}={config[section][key]!r} is read only by diffusion.loss={name!r} "
            f"and has no effect with diffusion.loss={config.diffusion.loss!r}; leave it at "
            f"{default!r}."
          )
  if not network.denoiser:
    # a network that samples by itself runs no sampler: a sampler option would be ignored
    defaults = default_config().sample
    for key in ("sampler", *samplers.OPTIONS):
      if _plain(config.sample[key]) != _plain(defaults[key]):
        raise ValueError(
          f"sample.{key}={config.sample[key]!r} has no effect on model.arch="
          f"{config.model.arch!r}, which draws its samples without a sampler; leave sample."
          f"{key} at its default ({defaults[key]!r})."
        )
  samplers.table.check_prediction(config.sample.sampler, config.diffusion.prediction)
  samplers.table.check_options(config.sample.sampler, config.sample, config.diffusion.prediction)
  positive = (
    "data.batch_size",
    "train.num_steps",
    "train.steps_per_call",
    "train.fsdp",
    "train.log_every",
    "train.checkpoint_every",
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
  if objectives.OBJECTIVES[config.diffusion.loss].needs_learned_variance:
    if not config.model.learn_sigma:
      raise ValueError(f"diffusion.loss={config.diffusion.loss!r} needs model.learn_sigma=True.")
  if config.diffusion.rescale_zero_terminal_snr and config.diffusion.prediction == "epsilon":
    raise ValueError(
      "diffusion.rescale_zero_terminal_snr=True makes ᾱ_T = 0, where an ε-prediction model "
      "cannot be sampled; set diffusion.prediction=v (as Lin et al. do) or x0."
    )
  if config.sample.guidance_scale != 1.0 and not config.model.class_conditional:
    # generate.py guides only a model that takes labels: anything else would ignore the scale
    scale = config.sample.guidance_scale
    raise ValueError(
      f"sample.guidance_scale={scale} needs a class-conditional model "
      "(model.class_conditional=True); set sample.guidance_scale=1.0 for an unconditional one."
      if network.denoiser
      else f"sample.guidance_scale={scale} has no effect on model.arch={config.model.arch!r}, "
      "which samples without a sampler or labels; set sample.guidance_scale=1.0."
    )
  if not 0.0 <= config.sample.guidance_rescale <= 1.0:
    raise ValueError(
      f"sample.guidance_rescale must lie in [0, 1], got {config.sample.guidance_rescale}."
    )
  if config.sample.guided_channels < 0:
    raise ValueError(
      f"sample.guided_channels must be ≥ 0 (0 = all), got {config.sample.guided_channels}."
    )
  if config.diffusion.loss_history_size < 1:
    raise ValueError(
      f"diffusion.loss_history_size must be at least 1, got {config.diffusion.loss_history_size}."
    )
  probability_flow.check(config)
  if config.eval.ode_bits_per_dim and objective.bound is not None:
    raise ValueError(
      f"eval.ode_bits_per_dim=True adds the ODE's bits/dim beside a diffusion model's bound, and "
      f"diffusion.loss={config.diffusion.loss!r} reports its own with eval.bits_per_dim (a flow "
      "model's is the ODE's already); set eval.ode_bits_per_dim=False."
    )


def _check_built_dataset(config: ml_collections.ConfigDict) -> None:
  """A dataset jaxdiff builds (data.BUILT_DATASETS) has a known channel count and label count:
  a config that disagrees would train on images its network was not built for, or look labels up
  past the end of its label table."""
  d = config.data
  if d.folder:  # data.name is not read; the folder's images are converted to grey or RGB
    if d.channels not in (1, 3):
      raise ValueError(
        f"data.channels={d.channels}: the images of data.folder are converted to 1 (grey) or 3 "
        "(RGB) channels; set --config.data.channels to 1 or 3."
      )
    return
  built = data.BUILT_DATASETS.get(d.name)
  if built is None:
    return
  if d.channels != built.channels:
    raise ValueError(
      f"data.name={d.name!r} has {built.channels} channels but data.channels={d.channels}; set "
      f"--config.data.channels={built.channels}."
    )
  if config.model.class_conditional and d.num_classes != built.num_classes:
    raise ValueError(
      f"data.name={d.name!r} has {built.num_classes} classes but data.num_classes={d.num_classes} "
      f"with model.class_conditional=True; set --config.data.num_classes={built.num_classes}."
    )
