"""K epochs of shuffled minibatch updates on one rollout batch, in one jitted function.

  for epoch in 1..K:  permute rows; for each of M minibatches: one optimizer step
Early stop (PPO, as in Stable-Baselines3): once a minibatch's approximate KL between the new and
the rollout policy exceeds `stop_kl`, the remaining minibatches of the update are skipped (their
parameter and optimizer updates are discarded), so each call compiles once whatever happens.
Metrics are means over the minibatches that ran.

There is no gradient accumulation (`train.microbatches`) here: the minibatches already bound the
activation memory of one optimizer step (rows / num_minibatches), at the price of more steps.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from rlhf_jax.train import lora
from rlhf_jax.train.state import TrainState


def make_update_fn(loss_fn: Callable, tx: optax.GradientTransformation, *, num_epochs: int,
                   num_minibatches: int, stop_kl: Optional[float] = None,
                   trainable=None) -> Callable:
  """`loss_fn(params, minibatch) -> (loss, metrics)`; returns `update(state, batch, rng)`.

  trainable: a pytree of bools like the params (train/lora.py's mask), or None (all); frozen
  leaves get stop_gradient, so their weight gradients are never computed."""
  frozen_loss_fn = lambda params, mb: loss_fn(lora.freeze(params, trainable), mb)

  def update(state: TrainState, batch, rng):
    b = jax.tree.leaves(batch)[0].shape[0]
    if b % num_minibatches:
      raise ValueError(f"rollout batch {b} is not divisible by num_minibatches={num_minibatches}")
    size = b // num_minibatches

    def epoch(carry, key):
      perm = jax.random.permutation(key, b)
      shuffled = jax.tree.map(lambda x: x[perm].reshape((num_minibatches, size) + x.shape[1:]),
                              batch)

      def minibatch(carry, mb):
        state, stopped = carry
        (_, metrics), grads = jax.value_and_grad(frozen_loss_fn, has_aux=True)(state.params, mb)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = jnp.logical_not(stopped)
        new = TrainState(step=state.step + keep.astype(jnp.int32),
                         params=jax.tree.map(lambda n, o: jnp.where(keep, n, o), params,
                                             state.params),
                         opt_state=jax.tree.map(lambda n, o: jnp.where(keep, n, o), opt_state,
                                                state.opt_state))
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads), "ran": keep.astype(jnp.float32)}
        if stop_kl is not None:
          stopped = stopped | (metrics["approx_kl"] > stop_kl)
        return (new, stopped), metrics

      return jax.lax.scan(minibatch, carry, shuffled)

    keys = jax.random.split(rng, num_epochs)
    (state, stopped), metrics = jax.lax.scan(epoch, (state, jnp.zeros((), bool)), keys)
    ran = metrics.pop("ran")
    n = jnp.maximum(jnp.sum(ran), 1.0)
    out = {k: jnp.sum(v * ran) / n for k, v in metrics.items()}
    out["minibatches_run"] = jnp.sum(ran)
    out["early_stopped"] = stopped.astype(jnp.float32)
    return state, out

  return update
