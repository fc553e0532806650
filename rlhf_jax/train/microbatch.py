"""Gradient accumulation: one optimizer step over a global batch processed in k micro-batches.

Activation memory scales with the micro-batch (B / k rows) instead of the batch. For a loss that
is a weighted mean over units (tokens, pairs, sequences),

  L = sum_u l_u / N,   N = sum_u w_u   (l_u already includes its weight / mask)

the micro-batch sums add up exactly: grad L = (sum_i grad sum_{u in i} l_u) / N, with N counted
over the whole batch. `accumulate` runs `sum_fn` (returning such sums and their gradient) over the
micro-batches with `lax.scan` and adds the results, so the step equals the full-batch step up to
float summation order.

Micro-batch i takes rows i, i + k, i + 2k, ... (a strided split): a batch sharded contiguously
over the data-parallel devices stays sharded the same way inside every micro-batch, as long as
each device's rows (B / data shards) are divisible by k.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def split(batch: Any, num_microbatches: int) -> Any:
  """[B, ...] leaves -> [k, B / k, ...]; micro-batch i holds rows i, i + k, i + 2k, ..."""
  k = int(num_microbatches)
  if k < 1:
    raise ValueError(f"train.microbatches must be >= 1, got {k}")

  def one(path, x):
    b = x.shape[0]
    if b % k:
      raise ValueError(f"batch field {jax.tree_util.keystr(path)}: batch size {b} is not "
                       f"divisible by train.microbatches={k}")
    return jnp.swapaxes(x.reshape((b // k, k) + x.shape[1:]), 0, 1)

  return jax.tree_util.tree_map_with_path(one, batch)


def accumulate(sum_fn: Callable[[Any, Any], tuple[Any, Any]], params: Any, batch: Any,
               num_microbatches: int) -> tuple[Any, Any]:
  """Sum of `sum_fn(params, micro_batch) -> (grads, sums)` over the micro-batches.

  `sums` is any pytree of additive statistics (summed loss, token counts); both it and the
  gradients are accumulated in their own dtypes (float32 for float32 master weights). With one
  micro-batch this is `sum_fn(params, batch)` itself, no scan.
  """
  if num_microbatches == 1:
    return sum_fn(params, batch)
  micro = split(batch, num_microbatches)
  first = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(sum_fn, params, first))

  def body(carry, mb):
    out = sum_fn(params, mb)
    return jax.tree.map(jnp.add, carry, out), None

  total, _ = jax.lax.scan(body, zeros, micro)
  return total
