"""Latent diffusion: the autoencoder objective (closed forms), VAE runs through the trainer, the
autoencoder codec (a VAE workdir or a converted diffusers folder), latent runs with the U-Net and
the DiT, and the errors a user can cause."""

import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import cluster
import pytest
from numerics import relative_error
from scipy import stats
from test_train import data_dir  # noqa: F401 — data_dir is a fixture

from jaxdiff import codecs
from jaxdiff import config as config_lib
from jaxdiff import evaluation, sampling
from jaxdiff import run as run_lib
from jaxdiff.codecs.autoencoder import load_autoencoder
from jaxdiff.convert import load_converted
from jaxdiff.models.autoencoder import AutoencoderKL
from jaxdiff.objectives.autoencoder import autoencoder_loss, elbo_bits_per_dim
from jaxdiff.train import loop

ROOT = pathlib.Path(__file__).resolve().parent.parent
VAE_FOLDER = ROOT / "tests" / "data" / "vae_kl"  # a tiny random diffusers AutoencoderKL


def _config(name):
  return config_lib.load_file(ROOT / "configs" / f"{name}.py")


def tiny_vae_config(data_dir, workdir_steps=4):  # noqa: F811
  c = _config("digits_vae")
  c.data.data_dir = str(data_dir)
  c.data.batch_size = 16
  c.train.num_devices = 1
  c.model.block_out_channels = (8, 16, 16)
  c.model.norm_num_groups = 4
  c.train.num_steps = workdir_steps
  c.train.steps_per_call = 1  # one step per program: half the compile of two unrolled
  c.train.log_every = 2
  c.train.checkpoint_every = 2
  c.optim.warmup_steps = 0
  c.sample.num_samples = 8
  c.sample.batch_size = 8
  c.eval.batch_size = 54
  c.eval.num_examples = 54
  return c


def tiny_latent_config(data_dir, vae_path, arch="unet"):  # noqa: F811
  c = _config("digits_latent")
  if arch == "dit":
    model = config_lib.default_config(arch="dit").model
    model.update(class_conditional=True, hidden_size=16, depth=1, num_heads=2, patch_size=2)
    c.model = model
  else:
    c.model.base_channels = 32
    c.model.channel_mult = (1,)
  c.data.data_dir = str(data_dir)
  c.data.batch_size = 16
  c.train.num_devices = 1
  c.autoencoder.path = str(vae_path)
  c.train.num_steps = 2
  c.train.steps_per_call = 2
  c.train.checkpoint_every = 2
  c.sample.num_samples = 10
  c.sample.batch_size = 10
  c.sample.num_steps = 2
  return c


@pytest.fixture(scope="module")
def vae_workdir(tmp_path_factory, data_dir):  # noqa: F811
  """A tiny digits_vae run of 4 steps, trained through the trainer."""
  workdir = tmp_path_factory.mktemp("vae")
  loop.train(tiny_vae_config(data_dir), workdir)
  return workdir


# --- the objective, against closed forms ------------------------------------------------------


def test_kl_term_and_loss_are_the_negative_elbo():
  rng = np.random.default_rng(0)
  x = rng.choice(np.arange(256) / 127.5 - 1, size=(3, 4, 4, 1)).astype(np.float32)
  recon = (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)
  mean = rng.standard_normal((3, 2, 2, 2)).astype(np.float32)
  logvar = rng.uniform(-2, 1, mean.shape).astype(np.float32)
  model = lambda images, t, key: (jnp.asarray(recon), jnp.asarray(mean), jnp.asarray(logvar))
  sigma, dims = 0.1, 16
  loss, per_example, metrics = autoencoder_loss(
    None, model, jnp.asarray(x), reconstruction="l2", decoder_std=sigma, kl_weight=1.0
  )
  # KL(N(μ, σ²) ‖ N(0, 1)) = ½(μ² + σ² − 1 − ln σ²) per latent dimension, summed
  kl = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3))
  rec = np.sum((x - recon) ** 2, axis=(1, 2, 3)) / (2 * sigma**2)
  # with β = 1 the loss is −ELBO/D less the Gaussian normalizer ½ ln 2πσ²
  assert relative_error(per_example, (rec + kl) / dims) < 1e-5  # float32 sums of 16 terms
  assert float(loss) == pytest.approx(float(np.mean((rec + kl) / dims)), rel=1e-5)
  # the reported ELBO integrates N(x̂, σ²) over each 8-bit bin (edge bins to ±∞), in bits/dim
  lo = np.where(x < -0.999, -np.inf, (x - recon - 1 / 255) / sigma)
  hi = np.where(x > 0.999, np.inf, (x - recon + 1 / 255) / sigma)
  log_p = np.log(stats.norm.cdf(hi) - stats.norm.cdf(lo))
  bpd = (-log_p.sum(axis=(1, 2, 3)) + kl) / (dims * math.log(2))
  got = elbo_bits_per_dim(jnp.asarray(x), recon, mean, logvar, decoder_std=sigma)
  assert relative_error(got, bpd) < 1e-5
  assert float(metrics["elbo_bpd"]) == pytest.approx(bpd.mean(), rel=1e-5)


