"""Argument validation shared by the loss modules (private).

Every check runs at trace time on static shapes, so it costs nothing inside `jax.jit` and fails before any
compilation with a message that names the function, the argument and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp


def as_float(x: Any) -> jax.Array:
  """Returns `x` as a JAX array of at least float32 precision (bf16/f16/int -> f32, f64 stays f64)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def as_mask(mask: Any, like: jax.Array) -> jax.Array:
  """Returns a {0, 1} mask (bool/int/float accepted) in the floating dtype of `like`."""
  return (jnp.asarray(mask) != 0).astype(like.dtype)


def check_choice(fn: str, arg: str, value: Any, choices: Sequence[str]) -> None:
  """Raises ValueError unless `value` is one of `choices`."""
  if not isinstance(value, str) or value not in choices:
    raise ValueError(
        f"{fn}: unknown {arg}={value!r}; valid choices are: "
        f"{', '.join(repr(c) for c in choices)}.")


def check_rank(fn: str, arg: str, x: Any, rank: int, shape_name: str) -> None:
  """Raises ValueError unless `x` has `rank` dimensions; `shape_name` is e.g. '[B, T]'."""
  if jnp.ndim(x) != rank:
    raise ValueError(
        f"{fn}: `{arg}` must have shape {shape_name} (rank {rank}), "
        f"got shape {tuple(jnp.shape(x))}.")


def check_same_shape(fn: str, **arrays: Any) -> None:
  """Raises ValueError unless all keyword arrays have the same shape."""
  items = list(arrays.items())
  ref_name, ref = items[0]
  for name, x in items[1:]:
    if jnp.shape(x) != jnp.shape(ref):
      raise ValueError(
          f"{fn}: `{name}` has shape {tuple(jnp.shape(x))} but `{ref_name}` has shape "
          f"{tuple(jnp.shape(ref))}; they must match.")


def check_scalar_or_batch(fn: str, arg: str, x: Any, batch: int) -> None:
  """Raises ValueError unless `x` is a scalar or has shape [B]."""
  if jnp.ndim(x) != 0 and jnp.shape(x) != (batch,):
    raise ValueError(
        f"{fn}: `{arg}` must be a scalar or have shape [B] = ({batch},), "
        f"got shape {tuple(jnp.shape(x))}.")


def check_static_range(fn: str, arg: str, value: Any, *, low: float | None = None,
                       high: float | None = None, low_inclusive: bool = True,
                       high_inclusive: bool = True) -> None:
  """Checks that a Python-number hyper-parameter lies in a range; traced values are not checked."""
  if value is None:
    return
  try:
    v = float(value)
  except Exception:  # Traced values and arrays with several elements are not checked here.
    return
  bad_low = low is not None and (v < low if low_inclusive else v <= low)
  bad_high = high is not None and (v > high if high_inclusive else v >= high)
  if bad_low or bad_high:
    lo = "-inf" if low is None else f"{low}"
    hi = "inf" if high is None else f"{high}"
    lb = "[" if low_inclusive else "("
    hb = "]" if high_inclusive else ")"
    raise ValueError(f"{fn}: `{arg}` must lie in {lb}{lo}, {hi}{hb}, got {value!r}.")


def masked_logits(fn: str, logits_BxTxV: Any, mask_BxT: Any) -> tuple[jax.Array, jax.Array]:
  """Float32 logits with masked positions zeroed, and the [B, T] bool validity.

  Zeroing the inputs before the softmax (not only the per-token result) keeps NaN/inf garbage in padded
  positions out of both the loss and its gradient (the "double where" trick).
  """
  check_rank(fn, "logits_BxTxV", logits_BxTxV, 3, "[B, T, V]")
  if jnp.shape(logits_BxTxV)[:2] != jnp.shape(mask_BxT):
    raise ValueError(f"{fn}: `mask_BxT` has shape {tuple(jnp.shape(mask_BxT))} but `logits_BxTxV` has "
                     f"shape {tuple(jnp.shape(logits_BxTxV))}; the leading [B, T] must match.")
  logits = as_float(logits_BxTxV)
  valid = as_mask(mask_BxT, logits) > 0
  return jnp.where(valid[..., None], logits, 0.0), valid
