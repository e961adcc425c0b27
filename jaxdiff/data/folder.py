"""A folder of the user's own PNG/JPEG images, prepared once as a TFDS array_record dataset.

Layout (`data.folder`, a local path or a bucket URL):

  flat            FOLDER/*.png                  unconditional (no labels)
  classes         FOLDER/CLASS/*.png            one subfolder per class; label k is the k-th
                                                class name in sorted order
  splits          FOLDER/train/…, FOLDER/test/… either of the above inside each; a folder whose
                                                only subfolders are `train` (and `test`) has those
                                                splits, any other folder is all `train`

Files ending in .png, .jpg or .jpeg (any case), anywhere below a class folder, are images; other
files, and hidden files and folders (a name starting with '.'), are skipped (and counted). Every
image is converted to `channels` (1: PIL's "L", ITU-R 601 luma; 3: "RGB"; an alpha channel is
dropped; 16-bit greys are scaled to 8 bits), turned upright by its EXIF orientation, and
center-cropped and resized to `image_size` by the pipeline's own rule
(`pipeline._center_crop_resize`: the largest centered square, then PIL's bicubic filter, which
widens its support when shrinking, so downscaling is antialiased); an image already
`image_size`² is stored untouched. Pixels are stored as PNG, losslessly.

Where: `DATA_DIR/<name>/1.0.0/`, a TFDS dataset directory (array_record records, features.json,
dataset_info.json, label.labels.txt with the class names) plus `folder.json` (the source, the
class names, the counts and the fingerprint). The name, `folder_<folder's name>_<size>px_<c>ch_
<8 hex digits of the folder's path>`, keeps the copies of different folders and sizes apart.
Examples are stored in the order of their file names (then their paths), so the classes
interleave in the first records (what a latent scale is measured on, what eval's first N reads),
and the order is a function of the names alone.

Reuse: the fingerprint is a SHA-256 of every image's path, size and modification time. A later
run with the same fingerprint reads the prepared copy; a changed folder (an image added, removed,
replaced or touched) is prepared again over the old copy, with a line saying what changed: the
prepared copy is a cache of the folder, the folder is what the user edits, and a stale copy would
train on images that are no longer there. The copy is built in a staging folder and moved into
place complete (locally a rename; in a bucket the records first and dataset_info.json last), so
a failed or interrupted build leaves nothing a later run would take for a prepared dataset.

Why not TFDS's `ImageFolder`: it decodes the files through tf.data at every read (TensorFlow,
which jaxdiff does not install), writes no array_record and does not resize.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageOps

from jaxdiff import storage
from jaxdiff.data.pipeline import _center_crop_resize
from jaxdiff.data.tfds_noise import quiet_tfds_build

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
VERSION = "1.0.0"
META = "folder.json"  # written beside TFDS's files: source, classes, counts, fingerprint
_INFO = "dataset_info.json"
_MODES = {1: "L", 3: "RGB"}


class FolderError(ValueError):
  """A data.folder that cannot be prepared; the message names the file or the fix."""


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A prepared folder: read it with `tfds.data_source(name, split, data_dir=data_dir)`."""

  name: str
  data_dir: str
  splits: dict[str, int]  # split → number of images
  class_names: tuple[str, ...]  # () for a flat folder
  fingerprint: str


@dataclasses.dataclass(frozen=True)
class _Listing:
  """What is in the folder: split → [(path relative to the folder, class name or None)]."""

  splits: dict[str, list[tuple[str, str | None]]]
  images: list[tuple[str, int, str]]  # (path, size, modification stamp) of every image
  class_names: tuple[str, ...]
  fingerprint: str
  skipped: int


def dataset_name(folder: str, image_size: int, channels: int) -> str:
  """The TFDS name of `folder`'s prepared copy at `image_size` and `channels`."""
  text = os.fspath(folder).rstrip("/")
  stem = re.sub(r"[^a-z0-9]+", "_", text.rsplit("/", 1)[-1].lower()).strip("_")[:40] or "images"
  digest = hashlib.sha256(text.encode()).hexdigest()[:8]
  return f"folder_{stem}_{image_size}px_{channels}ch_{digest}"


def _canonical(folder: str) -> str:
  """A local folder as an absolute path (so two spellings of one folder share a copy); a URL as is."""
  return (
    folder.rstrip("/") if storage.is_url(folder) else os.path.abspath(os.path.expanduser(folder))
  )


