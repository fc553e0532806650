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

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax


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


def make_step(objective: Callable[[Any, Any, Any], tuple[Any, dict]],
              tx: optax.GradientTransformation, *, microbatches: int = 1,
              trainable: Optional[Any] = None) -> Callable:
  """`train_step(state, batch, rng) -> (state, metrics)`: one optimizer step on the gradient of
  `objective(params, micro_batch, batch) -> (summed loss, additive metrics)` accumulated over
  `microbatches` micro-batches (`batch` is the whole batch, for counts such as N above).

  trainable: a pytree of bools like the params (train/lora.py's mask), or None (all). Frozen
    leaves get stop_gradient, so their gradients are exact zeros and the optimizer (masked)
    leaves them as they are.
  metrics: the accumulated sums plus `grad_norm`.
  """
  from rlhf_jax.train import lora, state as state_lib  # pylint: disable=g-import-not-at-top

  def train_step(state, batch, rng):
    del rng  # these objectives are deterministic given the batch

    def grads_and_sums(params, micro):
      f = lambda p: objective(lora.freeze(p, trainable), micro, batch)
      (_, sums), grads = jax.value_and_grad(f, has_aux=True)(params)
      return grads, sums

    grads, metrics = accumulate(grads_and_sums, state.params, batch, microbatches)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    return state_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step
