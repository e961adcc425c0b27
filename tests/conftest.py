"""Eight fake CPU devices for every test, so sharded code paths run on a laptop and in CI, and
jaxdiff's XLA:CPU flag (jaxdiff.cpu), so every parity test also holds with it, as the CLI runs."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One compilation cache for the session, shared with the CLI subprocesses the tests start.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(tempfile.gettempdir(), f"jaxdiff-test-xla-{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def environment_of_one_device() -> dict:
  """This process's environment less the eight fake devices above: what a user's CPU process
  sees (for the subprocesses and kernels that a test starts as a user would)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(
    f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f
  )
  return env


# After the variables above (jax reads JAX_PLATFORMS when imported) and before any test creates a
# backend; the CLI subprocesses the tests start inherit the result.
from jaxdiff import cpu  # noqa: E402

cpu.apply_xla_flags()


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def bucket(tmp_path_factory):
  """One emulated GCS bucket for the session (tests/bucket.py); each test uses keys of its own."""
  from bucket import start

  served = start(tmp_path_factory.mktemp("emulator") / "data")
  yield served
  served.stop()
