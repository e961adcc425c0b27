"""`init_from`: a workdir started from a converted folder (or another run's EMA weights), then
sampled, evaluated and fine-tuned from the command line as a trained run.

The converted networks are the random-weight references the converter tests check against
diffusers and the original DiT (tests/data: unet_ddpm, diffusers_dit_tiny, dit_reference.npz's
original state dict, vae_kl), converted here as `python -m jaxdiff.convert` converts them.
"""

import json
import pathlib
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cluster import configured
from flax import nnx
from numerics import relative_error, tree_relative_error
from test_convert import DDPM_CIFAR10_CONFIG
from test_describe import run_main
from test_train import read_params

from jaxdiff import codecs, data, evaluation, guidance, samplers, schedules
from jaxdiff import run as run_lib
from jaxdiff.convert import (
  convert_diffusers_dit,
  convert_diffusers_unet,
  convert_diffusers_vae,
  dit_from_state_dict,
  dit_kwargs_from_state_dict,
  load_converted,
  matching,
  unet_kwargs_from_diffusers_config,
)
from jaxdiff.convert.converted import save_converted
from jaxdiff.generate import to_uint8
from jaxdiff.train import loop

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

# configs/stacked_digits.py (3-channel 16×16 pixels) with model.* set to the converted diffusers
# U-Net's (tests/data/unet_ddpm/config.json: DDPM's ε-network with 8 GroupNorm groups), a few
# steps of batch 8, a constant rate (2+2 steps and 4 steps share the schedule).
UNET = {
  "model.base_channels": 16,
  "model.channel_mult": (1, 2),
  "model.attention_resolutions": (8,),
  "model.patch_size": 1,
  "model.norm_groups": 8,
  "diffusion.schedule": "linear",
  "diffusion.prediction": "epsilon",
  "diffusion.min_snr_gamma": 0.0,
  "data.batch_size": 8,
  "optim.schedule": "constant",
  "optim.warmup_steps": 0,
  "train.num_steps": 4,
  "train.checkpoint_every": 2,
  "train.log_every": 2,
  "train.keep_checkpoints": 10,
  "train.num_devices": 1,
  "train.steps_per_call": 1,
  "eval.num_examples": 8,
  "eval.batch_size": 8,
  "eval.num_timesteps": 2,
  "eval.num_samples": 0,
}
# configs/imagenet256_dit.py shrunk: the original DiT's reference (hidden 32, 2 blocks, 4 heads,
# 10 classes, learned Σ) on 8×8×4 latents of the reference VAE (f = 4) of 32×32 images, sampled
# with its recipe (DDPM with learned variances, guidance 1.5 on 3 channels) in 4 steps.
DIT = {
  "model.preset": "",
  "model.hidden_size": 32,
  "model.depth": 2,
  "model.num_heads": 4,
  "data.image_size": 32,
  "data.num_classes": 10,
  "autoencoder.scale_factor": 0.13025,  # the reference VAE's own (its config.json)
  "autoencoder.downsampling_factor": 4,
  "sample.num_steps": 4,
  "sample.num_samples": 4,
  "sample.batch_size": 4,
}


def _flags(overrides: dict) -> list[str]:
  def value(v):
    return f"({','.join(map(str, v))},)" if isinstance(v, tuple) else str(v)

  return [f"--config.{k}={value(v)}" for k, v in overrides.items()]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """The reference networks as converted folders, by name."""
  root = tmp_path_factory.mktemp("converted")
  convert_diffusers_unet(DATA / "unet_ddpm", root / "unet")
  convert_diffusers_dit(DATA / "diffusers_dit_tiny", root / "diffusers_dit")
  convert_diffusers_vae(DATA / "vae_kl", root / "vae")
  # what `dit-checkpoint` writes for a .pt holding this state dict (its reading of the .pt file
  # is tested in test_convert_dit.py)
  with np.load(DATA / "dit_reference.npz") as f:
    tensors = {k.removeprefix("param/"): f[k] for k in f.files if k.startswith("param/")}
    tensors["pos_embed"] = f["pos_embed"][None]
  kwargs, dit = (
    dit_kwargs_from_state_dict(tensors, num_heads=4),
    dit_from_state_dict(tensors, num_heads=4),
  )
  save_converted(root / "dit", "dit", kwargs, dit)
  # the same DiT declared a v-prediction network (what `--prediction v` at conversion records)
  save_converted(root / "dit_v", "dit", kwargs, dit, prediction="v")
  return {name: root / name for name in ("unet", "dit", "dit_v", "diffusers_dit", "vae")}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  data.ensure_stacked_digits_prepared(str(path))
  return path


def _unet_config(data_dir, init_from, **overrides):
  wanted = {**UNET, "data.data_dir": str(data_dir), "init_from": str(init_from), **overrides}
  return configured(ROOT / "configs" / "stacked_digits.py", wanted)


def _dit_config(folders, **overrides):
  wanted = {**DIT, "autoencoder.path": str(folders["vae"]), "init_from": str(folders["dit"])}
  return configured(ROOT / "configs" / "imagenet256_dit.py", {**wanted, **overrides})


