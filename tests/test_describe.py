"""`--mode=describe` and `jaxdiff.models.cost`: parameter counts and forward Gflops from shapes
alone, against the DiT paper's figures, the original code's counts and the DDPM CIFAR-10 U-Net's;
and `model.preset`, the paper's twelve DiT configurations by name."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
from conftest import environment_of_one_device
from flax import nnx

from jaxdiff import config as config_lib
from jaxdiff.describe import describe, summary
from jaxdiff.models import table
from jaxdiff.models.cost import network_cost
from jaxdiff.models.dit import PRESET_NAMES, DiTConfig

REPO = pathlib.Path(__file__).resolve().parent.parent

# sum(p.numel() for p in model.parameters()) of facebookresearch/DiT models.py (commit ed81ce2)
# for DiT_models[name](input_size=32, num_classes=1000): learn_sigma, 1001 label rows, and the
# fixed pos_embed (grid² × hidden) that jaxdiff recomputes instead. torch 2.13, timm 1.0.31.
ORIGINAL_COUNTS = {
  "DiT-S/8": 33_148_160,
  "DiT-S/4": 32_945_024,
  "DiT-S/2": 32_963_360,
  "DiT-B/8": 130_881_536,
  "DiT-B/4": 130_475_648,
  "DiT-B/2": 130_512_416,
  "DiT-L/8": 458_594_816,
  "DiT-L/4": 458_053_760,
  "DiT-L/2": 458_102_816,
  "DiT-XL/8": 675_683_072,
  "DiT-XL/4": 675_074_432,
  "DiT-XL/2": 675_129_632,
}
# Gflops of Table 4 of Peebles & Xie 2023 (arXiv:2212.09748v2), 256×256 images = 32×32×4 latents
# (not re-read from the paper in the session that wrote this: see benchmarks/RESULTS.md).
PAPER_GFLOPS = {
  "DiT-S/8": 0.36,
  "DiT-S/4": 1.41,
  "DiT-S/2": 6.06,
  "DiT-B/8": 1.42,
  "DiT-B/4": 5.56,
  "DiT-B/2": 23.01,
  "DiT-L/8": 5.01,
  "DiT-L/4": 19.70,
  "DiT-L/2": 80.71,
  "DiT-XL/8": 7.39,
  "DiT-XL/4": 29.05,
  "DiT-XL/2": 118.64,
}
IMAGENET_256_LATENTS = table.NetworkSpec(
  in_channels=4, image_size=32, num_classes=1000, learn_sigma=True
)


def _dit_section(name):
  c = config_lib.default_config(arch="dit")
  c.model.preset = name
  return c.model


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_dit_presets_count_and_gflops_as_the_paper(name):
  cost = network_cost(_dit_section(name), IMAGENET_256_LATENTS)
  assert cost.parameters == ORIGINAL_COUNTS[name]
  assert cost.fixed_parameters == (32 // int(name[-1])) ** 2 * DiTConfig(preset=name).hidden_size
  assert cost.gflops == pytest.approx(PAPER_GFLOPS[name], rel=0.02)


def _load_config(path, *args):
  return config_lib.load_file(path, *args)


def test_cifar10_unet_is_the_ddpm_one(tmp_path):
  config = _load_config(REPO / "configs" / "cifar10.py")
  config.data.data_dir = str(tmp_path / "data")
  info = describe(config)
  assert info["parameters"] == info["trainable_parameters"] == 35_746_307  # Ho et al.'s 35.7M
  assert info["diffusion_shape"] == [32, 32, 3]
  assert not (tmp_path / "data").exists()  # describing reads no data


def test_preset_sets_the_four_sizes_and_refuses_conflicts():
  assert DiTConfig(preset="DiT-B/4") == DiTConfig(
    preset="DiT-B/4", hidden_size=768, depth=12, num_heads=12, patch_size=4
  )
  with pytest.raises(
    ValueError, match=r"sets model\.depth=28, but the config gives model\.depth=4"
  ):
    DiTConfig(preset="DiT-XL/2", depth=4)
  with pytest.raises(ValueError, match=r"must be one of \['DiT-S/8'.*'DiT-XL/2'\], got 'XL/2'"):
    DiTConfig(preset="XL/2")


def _describe_cli(tmp_path, *args):
  return run_main(tmp_path, "--mode=describe", *args)


def run_main(tmp_path, *args):
  """`python -m jaxdiff.main ARGS` in `tmp_path`, its data dir there too; the finished process."""
  command = [sys.executable, "-m", "jaxdiff.main", *args]
  command.append(f"--config.data.data_dir={tmp_path / 'data'}")
  return subprocess.run(
    command,
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ),
    check=False,
  )


def test_cli_describes_digits_without_data_or_workdir(tmp_path):
  result = _describe_cli(tmp_path, f"--config={REPO / 'configs' / 'digits.py'}")
  assert result.returncode == 0, result.stderr
  *summary, last = result.stdout.strip().splitlines()
  info = json.loads(last)
  assert info["arch"] == "unet" and info["diffusion_shape"] == [16, 16, 1]
  # the count of the network built with real weights, not from shapes
  config = _load_config(REPO / "configs" / "digits.py")
  spec = table.NetworkSpec(in_channels=1, image_size=16, num_classes=10)
  built = table.build(config.model, spec, nnx.Rngs(0))
  count = table.parameter_count(nnx.state(built, nnx.Param))
  assert info["parameters"] == info["trainable_parameters"] == count
  assert 0 < info["gflops"] < 0.1
  assert any(f"{count:,}" in line for line in summary)
  assert list(tmp_path.iterdir()) == []  # no data dir, no workdir


def test_cli_describes_dit_xl2_from_an_override(tmp_path):
  config = tmp_path / "dit.py"
  config.write_text(
    textwrap.dedent(
      """
      from jaxdiff.config import default_config

      def get_config():
        c = default_config(arch="dit")
        c.data.name = "imagenet2012"  # DiT-XL/2's 32×32×4 space, described as if it were data
        c.data.image_size, c.data.channels, c.data.num_classes = 32, 4, 1000
        c.model.class_conditional = c.model.learn_sigma = True
        return c
      """
    )
  )
  result = _describe_cli(tmp_path, f"--config={config}", "--config.model.preset=DiT-XL/2")
  assert result.returncode == 0, result.stderr
  info = json.loads(result.stdout.strip().splitlines()[-1])
  assert info["parameters"] == 675_129_632  # the paper's "675M"
  assert info["trainable_parameters"] == 674_834_720
  assert info["model"]["hidden_size"] == 1152 and info["model"]["depth"] == 28
  assert info["gflops"] == pytest.approx(118.64, rel=0.02)

  result = _describe_cli(
    tmp_path, f"--config={config}", "--config.model.preset=DiT-XL/2", "--config.model.depth=4"
  )
  assert result.returncode == 1 and result.stderr.startswith("error: model.preset='DiT-XL/2'")
  assert result.stderr.count("\n") == 1, result.stderr


def test_gflops_where_the_backend_cannot_analyse_an_uncompiled_program(monkeypatch):
  # CUDA's PJRT plugin answers Lowered.cost_analysis() with None (seen on an H200, jax 0.11.2):
  # the compiled program is counted instead, still the paper's figure.
  import jax

  monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", lambda self: None)
  cost = network_cost(_dit_section("DiT-S/2"), IMAGENET_256_LATENTS)
  assert cost.gflops == pytest.approx(PAPER_GFLOPS["DiT-S/2"], rel=0.02)


def test_accelerator_benchmark_runs_end_to_end():
  # benchmarks/accelerator.py on its small model: the JSON line a GPU/TPU run would print, on
  # one CPU device as a user's machine has (without the eight fake devices of conftest.py)
  env = environment_of_one_device()
  result = subprocess.run(
    [sys.executable, str(REPO / "benchmarks" / "accelerator.py"), "--models=digits-dit"],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  line = json.loads(result.stdout.strip().splitlines()[-1])
  config = _load_config(REPO / "configs" / "digits_dit.py")
  spec = table.NetworkSpec(in_channels=1, image_size=16, num_classes=10)
  built = table.build(config.model, spec, nnx.Rngs(0))
  assert line["parameters"] == table.parameter_count(nnx.state(built, nnx.Param))
  assert line["model"] == "digits-dit" and line["backend"] == "cpu" and line["loss_finite"]
  assert line["attention"] == "xla" and line["batch"] == 1 and line["steps"] == 2
  # XLA's count of the train step ≈ 3 forward passes (forward + backward) at batch 1, and more
  # (the optimizer, EMA): between 2× and 6× the forward's multiply-adds, counted as 2 flops each
  forward_flop = 2e9 * line["forward_gflops"]
  assert 2 * forward_flop < line["step_tflop"] * 1e12 < 6 * 3 * forward_flop


def _imagenet256_dit(**autoencoder):
  config = _load_config(REPO / "configs" / "imagenet256_dit.py")
  assert config.autoencoder.path == ""  # as shipped: no VAE named, none needed to describe
  config.autoencoder.update(autoencoder)
  return config


def test_imagenet256_dit_is_described_without_the_vae():
  # The SD VAE's f = 8 and 4 latent channels, stated in the shipped config: 256×256×3 images
  # are 32×32×4 latents, and DiT-XL/2 on them is the paper's 675M, 118.6 Gflops.
  config = _imagenet256_dit()
  assert (config.autoencoder.downsampling_factor, config.autoencoder.latent_channels) == (8, 4)
  info = describe(config)
  assert info["diffusion_shape"] == [32, 32, 4] and info["image_shape"] == [256, 256, 3]
  assert info["parameters"] == ORIGINAL_COUNTS["DiT-XL/2"]  # the paper's "675M"
  assert info["gflops"] == pytest.approx(PAPER_GFLOPS["DiT-XL/2"], rel=0.02)
  source = "autoencoder.downsampling_factor and autoencoder.latent_channels"
  assert info["diffusion_shape_from"] == source
  assert f"32×32×4 (from {source})" in summary(info)


def test_the_latent_shape_needs_an_autoencoder_path_or_its_two_numbers():
  with pytest.raises(ValueError) as error:
    describe(_imagenet256_dit(downsampling_factor=0, latent_channels=0))
  assert str(error.value) == (
    "the latent shape needs the autoencoder: set autoencoder.path to its folder (only its config "
    "file is read) or autoencoder.downsampling_factor and autoencoder.latent_channels (8 and 4 "
    "for Stable Diffusion's VAE)."
  )
  with pytest.raises(ValueError, match=r"downsampling_factor must be a power of 2 .* got 6\.$"):
    describe(_imagenet256_dit(downsampling_factor=6, latent_channels=4))


# network_config.json of `python -m jaxdiff.convert diffusers-vae` on stabilityai/sd-vae-ft-ema
SD_VAE = {
  "arch": "autoencoder",
  "in_channels": 3,
  "out_channels": 3,
  "block_out_channels": [128, 256, 512, 512],
  "layers_per_block": 2,
  "latent_channels": 4,
  "norm_num_groups": 32,
  "use_quant_conv": True,
  "use_post_quant_conv": True,
  "scaling_factor": 0.18215,
  "shift_factor": 0.0,
}


def test_a_converted_vae_folder_is_read_for_its_config_alone(tmp_path):
  # The folder's network_config.json without the params/ checkpoint next to it: describe reads no
  # weights. DiT-S/8 keeps the lowering cheap.
  folder = tmp_path / "sd-vae-ft-ema"
  folder.mkdir()
  (folder / "network_config.json").write_text(json.dumps(SD_VAE))
  config = _imagenet256_dit(path=str(folder))
  config.model.preset = "DiT-S/8"
  info = describe(config)
  assert info["diffusion_shape"] == [32, 32, 4]
  assert info["parameters"] == ORIGINAL_COUNTS["DiT-S/8"]
  assert info["diffusion_shape_from"] == str(folder / "network_config.json")
  # numbers stated in the config must be the autoencoder's own
  config.autoencoder.latent_channels = 8
  stated = r"^autoencoder\.latent_channels=8 but the autoencoder in .* has 4: set autoencoder\."
  with pytest.raises(ValueError, match=stated + r"latent_channels=4 \(or 0: read from the"):
    describe(config)
  config.autoencoder.latent_channels = 4
  config.data.channels = 1  # an RGB VAE cannot take 1-channel images
  with pytest.raises(ValueError, match="takes 3-channel images .* use a matching autoencoder"):
    describe(config)
  # a converted network of another kind is no autoencoder
  (folder / "network_config.json").write_text(json.dumps({"arch": "dit", "depth": 2}))
  with pytest.raises(ValueError, match="holds a 'dit' network, not an autoencoder"):
    describe(_imagenet256_dit(path=str(folder)))


def test_digits_latent_is_described_from_a_vae_workdir_without_checkpoints(tmp_path):
  # A digits_vae workdir's config.json is enough (f = 4 from three levels, 4 latent channels).
  vae = tmp_path / "vae"
  vae.mkdir()
  (vae / "config.json").write_text(_load_config(REPO / "configs" / "digits_vae.py").to_json())
  config = _load_config(REPO / "configs" / "digits_latent.py")
  config.autoencoder.path = str(vae)
  config.data.data_dir = str(tmp_path / "data")
  info = describe(config)
  assert info["image_shape"] == [32, 32, 1] and info["diffusion_shape"] == [8, 8, 4]
  assert info["diffusion_shape_from"] == str(vae / "config.json")
  assert not (tmp_path / "data").exists()


def test_the_codec_refuses_stated_numbers_that_are_not_its_autoencoders(tmp_path):
  # Training builds the codec from the weights: stated numbers are checked there too, and the
  # shape it computes is describe's.
  from jaxdiff import codecs
  from jaxdiff.convert.converted import save_converted
  from jaxdiff.models.autoencoder import AutoencoderKL

  kwargs = {"in_channels": 3, "block_out_channels": [8, 8], "latent_channels": 2}
  kwargs |= {"norm_num_groups": 4, "scaling_factor": 0.5}
  save_converted(tmp_path / "vae", "autoencoder", kwargs, AutoencoderKL(**kwargs, rngs=nnx.Rngs(0)))
  config = _imagenet256_dit(path=str(tmp_path / "vae"), downsampling_factor=2, latent_channels=2)
  assert codecs.build(config).latent_shape(256, 3) == codecs.shape(config).latent_shape(256, 3)
  assert codecs.shape(config).latent_shape(256, 3) == (128, 2)
  config.autoencoder.downsampling_factor = 8
  with pytest.raises(ValueError, match=r"^autoencoder\.downsampling_factor=8 but the autoencoder"):
    codecs.build(config)


def test_pixel_runs_refuse_the_autoencoders_numbers():
  config = _load_config(REPO / "configs" / "digits.py")
  config.autoencoder.downsampling_factor = 8
  with pytest.raises(ValueError, match="codec.name='identity' diffuses pixels: set --config.codec"):
    describe(config)
