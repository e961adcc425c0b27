"""What training, sampling and evaluation share: the workdir and its config check, the mesh, the
codec, the network and its state, the objective, the checkpoints and the dataset.

`train/` builds on this module; sampling and evaluation use it without importing the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from jaxdiff import codecs, data, metrics, models, objectives, parallel, schedules, storage
from jaxdiff import state as state_lib
from jaxdiff.checkpoint import Checkpointer, abstract, finished_steps, read_latest
from jaxdiff.codecs import cache as latent_cache
from jaxdiff.config import default_config, validate
from jaxdiff.convert import matching
from jaxdiff.convert.converted import CONFIG_FILE, LEGACY_CONFIG_FILE


class RunError(RuntimeError):
  """A run that cannot go on; the message says why and what to do."""


@dataclasses.dataclass
class Components:
  """Everything built from a config alone: the process, the codec, the network and its fresh
  state, the objective and the optimizer."""

  config: ml_collections.ConfigDict
  schedule: schedules.Schedule
  codec: codecs.Codec
  spec: models.NetworkSpec
  objective: objectives.Objective
  tx: object
  model_def: state_lib.ModelDef
  state: state_lib.TrainState

  def step_kwargs(self) -> dict:
    """The keyword arguments of train.step.train_step / make_train_fn."""
    return dict(
      model_def=self.model_def,
      objective=self.objective,
      codec=self.codec,
      tx=self.tx,
      config=self.config,
    )


@dataclasses.dataclass
class Run(Components):
  """A run's workdir with everything built from its config, before any checkpoint is restored."""

  workdir: epath.Path
  mesh: jax.sharding.Mesh
  checkpointer: Checkpointer


# Sections that fix what a checkpoint means; changing them under an existing workdir is an error.
_FIXED = ("model", "diffusion", "codec", "data.image_size", "data.channels", "data.num_classes")
# Keys of those sections that change how the network computes, not what its parameters mean: a run
# trained with remat (to fit a device) may be sampled without it, a teacher distilled with it.
_HOW_IT_COMPUTES = ("model.remat", "model.attention")


def _fixed(key: str, sections) -> bool:
  if key in _HOW_IT_COMPUTES:
    return False
  return any(key == f or key.startswith(f + ".") for f in sections)


