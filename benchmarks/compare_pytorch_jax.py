"""The jaxdiff side of benchmarks/compare_pytorch.py: a worker serving the same requests as
compare_pytorch_torch.py (the protocol is described there), for the network that worker built.

compare_pytorch.py starts it with this interpreter; it applies jaxdiff's XLA:CPU flag first, as
`python -m jaxdiff.main` does.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from workers import serve  # noqa: E402


def jax_programs(
  model, *, steps_per_call: int, sample_steps: int, train_labels=None, sample_labels=None
):
  """(params, tx, train_call, sample, model_def) for a jaxdiff network: train_call(params,
  opt_state, x0, key) runs `steps_per_call` unrolled ε-MSE Adam steps (as
  jaxdiff.train.step.make_train_fn does) and returns (params, opt_state, loss); sample(params,
  x_T) is DDIM with `sample_steps` steps. The labels, if any, condition every call."""
  import jax
  import optax
  from flax import nnx

  from jaxdiff import diffusion, schedules
  from jaxdiff.samplers import ddim
  from jaxdiff.state import ModelDef

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  model_def = ModelDef(graphdef, rest)
  schedule = schedules.make("linear", 1000)
  tx = optax.adam(1e-4)

  def epsilon(params, labels):
    bound = model_def.bind(params)
    # a learned variance's channels follow ε's; PyTorch's side drops them the same way
    return lambda x, t: bound(x, t, labels)[..., : x.shape[-1]]

  def train_call(params, opt_state, x0, key):
    for i in range(steps_per_call):
      step_key = jax.random.fold_in(key, i)

      def loss_fn(p, step_key=step_key):
        model_fn = epsilon(p, train_labels)
        return diffusion.mse_loss(step_key, model_fn, x0, schedule=schedule)[0]

      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
    return params, opt_state, loss

  def sample(params, x_T):
    return ddim(epsilon(params, sample_labels), schedule, x_T, num_steps=sample_steps)

  return params, tx, train_call, sample, model_def


def _jax_unet(spec: dict):
  from jaxdiff.convert import load_diffusers_unet

  return load_diffusers_unet(spec["weights_dir"])


def dit_from_diffusers_config(c: dict, rngs):
  """jaxdiff's DiT of DiTTransformer2DModel's arguments `c`."""
  from jaxdiff.models import DiT

  heads = c["num_attention_heads"]
  return DiT(
    in_channels=c["in_channels"],
    image_size=c["sample_size"],
    patch_size=c["patch_size"],
    hidden_size=heads * c["attention_head_dim"],
    depth=c["num_layers"],
    num_heads=heads,
    num_classes=c["num_embeds_ada_norm"],
    learn_sigma=c["out_channels"] == 2 * c["in_channels"],
    timestep_freq_shift=1.0,  # diffusers' Timesteps(downscale_freq_shift=1)
    mlp_norm_eps=c["norm_eps"],
    rngs=rngs,
  )


def _jax_dit(spec: dict):
  """jaxdiff's DiT with the weights the PyTorch worker exported in the original's layout."""
  from jaxdiff.convert.dit import load_dit_state_dict
  from jaxdiff.models.table import abstract_module

  model = abstract_module(lambda rngs: dit_from_diffusers_config(spec["config"], rngs))
  with np.load(pathlib.Path(spec["weights_dir"]) / "dit_original.npz") as f:
    return load_dit_state_dict(model, dict(f))


JAX_NETWORKS = {"unet": _jax_unet, "dit": _jax_dit}


class JaxSide:
  """The jaxdiff worker: the network loaded from the weights the PyTorch worker saved, its train
  and DDIM programs compiled ahead of time."""

  def __init__(self, spec: dict):
    import jax
    import jax.numpy as jnp

    self.jax = jax
    k = spec["steps_per_call"]
    labels = {
      name: None if spec[name] is None else jnp.asarray(spec[name], jnp.int32)
      for name in ("train_labels", "sample_labels")
    }
    params, tx, train_call, sample, model_def = jax_programs(
      JAX_NETWORKS[spec["network"]](spec),
      steps_per_call=k,
      sample_steps=spec["sample_steps"],
      **labels,
    )

    def forward(params, x, t):
      return model_def.bind(params)(x, t, labels["sample_labels"])

    size, channels = spec["config"]["sample_size"], spec["config"]["in_channels"]
    self.params = params
    self.opt_state = tx.init(params)
    self.x0 = jax.random.uniform(
      jax.random.key(spec["seed"]), (spec["train_batch"], size, size, channels), jnp.float32, -1, 1
    )
    self.key = jax.random.key(spec["seed"] + 1)
    self.calls = 0
    self.steps_per_call = k
    self.num_params = int(sum(x.size for x in jax.tree.leaves(params)))
    x_T = jax.ShapeDtypeStruct((spec["sample_batch"], size, size, channels), jnp.float32)

    start = time.perf_counter()
    self.sample_fn = jax.jit(sample).lower(params, x_T).compile()
    self.compile_sample_s = time.perf_counter() - start
    # The train program is compiled on the first (untimed) train call, after the sampling phase:
    # a sampling process (--mode=sample) never compiles it, so the compiler's memory for it must
    # not count toward sampling's peak RSS.
    self._train_call, self.train_fn, self.compile_train_s = train_call, None, None
    self.sample_params = jax.tree.map(jnp.copy, params)
    self.forward_fn = jax.jit(forward)

  def _compile_train(self):
    start = time.perf_counter()
    self.train_fn = (
      self.jax.jit(self._train_call, donate_argnums=(0, 1))
      .lower(self.params, self.opt_state, self.x0, self.key)
      .compile()
    )
    self.compile_train_s = time.perf_counter() - start

  def setup_info(self) -> dict:
    from jaxdiff import cpu

    return {
      "params": self.num_params,
      "compile_train_s": self.compile_train_s,
      "compile_sample_s": self.compile_sample_s,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),  # as apply_xla_flags left them
      "cpu_fast_paths": cpu.status(),
    }

  def train(self, steps: int) -> float:
    if steps % self.steps_per_call:
      raise ValueError(f"{steps} steps do not split into calls of {self.steps_per_call}.")
    jax = self.jax
    if self.train_fn is None:
      self._compile_train()
    start = time.perf_counter()
    for _ in range(steps // self.steps_per_call):
      key = jax.random.fold_in(self.key, self.calls)
      self.params, self.opt_state, loss = self.train_fn(self.params, self.opt_state, self.x0, key)
      self.calls += 1
    jax.block_until_ready(loss)
    return time.perf_counter() - start

  def forward(self, x: np.ndarray, t: int) -> np.ndarray:
    t = np.full((len(x),), t, np.int32)
    return np.asarray(self.forward_fn(self.sample_params, x, t))

  def sample(self, x_T: np.ndarray) -> tuple[float, np.ndarray]:
    x_T = self.jax.device_put(x_T)
    start = time.perf_counter()
    x0 = self.jax.block_until_ready(self.sample_fn(self.sample_params, x_T))
    return time.perf_counter() - start, np.asarray(x0)


if __name__ == "__main__":
  from jaxdiff import cpu

  cpu.apply_xla_flags()  # before JaxSide creates JAX's backend
  serve(JaxSide)
