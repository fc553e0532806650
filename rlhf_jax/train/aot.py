"""Ahead-of-time compilation from abstract shapes, the compiler's memory analysis, and an estimate
of device memory per role of an RLHF run.

  abstract_train_state   TrainState of ShapeDtypeStructs carrying their NamedShardings (nothing
                         is allocated: the model is built under nnx.eval_shape)
  compile_train_step     jax.jit(step, shardings as the loop uses them).lower(abstract).compile()
  memory_stats           compiled.memory_analysis() as a dict of bytes per device
  role_memory            parameter counts and bytes (total and per device, from each leaf's
                         dtype and shard shape) of policy, reference, critic, reward model and
                         optimizer state

Per device, an executable needs about  arguments + outputs - aliased (donated) + temporaries;
`memory_stats` reports that as `total_per_device_bytes` next to XLA's own peak estimate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlhf_jax import models
from rlhf_jax.parallel import sharding as sharding_lib
from rlhf_jax.train import lora, loop, optimizer as optimizer_lib, sft
from rlhf_jax.train import state as state_lib

MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                 "temp_size_in_bytes", "generated_code_size_in_bytes", "peak_memory_in_bytes")


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `abstract` (arrays or ShapeDtypeStructs) carrying `shardings`."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def abstract_train_state(make_model: Callable, tx: optax.GradientTransformation, mesh, rules):
  """(graphdef, abstract TrainState, TrainState shardings) without allocating anything."""
  graphdef, abstract_params = state_lib.abstract_model(make_model)
  shardings = state_lib.state_shardings(abstract_params, tx, mesh, rules)
  abstract = jax.eval_shape(
      lambda p: state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                     opt_state=tx.init(p)),
      nnx.to_pure_dict(abstract_params))
  return graphdef, with_shardings(abstract, shardings), shardings


def abstract_batch(shapes: Mapping[str, tuple], mesh, dtype=jnp.int32) -> dict:
  """{name: ShapeDtypeStruct(global shape, dtype)} split over the data axes, as loop.to_global."""
  return {k: jax.ShapeDtypeStruct(tuple(s), dtype,
                                  sharding=sharding_lib.batch_sharding(mesh, len(s)))
          for k, s in shapes.items()}


def batch_like(arrays: Mapping[str, np.ndarray], global_batch: int, mesh) -> dict:
  """Abstract global batches of `global_batch` rows of a prepared dataset's fields."""
  return {k: jax.ShapeDtypeStruct((global_batch,) + v.shape[1:], v.dtype,
                                  sharding=sharding_lib.batch_sharding(mesh, v.ndim))
          for k, v in arrays.items()}


def compile_train_step(train_step: Callable, abstract_state, state_shardings, batch, mesh):
  """The loop's jit of `train_step` (loop.jit_train_step), lowered and compiled ahead of time."""
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding_lib.replicated(mesh))
  jitted = loop.jit_train_step(train_step, state_shardings, batch, mesh)
  return jitted.lower(abstract_state, batch, rng).compile()