def _flatten(value, prefix=""):
  if isinstance(value, dict):
    return {k: v for key, sub in value.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
  return {prefix[:-1]: json.loads(json.dumps(value))}  # tuples and lists compare alike


def _check_workdir_config(workdir: epath.Path, config: ml_collections.ConfigDict):
  """Refuses settings that change what the workdir's checkpoints mean.

  An option newer than the saved config.json is accepted at its default value, so workdirs made
  by an older jaxdiff stay usable.
  """
  path = workdir / "config.json"
  if not path.exists():
    return  # a new run: config.json is written once the run is built (nothing before an error)
  saved = _flatten(json.loads(path.read_text()))
  new = _flatten(config.to_dict())
  default = _flatten(default_config(arch=config.model.arch).to_dict())
  for key, value in new.items():
    if not _fixed(key, _FIXED):
      continue
    if value != saved.get(key, default.get(key)):
      raise RunError(
        f"{key} differs from the run already in {workdir} ({path}); use a new "
        "--workdir or the same settings."
      )


def enable_compilation_cache(config: ml_collections.ConfigDict) -> None:
  """Turns on JAX's persistent compilation cache unless the environment already chose a folder."""
  if config.compilation_cache_dir and not jax.config.jax_compilation_cache_dir:
    jax.config.update(
      "jax_compilation_cache_dir", str(pathlib.Path(config.compilation_cache_dir).expanduser())
    )
    # Initialization compiles many small programs; caching them all is what makes restarts fast.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def network_spec(config: ml_collections.ConfigDict, codec: codecs.Codec) -> models.NetworkSpec:
  """The diffusion space the network models: the data after the codec, and its conditioning."""
  d, m = config.data, config.model
  size, channels = codec.latent_shape(d.image_size, d.channels)
  return models.NetworkSpec(
    in_channels=channels,
    image_size=size,
    num_classes=d.num_classes if m.class_conditional else None,
    learn_sigma=m.learn_sigma,
    dtype=state_lib.COMPUTE_DTYPES[config.train.compute_dtype],
  )


def build(config: ml_collections.ConfigDict, *, teacher=None, initial=None) -> Components:
  """The components of a run with this config, its state fresh from the config's seed.

  An objective that distils (`ObjectiveEntry.needs_teacher`) starts from `teacher`, the parameters
  `read_teacher` returns; without them its state has the right shapes only, to restore into.
  `initial`, the parameters `read_init_from` returns, replaces the random ones (EMA, the
  objective's extra sets and the fresh optimizer state start from them).
  """
  schedule = schedules.make(
    config.diffusion.schedule,
    config.diffusion.num_timesteps,
    rescale_zero_terminal_snr=config.diffusion.rescale_zero_terminal_snr,
  )
  codec = codecs.build(config)
  if codec.calibrate is not None:  # e.g. a latent scale measured on the training images
    codec = codec.calibrate(_calibration_images(config))
  spec = network_spec(config, codec)
  lpips = None
  if objectives.uses_lpips(config):
    if not codec.pixel_space:
      raise RunError(
        "LPIPS compares images and this run's network works on latents: use another distance "
        "(consistency.distance='pseudo_huber', iCT's replacement for LPIPS)."
      )
    lpips = _read_lpips(config)
  objective = objectives.build(config, schedule, teacher=teacher, lpips=lpips)
  tx = state_lib.make_optimizer(config, objective.update_scales)
  init_params = objective.init_params
  if initial is not None:  # read_init_from refused an objective with init_params of its own
    init_params = lambda params: jax.tree.map(
      lambda p, value: value.astype(p.dtype), params, initial
    )
  model_def, state = state_lib.create(
    config, tx, spec, init_extra=objective.init_extra, init_params=init_params
  )
  return Components(config, schedule, codec, spec, objective, tx, model_def, state)


def _read_lpips(config: ml_collections.ConfigDict):
  """The LPIPS network of `lpips.path`, which the objective asked for; RunError without one."""
  if not config.lpips.path:
    raise RunError(
      "this objective uses LPIPS, whose weights jaxdiff does not bundle: convert them with "
      "`python -m jaxdiff.convert lpips VGG16.pth LINEAR.pth DST.safetensors` and pass "
      "--config.lpips.path=DST.safetensors."
    )
  return metrics.load_lpips(config.lpips.path)  # a local file (~ expanded) or a bucket URL


def _calibration_images(config: ml_collections.ConfigDict, count: int = 512) -> np.ndarray:
  """The first `count` training images in file order (no shuffle, no flip): deterministic, so a
  rebuilt run, and every process of one, measures the same."""
  dataset = make_dataset(
    config, config.data.split, shuffle=False, num_epochs=1, batch_size=count,
    drop_remainder=False, random_flip=False,
    shard_options=data.grain_shard(0, 1),  # the same images on every process
  )  # fmt: skip
  return next(iter(dataset))["image"]


def _check_codec(workdir: epath.Path, codec: codecs.Codec) -> None:
  """Stores what the run's latents depend on (workdir/codec.json) or refuses a codec that changed:
  another autoencoder at the same path, or another latent scale, would silently corrupt a run."""
  if not codec.info:
    return
  path = workdir / "codec.json"
  if not path.exists():
    if jax.process_index() == 0:
      path.write_text(json.dumps(codec.info, indent=2))
    return
  saved = json.loads(path.read_text())
  for key, value in codec.info.items():
    if key != "autoencoder" and saved.get(key) != value:
      raise RunError(
        f"the codec's {key} is {value!r} but the run in {workdir} was made with "
        f"{saved.get(key)!r} ({path}): use the autoencoder the run started with, or a new --workdir."
      )


# What a teacher shares with its student: the network (whose weights the student starts from), the
# data and latent space, and the discrete diffusion through which the student's f reads its network.
_TEACHER_FIXED = (
  "model.arch",
  "model",
  "codec",
  "autoencoder",
  "data.image_size",
  "data.channels",
  "data.num_classes",
  "diffusion.schedule",
  "diffusion.num_timesteps",
  "diffusion.rescale_zero_terminal_snr",
  "diffusion.prediction",
)


def saved_config(workdir) -> ml_collections.ConfigDict:
  """A workdir's config.json as a config; options newer than the file keep their defaults."""
  saved = json.loads((storage.path(workdir) / "config.json").read_text())
  config = default_config(arch=saved.get("model", {}).get("arch", "unet"))

  def update(node, values):
    for key, value in values.items():
      if key not in node:
        continue  # an option this jaxdiff no longer has
      if isinstance(value, dict):
        update(node[key], value)
      else:
        node[key] = tuple(value) if isinstance(value, list) else value

  update(config, saved)
  return config


def read_teacher(config: ml_collections.ConfigDict):
  """The EMA parameters of the newest checkpoint in `teacher.workdir`, a run with this run's
  network, data shape and diffusion (`_TEACHER_FIXED`); RunError in one sentence otherwise."""
  if not config.teacher.workdir:
    raise RunError(
      f"diffusion.loss={config.diffusion.loss!r} distils a teacher: set "
      "--config.teacher.workdir to the workdir of a trained jaxdiff run."
    )
  workdir = storage.path(config.teacher.workdir, what="teacher.workdir")
  path = workdir / "config.json"
  if not path.is_file():
    raise RunError(
      f"teacher.workdir={workdir} holds no jaxdiff run (no config.json); train the teacher "
      "there first or correct --config.teacher.workdir."
    )
  teacher_config = saved_config(workdir)
  theirs, ours = _flatten(teacher_config.to_dict()), _flatten(config.to_dict())
  for fixed in _TEACHER_FIXED:
    for key in sorted(k for k in ours if _fixed(k, (fixed,))):
      if theirs.get(key) != ours[key]:
        raise RunError(
          f"the teacher in {workdir} has {key}={theirs.get(key)!r} but this run has "
          f"{ours[key]!r}; distil with the teacher's settings or name another teacher.workdir."
        )
  abstract_params = abstract(build(teacher_config).state.ema_params)
  try:
    read = read_latest(workdir / "checkpoints", {"ema_params": abstract_params})
  except Exception as e:  # whatever the reason, the teacher cannot be used
    raise RunError(
      f"the teacher's newest checkpoint in {workdir / 'checkpoints'} cannot be read "
      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check the teacher run."
    ) from e
  if read is None:
    raise RunError(
      f"the teacher in {workdir} has no checkpoint yet; train it first (--mode=train "
      f"--workdir={workdir})."
    )
  return read[1]["ema_params"]


# What a workdir named by init_from shares with the run it starts: the network (but for the keys
# that do not change what its parameters mean), the diffusion space and what the network predicts.
_INIT_FIXED = ("model", "codec.name", "data.image_size", "data.channels", "diffusion.prediction")
_INIT_FREE = tuple(f"model.{k}" for k in ("class_dropout", *matching.NOT_THE_NETWORK))


def read_init_from(config: ml_collections.ConfigDict):
  """The parameters `init_from` names, checked against this run's network (one sentence naming
  the first difference otherwise): a converted folder's (`python -m jaxdiff.convert`), or the
  newest EMA parameters of a jaxdiff workdir with this network, diffusion space and prediction."""
  source = storage.path(config.init_from, what="init_from")
  objective = objectives.OBJECTIVES[config.diffusion.loss]
  if objective.needs_teacher:
    raise RunError(
      f"diffusion.loss={config.diffusion.loss!r} starts its student from the teacher "
      "(teacher.workdir); leave init_from empty, or give it to the teacher's run."
    )
  spec = network_spec(config, codecs.shape(config))  # the codec's config file, no weights
  if (source / CONFIG_FILE).is_file() or (source / LEGACY_CONFIG_FILE).is_file():
    matching.check_converted(config.init_from, config, spec)
    like = nnx.state(models.abstract(config.model, spec), nnx.Param)
    return matching.read_converted(config.init_from, like)
  if not (source / "config.json").is_file():
    raise RunError(
      f"init_from={config.init_from} is neither a converted folder ({CONFIG_FILE}, written by "
      "python -m jaxdiff.convert) nor a jaxdiff workdir (config.json + checkpoints/)."
    )
  theirs, ours = _flatten(saved_config(source).to_dict()), _flatten(config.to_dict())
  keys = [k for k in ours if _fixed(k, _INIT_FIXED) and k not in _INIT_FREE]
  if config.model.class_conditional:
    keys.append("data.num_classes")
  for key in sorted(keys):
    if theirs.get(key) != ours[key]:
      raise RunError(
        f"the run in init_from={config.init_from} has {key}={theirs.get(key)!r} and this config "
        f"{ours[key]!r}; start from a run of this network or use its settings."
      )
  abstract_params = nnx.state(models.abstract(config.model, spec), nnx.Param)
  read = read_latest(source / "checkpoints", {"ema_params": abstract_params})
  if read is None:
    raise RunError(
      f"the run in init_from={config.init_from} has no checkpoint yet; train it first or name "
      "another."
    )
  return read[1]["ema_params"]


def _has_checkpoints(workdir: epath.Path) -> bool:
  # finished ones only: in a bucket a step folder exists while it is being written
  return bool(finished_steps(workdir / "checkpoints"))


def setup(config: ml_collections.ConfigDict, workdir, *, prepare_data: bool = True) -> Run:
  """Validates the config, checks it against the workdir's, and builds the run on its mesh.

  `data.folder` is checked and prepared here, before the workdir is made, unless
  `prepare_data=False` (sampling, which reads no images).

  A distillation's teacher is read (and checked) only when the workdir has no checkpoint yet: a
  resumed run, or sampling, restores the teacher's copy in the checkpoint instead.
  """
  validate(config)
  enable_compilation_cache(config)
  workdir = storage.path(workdir, what="--workdir")
  for what, value in (
    ("data.data_dir", config.data.data_dir),
    ("autoencoder.cache", config.autoencoder.cache),
  ):
    if value:
      storage.path(value, what=what)  # a URL nobody serves: one sentence before anything is made
  teacher = initial = None
  if objectives.OBJECTIVES[config.diffusion.loss].needs_teacher and not _has_checkpoints(workdir):
    teacher = read_teacher(config)
  _check_workdir_config(workdir, config)
  if config.data.folder and prepare_data:
    prepare_folder(config)  # a bad folder ends here, before the workdir is made
  if config.init_from and not _has_checkpoints(workdir):
    initial = read_init_from(config)
  elif config.init_from and jax.process_index() == 0:
    print(f"init_from is not read: {workdir} has checkpoints already, and the newest is resumed")
  mesh = parallel.make_mesh(config.train.num_devices, fsdp=config.train.fsdp)
  parts = build(config, teacher=teacher, initial=initial)
  workdir.mkdir(parents=True, exist_ok=True)
  if not (workdir / "config.json").exists():
    (workdir / "config.json").write_text(config.to_json(indent=2))
  _check_codec(workdir, parts.codec)
  state = parallel.put(parts.state, parallel.state_shardings(mesh, parts.state))
  # Frozen parameters replicated over the mesh: a program over every process's devices cannot
  # read arrays that live on one device of each process.
  rep = parallel.replicated(mesh)
  codec = dataclasses.replace(parts.codec, params=parallel.put(parts.codec.params, rep))
  frozen = parallel.put(parts.objective.frozen_params, rep)
  objective = dataclasses.replace(parts.objective, frozen_params=frozen)
  checkpointer = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
  if initial is not None:  # checkpoint 0: from here on the workdir is a run like any other
    checkpointer.save(0, state, force=True)
    checkpointer.wait()
    if jax.process_index() == 0:
      print(f"initialised {workdir} from init_from={config.init_from}: checkpoint 0 saved")
  fields = {f.name: getattr(parts, f.name) for f in dataclasses.fields(Components)}
  placed = {"state": state, "codec": codec, "objective": objective}
  return Run(**{**fields, **placed}, workdir=workdir, mesh=mesh, checkpointer=checkpointer)


def restore_for_inference(run: Run):
  """(step, state) of the newest checkpoint, for sampling and evaluation (no data iterator)."""
  restored = run.checkpointer.restore_latest(abstract(run.state), with_data=False)
  if restored is None:
    raise RunError(
      f"no checkpoint in {run.checkpointer.directory}; train first with "
      "--mode=train and the same --workdir."
    )
  step, state, _ = restored
  return step, state


def prepare_folder(config: ml_collections.ConfigDict) -> data.Prepared:
  """`data.folder`'s prepared copy in `data.data_dir` (data/folder.py), built when missing or
  when the folder changed; checked once per process."""
  d = config.data
  return data.prepare_folder(
    d.folder, d.data_dir, image_size=d.image_size, channels=d.channels,
    num_classes=d.num_classes, class_conditional=config.model.class_conditional,
  )  # fmt: skip


def make_dataset(
  config: ml_collections.ConfigDict,
  split: str,
  *,
  shuffle=True,
  num_epochs=None,
  batch_size=None,
  drop_remainder=True,
  random_flip=None,
  shard_options=None,
):
  """The config's dataset; training's batch size and flips unless given."""
  d = config.data
  if d.folder:
    prepared = prepare_folder(config)
    data.require_split(prepared, d.folder, split)
    name, data_dir = prepared.name, prepared.data_dir
  else:
    data.prepare_if_built(d.name, d.data_dir)  # jaxdiff's own datasets: built on first use
    name, data_dir = d.name, d.data_dir
  return data.make_dataset(
    name=name,
    split=split,
    batch_size=batch_size or d.batch_size,
    drop_remainder=drop_remainder,
    data_dir=data_dir,
    image_size=d.image_size,
    random_flip=d.random_flip if random_flip is None else random_flip,
    seed=config.seed,
    shuffle=shuffle,
    num_epochs=num_epochs,
    num_workers=d.num_workers,
    label_key="label" if d.num_classes else None,
    shard_options=shard_options,
  )


def training_dataset(run: Components):
  """The batches training steps read: images, or with `autoencoder.cache` the cached posterior
  moments of the codec's encoder (encoded into the cache folder first if it has none)."""
  config, d = run.config, run.config.data
  if not config.autoencoder.cache:
    return make_dataset(config, d.split)
  batch_size = min(d.batch_size, 256)

  def images(shard, shards):  # every image once, in file order
    return make_dataset(
      config, d.split, shuffle=False, num_epochs=1, batch_size=batch_size * shards,
      drop_remainder=False,
      random_flip=False,
      shard_options=data.grain_shard(shard, shards),
    )  # fmt: skip

  key = {
    "dataset": f"folder:{prepare_folder(config).fingerprint}" if d.folder else d.name,
    "split": d.split,
    "image_size": d.image_size,
    "channels": d.channels,
    "labels": bool(d.num_classes),
  }
  paths, manifest = latent_cache.prepare(
    config.autoencoder.cache, run.codec, data=key, flips=d.random_flip, images=images,
    batch_size=batch_size,
  )  # fmt: skip
  return data.make_latent_dataset(
    paths,
    shape=tuple(manifest["shape"]),
    labels=manifest["labels"],
    batch_size=d.batch_size,
    random_flip=d.random_flip,
    seed=config.seed,
  )