# --- VAE runs ---------------------------------------------------------------------------------


def test_vae_run_trains_samples_from_the_prior_and_reports_its_elbo(vae_workdir, data_dir):  # noqa: F811
  config = tiny_vae_config(data_dir)
  lines = [json.loads(x) for x in (vae_workdir / "metrics.jsonl").read_text().splitlines()]
  trained = [x for x in lines if "elbo_bpd" in x]
  assert trained and all(np.isfinite(x["elbo_bpd"]) for x in trained)
  path = sampling.sample(config, vae_workdir)
  images = np.load(path)["arr_0"]
  assert images.shape == (8, 32, 32, 1) and images.dtype == np.uint8
  result = evaluation.evaluate(config, vae_workdir)
  # the ELBO's bits/dim over the test split (closed-form checks are above); after 4 steps the
  # decoder is still poor, so only that it is a finite positive bound of the autoencoder is sure
  assert 0 < result["eval_bpd"] < 1e3 and result["eval_bound"] == "autoencoder"
  assert result["eval_examples"] == 54


def test_a_denoiser_loss_on_the_autoencoder_is_one_sentence(data_dir):  # noqa: F811
  config = tiny_vae_config(data_dir)
  config.diffusion.loss = "mse"
  with pytest.raises(ValueError, match="cannot train model.arch='autoencoder'"):
    config_lib.validate(config)


# --- the autoencoder codec --------------------------------------------------------------------


def test_codec_from_a_vae_workdir_measures_and_stores_its_scale(vae_workdir, data_dir, tmp_path):  # noqa: F811
  config = tiny_latent_config(data_dir, vae_workdir)
  run = run_lib.setup(config, tmp_path / "latent")
  codec = run.codec
  assert run.spec.image_size == 8 and run.spec.in_channels == 4  # 32×32 → f = 4 → 8×8×4
  vae = load_autoencoder(vae_workdir)
  images = run_lib._calibration_images(config)
  # the scale is 1/std of the training latents (sampled from the posterior, key 0)
  mean, logvar = vae.encode(jnp.asarray(images))
  z = mean + jnp.exp(logvar / 2) * jax.random.normal(jax.random.key(0), mean.shape)
  scale = 1.0 / float(np.std(np.asarray(z, np.float64)))
  assert codec.info["scale_factor"] == pytest.approx(scale, rel=1e-5)
  stored = json.loads((tmp_path / "latent" / "codec.json").read_text())
  assert stored["scale_factor"] == codec.info["scale_factor"]
  # decode inverts the scaling: decode(params, z·s) is the network's decode(z)
  latents = codec.encode(codec.params, jnp.asarray(images[:4]), jax.random.key(1))
  assert np.std(np.asarray(latents)) == pytest.approx(1.0, abs=0.2)
  np.testing.assert_allclose(
    codec.decode(codec.params, latents),
    jnp.clip(vae.decode(latents / codec.info["scale_factor"]), -1, 1),
    atol=1e-5,
  )


# the U-Net's latent run: test_a_latent_run_in_every_mode_on_two_processes_equals_one below
@pytest.mark.parametrize("arch", ["dit"])
def test_latent_run_trains_and_samples_decoded_images(
  vae_workdir, data_dir, tmp_path, arch
):  # noqa: F811
  config = tiny_latent_config(data_dir, vae_workdir, arch)
  workdir = tmp_path / arch
  loop.train(config, workdir)
  images = np.load(sampling.sample(config, workdir))["arr_0"]
  assert images.shape == (10, 32, 32, 1)  # decoded: the data's shape, not the latents'
  assert len(np.unique(images)) > 2  # not a constant image


