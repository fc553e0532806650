"""The train state and its shardings, derived from abstract shapes.

  abstract model (nnx.eval_shape) -> logical axes per parameter -> PartitionSpec under the
  config's rules -> NamedSharding; optimizer-state shardings mirror the parameters they track
  (optax.tree_map_params), everything else (counts) is replicated.

Parameters are initialised directly into their shardings by a jitted init with out_shardings, so
no host or device ever holds the whole unsharded model.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlhf_jax.parallel import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # nested dict of arrays (nnx.to_pure_dict of the model's Param state)
  opt_state: Any


def abstract_model(make_model: Callable[[nnx.Rngs], nnx.Module]):
  """(graphdef, abstract Param state) of the model without allocating it."""
  model = nnx.eval_shape(lambda: make_model(nnx.Rngs(0)))
  graphdef, params, _ = nnx.split(model, nnx.Param, ...)
  return graphdef, params


def state_shardings(abstract_params, tx: optax.GradientTransformation, mesh, rules) -> TrainState:
  """NamedShardings for every leaf of the TrainState."""
  param_sh = sharding_lib.param_shardings(abstract_params, mesh, rules)
  pure_params = nnx.to_pure_dict(abstract_params)
  abstract_opt = jax.eval_shape(tx.init, pure_params)
  repl = sharding_lib.replicated(mesh)
  opt_sh = optax.tree_map_params(tx, lambda _, sh: sh, abstract_opt, param_sh,
                                 transform_non_params=lambda _: repl)
  return TrainState(step=repl, params=param_sh, opt_state=opt_sh)


def init_state(make_model, tx, mesh, rules, seed: int):
  """Returns (graphdef, state, shardings): a freshly initialised, sharded TrainState."""
  graphdef, abstract_params = abstract_model(make_model)
  shardings = state_shardings(abstract_params, tx, mesh, rules)

  def init():
    model = make_model(nnx.Rngs(seed))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  state = jax.jit(init, out_shardings=shardings)()
  return graphdef, state, shardings


def param_count(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
