"""Logical axis names -> mesh axes -> NamedShardings, derived from abstract shapes.

Parameters carry logical axis names (`axes` metadata, see models/transformer.py). The config's
rules map each logical name to a mesh axis, a tuple of mesh axes, or None (replicated), e.g.

  (("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ...)

A mesh axis is used at most once per array; a dimension that the mesh axes do not divide is
replicated instead (and reported by `explain`) so any preset runs on any mesh.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rlhf_jax.parallel.mesh import BATCH_AXES

DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("norm", None),
)


def _rules_dict(rules: Iterable[Sequence[Any]]) -> dict[str, Any]:
  out = {}
  for rule in rules:
    name, target = rule[0], rule[1]
    out[name] = tuple(target) if isinstance(target, (list, tuple)) else target
  return out


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh,
                    rules: Iterable[Sequence[Any]]) -> P:
  """PartitionSpec for an array with logical `axes` and `shape` on `mesh` under `rules`."""
  rules = _rules_dict(rules)
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    if name is not None and name not in rules:
      raise ValueError(f"no logical axis rule for {name!r}; rules cover {sorted(rules)}")
    target = rules.get(name) if name is not None else None
    mesh_axes = () if target is None else (target if isinstance(target, tuple) else (target,))
    mesh_axes = tuple(a for a in mesh_axes if a not in used and mesh.shape[a] > 1)
    size = int(np.prod([mesh.shape[a] for a in mesh_axes])) if mesh_axes else 1
    if not mesh_axes or dim % size:
      spec.append(None)
      continue
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return P(*spec)


def param_shardings(abstract_state: nnx.State, mesh, rules) -> Any:
  """NamedShardings (as a pure dict mirroring `nnx.to_pure_dict(state)`) for an nnx param state."""

  def one(var):
    value = var.get_value()
    axes = var.get_metadata().get("axes", (None,) * value.ndim)
    return NamedSharding(mesh, logical_to_spec(axes, value.shape, mesh, rules))

  specs = jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(specs)


def batch_sharding(mesh, ndim: int) -> NamedSharding:
  """Leading (batch) dimension over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_device(x_np: np.ndarray, mesh) -> jax.Array:
  """A host array (identical on every process) placed batch-sharded over the data axes."""
  return jax.make_array_from_callback(x_np.shape, batch_sharding(mesh, np.ndim(x_np)),
                                      lambda idx: x_np[idx])


def host_array(x: jax.Array) -> np.ndarray:
  """The full value of a (possibly multi-process sharded) array on every host."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def tree_batch_shardings(tree, mesh):
  return jax.tree.map(lambda x: batch_sharding(mesh, np.ndim(x)), tree)
