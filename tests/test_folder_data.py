"""data.folder: a folder of the user's own images, prepared once as array_record (data/folder.py).

The digits are written as PNG files in train/CLASS/ and test/CLASS/ subfolders, named so that
the folder's order (file names) is the `digits` builder's stored order: the prepared copy must
hold exactly the images written, with labels that name their folders, and the training pipeline
over it must give the same batches as over the builder. Then the changed-folder detection, the
resize/crop/colour rules against closed forms, each bad folder through `python -m jaxdiff.main`
(one sentence, exit 1, nothing written), a short CLI train and a folder in a bucket.
"""

import json
import os
import subprocess

import numpy as np
import pytest
import tensorflow_datasets as tfds
from cluster import configured
from PIL import Image
from test_train import ROOT, TINY, cli

from jaxdiff import data
from jaxdiff import run as run_lib
from jaxdiff.data import folder as folder_lib

CLASSES = tuple(str(k) for k in range(10))


def _prepare(folder, data_dir, **kwargs):
  folder_lib.prepare.cache_clear()  # each call checks the folder afresh, as a new run does
  defaults = {"image_size": 16, "channels": 1, "num_classes": 10, "class_conditional": True}
  return data.prepare_folder(str(folder), str(data_dir), **{**defaults, **kwargs})


def _records(prepared, split):
  source = tfds.data_source(prepared.name, split=split, data_dir=prepared.data_dir)
  return [source[i] for i in range(len(source))]