def test_a_latent_run_in_a_bucket_in_every_mode_on_two_processes_equals_one(
  vae_workdir,
  data_dir,  # noqa: F811
  tmp_path,
  bucket,
):
  # As a pod runs it: every path a URL (the workdir, the data, the autoencoder, its latent
  # cache). tiny_latent_config's sizes on every device of both processes, with a final grid and
  # 10 samples scored by the digits classifier (a latent run has no pixel bound).
  overrides = {
    "data.data_dir": bucket.url("latent/tfds"),  # digits built locally and copied up
    "data.batch_size": 16,
    "model.base_channels": 32,
    "model.channel_mult": (1,),
    "autoencoder.path": bucket.upload(vae_workdir, "latent/vae"),
    "autoencoder.cache": bucket.url("latent/cache"),
    "train.num_steps": 2,
    "train.steps_per_call": 2,
    "train.checkpoint_every": 2,
    "train.sample_every": 2,
    "sample.num_samples": 10,
    "sample.batch_size": 10,
    "sample.num_steps": 2,
    "eval.num_samples": 10,
  }
  config_file = ROOT / "configs" / "digits_latent.py"
  npz, result = cluster.every_mode(config_file, "latent/run", overrides, bucket=bucket)
  assert np.load(npz)["arr_0"].shape == (10, 32, 32, 1)  # decoded
  # every process measured the same latent scale on the same 512 images
  workdir = bucket.local("latent/run")
  assert json.loads((workdir / "codec.json").read_text())["scale_factor"] > 0
  # each process encoded its half of the training split into the bucket's cache
  manifest = json.loads(bucket.local("latent/cache/latents.json").read_text())
  assert manifest["num_examples"] == 1527 and len(manifest["files"]) == 2
  assert all(bucket.local(f"latent/cache/{name}").is_file() for name in manifest["files"])
  here = {"data.data_dir": str(data_dir), "autoencoder.path": str(vae_workdir)}
  cluster.same_as_one_process(
    config_file, overrides, workdir, tmp_path, npz, result, rtol=1e-3, here=here
  )
  assert not list(tmp_path.glob("gs:*")) and not list(ROOT.glob("gs:*"))


def test_codec_from_a_converted_diffusers_vae_uses_its_scaling_factor(tmp_path, data_dir):  # noqa: F811
  converted = tmp_path / "vae"
  done = subprocess.run(
    [sys.executable, "-m", "jaxdiff.convert", "diffusers-vae", str(VAE_FOLDER), str(converted)],
    capture_output=True,
    text=True,
  )
  assert done.returncode == 0, done.stderr
  vae = load_converted(converted)
  assert isinstance(vae, AutoencoderKL)
  config = tiny_latent_config(data_dir, converted)
  codec = codecs.build(config)  # no data needed: the folder carries its scale
  assert codec.calibrate is None and codec.info["scale_factor"] == vae.scaling_factor != 1.0
  assert codec.latent_shape(16, 3) == (4, 4)  # 3 levels: f = 4, 4 latent channels
  # an autoencoder of another shape than the data (RGB VAE, 1-channel digits): one sentence
  with pytest.raises(ValueError, match="takes 3-channel images .* use a matching autoencoder"):
    codec.latent_shape(32, 1)
  key = jax.random.key(0)
  images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
  mean, logvar = vae.encode(images)
  noise = jax.random.normal(key, mean.shape)
  expected = (mean + jnp.exp(logvar / 2) * noise - vae.shift_factor) * vae.scaling_factor
  np.testing.assert_allclose(codec.encode(codec.params, images, key), expected, rtol=1e-5, atol=1e-6)


def _main(*args):
  return subprocess.run(
    [sys.executable, "-m", "jaxdiff.main", *args], capture_output=True, text=True, cwd=ROOT
  )


@pytest.mark.parametrize(
  "path_of, extra, message",
  [
    (lambda vae, tmp: tmp / "missing", [], "is not a folder"),
    (lambda vae, tmp: tmp, [], "is neither a jaxdiff workdir"),
    (lambda vae, tmp: vae, ["--config.autoencoder.scale_factor=0"], "must be > 0"),
    (lambda vae, tmp: vae, ["--config.eval.bits_per_dim=True", "--mode=eval"], "bound on pixels"),
  ],
)
def test_latent_errors_are_one_sentence(vae_workdir, data_dir, tmp_path, path_of, extra, message):  # noqa: F811
  workdir = tmp_path / "run"
  args = [
    "--config=configs/digits_latent.py",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    f"--config.autoencoder.path={path_of(vae_workdir, tmp_path)}",
    "--config.train.num_steps=1",
    *extra,
  ]
  done = _main(*args)
  assert done.returncode == 1, done.stderr[-2000:]
  assert message in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr[-2000:]
  assert not list((workdir / "checkpoints").glob("*"))  # no checkpoint written (nor lost)


def test_a_diffusion_workdir_is_not_an_autoencoder(tmp_path, data_dir):  # noqa: F811
  diffusion_run = tmp_path / "pixels"
  diffusion_run.mkdir()
  (diffusion_run / "checkpoints").mkdir()
  (diffusion_run / "config.json").write_text(config_lib.default_config().to_json())
  with pytest.raises(ValueError, match="'unet' run, not an autoencoder"):
    load_autoencoder(diffusion_run)


