"""Command line: python -m jaxdiff.main --config=configs/X.py --workdir=DIR --mode=train|sample|eval,
or --mode=describe (no workdir: the network's parameters and Gflops, from shapes alone).

--config takes a config file, or a shipped config by name (--config=X); configs/X.py from a folder
without that file is the shipped X too, so a wheel install runs README's commands anywhere
(shipped_configs.py). Without --config: the shipped digits config.

Overrides: --config.train.num_steps=2000 (an unknown key is an error). Errors a user can cause
end in one sentence on stderr and exit code 1; checkpoints are never touched by an error.
"""

import difflib
import importlib.util
import pathlib
import re
import sys

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from jaxdiff import shipped_configs

# The shipped digits config, wherever jaxdiff is installed (a wheel, an editable install, a clone).
_DEFAULT_CONFIG = shipped_configs.shipped("digits")
# What config_flags reads as the config file and as overrides: --config=F / --config F, and
# --config.a.b=v / --config.a.b v / --noconfig.a.b (booleans).
_CONFIG_FILE_ARG = re.compile(r"--?config(?:=(.*))?", re.DOTALL)
_OVERRIDE_ARG = re.compile(r"--?(no)?config\.([^=]+)(?:=(.*))?", re.DOTALL)
# The parsers config_flags uses for these field types; values of other types (tuples, strings)
# are left to its own message.
_VALUE_PARSERS = {
  bool: (flags.BooleanParser(), "true or false"),
  int: (flags.IntegerParser(), "an integer"),
  float: (flags.FloatParser(), "a number"),
}


