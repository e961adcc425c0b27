"""A Google Cloud Storage bucket on this machine that nothing can reach past loopback.

`gcp-storage-emulator` (PyPI) serves the GCS JSON API on 127.0.0.1 inside a network namespace of
its own with only `lo` up (`unshare -n`); every command that talks to it enters that namespace
(`nsenter --net`), so no client can reach a metadata server or a real storage host, whatever it
tries. The clients are pointed at the emulator with anonymous or fake credentials: gcsfs (epath's
`gs://`) through STORAGE_EMULATOR_HOST, TensorStore (Orbax's arrays) through
TENSORSTORE_GCS_HTTP_URL, array_record's reader (google-cloud-cpp) through
CLOUD_STORAGE_EMULATOR_ENDPOINT. The emulator keeps each object as a file under its data folder, so a
test reads what a run wrote straight from there.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import time


@dataclasses.dataclass
class Bucket:
  name: str
  port: int
  process: subprocess.Popen
  objects: pathlib.Path  # the emulator's copy of the bucket's objects, one file each

  def url(self, key: str = "") -> str:
    return f"gs://{self.name}/{key}"

  def local(self, key: str) -> pathlib.Path:
    """Where the emulator keeps object (or prefix) `key`."""
    return self.objects / key

  def environment(self, base: dict) -> dict:
    """`base` with every storage client pointed at the emulator, credentials anonymous or fake."""
    endpoint = f"http://127.0.0.1:{self.port}"
    return {
      **base,
      "STORAGE_EMULATOR_HOST": endpoint,  # gcsfs, google-cloud-storage
      "TENSORSTORE_GCS_HTTP_URL": endpoint,  # TensorStore, under Orbax
      # google-cloud-cpp inside array_record's reader (TFDS and latent-cache records); anonymous
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": endpoint,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",  # TensorStore's credentials
      "FSSPEC_GCS_TOKEN": "anon",  # gcsfs's
      # gcsfs's bucket-type probe speaks gRPC to a control API the emulator lacks
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "NO_GCE_CHECK": "true",  # google-auth: never ask a metadata server
      "GCE_METADATA_HOST": "127.0.0.1:9",
      "GCE_METADATA_IP": "127.0.0.1:9",
      "GOOGLE_CLOUD_PROJECT": "test",
    }

  def command(self, args: list[str]) -> list[str]:
    """`args` run inside the emulator's network namespace (loopback only)."""
    return ["nsenter", f"--net=/proc/{self.process.pid}/ns/net", "--", *args]

  def upload(self, folder: pathlib.Path, key: str) -> str:
    """Copies local `folder` to the bucket under `key` (through jaxdiff.storage, from inside the
    namespace); the URL."""
    url = self.url(key)
    program = (
      "import sys; from jaxdiff import storage; "
      "storage.copy_folder(storage.path(sys.argv[1]), storage.path(sys.argv[2]))"
    )
    subprocess.run(
      self.command([sys.executable, "-c", program, str(folder), url]),
      env=self.environment(dict(os.environ)),
      check=True,
    )
    return url

  def stop(self) -> None:
    self.process.kill()
    self.process.wait()


def start(folder: pathlib.Path, name: str = "bucket", port: int = 9023) -> Bucket:
  """An emulated bucket `name` keeping its objects under `folder`."""
  emulator = f"{sys.executable} {pathlib.Path(__file__).parent / 'gcs_emulator.py'}"
  serve = (
    f"ip link set lo up && exec {emulator} --data-dir={folder} start --host=127.0.0.1 "
    f"--port={port} --default-bucket={name}"
  )
  log = open(folder.parent / f"{folder.name}.log", "w")  # noqa: SIM115 — lives with the process
  process = subprocess.Popen(["unshare", "-n", "sh", "-c", serve], stdout=log, stderr=log)
  bucket = Bucket(name, port, process, folder / ".cloudstorage" / name)
  deadline = time.time() + 60
  while not bucket.objects.is_dir():  # the default bucket is made once the server is up
    assert process.poll() is None, (folder.parent / f"{folder.name}.log").read_text()
    assert time.time() < deadline, "the emulator did not start"
    time.sleep(0.1)
  time.sleep(0.5)
  return bucket