def test_resuming_with_another_autoencoder_is_refused(vae_workdir, data_dir, tmp_path):  # noqa: F811
  config = tiny_latent_config(data_dir, vae_workdir)
  workdir = tmp_path / "latent"
  run_lib.setup(config, workdir)
  stored = json.loads((workdir / "codec.json").read_text())
  (workdir / "codec.json").write_text(json.dumps({**stored, "fingerprint": "0" * 16}))
  with pytest.raises(run_lib.RunError, match="fingerprint"):
    run_lib.setup(config, workdir)


# --- the latent cache (autoencoder.cache) -------------------------------------------------------


def _losses(workdir):
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [x["loss"] for x in lines if "loss" in x]


def test_cached_latents_are_the_encoders_and_train_as_encoding_each_batch(
  vae_workdir, data_dir, tmp_path
):  # noqa: F811
  config = tiny_latent_config(data_dir, vae_workdir)
  config.data.random_flip = True  # the cache then holds the mirror's latents too
  config.train.log_every = config.train.steps_per_call = 1
  loop.train(config, tmp_path / "direct")
  cached = tiny_latent_config(data_dir, vae_workdir)
  cached.data.random_flip = True
  cached.train.log_every = cached.train.steps_per_call = 1
  cached.autoencoder.cache = str(tmp_path / "cache")
  loop.train(cached, tmp_path / "cached")

  # the records are the autoencoder's posterior moments of every training image and its mirror,
  # in file order, computed here by the autoencoder itself
  manifest = json.loads((tmp_path / "cache" / "latents.json").read_text())
  images = run_lib.make_dataset(
    config, "train", shuffle=False, num_epochs=1, batch_size=4096, drop_remainder=False,
    random_flip=False,
  )  # fmt: skip
  batch = next(iter(images))
  assert manifest["num_examples"] == len(batch["image"]) and manifest["shape"] == [2, 8, 8, 8]
  from jaxdiff.data import latent_records

  records = latent_records.make_latent_dataset(
    [str(tmp_path / "cache" / f) for f in manifest["files"]], shape=(2, 8, 8, 8), labels=True,
    batch_size=manifest["num_examples"], random_flip=False, seed=0, shuffle=False, num_epochs=1,
  )  # fmt: skip
  first = next(iter(records))
  vae = load_autoencoder(vae_workdir)
  mean, logvar = vae.encode(jnp.asarray(batch["image"]))
  # float32 convolutions of batches of 256 (the cache) and of all images at once differ in the
  # order of their sums only: ~1e-7 relative
  assert relative_error(first["moments"], jnp.concatenate([mean, logvar], -1)) < 1e-5
  np.testing.assert_array_equal(first["label"], batch["label"])

  # the same batches, flips and posterior draws as encoding each batch: the losses agree to the
  # float32 differences of the encoder's batching above
  assert len(_losses(tmp_path / "cached")) == 2
  assert relative_error(np.array(_losses(tmp_path / "cached")), np.array(_losses(tmp_path / "direct"))) < 1e-4

  # a second run reuses the cache (nothing re-encoded), and sampling decodes as before
  stamp = (tmp_path / "cache" / manifest["files"][0]).stat().st_mtime_ns
  loop.train(cached, tmp_path / "cached_again")
  assert (tmp_path / "cache" / manifest["files"][0]).stat().st_mtime_ns == stamp
  assert _losses(tmp_path / "cached_again") == _losses(tmp_path / "cached")


def test_a_cache_from_another_autoencoder_or_folder_is_refused(vae_workdir, data_dir, tmp_path):  # noqa: F811
  config = tiny_latent_config(data_dir, vae_workdir)
  config.autoencoder.cache = str(tmp_path / "cache")
  config.train.num_steps = 1
  config.train.steps_per_call = 1
  loop.train(config, tmp_path / "first")
  manifest_path = tmp_path / "cache" / "latents.json"
  manifest = json.loads(manifest_path.read_text())
  manifest_path.write_text(json.dumps({**manifest, "fingerprint": "0" * 16}))
  args = [
    "--config=configs/digits_latent.py",
    f"--workdir={tmp_path / 'second'}",
    f"--config.data.data_dir={data_dir}",
    f"--config.autoencoder.path={vae_workdir}",
    f"--config.autoencoder.cache={tmp_path / 'cache'}",
    "--config.train.num_steps=1",
  ]
  done = _main(*args)
  assert done.returncode == 1 and done.stderr.strip().count("\n") == 0, done.stderr[-2000:]
  assert "latent cache" in done.stderr and "fingerprint" in done.stderr
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  config.autoencoder.cache = str(foreign)
  from jaxdiff.codecs import cache

  with pytest.raises(cache.CacheError, match="not a latent cache"):
    loop.train(config, tmp_path / "third")
  pixels = config_lib.default_config()
  pixels.autoencoder.cache = str(foreign)
  with pytest.raises(ValueError, match="codec.name='identity' diffuses pixels"):
    codecs.build(pixels)
