"""A one-parameter model run by the real training loop (train/loop.py), in milliseconds per step:
for the tests of what the loop guarantees (non-finite guard, checkpoints, metrics, resume)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax import configlib
from rlhf_jax.parallel import mesh as mesh_lib, sharding as sharding_lib
from rlhf_jax.train import loop, state as state_lib

NUM_DEVICES = 8


class Batches:
  """Batches of x = 1 (8 rows, one per device); x = NaN at the steps in `bad` (1-based: the
  batch of step k). Checkpointable like a grain iterator."""

  def __init__(self, bad=()):
    self.i, self.bad = 0, set(bad)

  def __next__(self):
    self.i += 1
    value = np.nan if self.i in self.bad else 1.0
    return {"x": np.full((NUM_DEVICES,), value, np.float32)}

  def get_state(self):
    return {"i": self.i}

  def set_state(self, state):
    self.i = state["i"]


def step(state, batch, rng):
  """SGD on loss = (w - 3)^2 * mean(x): w moves towards 3 while x = 1."""
  del rng
  def loss_fn(params):
    return jnp.square(params["w"] - 3.0) * jnp.mean(batch["x"])
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = TX.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return (state_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state),
          {"loss": loss, "grad_norm": optax.tree.norm(grads)})


TX = optax.sgd(0.1)


def config(**train):
  overrides = [("train.num_steps", "10"), ("train.log_every", "1"), ("train.eval_every", "0"),
               ("train.checkpoint_every", "2"), ("train.keep_checkpoints", "10")]
  overrides += [(f"train.{k}", str(v)) for k, v in train.items()]
  return configlib.get("configs/sft.py:test", overrides)


def initial_state(w=0.0):
  """(mesh, state, shardings) of the toy model at step 0."""
  mesh = mesh_lib.make_mesh({"data": -1})
  repl = sharding_lib.replicated(mesh)
  state, shardings = state_lib.state_from_params({"w": jnp.float32(w)}, {"w": repl}, TX, mesh)
  return mesh, state, shardings


def run(workdir, *, bad=(), batches=None, **train):
  """loop.run of the toy model in `workdir` on `batches` (default: Batches(bad)); returns
  (LoopResult, the batch iterator)."""
  mesh, state, shardings = initial_state()
  batches = Batches(bad) if batches is None else batches
  result = loop.run(config=config(**train), workdir=str(workdir), mesh=mesh, state=state,
                    state_shardings=shardings, train_step=step, train_iter=batches)
  return result, batches
