"""One process of the multi-process test (tests/test_multiprocess.py): 4 CPU devices of 8.

    python tests/multiprocess_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID WORKDIR

Joins the job through jaxdiff.parallel.initialize_distributed, trains the tiny digits config for
5 steps on the same synthetic global batches as the single-process reference (each process feeds
its own rows), saves a checkpoint from all processes, restores it, and (process 0) prints the
losses and the restored step as one JSON line.
"""

import json
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from jaxdiff import parallel  # noqa: E402


def main(coordinator, num_processes, process_id, workdir):
  parallel.initialize_distributed(coordinator, int(num_processes), int(process_id))
  from test_train import multiprocess_reference_setup  # noqa: PLC0415 — after initialize

  from jaxdiff.checkpoint import Checkpointer, abstract  # noqa: PLC0415

  fn, state, global_batches = multiprocess_reference_setup()
  losses = []
  for batch in global_batches:
    state, metrics = fn(state, batch, None)
    losses.append(float(metrics["loss"][0]))
  ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  ckpt.save(5, state, force=True)
  ckpt.wait()
  step, restored, _ = ckpt.restore_latest(abstract(state))
  same = all(
    np.array_equal(x.data, y.data)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state))
    for x, y in zip(a.addressable_shards, b.addressable_shards)
  )
  ckpt.close()
  if jax.process_index() == 0:
    print(json.dumps({"losses": losses, "restored_step": step, "restored_equal": same}))


if __name__ == "__main__":
  main(*sys.argv[1:])