def _list_files(root: str) -> list[tuple[str, int, str]]:
  """(path relative to `root` with '/', size, modification stamp) of every file below `root`."""
  if not storage.is_url(root):
    files = []
    for parent, dirs, names in os.walk(root):
      dirs.sort()
      for name in names:
        full = os.path.join(parent, name)
        stat = os.stat(full)
        rel = os.path.relpath(full, root).replace(os.sep, "/")
        files.append((rel, stat.st_size, str(stat.st_mtime_ns)))
    return files
  import fsspec  # a URL's filesystem; storage.path has checked its package is installed

  fs, path = fsspec.core.url_to_fs(root)
  # One listing with sizes and stamps for the whole folder, not one request per file.
  found = fs.find(path, detail=True)
  files = []
  for full, info in found.items():
    if info.get("type") == "directory":
      continue
    stamp = info.get("generation") or info.get("updated") or info.get("mtime") or ""
    rel = full[len(path.rstrip("/")) + 1 :]
    files.append((rel, int(info.get("size") or 0), str(stamp)))
  return files


def _is_image(rel: str) -> bool:
  """An image file, outside hidden files and folders (.ipynb_checkpoints/, ._x.jpg of macOS)."""
  hidden = any(part.startswith(".") for part in rel.split("/"))
  return not hidden and rel.lower().endswith(IMAGE_SUFFIXES)


def _scan(folder: str, image_size: int, channels: int) -> _Listing:
  """The folder's splits, classes and fingerprint; FolderError when it cannot be a dataset."""
  root = storage.path(folder, what="data.folder")
  if not root.exists():
    raise FolderError(
      f"data.folder={folder} does not exist; point --config.data.folder at a folder of images."
    )
  if not root.is_dir():
    raise FolderError(
      f"data.folder={folder} is a file, not a folder; point it at the folder that holds the images."
    )
  files = _list_files(os.fspath(root))
  images = sorted((f for f in files if _is_image(f[0])), key=lambda f: f[0])
  if not images:
    raise FolderError(
      f"data.folder={folder} holds no images ({len(files)} files, none ending in "
      f"{', '.join(IMAGE_SUFFIXES)}); put PNG or JPEG files in it or in one subfolder per class."
    )
  tops = {rel.split("/", 1)[0] for rel, *_ in images if "/" in rel}
  at_top = [rel for rel, *_ in images if "/" not in rel]
  if not at_top and "train" in tops and tops <= set(SPLITS):
    prefixes = {s: f"{s}/" for s in SPLITS if s in tops}
  else:
    prefixes = {"train": ""}
  splits, classes = {}, {}
  for split, prefix in prefixes.items():
    inner = [rel[len(prefix) :] for rel, *_ in images if rel.startswith(prefix)]
    flat = [r for r in inner if "/" not in r]
    nested = sorted({r.split("/", 1)[0] for r in inner if "/" in r})
    if flat and nested:
      raise FolderError(
        f"data.folder={folder} has images both directly in {prefix or 'it'} ({prefix}{flat[0]}) "
        f"and in subfolders ({prefix}{nested[0]}/); put every image in a class subfolder, or "
        "none (an unconditional dataset)."
      )
    classes[split] = tuple(nested)
    splits[split] = [(prefix + r, r.split("/", 1)[0] if nested else None) for r in inner]
  class_names = classes["train"]
  test = classes.get("test")
  if test is not None and (bool(test) != bool(class_names) or not set(test) <= set(class_names)):
    extra = sorted(set(test) - set(class_names)) or ["(none)"]
    raise FolderError(
      f"data.folder={folder}: test/ has the classes {list(test) or '(none: it is flat)'} but "
      f"train/ has {list(class_names) or '(none: it is flat)'} ({extra[0]} is not among them); "
      "give test/ the same layout and class names as train/."
    )
  record = json.dumps([images, image_size, channels, VERSION])
  fingerprint = hashlib.sha256(record.encode()).hexdigest()
  return _Listing(splits, images, class_names, fingerprint, len(files) - len(images))


