"""Paths a user may point at a bucket: one path type for local folders and URLs (`gs://…`).

`etils.epath`, which Orbax and TFDS take too, reads and writes both; a URL is served by the
filesystem package of its scheme (gcsfs for `gs://`), which `path` checks for before anything is
created, so a missing package ends in one sentence instead of a local folder named `gs:`. Object
stores have no append and no atomic rename of folders: `append_text` rewrites a small object
whole, files that must appear complete are written to a temporary name first, and TensorBoard
events are written through epath too (`register_tensorboard_writer`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import tempfile

import numpy as np
from etils import epath

# the fsspec package that serves each URL scheme through epath (when TensorFlow is absent)
_BACKENDS = {"gs": "gcsfs", "s3": "s3fs"}


class StorageError(ValueError):
  """A path that cannot be used; the message says why and what to do."""


def is_url(value) -> bool:
  return "://" in os.fspath(value)


def path(value, *, what: str = "a path") -> epath.Path:
  """`value` as an epath.Path: a local path (`~` expanded) or a URL whose scheme's filesystem
  package is installed; StorageError naming the package otherwise (nothing is created)."""
  text = os.fspath(value)
  if not is_url(text):
    return epath.Path(os.path.expanduser(text))
  scheme = text.split("://", 1)[0]
  package = _BACKENDS.get(scheme)
  if package is None:
    raise StorageError(
      f"{what} {text} has the URL scheme '{scheme}://', which jaxdiff cannot read or write; use "
      f"a local path or one of {', '.join(s + '://' for s in _BACKENDS)}."
    )
  try:
    importlib.import_module(package)
  except ImportError:
    raise StorageError(
      f"{what} {text} is a '{scheme}://' URL, and reading or writing it needs the package "
      f"{package}: pip install {package}."
    ) from None
  return epath.Path(text)


def append_text(file: epath.Path, text: str) -> None:
  """Appends `text` to a file (a local file in place; an object, which cannot grow, rewritten)."""
  if not is_url(file):
    with open(os.fspath(file), "a") as f:
      f.write(text)
    return
  before = file.read_text() if file.exists() else ""
  file.write_text(before + text)


def write_bytes_whole(file: epath.Path, data: bytes) -> None:
  """Writes `data` so that `file`, once it exists, is complete: an object appears whole once
  uploaded; a local file is written to a temporary name, then moved."""
  if is_url(file):
    file.write_bytes(data)
    return
  tmp = file.parent / f"{file.name}.tmp"
  tmp.write_bytes(data)
  tmp.rename(file)


def copy_file(src: epath.Path, dst: epath.Path) -> None:
  """Copies `src` to `dst` (either may be a URL) in chunks, never whole in memory; `dst`, once it
  exists, is complete (as in `write_bytes_whole`)."""
  target = dst if is_url(dst) else dst.parent / f"{dst.name}.tmp"
  with src.open("rb") as reader, target.open("wb") as writer:
    shutil.copyfileobj(reader, writer, 16 << 20)
  if target != dst:
    target.rename(dst)


def save_npz(file: epath.Path, **arrays) -> None:
  """np.savez into `file` (local or URL), which appears only once complete."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_bytes_whole(file, buffer.getvalue())


def load_npz(file: epath.Path) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(file.read_bytes())) as data:
    return {k: data[k] for k in data.files}


def copy_folder(src: epath.Path, dst: epath.Path) -> None:
  """Copies every file under folder `src` to the same place under `dst` (either may be a URL),
  folder by folder: listing a bucket recursively would ask for every object at once."""
  dst.mkdir(parents=True, exist_ok=True)
  for item in src.iterdir():
    if item.is_dir():
      copy_folder(item, dst / item.name)
    else:
      copy_file(item, dst / item.name)


@contextlib.contextmanager
def local_folder(dst: epath.Path):
  """A local folder to write what only local files can hold (array_record files, a TFDS build)
  and that ends up at `dst`: `dst` itself when local; otherwise a temporary folder copied to the
  URL `dst` when the block ends without an error, and deleted in any case."""
  if not is_url(dst):
    dst.mkdir(parents=True, exist_ok=True)
    yield dst
    return
  staging = tempfile.mkdtemp(prefix="jaxdiff-staging-")
  try:
    yield epath.Path(staging)
    copy_folder(epath.Path(staging), dst)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


class _ObjectRecords:
  """tensorboardX's record file on an object store: records kept in memory, the object rewritten
  whole at each flush (an object cannot be appended to)."""

  def __init__(self, url: str):
    self._file, self._data = epath.Path(url), bytearray()

  def write(self, data: bytes) -> None:
    self._data += data

  def flush(self) -> None:
    self._file.write_bytes(bytes(self._data))

  def close(self) -> None:
    self.flush()


class _ObjectRecordsFactory:
  def open(self, url: str) -> _ObjectRecords:
    return _ObjectRecords(url)

  def directory_check(self, url: str) -> None:
    epath.Path(url).mkdir(parents=True, exist_ok=True)


def register_tensorboard_writer() -> None:
  """Makes tensorboardX write `gs://` and `s3://` event files through epath (its own writers
  need the cloud SDKs and keep a connection of their own)."""
  from tensorboardX import record_writer

  for scheme in _BACKENDS:
    record_writer.register_writer_factory(scheme, _ObjectRecordsFactory())
