"""train/tokens_per_sec is the wall-clock rate: the loop's window ends only once the device
work of its steps is done (JAX dispatches asynchronously, so a host timer alone would measure
the dispatch and report many times the real rate)."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax.parallel import mesh as mesh_lib, sharding as sharding_lib
from rlhf_jax.train import loop, metrics as metrics_lib, state as state_lib
from tests import toyloop

TOKENS = 1000  # per step, as the stage's tokens_per_step would count them
TX = optax.sgd(1e-3)


def slow_step(state, batch, rng):
  """Tens of milliseconds of device work per step: 40 dependent 256 x 256 matmuls."""
  del rng
  def body(_, m):
    return jnp.tanh(m @ state.params["w"])
  m = jax.lax.fori_loop(0, 40, body, state.params["w"] * jnp.mean(batch["x"]))
  grads = {"w": m * 1e-6}
  updates, opt_state = TX.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return (state_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state),
          {"loss": jnp.mean(m)})


class TimedWriter(metrics_lib.MetricsWriter):
  """Records when each row is written: the loop resets its window right after a write."""
  times: dict = {}

  def write(self, step, row):
    out = super().write(step, row)
    TimedWriter.times[step] = time.perf_counter()
    return out


def test_tokens_per_sec_matches_the_wall_clock(tmp_path, monkeypatch):
  monkeypatch.setattr(loop, "MetricsWriter", TimedWriter)
  mesh = mesh_lib.make_mesh({"data": -1})
  w = jnp.asarray(np.random.default_rng(0).normal(size=(256, 256)) / 16, jnp.float32)
  state, shardings = state_lib.state_from_params({"w": w}, {"w": sharding_lib.replicated(mesh)},
                                                 TX, mesh)
  config = toyloop.config(num_steps=15, log_every=5, checkpoint_every=1000)
  loop.run(config=config, workdir=str(tmp_path), mesh=mesh, state=state,
           state_shardings=shardings, train_step=slow_step, train_iter=toyloop.Batches(),
           tokens_per_step=lambda batch: TOKENS)
  rows = {r["step"]: r for r in metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))}
  times = TimedWriter.times
  # The windows after the first (which includes compilation): steps 6-10 and 11-15.
  for end in (10, 15):
    wall = times[end] - times[end - 5]
    assert wall > 0.05, f"the steps are too fast to time ({wall:.3f} s)"
    reported = rows[end]["train/tokens_per_sec"]
    assert abs(reported * wall / (5 * TOKENS) - 1) < 0.2, (end, reported, 5 * TOKENS / wall)