def _flat(tree) -> dict:
  """{'conv_in/bias': array, …} of a parameter tree, as an nnx.State or as read from a checkpoint."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    flat["/".join(n for n in names if n != "value")] = np.asarray(leaf)
  return flat


def _assert_equal(a, b):
  a, b = _flat(a), _flat(b)
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_cli_samples_equal_the_python_path(folders, tmp_path):
  workdir = tmp_path / "dit"
  overrides = {**DIT, "autoencoder.path": folders["vae"], "init_from": folders["dit"]}
  result = run_main(
    tmp_path,
    f"--config={ROOT / 'configs' / 'imagenet256_dit.py'}",
    f"--workdir={workdir}",
    "--mode=sample",
    *_flags(overrides),
  )
  assert result.returncode == 0, result.stderr
  assert "checkpoint 0 saved" in result.stdout
  (npz,) = workdir.glob("samples/step0_*/samples_4x32x32x3.npz")
  with np.load(npz) as f:
    cli_images, cli_labels = f["arr_0"], f["arr_1"]

  # The Python path: the converted folders, the sampler and guidance as functions, the keys of
  # ARCHITECTURE.md (fold_in(seed, checkpoint step), then the batch's index, split for x_T and the
  # sampler), labels 0..K−1 cycled, and the VAE's decode of latents / scale.
  dit, vae = load_converted(folders["dit"]), load_converted(folders["vae"])
  labels = jnp.arange(4) % 10
  network = lambda x, t, y: dit(x, t, y)
  model_fn = guidance.classifier_free(
    network, labels, guidance_scale=1.5, null_label=10, num_guided_channels=3
  )
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), 0)
  noise_key, sampler_key = jax.random.split(key)
  x_T = jax.random.normal(noise_key, (4, 8, 8, 4))
  schedule = schedules.respace(schedules.make("linear", 1000), "4")
  latents = samplers.ddpm(
    model_fn, schedule, x_T, key=sampler_key, variance="learned_range", clip_denoised=False
  )
  images = to_uint8(jnp.clip(vae.decode(latents / 0.13025), -1.0, 1.0))
  np.testing.assert_array_equal(cli_labels, np.arange(4))
  # The CLI runs the same float32 computation in one jitted program over 8 devices: only the
  # summation order may differ (~1e-6 relative before rounding), which can move a pixel at a
  # rounding boundary by one level of 255 (measured: no pixel moves). The wrong labels (+1) give a
  # relative error of 0.21, another key 0.65.
  assert relative_error(cli_images.astype(np.float32), images.astype(np.float32)) <= 1e-3


@pytest.fixture(scope="module")
def straight(folders, data_dir, tmp_path_factory):
  """A 4-step fine-tune of the converted U-Net without a stop (in process)."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  loop.train(_unet_config(data_dir, folders["unet"]), workdir)
  return workdir


def test_finetune_from_the_command_line_resumes_exactly(
  folders, data_dir, straight, tmp_path, capsys
):
  workdir = tmp_path / "run"
  overrides = {**UNET, "init_from": folders["unet"], "data.data_dir": data_dir}
  stopped = run_main(
    tmp_path,
    f"--config={ROOT / 'configs' / 'stacked_digits.py'}",
    f"--workdir={workdir}",
    "--mode=train",
    *_flags({**overrides, "train.num_steps": 2}),
  )
  assert stopped.returncode == 0, stopped.stderr
  converted = nnx.state(load_converted(folders["unet"]), nnx.Param)
  # checkpoint 0 holds the converted weights as params and EMA, bit for bit, and a fresh optimizer
  start = read_params(workdir, 0)
  _assert_equal(start["params"], converted)
  _assert_equal(start["ema_params"], converted)
  assert int(start["step"]) == 0 and not any(np.any(x) for x in _flat(start["opt_state"]).values())
  moved = tree_relative_error(read_params(workdir, 2)["params"], start["params"])
  assert moved > 0  # trained from them

  # Resumed to step 4 (init_from is not read again: the checkpoint wins): the straight run's state.
  loop.train(_unet_config(data_dir, folders["unet"]), workdir)
  assert "init_from is not read" in capsys.readouterr().out
  resumed, reference = read_params(workdir, 4), read_params(straight, 4)
  assert int(resumed["step"]) == 4
  _assert_equal(resumed, reference)


def test_a_workdir_starts_from_another_runs_ema_and_evaluates(data_dir, straight, tmp_path):
  workdir = tmp_path / "from_run"
  config = _unet_config(data_dir, straight)
  result = evaluation.evaluate(config, workdir)  # --mode=eval on a workdir it initialises
  assert result["step"] == 0 and np.isfinite(result["eval_bpd"])
  theirs, ours = read_params(straight, 4), read_params(workdir, 0)
  _assert_equal(ours["params"], theirs["ema_params"])
  _assert_equal(ours["ema_params"], theirs["ema_params"])
  # another network than the run's is refused, before anything is written
  with pytest.raises(run_lib.RunError, match=r"has model.base_channels=16 and this config 32"):
    run_lib.setup(_unet_config(data_dir, straight, **{"model.base_channels": 32}), tmp_path / "x")
  assert not (tmp_path / "x").exists()