def _check_labels(
  folder: str, class_names: tuple[str, ...], num_classes: int | None, class_conditional: bool
) -> None:
  """A class-conditional model against the folder's class subfolders: labels to read, two classes
  or more, and data.num_classes of them (the network's label table). An unconditional model reads
  no labels, so any layout trains it."""
  if not class_conditional:
    return
  if not class_names:
    raise FolderError(
      f"data.folder={folder} has no class subfolders, so its images have no labels for a "
      "class-conditional model; train unconditionally with --config.model.class_conditional=False, "
      "or sort the images into one subfolder per class."
    )
  if len(class_names) == 1:
    raise FolderError(
      f"data.folder={folder} has one class subfolder ({class_names[0]}): a class-conditional "
      "model needs two or more; add class subfolders, or train unconditionally with "
      "--config.model.class_conditional=False."
    )
  if len(class_names) != num_classes:
    shown = ", ".join(class_names[:5]) + (", …" if len(class_names) > 5 else "")
    raise FolderError(
      f"data.folder={folder} has {len(class_names)} class subfolders ({shown}) but "
      f"data.num_classes={num_classes}; set --config.data.num_classes={len(class_names)}."
    )


def load_image(data: bytes, image_size: int, channels: int) -> np.ndarray:
  """An encoded image as uint8 (image_size, image_size, channels), as the prepared copy stores it."""
  with Image.open(io.BytesIO(data)) as opened:
    image = ImageOps.exif_transpose(opened)
    image.load()
  if image.mode in ("I", "I;16", "I;16B", "I;16L") and channels == 1:
    wide = np.asarray(image, dtype=np.float64)
    scale = 255.0 / 65535.0 if image.mode != "I" or wide.max() > 255 else 1.0
    array = np.clip(np.rint(wide * scale), 0, 255).astype(np.uint8)[..., None]
  else:
    array = np.asarray(image.convert(_MODES[channels])).reshape(*image.size[::-1], channels)
  if array.shape[:2] != (image_size, image_size):
    array = _center_crop_resize(array, image_size)
  return array


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
  return buffer.getvalue()


class _FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The TFDS builder of one folder's copy (not registered: it is read back from its files)."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES: ClassVar = {"1.0.0": "A folder of PNG/JPEG images, center-cropped and resized."}
  code_path = None  # as digits.Digits: no checksums file to look for
  name = "jaxdiff_folder"

  def __init__(self, *, folder: str, listing: _Listing, image_size: int, channels: int, **kwargs):
    self.name = dataset_name(folder, image_size, channels)
    self._folder, self._listing = storage.path(folder), listing
    self._size, self._channels = image_size, channels
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {"image": tfds.features.Image(shape=(self._size, self._size, self._channels))}
    if self._listing.class_names:
      features["label"] = tfds.features.ClassLabel(names=list(self._listing.class_names))
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"The images of {self._folder}, {self._size}x{self._size}.",
      features=tfds.features.FeaturesDict(features),
      # Stored in the order _generate_examples yields (file name order; see the module docstring).
      disable_shuffling=True,
    )

  def _log_download_bytes(self) -> None:  # nothing is downloaded
    pass

  def _log_download_done(self) -> None:
    pass

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(files) for split, files in self._listing.splits.items()}

  def _generate_examples(self, files):
    names = self._listing.class_names
    for rel, label in sorted(files, key=lambda f: (f[0].rsplit("/", 1)[-1], f[0])):
      file = self._folder / rel
      try:
        image = load_image(file.read_bytes(), self._size, self._channels)
      except Exception as e:  # noqa: BLE001 (whatever PIL or the filesystem says, this file is the problem)
        raise FolderError(
          f"{file} cannot be read as an image ({type(e).__name__}: {e}); remove or replace it."
        ) from None
      example = {"image": _png(image)}
      if names:
        example["label"] = names.index(label)
      yield rel, example


def _build(folder: str, listing: _Listing, image_size: int, channels: int, staging: str) -> str:
  """Builds the copy into the TFDS data dir `staging`; returns its version folder."""
  builder = _FolderBuilder(
    folder=folder, listing=listing, image_size=image_size, channels=channels,
    data_dir=staging, file_format="array_record",
  )  # fmt: skip
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return os.fspath(builder.data_path)


def _describe(folder: str, prepared: Prepared) -> str:
  counts = " and ".join(f"{n:,} {s}" for s, n in prepared.splits.items())
  classes = prepared.class_names
  shown = ", ".join(classes[:10]) + (", …" if len(classes) > 10 else "")
  which = f"{len(classes)} classes ({shown})" if classes else "no classes (unconditional)"
  return f"{counts} images of {folder}, {which}"


