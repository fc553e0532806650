"""SFT train and eval steps: prompt-masked next-token loss (losses/sft.py), token-mean reduced.

  loss = sum_{b,t} m_bt * -log p(y_b,t+1 | y_b,<=t) / sum_{b,t} m_bt
where m marks completion tokens as targets. Steps are pure functions of (state, batch, rng);
`loop.py` jits them with explicit shardings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlhf_jax.losses import sft
from rlhf_jax.train import lora, microbatch
from rlhf_jax.train.state import TrainState


def shifted(graphdef, params, batch):
  """(logits [B, S-1, V], targets [B, S-1], target mask [B, S-1]) for next-token prediction."""
  model = nnx.merge(graphdef, params)
  logits_BxSxV = model(batch["tokens"], mask_BxS=batch["mask"])
  return (logits_BxSxV[:, :-1], batch["tokens"][:, 1:],
          batch["completion_mask"][:, 1:].astype(jnp.float32))


def sft_objective(graphdef, params, batch, *, num_tokens=None):
  """(loss, metrics): summed target-token NLL over this batch divided by N = `num_tokens`.

  N defaults to this batch's target-token count (the token mean). A micro-batch passes the whole
  batch's N, so micro-batch losses (and gradients) add up to the full-batch ones exactly.
  metrics: loss (as returned) and num_tokens (this batch's count).
  """
  logits_BxTxV, targets_BxT, mask_BxT = shifted(graphdef, params, batch)
  batch_tokens = jnp.sum(mask_BxT)
  n = batch_tokens if num_tokens is None else num_tokens
  loss = jnp.sum(sft.sft_loss(logits_BxTxV, targets_BxT, mask_BxT)) / jnp.maximum(n, 1.0)
  return loss, {"loss": loss, "num_tokens": batch_tokens}


def make_train_step(graphdef, tx: optax.GradientTransformation, *, microbatches: int = 1,
                    trainable=None):
  """`train_step(state, batch, rng) -> (state, metrics)`.

  microbatches = k: the global batch is processed in k micro-batches (train/microbatch.py) whose
    token-weighted gradients add up to the full-batch gradient; activations scale with B / k.
  trainable: a pytree of bools like the params (e.g. train/lora.py's mask), or None (all). Frozen
    leaves get no gradient computation (stop_gradient: their gradients are exact zeros).
  """
  def train_step(state: TrainState, batch, rng):
    del rng  # SFT is deterministic given the batch
    num_tokens = jnp.sum(batch["completion_mask"][:, 1:].astype(jnp.float32))

    def grads_and_sums(params, micro):
      def objective(p):
        return sft_objective(graphdef, lora.freeze(p, trainable), micro, num_tokens=num_tokens)
      (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
      return grads, metrics

    grads, metrics = microbatch.accumulate(grads_and_sums, state.params, batch, microbatches)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics
  return train_step


def make_eval_step(graphdef):
  """Summed NLL, correct-token count and token count over a batch (for exact global means)."""
  def eval_step(params, batch):
    logits_BxTxV, targets_BxT, mask_BxT = shifted(graphdef, params, batch)
    correct_BxT = (jnp.argmax(logits_BxTxV, -1) == targets_BxT).astype(jnp.float32)
    return {"nll_sum": jnp.sum(sft.sft_loss(logits_BxTxV, targets_BxT, mask_BxT)),
            "correct": jnp.sum(correct_BxT * mask_BxT), "num_tokens": jnp.sum(mask_BxT)}
  return eval_step