# (config, folder, overrides, the sentence's words)
MISMATCHES = [
  ("dit", "unet", {}, "is a 'unet' and this config builds model.arch='dit'"),
  ("unet", "unet", {"data.image_size": 32}, "takes 16×16 inputs and this run's diffusion space"),
  ("unet", "unet", {"model.norm_groups": 32}, "has norm_groups=8 and this config has model."),
  ("unet", "unet", {"model.learn_sigma": True}, "has no learned variances"),
  ("dit", "dit", {"data.image_size": 64}, "takes 8×8 inputs and this run's diffusion space is 16"),
  ("dit", "dit", {"model.class_conditional": False, "sample.guidance_scale": 1.0}, "is condition"),
  ("dit", "dit", {"model.hidden_size": 64, "model.num_heads": 4}, "has hidden_size=32"),
  ("dit", "diffusers_dit", {"model.num_heads": 2}, "set --config.model.timestep_freq_shift=1.0"),
  ("unet", "unet", {"data.name": "digits", "data.channels": 1}, "takes 3-channel inputs"),
  ("dit", "dit_v", {}, "predicts 'v' and this config has diffusion.prediction='epsilon'"),
]


@pytest.mark.parametrize("kind, folder, overrides, words", MISMATCHES)
def test_another_network_is_refused_in_one_sentence(
  folders, tmp_path, kind, folder, overrides, words
):
  if kind == "unet":  # no data is read before the check
    config = _unet_config(tmp_path / "tfds", folders[folder], **overrides)
  else:
    config = _dit_config(folders, **{"init_from": str(folders[folder]), **overrides})
  workdir = tmp_path / "run"
  with pytest.raises((ValueError, run_lib.RunError)) as raised:
    run_lib.setup(config, workdir)
  message = str(raised.value)
  assert words in message and "\n" not in message, message
  assert not workdir.exists()  # nothing written


def test_weights_of_other_shapes_than_the_folder_says_are_refused(folders, tmp_path):
  folder = tmp_path / "edited"
  shutil.copytree(folders["unet"], folder)
  kwargs = json.loads((folder / "network_config.json").read_text())
  (folder / "network_config.json").write_text(json.dumps({**kwargs, "base_channels": 32}))
  config = _unet_config(tmp_path / "tfds", folder, **{"model.base_channels": 32})
  with pytest.raises(ValueError, match=r"has parameter conv_in.bias of shape \(16,\) and this"):
    run_lib.setup(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_cli_refusal_is_one_line_and_writes_nothing(folders, tmp_path):
  workdir = tmp_path / "run"
  overrides = {**DIT, "autoencoder.path": folders["vae"], "init_from": folders["unet"]}
  result = run_main(
    tmp_path,
    f"--config={ROOT / 'configs' / 'imagenet256_dit.py'}",
    f"--workdir={workdir}",
    "--mode=sample",
    *_flags(overrides),
  )
  assert result.returncode == 1
  assert result.stderr.startswith("error: the network in init_from=")
  assert result.stderr.count("\n") == 1, result.stderr
  assert not workdir.exists()


# network_config.json as the converters write it for two published checkpoints, checked from the
# config file alone (no weights) against the shipped configs: DiT-XL-2-256x256.pt (`dit-checkpoint`
# reads the sizes from its shapes: test_convert_dit.test_preset_sizes_are_read_from_the_shapes;
# 1000 classes, learned Σ) with the SD VAE's latent shape, and google/ddpm-cifar10-32 (diffusers'
# UNet2DModel config; its attention heads of 8 channels are the one setting to give)
DIT_XL2_256 = {
  "in_channels": 4, "image_size": 32, "patch_size": 2, "hidden_size": 1152, "depth": 28,
  "num_heads": 16, "mlp_ratio": 4.0, "num_classes": 1000, "learn_sigma": True,
}  # fmt: skip
PUBLISHED = [
  ("imagenet256_dit.py", "dit", DIT_XL2_256, {}, {"model.learn_sigma": False}, "outputs learned"),
  (
    "cifar10.py",
    "unet",
    unet_kwargs_from_diffusers_config(DDPM_CIFAR10_CONFIG),
    {"model.head_channels": 8},
    {},
    "has head_channels=8 and this config has model.head_channels=None; set --config.model.head",
  ),
]


@pytest.mark.parametrize("config_file, arch, kwargs, overrides, wrong, words", PUBLISHED)
def test_published_folders_fit_the_shipped_configs(
  tmp_path, config_file, arch, kwargs, overrides, wrong, words
):
  (tmp_path / "network_config.json").write_text(json.dumps({"arch": arch, **kwargs}))

  def check(settings):
    config = configured(ROOT / "configs" / config_file, {"init_from": str(tmp_path), **settings})
    matching.check_converted(tmp_path, config, run_lib.network_spec(config, codecs.shape(config)))

  check(overrides)
  with pytest.raises(ValueError, match=re.escape(words)):
    check(wrong)


if __name__ == "__main__":
  sys.exit(pytest.main([__file__]))