@functools.cache
def prepare(
  folder: str,
  data_dir: str | None,
  *,
  image_size: int,
  channels: int,
  num_classes: int | None,
  class_conditional: bool,
) -> Prepared:
  """The prepared copy of `folder` in `data_dir` (TFDS's default dir if None), built or rebuilt
  when missing or when the folder changed; FolderError, with nothing written, for a folder that
  cannot be a dataset (see the module docstring). Checked once per process and arguments."""
  if channels not in _MODES:
    raise FolderError(
      f"data.channels={channels}: images of data.folder are converted to 1 (grey) or 3 (RGB) "
      "channels; set --config.data.channels to 1 or 3."
    )
  folder = _canonical(folder)
  listing = _scan(folder, image_size, channels)
  _check_labels(folder, listing.class_names, num_classes, class_conditional)
  data_dir = os.fspath(data_dir or tfds.core.constants.DATA_DIR)
  root = storage.path(data_dir, what="data.data_dir")
  name = dataset_name(folder, image_size, channels)
  target = root / name / VERSION
  prepared = Prepared(
    name,
    data_dir if storage.is_url(data_dir) else os.path.expanduser(data_dir),
    {s: len(f) for s, f in listing.splits.items()},
    listing.class_names,
    listing.fingerprint,
  )
  saved = _read_meta(target)
  if saved is not None and saved["fingerprint"] == listing.fingerprint:
    print(f"Using the prepared {_describe(folder, prepared)} in {target}.", flush=True)
    return prepared
  if saved is not None:
    print(f"data.folder changed since it was prepared ({_changes(saved, listing)}).")
  print(f"Preparing {_describe(folder, prepared)} in {target}.", flush=True)
  local = not storage.is_url(data_dir)
  if local:
    root.mkdir(parents=True, exist_ok=True)
  # Locally the staging folder sits in the data dir, so moving the copy into place is a rename.
  staging = tempfile.mkdtemp(prefix=f".{name}-staging-", dir=os.fspath(root) if local else None)
  try:
    with quiet_tfds_build():
      built = epath.Path(_build(folder, listing, image_size, channels, staging))
    meta = {
      "folder": folder,
      "image_size": image_size,
      "channels": channels,
      "class_names": list(listing.class_names),
      "splits": prepared.splits,
      "files": [list(f) for f in listing.images],
      "skipped_files": listing.skipped,
      "fingerprint": listing.fingerprint,
    }
    (built / META).write_text(json.dumps(meta, indent=1))
    _replace(built, target, local)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return prepared


def _read_meta(target: epath.Path) -> dict | None:
  """The folder.json of a complete prepared copy at `target`, or None."""
  if not (target / _INFO).exists() or not (target / META).exists():
    return None
  return json.loads((target / META).read_text())


def _changes(saved: dict, listing: _Listing) -> str:
  before = {rel: (size, stamp) for rel, size, stamp in saved.get("files", [])}
  now = {rel: (size, stamp) for rel, size, stamp in listing.images}
  added, removed = len(now.keys() - before.keys()), len(before.keys() - now.keys())
  changed = sum(before[rel] != now[rel] for rel in now.keys() & before.keys())
  return f"{added} images added, {removed} removed, {changed} changed"


def _replace(built: epath.Path, target: epath.Path, local: bool) -> None:
  """Puts the built version folder at `target`, over an older copy, so that `target` is never a
  complete-looking mix: locally by renames, in a bucket with dataset_info.json copied last."""
  if local:
    if target.exists():
      old = target.parent / f".{target.name}-old-{os.getpid()}"
      target.rename(old)
      shutil.rmtree(os.fspath(old), ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    built.rename(target)
    return
  if target.exists():
    (target / _INFO).unlink(missing_ok=True)  # first: the old copy stops counting as prepared
    target.rmtree()
  last = (_INFO,)
  for file in sorted(built.iterdir(), key=lambda f: (f.name in last, f.name)):
    storage.copy_file(file, target / file.name)


def require_split(prepared: Prepared, folder: str, split: str) -> None:
  """FolderError naming the fix when a config reads a split the folder does not have."""
  if split in prepared.splits:
    return
  if split == "test":
    raise FolderError(
      f"data.folder={folder} has no test split (that needs the subfolders train/ and test/); add "
      "them, or read the training images instead with --config.data.eval_split=train."
    )
  raise FolderError(
    f"data.folder={folder} has the splits {list(prepared.splits)}, not {split!r}; set "
    "data.split and data.eval_split to one of them."
  )
