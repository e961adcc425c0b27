"""Checkpoints in a bucket, against the GCS emulator on loopback (tests/bucket.py), and locally.

In a bucket Orbax writes a step's folder in place and marks it finished with commit_success.txt
(locally it renames a temporary folder): read_latest passes over a step folder without that mark,
as a run killed while saving leaves it; a corrupt newest checkpoint is moved to
checkpoints_corrupt/ whole (a bucket cannot rename a folder: copied, then deleted) and the previous
one restored. An async save holds the state as save() found it, although the caller donates and
overwrites its buffers right after, and an error of a save started in the background surfaces at
the next wait. The bucket cases run in a child process inside the emulator's namespace.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.checkpoint import Checkpointer, abstract

# What each child runs: argv[1] is a checkpoint directory, a local folder or a bucket URL.
COMMON = """
import sys
import jax.numpy as jnp
import numpy as np
from etils import epath
from jaxdiff.checkpoint import Checkpointer, abstract, read_latest

directory = epath.Path(sys.argv[1])
in_bucket = directory.as_posix().startswith("gs://")

def tree(v):
  return {"w": jnp.full((64, 8), v, jnp.float32), "b": jnp.arange(8.0) + v}

ckpt = Checkpointer(directory)
ckpt.save(2, tree(2.0), {"at": 2})
ckpt.save(4, tree(4.0), {"at": 4})
ckpt.wait()
ckpt.close()
"""

UNFINISHED = (
  COMMON
  + """
# step 4 as a run killed while saving it leaves it: in a bucket its folder without the commit
# mark, locally the temporary folder Orbax had not yet renamed
if in_bucket:
  (directory / "4" / "commit_success.txt").unlink()
else:
  (directory / "4").rename(directory / "4.orbax-checkpoint-tmp-1234567")
assert (directory / "4" / "state").exists() == in_bucket
step, fields = read_latest(directory, {"w": abstract(tree(0.0))["w"]})
assert step == 2, step
np.testing.assert_array_equal(fields["w"], tree(2.0)["w"])
ckpt = Checkpointer(directory)
assert ckpt.steps() == [2], ckpt.steps()
ckpt.close()
print("passed over the unfinished step")
"""
)

CORRUPT = (
  COMMON
  + """
def files(folder):  # folder by folder: epath globs no bucket recursively
  names = []
  for p in folder.iterdir():
    names += [f"{p.name}/{name}" for name in files(p)] if p.is_dir() else [p.name]
  return sorted(names)

newest = directory / "4"
held = files(newest)
assert "commit_success.txt" in held and any(name.startswith("state/") for name in held), held
victim = max((newest / name for name in held if name.startswith("state/")),
             key=lambda p: len(p.read_bytes()))
victim.write_bytes(victim.read_bytes()[:10])  # truncated
ckpt = Checkpointer(directory)
step, restored, data = ckpt.restore_latest(abstract(tree(0.0)))
assert step == 2 and data == {"at": 2}, (step, data)
np.testing.assert_array_equal(restored["w"], tree(2.0)["w"])
assert ckpt.steps() == [2], ckpt.steps()
ckpt.close()
aside = directory.parent / "checkpoints_corrupt" / "4"
assert files(aside) == held, (files(aside), held)  # moved whole, the truncated file included
assert not newest.exists() and files(directory / "2")
print("moved aside and restored the previous one")
"""
)


def run_child(program, directory, bucket=None):
  command = [sys.executable, "-c", program, directory]
  env = dict(os.environ)
  if bucket is not None:
    command, env = bucket.command(command), bucket.environment(env)
  done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  return done.stdout


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_read_latest_passes_over_a_step_folder_that_is_not_finished(where, request, tmp_path):
  if where == "bucket":
    bucket = request.getfixturevalue("bucket")
    out = run_child(UNFINISHED, bucket.url("unfinished/checkpoints"), bucket)
    # step 4's objects are still there, unread: only the commit mark went
    assert bucket.local("unfinished/checkpoints/4/state").exists()
  else:
    out = run_child(UNFINISHED, str(tmp_path / "checkpoints"))
  assert "passed over the unfinished step" in out


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_previous_restored(
  where, request, tmp_path
):
  if where == "bucket":
    bucket = request.getfixturevalue("bucket")
    out = run_child(CORRUPT, bucket.url("corrupt/checkpoints"), bucket)
    aside = bucket.local("corrupt/checkpoints_corrupt/4")
    assert (aside / "commit_success.txt").is_file()
    left = bucket.local("corrupt/checkpoints/4")
    assert not left.exists() or not [p for p in left.rglob("*") if p.is_file()]
  else:
    out = run_child(CORRUPT, str(tmp_path / "checkpoints"))
    assert (tmp_path / "checkpoints_corrupt" / "4" / "state").is_dir()
  assert "moved aside and restored the previous one" in out


def test_an_async_save_holds_the_state_as_save_found_it(tmp_path):
  tree = {"w": jnp.arange(4096.0).reshape(64, 64), "step": jnp.asarray(3, jnp.int32)}
  expected = {k: np.array(v, copy=True) for k, v in tree.items()}
  ckpt = Checkpointer(tmp_path / "checkpoints")
  ckpt.save(3, tree, {"next_index": 3})
  # the train step's way: the saved buffers donated and overwritten at once
  overwrite = jax.jit(lambda t: jax.tree.map(lambda x: -x - 1, t), donate_argnums=0)
  after = jax.block_until_ready(overwrite(tree))
  assert tree["w"].is_deleted()
  ckpt.wait()
  step, restored, data = ckpt.restore_latest(abstract(after))
  assert step == 3 and data == {"next_index": 3}
  jax.tree.map(np.testing.assert_array_equal, restored, expected)
  ckpt.save(3, after, force=True)  # a step already saved: Orbax refuses it in the background
  with pytest.raises(Exception, match="already exists"):
    ckpt.wait()
  ckpt.close()
