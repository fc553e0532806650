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

from jax.sharding import NamedSharding, PartitionSpec as P

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
  return shardings_for_params(nnx.to_pure_dict(abstract_params), param_sh, tx, mesh)


def _masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def shardings_for_params(pure_params, param_sh, tx, mesh) -> TrainState:
  """TrainState shardings given the parameters' (abstract) values and shardings.

  Optimizer moments take their parameter's sharding; masked optimizers (multi_transform /
  masked, e.g. a frozen LoRA base) hold optax.MaskedNode for frozen leaves, kept as is."""
  abstract_opt = jax.eval_shape(tx.init, pure_params)
  repl = sharding_lib.replicated(mesh)
  opt_sh = optax.tree_map_params(tx, lambda v, sh: v if _masked(v) else sh, abstract_opt,
                                 param_sh, transform_non_params=lambda _: repl, is_leaf=_masked)
  return TrainState(step=repl, params=param_sh, opt_state=opt_sh)


def run_once(fn, out_shardings, *args):
  """`jax.jit(fn, out_shardings=...)(*args)` for a program that runs once per process (random
  initialisation). On a CPU it is compiled with XLA's backend optimisation off: the values are
  the same computation (threefry bits exact; the float transforms may round differently in the
  last bit) and compiling takes a fraction of the time (the `tiny` model's init: 5.1 s -> 2.0 s
  on a 2-core Zen 3). Other platforms compile as usual."""
  lowered = jax.jit(fn, out_shardings=out_shardings).lower(*args)
  cpu = jax.devices()[0].platform == "cpu"
  return lowered.compile(compiler_options={"xla_backend_optimization_level": 0} if cpu
                         else None)(*args)


def init_params(make_model, mesh, rules, seed: int):
  """(graphdef, params): fresh parameters created directly in their shardings."""
  graphdef, abstract = abstract_model(make_model)
  shardings = sharding_lib.param_shardings(abstract, mesh, rules)
  # The key is an argument, not a constant of the program: every seed runs the same compiled
  # program (one compilation, and one persistent-cache entry, per model shape).
  params = run_once(lambda key: nnx.to_pure_dict(nnx.state(make_model(nnx.Rngs(key)), nnx.Param)),
                    shardings, jax.random.key(seed))
  return graphdef, params


def init_state(make_model, tx, mesh, rules, seed: int, *, params=None):
  """Returns (graphdef, state, shardings): a sharded TrainState at step 0.

  `params` (a pure dict laid out like the model's, e.g. restored from an earlier stage) replaces
  the random initialisation."""
  graphdef, abstract_params = abstract_model(make_model)
  shardings = state_shardings(abstract_params, tx, mesh, rules)
  if params is None:
    _, params = init_params(make_model, mesh, rules, seed)

  def init(p):
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p))

  state = jax.jit(init, in_shardings=(shardings.params,), out_shardings=shardings)(params)
  return graphdef, state, shardings


def state_from_params(params, param_sh, tx, mesh):
  """(state, shardings): a step-0 TrainState around given sharded params (any pytree)."""
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  shardings = shardings_for_params(abstract, param_sh, tx, mesh)
  state = jax.jit(lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                       opt_state=tx.init(p)),
                  in_shardings=(param_sh,), out_shardings=shardings)(params)
  return state, shardings


def stacked(shardings, mesh):
  """Shardings for parameters stacked on a new leading (ensemble) axis, which is replicated."""
  return jax.tree.map(lambda s: NamedSharding(mesh, P(None, *s.spec)), shardings)


def overlay(base: dict, top: dict) -> dict:
  """Nested dict `base` with every leaf that `top` has replaced by `top`'s."""
  out = dict(base)
  for k, v in top.items():
    out[k] = overlay(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out


def init_ensemble_state(make_model, tx, mesh, rules, seeds, *, shared=None):
  """(graphdef, state, shardings) for E = len(seeds) models stacked on a leading axis.

  Member e is initialised from seed e; `shared` (a pure dict of subtrees, e.g.
  {"backbone": lm_params}) then overwrites those leaves in every member. Leaves it does not name
  keep their fresh values (e.g. LoRA adapters attached inside a shared backbone, train/lora.py).
  """
  graphdef, abstract = abstract_model(make_model)
  member_sh = sharding_lib.param_shardings(abstract, mesh, rules)
  param_sh = stacked(member_sh, mesh)
  seeds_E = jnp.asarray(seeds, jnp.uint32)

  def init(shared_params, seeds_E):
    def one(seed):
      params = nnx.to_pure_dict(nnx.state(make_model(nnx.Rngs(params=jax.random.key(seed))),
                                          nnx.Param))
      return overlay(params, shared_params or {})
    return jax.vmap(one)(seeds_E)

  params = run_once(init, param_sh, shared, seeds_E)  # seeds: an argument
  state, shardings = state_from_params(params, param_sh, tx, mesh)
  return graphdef, state, shardings


def param_count(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
