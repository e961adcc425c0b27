"""configs/digits.py trained with flow matching (rectified flow, as SD3 trains it) and sampled by
integrating its ODE with UniPC in 10 steps.

The data, network, optimizer, EMA and steps are the digits default's, read from digits.py itself
so the two cannot drift apart; only the objective and the sampling change. The
network predicts the velocity v = ε − x_0 of the straight path x_σ = (1 − σ)·x_0 + σ·ε at time
t = σ·1000 (diffusion.loss='flow_matching', diffusion.prediction='flow'; jaxdiff/flow.py), σ drawn
from SD3's logit-normal (mean 0, std 1: most steps in the middle of the path, where the velocity is
hardest to predict). The DDPM schedule, v-prediction and Min-SNR weighting of the default do not
apply to a flow model and are back at their defaults.

Sampled with UniPC (bh2, order 2) on the flow σ grid as diffusers runs it (`use_flow_sigmas`) at
10 steps and guidance 1.2: on the trained U-Net (800 steps, 1000 samples, benchmarks/
digits_quality.py) it scored 0.334, against 0.561 at the default's guidance 1.5, 0.393 at 1.0,
0.412 for 10 flow Euler steps and 0.493 for 5 flow Heun steps (9 evaluations) at 1.2; a σ-grid
shift of 0.7 or 3 and UniPC's order 3 did not help.

`--config=configs/digits_flow.py:dit` trains configs/digits_dit.py's transformer this way instead
(a DiT trained with flow matching is SiT, Ma et al. 2024).

    python -m jaxdiff.main --config=configs/digits_flow.py --workdir=workdir/digits_flow
    python -m jaxdiff.main --config=configs/digits_flow.py --workdir=workdir/digits_flow --mode=sample
"""

import pathlib

from jaxdiff.config import default_config, load_file

HERE = pathlib.Path(__file__).parent


def get_config(arch: str = "unet"):
  recipes = {"unet": "digits.py", "dit": "digits_dit.py"}
  if arch not in recipes:
    raise ValueError(f"configs/digits_flow.py takes {list(recipes)} after ':', got {arch!r}.")
  c = load_file(HERE / recipes[arch])
  c.diffusion = default_config().diffusion  # no DDPM schedule, prediction or weighting of its own
  c.diffusion.loss = "flow_matching"
  c.diffusion.prediction = "flow"
  c.flow.time_sampling = "logit_normal"
  c.sample = default_config().sample  # none of the discrete grid's options (spacing)
  c.sample.sampler = "unipc"
  c.sample.unipc_solver_type = "bh2"
  c.sample.order = 2
  c.sample.num_steps = 10
  c.sample.num_samples = 100
  c.sample.batch_size = 100
  c.sample.guidance_scale = 1.2
  return c