def _fail(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def _command_line_args(argv):
  """argv without the program name, with --flagfile contents inlined as config_flags sees them."""
  try:
    return flags.FLAGS.read_flags_from_files(list(argv[1:]), force_gnu=False)
  except flags.Error:
    return list(argv[1:])  # absl's own parse reports the bad --flagfile


def _config_file_arg(args):
  value = None
  for i, arg in enumerate(args):
    if arg == "--":
      break
    if match := _CONFIG_FILE_ARG.fullmatch(arg):
      # The last --config wins, as for any absl flag.
      value = match[1] if match[1] is not None else (args[i + 1] if i + 1 < len(args) else None)
  return value


def _resolve_config_value(value):
  """The --config value with its file resolved (shipped_configs.resolve), its :args kept; a
  value that names no config file ends here in one sentence."""
  # config_flags turns a missing config file into an error only when the config is first read,
  # deep inside a run, as a traceback.
  path, colon, config_args = value.partition(":")  # config_flags passes what follows to get_config
  if not path:
    _fail("--config is empty: give a config file (configs/digits.py) or a shipped config (digits)")
  resolved = shipped_configs.resolve(path)
  if resolved is None:
    _fail(f"--config: {shipped_configs.not_found(path)}")
  if not pathlib.Path(resolved).is_file():
    _fail(f"--config: '{path}' is not a file")
  return resolved + colon + config_args


def _resolve_config_file(args):
  """args with every --config value resolved to the file it names (see _resolve_config_value)."""
  args = list(args)
  for i, arg in enumerate(args):
    if arg == "--":
      break
    if match := _CONFIG_FILE_ARG.fullmatch(arg):
      if match[1] is not None:
        args[i] = arg[: match.start(1)] + _resolve_config_value(match[1])
      elif i + 1 < len(args):
        args[i + 1] = _resolve_config_value(args[i + 1])
  return args


def _load_config(args):
  """The config the command line names (without overrides), or None if it does not load."""
  value = _config_file_arg(args) or str(_DEFAULT_CONFIG)
  path, *config_args = value.split(":", 1)
  path = shipped_configs.resolve(path)
  if path is None:
    return None
  try:
    spec = importlib.util.spec_from_file_location("_jaxdiff_config_to_explain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(*config_args)
  except Exception:  # only used to explain another error; that error is reported instead
    return None
  return config if isinstance(config, config_dict.ConfigDict) else None


def _override_problem(args, config):
  """One sentence on the first --config.* override in args that cannot apply to config, or None.

  config_flags' own errors are a bare KeyError of the missing key, or absl's message with a
  Python conversion error; this walks the overrides itself to name the key, section and type.
  """
  for i, arg in enumerate(args):
    if arg == "--":
      break
    match = _OVERRIDE_ARG.fullmatch(arg)
    if not match or "[" in match[2]:  # subscripts (a.b[0]) are left to config_flags
      continue
    negated, path, value = match.groups()
    keys = path.split(".")
    parent, node = None, config
    for depth, key in enumerate(keys):
      section = ".".join(keys[:depth])
      if not isinstance(node, config_dict.ConfigDict):
        return f"--config.{path}: '{section}' is a value, not a section with keys"
      if key not in node:
        where = f"in section '{section}'" if section else "at its top level"
        close = difflib.get_close_matches(key, list(node.keys()), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"--config.{path}: the config has no key '{key}' {where}{hint}"
      parent, node = node, node[key]
    field_type = parent.get_type(keys[-1])
    if value is None:
      if negated or field_type is bool or i + 1 >= len(args):
        continue
      value = args[i + 1]
    parser, kind = _VALUE_PARSERS.get(field_type, (None, None))
    if parser is None:
      continue
    try:
      parser.parse(value)
    except (TypeError, ValueError):
      return f"--config.{path}={value}: '{path}' takes {kind}, not '{value}'"
  return None


def _report_flag_error(argv, error):
  args = _command_line_args(argv)
  config = _load_config(args)
  problem = _override_problem(args, config) if config is not None else None
  if problem is not None:
    _fail(problem)
  message = error.args[0] if isinstance(error, KeyError) and error.args else error
  _fail(f"{message}\nPass --helpfull to see the flags.")


def _define_config_flag():
  # config_flags applies --config.* overrides to the default config already here (when --config
  # is not given), so an unknown key fails at definition.
  try:
    config_flags.DEFINE_config_file(
      "config", str(_DEFAULT_CONFIG), "Experiment config file.", lock_config=True
    )
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    _report_flag_error(sys.argv, e)


_define_config_flag()
flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and samples (not used by describe)."
)
flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "sample", "eval", "describe"],
  "train (resumes from the newest checkpoint), sample or eval (bits/dim; both from EMA params), "
  "or describe: the network's parameters and forward Gflops, without data, checkpoint or weights.",
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
  if FLAGS.mode != "describe" and FLAGS.workdir is None:
    _fail(
      f"--mode={FLAGS.mode} needs --workdir: the run's directory, e.g. --workdir=workdir/digits"
    )
  # Imported here so that --help and flag errors answer without loading JAX and Orbax.
  import jax

  from jaxdiff import describe, evaluation, parallel, sampling
  from jaxdiff.checkpoint import CheckpointError
  from jaxdiff.data import DatasetNotPreparedError
  from jaxdiff.train import loop
  from jaxdiff.run import RunError

  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax and TFDS log every file they touch at INFO
  config = FLAGS.config
  user_errors = (RunError, CheckpointError, DatasetNotPreparedError, ValueError)
  try:
    parallel.initialize_distributed(
      FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    if FLAGS.mode == "describe":  # from shapes alone: no device is used, process 0 reports
      if jax.process_index() == 0:
        describe.report(config)
    elif FLAGS.mode == "train":
      loop.train(config, FLAGS.workdir)
    elif FLAGS.mode == "sample":
      sampling.sample(config, FLAGS.workdir)
    else:
      evaluation.evaluate(config, FLAGS.workdir)
  except user_errors as e:
    _fail(e)  # once, on stderr; absl's logging.error would repeat it
  except loop.Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(loop.PREEMPTED_EXIT_CODE)


def parse_flags(argv):
  """absl's flag parsing, with a missing config file or a bad --config override as one line; a
  --config value that names a shipped config is read as that config's file."""
  args = _resolve_config_file(_command_line_args(argv))
  try:
    return FLAGS([argv[0], *args])
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError) as e:
    _report_flag_error(argv, e)


if __name__ == "__main__":
  from jaxdiff import cpu  # the XLA:CPU flag must precede JAX's backend; see jaxdiff/cpu

  cpu.apply_xla_flags()
  app.run(main, flags_parser=parse_flags)
