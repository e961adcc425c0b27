"""python -m jaxdiff.convert with bucket URLs, against the GCS emulator on loopback
(tests/bucket.py): a diffusers VAE folder in a bucket converted into the bucket through the CLI,
loaded back from there by load_converted and by the autoencoder codec's loader (autoencoder.path),
equal to a local conversion; an existing URL destination is refused; nothing local is named after
the URL; a URL nothing can serve ends in one sentence."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from jaxdiff.convert import convert_diffusers_vae, load_converted
from jaxdiff.convert.__main__ import main

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
VAE = os.path.join(DATA, "vae_kl")

# Run inside the emulator's namespace: the converted VAE read back from the bucket, both ways a run
# reads it, its parameters saved locally; a conversion into that existing folder; LPIPS's two .pth
# files converted from the bucket into it, with a fake torch whose `load` reads the bytes it is
# given as an .npz (the suite has no torch).
IN_THE_BUCKET = """
import io, sys
import numpy as np
from flax import nnx
from jaxdiff.codecs.autoencoder import load_autoencoder
from jaxdiff.convert import load_converted
from jaxdiff.convert.__main__ import main
from jaxdiff.metrics import load_lpips

root, out, tests = sys.argv[1:]
sys.path.insert(0, tests)
import fake_torch

def flat(model):
  state = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return {"/".join(map(str, path)): np.asarray(v[...]) for path, v in state}
model, codec = load_converted(f"{root}/vae"), load_autoencoder(f"{root}/vae")
assert flat(codec).keys() == flat(model).keys()
assert all(np.array_equal(flat(codec)[k], a) for k, a in flat(model).items())
np.savez(out, scaling_factor=model.scaling_factor, **flat(model))
print("refused:", main(["diffusers-vae", f"{root}/src/vae_kl", f"{root}/vae"]))

def load(source, **kwargs):
  assert isinstance(source, io.BytesIO), source  # the object's bytes, read through epath
  assert kwargs == {"map_location": "cpu", "weights_only": True}
  with np.load(source) as f:
    return {k: fake_torch.FakeTensor(f[k]) for k in f.files}
sys.modules["torch"] = fake_torch.module(load)
backbone, linear = f"{root}/src/pth/vgg16.pth", f"{root}/src/pth/vgg.pth"
print("lpips:", main(["lpips", backbone, linear, f"{root}/lpips.safetensors"]))
load_lpips(f"{root}/lpips.safetensors")
"""


def _flat(model) -> dict[str, np.ndarray]:
  state = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return {"/".join(map(str, path)): np.asarray(v[...]) for path, v in state}


def _files(folder) -> list[str]:
  return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_convert_from_and_into_a_bucket_and_load_from_it(bucket, tmp_path):
  env = bucket.environment(dict(os.environ))
  sources = tmp_path / "sources"  # the diffusers VAE folder and LPIPS's two .pth files
  shutil.copytree(VAE, sources / "vae_kl")
  (sources / "pth").mkdir()
  with np.load(os.path.join(DATA, "lpips_reference.npz")) as f:
    lpips = {k: f[k] for k in f.files if k.startswith(("features.", "lin"))}
  for name, linear in [("vgg16.pth", False), ("vgg.pth", True)]:
    with open(sources / "pth" / name, "wb") as f:  # a file object: savez names it as it is
      np.savez(f, **{k: v for k, v in lpips.items() if (k[:3] == "lin") == linear})
  root = bucket.url("convert").rstrip("/")
  bucket.upload(sources, "convert/src")
  convert = ["-m", "jaxdiff.convert", "diffusers-vae", f"{root}/src/vae_kl", f"{root}/vae"]
  done = subprocess.run(
    bucket.command([sys.executable, *convert]),
    env=env,
    cwd=tmp_path,
    capture_output=True,
    text=True,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  written = _files(bucket.local("convert/vae"))
  assert "network_config.json" in written and any(f.startswith("params/") for f in written)

  out = tmp_path / "from_bucket.npz"
  tests = os.path.dirname(os.path.abspath(__file__))
  done = subprocess.run(
    bucket.command([sys.executable, "-c", IN_THE_BUCKET, root, str(out), tests]),
    env=env,
    cwd=tmp_path,
    capture_output=True,
    text=True,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "refused: 1" in done.stdout and "lpips: 0" in done.stdout
  (line,) = [x for x in done.stderr.splitlines() if x.startswith("error: ")]
  assert "already exists and is not an empty folder" in line and f"{root}/vae" in line
  assert _files(bucket.local("convert/vae")) == written  # the refusal wrote nothing
  converted = load_file(bucket.local("convert/lpips.safetensors"))
  assert converted.keys() == lpips.keys()
  for name, array in lpips.items():
    np.testing.assert_array_equal(converted[name], array, err_msg=name)

  # the same conversion, local to local
  convert_diffusers_vae(VAE, tmp_path / "local")
  local = load_converted(tmp_path / "local")
  with np.load(out) as loaded:
    from_bucket = dict(loaded)
  assert from_bucket.pop("scaling_factor") == local.scaling_factor
  expected = _flat(local)
  assert from_bucket.keys() == expected.keys()
  for name, array in expected.items():
    np.testing.assert_array_equal(from_bucket[name], array, err_msg=name)
  config = bucket.local("convert/vae/network_config.json").read_text()
  assert config == (tmp_path / "local" / "network_config.json").read_text()
  for folder in (tmp_path, os.getcwd()):  # nothing local under the URL's name
    assert not [p for p in os.listdir(folder) if p.startswith("gs:")]


@pytest.mark.parametrize(
  "argv, blocked, message",
  [
    (["gs://bucket/vae_kl", "DST"], "gcsfs", "the source gs://bucket/vae_kl is a 'gs://' URL"),
    ([VAE, "gs://bucket/vae"], "gcsfs", "the destination gs://bucket/vae is a 'gs://' URL"),
    ([VAE, "ftp://host/vae"], None, "the destination ftp://host/vae has the URL scheme 'ftp://'"),
  ],
)
def test_a_url_without_a_backend_ends_in_one_sentence(
  tmp_path, monkeypatch, capsys, argv, blocked, message
):
  if blocked:
    monkeypatch.setitem(sys.modules, blocked, None)  # makes `import gcsfs` fail
  monkeypatch.chdir(tmp_path)
  argv = [str(tmp_path / "dst") if a == "DST" else a for a in argv]
  assert main(["diffusers-vae", *argv]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and message in err
  assert list(tmp_path.iterdir()) == []  # nothing created locally