def memory_stats(compiled) -> dict[str, int]:
  """Bytes per device from `compiled.memory_analysis()`; raises if the backend reports none."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    raise RuntimeError("this backend reports no memory analysis for compiled executables")
  out = {f: int(getattr(analysis, f)) for f in MEMORY_FIELDS if hasattr(analysis, f)}
  out["total_per_device_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                   - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
  return out


def leaf_bytes(x) -> tuple[int, int]:
  """(global bytes, bytes on one device) of an array / ShapeDtypeStruct with a sharding."""
  itemsize = np.dtype(x.dtype).itemsize
  sharding = getattr(x, "sharding", None)
  local = sharding.shard_shape(x.shape) if sharding is not None else x.shape
  return math.prod(x.shape) * itemsize, math.prod(local) * itemsize


@dataclasses.dataclass
class RoleMemory:
  role: str
  params: int            # scalars
  bytes: int             # whole role, all devices together
  bytes_per_device: int  # one device's shards (replicated leaves count in full)
  dtypes: str


def tree_memory(role: str, tree: Any) -> RoleMemory:
  leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "shape")]
  sizes = [leaf_bytes(x) for x in leaves]
  dtypes = sorted({str(np.dtype(x.dtype)) for x in leaves})
  return RoleMemory(role, sum(math.prod(x.shape) for x in leaves), sum(s[0] for s in sizes),
                    sum(s[1] for s in sizes), ",".join(dtypes))


def _abstract_params(make_model, mesh, rules, dtype: Optional[str] = None):
  _, abstract = state_lib.abstract_model(make_model)
  pure = nnx.to_pure_dict(abstract)
  if dtype is not None:
    pure = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.dtype(dtype)), pure)
  return pure, sharding_lib.param_shardings(abstract, mesh, rules)


def role_trees(model_cfg: models.ModelConfig, tx: optax.GradientTransformation, mesh, rules, *,
               roles: Iterable[str] = ("policy", "reference", "critic", "reward_model"),
               reference_dtype: Optional[str] = None, reward_ensemble: int = 1,
               make_policy: Optional[Callable] = None,
               policy_tx: Optional[optax.GradientTransformation] = None) -> dict[str, Any]:
  """Abstract sharded trees of each role of an RLHF run on `mesh`.

  policy / critic train (float32 master weights + `tx`'s state: `optimizer_state/<role>`);
  reference and reward model are frozen, stored in param_dtype unless `reference_dtype` says
  otherwise; the reward model is `reward_ensemble` stacked members. `make_policy` overrides the
  policy's model and `policy_tx` its optimizer (e.g. LoRA's, train/lora.py `pieces`).
  """
  make_lm = make_policy or (lambda r: models.Transformer(model_cfg, rngs=r))
  make_scalar = lambda r: models.ScalarModel(model_cfg, rngs=r)
  out = {}
  for role in roles:
    if role in ("policy", "critic"):
      pure, sh = _abstract_params(make_lm if role == "policy" else make_scalar, mesh, rules)
      out[role] = with_shardings(pure, sh)
      role_tx = policy_tx if role == "policy" and policy_tx is not None else tx
      opt_sh = state_lib.shardings_for_params(pure, sh, role_tx, mesh).opt_state
      out[f"optimizer_state/{role}"] = with_shardings(jax.eval_shape(role_tx.init, pure), opt_sh)
    elif role == "reference":
      pure, sh = _abstract_params(lambda r: models.Transformer(model_cfg, rngs=r), mesh, rules,
                                  reference_dtype)
      out[role] = with_shardings(pure, sh)
    elif role == "reward_model":
      pure, sh = _abstract_params(make_scalar, mesh, rules, reference_dtype)
      if reward_ensemble > 1:
        pure = jax.tree.map(lambda a: jax.ShapeDtypeStruct((reward_ensemble,) + a.shape, a.dtype),
                            pure)
        sh = state_lib.stacked(sh, mesh)
      out[role] = with_shardings(pure, sh)
    else:
      raise ValueError(f"unknown role {role!r}; valid: ['policy', 'reference', 'critic', "
                       "'reward_model']")
  return out


def role_memory(trees: Mapping[str, Any]) -> list[RoleMemory]:
  """One RoleMemory per role tree, then a 'total' row."""
  rows = [tree_memory(role, tree) for role, tree in trees.items()]
  rows.append(RoleMemory("total", sum(r.params for r in rows), sum(r.bytes for r in rows),
                         sum(r.bytes_per_device for r in rows), ""))
  return rows


def gib(n: float) -> str:
  """Bytes in binary units: KiB below a MiB, MiB below a GiB, else GiB."""
  for unit, scale in (("KiB", 2 ** 10), ("MiB", 2 ** 20), ("GiB", 2 ** 30)):
    if abs(n) < 1024 * scale or unit == "GiB":
      return f"{n / scale:.2f} {unit}"
  raise AssertionError("unreachable")


def format_roles(rows: list[RoleMemory]) -> str:
  lines = [f"{'role':<26}{'params':>16}{'total':>14}{'per device':>14}  dtypes"]
  for r in rows:
    lines.append(f"{r.role:<26}{r.params:>16,}{gib(r.bytes):>14}{gib(r.bytes_per_device):>14}"
                 f"  {r.dtypes}")
  return "\n".join(lines)


def format_memory(stats: Mapping[str, int]) -> str:
  return "\n".join(f"{k:<30}{v:>16,} B  ({gib(v)})" for k, v in stats.items())


def log_train_step_memory(train_step: Callable, state, state_shardings, arrays, global_batch: int,
                          mesh):
  """Compiles a stage's train step ahead of time from the shapes of its (allocated) state and of
  its dataset's batches; logs the memory analysis and the state's bytes (policy parameters,
  optimizer state). Returns (compiled step, memory_stats, rows): the compiled step can be given
  to `loop.run(..., jit=False)` so the loop does not compile again."""
  abstract = with_shardings(state, state_shardings)
  compiled = compile_train_step(train_step, abstract, state_shardings,
                                batch_like(arrays, global_batch, mesh), mesh)
  stats = memory_stats(compiled)
  rows = role_memory({"policy": abstract.params, "optimizer_state/policy": abstract.opt_state})
  logging.info("train step memory analysis (per device):\n%s", format_memory(stats))
  logging.info("train state memory:\n%s", format_roles(rows))
  return compiled, stats, rows


@dataclasses.dataclass
class Report:
  """An ahead-of-time compiled SFT step: XLA's analysis and the estimates to compare it with."""
  memory: dict                 # memory_stats of the compiled step (bytes per device)
  roles: list[RoleMemory]      # role_memory of an RLHF run with this model
  state_per_device_bytes: int  # the step's train state (policy + optimizer state) on one device
  batch_per_device_bytes: int
  compile_seconds: float


def sft_report(config, model_cfg: models.ModelConfig, mesh, rules) -> Report:
  """Compiles the SFT train step of `config` for `model_cfg` from abstract shapes only (as the
  stage builds it: optimizer, LoRA, micro-batches; a [data.batch_size, prompt_len +
  completion_len] batch) and estimates every role's memory on `mesh`."""
  make_plain = lambda r: models.Transformer(model_cfg, rngs=r)
  base_tx = optimizer_lib.make_optimizer(config.optimizer, config.train.num_steps)
  make_model, tx, trainable = lora.pieces(config.lora, make_plain, base_tx)
  graphdef, state, shardings = abstract_train_state(make_model, tx, mesh, rules)
  length = config.data.prompt_len + config.data.completion_len
  batch = abstract_batch({k: (config.data.batch_size, length)
                          for k in ("tokens", "mask", "completion_mask")}, mesh)
  step = sft.make_train_step(graphdef, tx, microbatches=config.train.microbatches,
                             trainable=trainable)
  start = time.perf_counter()
  compiled = compile_train_step(step, state, shardings, batch, mesh)
  seconds = time.perf_counter() - start
  trees = role_trees(model_cfg, base_tx, mesh, rules, make_policy=make_model, policy_tx=tx)
  return Report(memory_stats(compiled), role_memory(trees),
                tree_memory("state", state).bytes_per_device,
                tree_memory("batch", batch).bytes_per_device, seconds)
