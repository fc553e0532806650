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
from rlhf_jax.train.state import TrainState


def shifted(graphdef, params, batch):
  """(logits [B, S-1, V], targets [B, S-1], target mask [B, S-1]) for next-token prediction."""
  model = nnx.merge(graphdef, params)
  logits_BxSxV = model(batch["tokens"], mask_BxS=batch["mask"])
  return (logits_BxSxV[:, :-1], batch["tokens"][:, 1:],
          batch["completion_mask"][:, 1:].astype(jnp.float32))


def sft_objective(graphdef, params, batch):
  logits_BxTxV, targets_BxT, mask_BxT = shifted(graphdef, params, batch)
  num_tokens = jnp.sum(mask_BxT)
  loss = jnp.sum(sft.sft_loss(logits_BxTxV, targets_BxT, mask_BxT)) / jnp.maximum(num_tokens, 1.0)
  return loss, {"loss": loss, "num_tokens": num_tokens}


def make_train_step(graphdef, tx: optax.GradientTransformation):
  def train_step(state: TrainState, batch, rng):
    del rng  # SFT is deterministic given the batch
    grad_fn = jax.value_and_grad(lambda p: sft_objective(graphdef, p, batch), has_aux=True)
    (_, metrics), grads = grad_fn(state.params)
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