def _write(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
  """(folder, data dir with `digits` and the folder prepared, {split: (images, labels)})."""
  root = tmp_path_factory.mktemp("folder")
  data_dir = root / "data"
  data.ensure_digits_prepared(str(data_dir))
  written = {}
  for split in ("train", "test"):
    records = _records(data.Prepared("digits", str(data_dir), {}, (), ""), split)
    images = np.stack([r["image"] for r in records])
    labels = np.array([r["label"] for r in records])
    for i, (image, label) in enumerate(zip(images, labels)):
      _write(root / "digits" / split / str(label) / f"{i:04d}.png", image)
    written[split] = (images, labels)
  return root / "digits", data_dir, written


def test_the_prepared_folder_holds_the_images_and_labels_name_their_folders(digits_folder, capsys):
  folder, data_dir, written = digits_folder
  prepared = _prepare(folder, data_dir)
  assert prepared.splits == {"train": 1527, "test": 270} and prepared.class_names == CLASSES
  for split, (images, labels) in written.items():
    records = _records(prepared, split)
    # exactly: a 16×16 image at image_size=16 is stored untouched, as lossless PNG
    np.testing.assert_array_equal(np.stack([r["image"] for r in records]), images)
    np.testing.assert_array_equal([r["label"] for r in records], labels)
  # the class names are written with the dataset, in sorted order: label k is folder CLASSES[k]
  target = data_dir / prepared.name / "1.0.0"
  assert (target / "label.labels.txt").read_text().split() == list(CLASSES)
  meta = json.loads((target / "folder.json").read_text())
  assert meta["class_names"] == list(CLASSES) and meta["splits"] == {"train": 1527, "test": 270}
  assert f"10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9) in {target}" in capsys.readouterr().out
  # a second run reads the same copy (nothing rewritten)
  stamp = (target / "dataset_info.json").stat().st_mtime_ns
  assert _prepare(folder, data_dir) == prepared
  assert capsys.readouterr().out.startswith("Using the prepared 1,527 train and 270 test images")
  assert (target / "dataset_info.json").stat().st_mtime_ns == stamp
  assert not [p for p in data_dir.iterdir() if p.name.startswith(".")]  # no staging left


def test_training_batches_from_the_folder_equal_those_from_the_builder(digits_folder):
  # The prepared records are the builder's, in its order, so the pipeline's batches for one seed
  # are the same arrays: training from the folder is training on the digits, step for step.
  folder, data_dir, _ = digits_folder
  base = {**TINY, "data.data_dir": str(data_dir), "data.random_flip": True}
  from_builder = configured(ROOT / "configs" / "digits.py", base)
  from_folder = configured(ROOT / "configs" / "digits.py", {**base, "data.folder": str(folder)})
  for split in ("train", "test"):
    a = iter(run_lib.make_dataset(from_builder, split))
    b = iter(run_lib.make_dataset(from_folder, split))
    for _ in range(3):
      x, y = next(a), next(b)
      np.testing.assert_array_equal(x["image"], y["image"])
      np.testing.assert_array_equal(x["label"], y["label"])


def test_a_changed_folder_is_prepared_again(tmp_path, capsys):
  rng = np.random.default_rng(0)
  for name in ("a", "b"):
    for i in range(3):
      _write(tmp_path / "src" / name / f"{i}.png", rng.integers(0, 256, (16, 16, 1), np.uint8))
  kwargs = {"num_classes": 2}
  prepared = _prepare(tmp_path / "src", tmp_path / "data", **kwargs)
  assert prepared.splits == {"train": 6}
  assert _prepare(tmp_path / "src", tmp_path / "data", **kwargs) == prepared
  capsys.readouterr()
  added = rng.integers(0, 256, (16, 16, 1), np.uint8)
  _write(tmp_path / "src" / "b" / "3.png", added)
  (tmp_path / "src" / "a" / "0.png").unlink()
  os.utime(tmp_path / "src" / "a" / "1.png", ns=(1, 1))  # touched: its time changed
  again = _prepare(tmp_path / "src", tmp_path / "data", **kwargs)
  out = capsys.readouterr().out
  assert "changed since it was prepared (1 images added, 1 removed, 1 changed)" in out
  assert again.name == prepared.name and again.fingerprint != prepared.fingerprint
  records = _records(again, "train")
  assert len(records) == 6  # file-name order: b/0, a/1, b/1, a/2, b/2, b/3
  assert [r["label"] for r in records] == [1, 0, 1, 0, 1, 1]
  np.testing.assert_array_equal(records[5]["image"], added)


def test_images_are_cropped_to_the_center_resized_and_converted(tmp_path):
  # 12 high × 20 wide: the centered 12×12 square is one colour, the 4-pixel bands either side
  # others. Cropped and resized to 8, every pixel is that colour (a bicubic filter's weights sum
  # to 1); grey is ITU-R 601 luma, round(0.299·10 + 0.587·200 + 0.114·30) = round(123.81) = 124.
  image = np.zeros((12, 20, 3), np.uint8)
  image[:, :4], image[:, 4:16], image[:, 16:] = (255, 0, 0), (10, 200, 30), (0, 0, 255)
  # a JPEG of that colour alone (JPEG rings at colour edges): checked within JPEG's error
  _write(tmp_path / "src" / "c.jpg", np.full((16, 16, 3), (10, 200, 30), np.uint8))
  _write(tmp_path / "src" / "wide.png", image)
  _write(tmp_path / "src" / "grey.png", np.full((8, 8, 1), 77, np.uint8))
  _write(tmp_path / "src" / ".ipynb_checkpoints" / "grey.png", image)  # hidden: skipped
  (tmp_path / "src" / "notes.txt").write_text("not an image: skipped")
  flat = {"image_size": 8, "class_conditional": False}
  # file-name order: c.jpg, grey.png, wide.png
  jpeg, grey, png = _records(
    _prepare(tmp_path / "src", tmp_path / "d", channels=3, **flat), "train"
  )
  np.testing.assert_array_equal(grey["image"], np.full((8, 8, 3), 77))  # grey → RGB: replicated
  np.testing.assert_array_equal(png["image"], np.broadcast_to([10, 200, 30], (8, 8, 3)))
  assert np.abs(jpeg["image"].astype(int) - [10, 200, 30]).max() <= 3
  jpeg, grey, png = _records(
    _prepare(tmp_path / "src", tmp_path / "d", channels=1, **flat), "train"
  )
  np.testing.assert_array_equal(grey["image"], np.full((8, 8, 1), 77))
  np.testing.assert_array_equal(png["image"], np.full((8, 8, 1), 124))
  assert np.abs(jpeg["image"].astype(int) - 124).max() <= 3


def _nothing_written(tmp_path):
  assert not (tmp_path / "run").exists()  # refused before the workdir is made
  prepared = tmp_path / "data"
  assert not prepared.exists() or not [p for p in prepared.iterdir() if "folder_" in p.name]


def _cli_error(tmp_path, folder, **overrides):
  """The one `error:` line of `python -m jaxdiff.main --mode=train` on `folder`; exit status 1."""
  result = subprocess.run(
    cli(tmp_path / "run", tmp_path / "data", **{"data.folder": str(folder), **overrides}),
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  (line,) = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
  _nothing_written(tmp_path)
  return line


def _digit(label, i=0):
  return np.full((16, 16, 1), 10 * label + i, np.uint8)


def _two_classes(src):
  _write(src / "3" / "a.png", _digit(3))
  _write(src / "7" / "a.png", _digit(7))


def test_a_missing_folder_or_a_corrupt_image_ends_in_one_sentence_on_the_command_line(tmp_path):
  line = _cli_error(tmp_path, tmp_path / "nowhere")
  assert line == (
    f"error: data.folder={tmp_path / 'nowhere'} does not exist; point --config.data.folder at a "
    "folder of images."
  )
  _two_classes(tmp_path / "src")
  bad = tmp_path / "src" / "7" / "b.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  line = _cli_error(tmp_path, tmp_path / "src", **{"data.num_classes": 2})
  assert line.startswith(f"error: {bad} cannot be read as an image (")
  assert line.endswith("); remove or replace it.")
  assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()]  # no half-built copy


@pytest.mark.parametrize(
  "case, expected",
  [
    ("empty", "holds no images (1 files, none ending in .png, .jpg, .jpeg); put PNG or JPEG"),
    ("one_class", "has one class subfolder (7): a class-conditional model needs two or more"),
    ("num_classes", "has 2 class subfolders (3, 7) but data.num_classes=10; set --config.data."),
    ("flat", "has no class subfolders, so its images have no labels for a class-conditional"),
    ("channels", "data.channels=4: the images of data.folder are converted to 1 (grey) or 3"),
  ],
)
def test_a_bad_folder_is_refused_before_the_run_starts(tmp_path, case, expected):
  # The check path `python -m jaxdiff.main` takes (run.setup; main prints the ValueError as one
  # `error:` line with exit status 1, as the command-line test above shows), in this process: a
  # command line per case would cost the suite a JAX start each.
  src = tmp_path / "src"
  overrides = {}
  if case == "empty":
    (src / "7").mkdir(parents=True)
    (src / "7" / "notes.txt").write_text("no images here")
  elif case == "one_class":
    _write(src / "7" / "a.png", _digit(7))
  elif case in ("num_classes", "channels"):
    _two_classes(src)
    overrides = {"data.channels": 4} if case == "channels" else {}
  elif case == "flat":
    _write(src / "a.png", _digit(3))
  folder_lib.prepare.cache_clear()
  config = configured(
    ROOT / "configs" / "digits.py",
    {**TINY, "data.data_dir": str(tmp_path / "data"), "data.folder": str(src), **overrides},
  )
  with pytest.raises(ValueError) as refused:
    run_lib.setup(config, tmp_path / "run")
  message = str(refused.value)
  assert expected in message and "\n" not in message and message.endswith(".")
  _nothing_written(tmp_path)


def test_train_on_the_command_line_from_a_folder_in_a_bucket(bucket, tmp_path):
  # The folder and the prepared copy both in the emulated bucket (tests/bucket.py): the run lists
  # the folder, builds the copy locally, moves it up and trains from it.
  # Ten classes, as the digits: the run's programs are those of tests/test_train.py's tiny runs.
  images = {f"{c}/{i}.png": _digit(c, i) for c in range(10) for i in range(2)}
  for rel, image in images.items():
    _write(tmp_path / "src" / rel, image)
  src = bucket.upload(tmp_path / "src", "folder/src").rstrip("/")
  workdir = tmp_path / "run"
  overrides = {"data.folder": src, "train.num_steps": 2}
  result = subprocess.run(
    bucket.command(cli(workdir, bucket.url("folder/data").rstrip("/"), **overrides)),
    env=bucket.environment(dict(os.environ)),
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert (
    f"Preparing 20 train images of {src}, 10 classes (0, 1, 2, 3, 4, 5, 6, 7, 8, 9) in gs://"
    in result.stdout
  )
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert lines[-1]["step"] == 2 and np.isfinite(lines[-1]["loss"])
  assert json.loads((workdir / "config.json").read_text())["data"]["folder"] == src
  # the copy in the bucket (read from the emulator's files): the images in file-name order
  name = folder_lib.dataset_name(src, 16, 1)
  copy = data.Prepared(name, str(bucket.local("folder/data")), {}, (), "")
  records = _records(copy, "train")
  order = sorted(images, key=lambda rel: (rel.rsplit("/", 1)[-1], rel))
  np.testing.assert_array_equal(
    np.stack([r["image"] for r in records]), np.stack([images[rel] for rel in order])
  )
  assert [r["label"] for r in records] == [int(rel.split("/")[0]) for rel in order]
