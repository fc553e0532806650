"""Low-rank adapters (LoRA, Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen weight W with input dims I (contracted) and output dims O gets a trainable update

  W' = W + (alpha / r) A B,      A [I..., r] ~ N(0, 1 / prod(I)),   B [r, O...] = 0 at init

so the adapted model starts equal to the base model. The forward pass never forms W' (memory and
FLOPs of the update stay O(r)):  y = x W + (alpha / r) (x A) B.

Adapters are attached to an existing model (`attach`), as `<weight>_lora` sub-modules next to
the weights they adapt; the base parameters keep their paths, the adapters add
`.../<weight>_lora/{a,b}`. Modules list their adaptable weights in `LORA_TARGETS`
(name -> number of leading input dims): Attention {wq, wk, wv: 1, wo: 2}, MLP {w_gate, w_up,
w_down: 1}. `merge` folds adapters into the weights of a pure parameter dict, giving the plain
model's parameters back.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

SUFFIX = "_lora"
# Target names accepted by `resolve_targets`, with their group aliases.
GROUPS = {"attn": ("wq", "wk", "wv", "wo"), "mlp": ("w_gate", "w_up", "w_down")}
GROUPS["all"] = GROUPS["attn"] + GROUPS["mlp"]


def resolve_targets(spec: str | Iterable[str]) -> tuple[str, ...]:
  """'wq,wv' / 'attn' / 'mlp' / 'all' (comma-separated, or a sequence) -> weight names."""
  names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
  out: list[str] = []
  for name in names:
    expanded = GROUPS.get(name, (name,))
    for n in expanded:
      if n not in GROUPS["all"]:
        raise ValueError(f"unknown LoRA target {name!r}; valid: {sorted(GROUPS)} or any of "
                         f"{list(GROUPS['all'])}")
      if n not in out:
        out.append(n)
  if not out:
    raise ValueError("LoRA targets are empty; name at least one weight (e.g. 'attn' or 'wq,wv')")
  return tuple(out)


class LoRA(nnx.Module):
  """The adapter of one weight: (alpha / r) (x A) B for x [..., I...] -> [..., O...]."""

  def __init__(self, weight: nnx.Param, n_in: int, *, rank: int, alpha: float, rngs: nnx.Rngs):
    if rank <= 0:
      raise ValueError(f"LoRA rank must be positive, got {rank}")
    value = weight.get_value()
    axes = tuple(weight.get_metadata().get("axes", (None,) * value.ndim))
    in_shape, out_shape = value.shape[:n_in], value.shape[n_in:]
    fan_in = math.prod(in_shape)
    self.n_in = n_in
    self.scale = float(alpha) / rank
    # The rank axis has no logical name: it is small and replicated.
    self.a = nnx.Param(jax.random.normal(rngs.params(), (*in_shape, rank), value.dtype)
                       * fan_in ** -0.5, axes=axes[:n_in] + (None,))
    self.b = nnx.Param(jnp.zeros((rank, *out_shape), value.dtype), axes=(None,) + axes[n_in:])

  def __call__(self, x):
    dt = x.dtype
    h = jnp.tensordot(x, self.a[...].astype(dt), axes=self.n_in)
    return jnp.tensordot(h, self.b[...].astype(dt), axes=1) * jnp.asarray(self.scale, dt)


def project(module: nnx.Module, name: str, spec: str, x):
  """einsum(spec, x, W) for the weight `module.<name>` in x's dtype, plus its adapter if any."""
  y = jnp.einsum(spec, x, getattr(module, name)[...].astype(x.dtype))
  adapter = getattr(module, name + SUFFIX, None)
  return y if adapter is None else y + adapter(x)


def attach(model: nnx.Module, *, rank: int, alpha: float, targets: str | Iterable[str],
           rngs: nnx.Rngs) -> nnx.Module:
  """Adds adapters to every module of `model` that lists a target in LORA_TARGETS; returns it.

  Raises if no module has any of the targets (e.g. a typo'd weight name)."""
  wanted = resolve_targets(targets)
  modules = [m for _, m in nnx.iter_graph(model)
             if isinstance(m, nnx.Module) and getattr(m, "LORA_TARGETS", None)]
  count = 0
  for module in modules:
    for name, n_in in module.LORA_TARGETS.items():
      if name in wanted and hasattr(module, name):
        setattr(module, name + SUFFIX,
                LoRA(getattr(module, name), n_in, rank=rank, alpha=alpha, rngs=rngs))
        count += 1
  if not count:
    raise ValueError(f"LoRA: no weight of the model matches targets {list(wanted)}")
  return model


def is_adapter_path(path: tuple) -> bool:
  """True for a parameter path inside an adapter (a key ending in `_lora`)."""
  return any(str(getattr(k, "key", k)).endswith(SUFFIX) for k in path)


def merge(params: Mapping[str, Any], *, alpha: float) -> dict:
  """The plain model's pure parameter dict: W + (alpha / r) A B for every adapter, adapters
  removed. r is read from A's last dimension; W keeps its dtype."""
  out = {}
  for key, value in params.items():
    if isinstance(key, str) and key.endswith(SUFFIX):
      continue
    if isinstance(value, Mapping):
      out[key] = merge(value, alpha=alpha)
    else:
      out[key] = value
    adapter = params.get(f"{key}{SUFFIX}") if isinstance(key, str) else None
    if adapter is not None:
      a, b = adapter["a"], adapter["b"]
      delta = jnp.tensordot(a.astype(jnp.float32), b.astype(jnp.float32), axes=1)
      out[key] = (value.astype(jnp.float32) + (float(alpha) / a.shape[-1]) * delta
                  ).astype(value.dtype)
  return out
