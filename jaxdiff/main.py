"""Command line: python -m jaxdiff.main --config=configs/X.py --workdir=DIR --mode=train|sample|eval.

Overrides: --config.train.num_steps=2000 (an unknown key is an error). Errors a user can cause
end in one sentence on stderr and exit code 1; checkpoints are never touched by an error.
"""

import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "digits.py"


def _define_config_flag():
  # config_flags applies --config.* overrides already here, so an unknown key fails at definition.
  try:
    config_flags.DEFINE_config_file(
      "config", str(_DEFAULT_CONFIG), "Experiment config file.", lock_config=True
    )
  except (AttributeError, KeyError) as e:
    print(f"error: a --config override names a key the config does not have: {e}", file=sys.stderr)
    sys.exit(1)


_define_config_flag()
flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and samples.", required=True
)
flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "sample", "eval"],
  "train (resumes from the newest checkpoint), sample or eval (bits/dim; both from EMA params).",
)
flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-process runs outside TPU pods (GPU clusters, several CPU processes): host:port of "
  "process 0, given to every process with --num_processes and --process_id. TPU pods, SLURM and "
  "Open MPI jobs are detected without it.",
)
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # Imported here so that --help and flag errors answer without loading JAX and Orbax.
  from jaxdiff import evaluation, parallel, sampling
  from jaxdiff.checkpoint import CheckpointError
  from jaxdiff.data import DatasetNotPreparedError
  from jaxdiff.train import loop
  from jaxdiff.train.setup import TrainingError

  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax and TFDS log every file they touch at INFO
  config = FLAGS.config
  user_errors = (TrainingError, CheckpointError, DatasetNotPreparedError, ValueError)
  try:
    parallel.initialize_distributed(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    if FLAGS.mode == "train":
      loop.train(config, FLAGS.workdir)
    elif FLAGS.mode == "sample":
      sampling.sample(config, FLAGS.workdir)
    else:
      evaluation.evaluate(config, FLAGS.workdir)
  except user_errors as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def parse_flags(argv):
  """absl's flag parsing, with a bad --config override (unknown key, wrong type) as one line."""
  try:
    return FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"error: {message}\nPass --helpfull to see the flags.", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  from jaxdiff import cpu  # the XLA:CPU flag must precede JAX's backend; see jaxdiff/cpu

  cpu.apply_xla_flags()
  app.run(main, flags_parser=parse_flags)
