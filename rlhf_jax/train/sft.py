"""SFT train and eval steps: prompt-masked next-token loss (losses/sft.py), token-mean reduced.

  loss = sum_{b,t} m_bt * -log p(y_b,t+1 | y_b,<=t) / sum_{b,t} m_bt
where m marks completion tokens as targets. Steps are pure functions of (state, batch, rng);
`loop.py` jits them with explicit shardings.

Packed batches (data/packing.py; they carry `segment_ids` and `positions`) run the model with
same-segment attention at the packed positions, and a target counts only when it is in the same
segment as the token predicting it: m_bt = c_b,t+1 * [seg_b,t+1 = seg_b,t], so no example's last
token is trained to predict the next example's first. Batches of any width (length buckets,
data/pipeline.py) work unchanged.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from flax import nnx

from rlhf_jax.losses import sft
from rlhf_jax.train import microbatch


def target_mask(batch):
  """[B, S-1] float32: m_bt = c_b,t+1, times [seg_b,t+1 = seg_b,t] for packed batches."""
  mask_BxT = batch["completion_mask"][:, 1:].astype(jnp.float32)
  if "segment_ids" in batch:
    seg_BxS = batch["segment_ids"]
    mask_BxT = mask_BxT * (seg_BxS[:, 1:] == seg_BxS[:, :-1]).astype(jnp.float32)
  return mask_BxT


def _hidden(model, batch):
  """Final hidden states [B, S, D] of the batch's rows (packed rows: data/packing.py)."""
  if "segment_ids" in batch:
    return model.hidden(batch["tokens"], mask_BxS=batch["mask"], positions_BxS=batch["positions"],
                        segment_ids_BxS=batch["segment_ids"])[0]
  return model.hidden(batch["tokens"], mask_BxS=batch["mask"])[0]


def shifted(graphdef, params, batch):
  """(logits [B, S-1, V], targets [B, S-1], target mask [B, S-1]) for next-token prediction."""
  model = nnx.merge(graphdef, params)
  return model.logits(_hidden(model, batch))[:, :-1], batch["tokens"][:, 1:], target_mask(batch)


def sft_objective(graphdef, params, batch, *, num_tokens=None):
  """(loss, metrics): summed target-token NLL over this batch divided by N = `num_tokens`.

  N defaults to this batch's target-token count (the token mean). A micro-batch passes the whole
  batch's N, so micro-batch losses (and gradients) add up to the full-batch ones exactly.
  metrics: loss (as returned) and num_tokens (this batch's count).
  """
  model = nnx.merge(graphdef, params)
  targets_BxT, mask_BxT = batch["tokens"][:, 1:], target_mask(batch)
  if model.cfg.lm_head_chunk > 0:  # the vocabulary a chunk at a time (models/lm_head.py)
    hidden_BxTxD = _hidden(model, batch)[:, :-1]
    hidden_BxTxD = jnp.where(mask_BxT[..., None] > 0, hidden_BxTxD, 0)  # no NaN from padding
    nll_BxT = sft.sft_loss_from_logps(model.token_logps(hidden_BxTxD, targets_BxT), mask_BxT)
  else:
    nll_BxT = sft.sft_loss(*shifted(graphdef, params, batch))
  batch_tokens = jnp.sum(mask_BxT)
  n = batch_tokens if num_tokens is None else num_tokens
  loss = jnp.sum(nll_BxT) / jnp.maximum(n, 1.0)
  return loss, {"loss": loss, "num_tokens": batch_tokens}


def make_train_step(graphdef, tx: optax.GradientTransformation, *, microbatches: int = 1,
                    trainable=None):
  """`train_step(state, batch, rng) -> (state, metrics)`.

  microbatches = k: the global batch is processed in k micro-batches (train/microbatch.py) whose
    token-weighted gradients add up to the full-batch gradient; activations scale with B / k.
  trainable: a pytree of bools like the params (e.g. train/lora.py's mask), or None (all). Frozen
    leaves get no gradient computation (stop_gradient: their gradients are exact zeros).
  """
  def objective(params, micro, batch):
    return sft_objective(graphdef, params, micro, num_tokens=jnp.sum(target_mask(batch)))

  return microbatch.make_step(objective, tx, microbatches=microbatches, trainable=trainable)


def make_eval_step(graphdef):
  """Summed NLL, correct-token count and token count over a batch (for exact global means)."""
  def eval_step(params, batch):
    logits_BxTxV, targets_BxT, mask_BxT = shifted(graphdef, params, batch)
    correct_BxT = (jnp.argmax(logits_BxTxV, -1) == targets_BxT).astype(jnp.float32)
    return {"nll_sum": jnp.sum(sft.sft_loss(logits_BxTxV, targets_BxT, mask_BxT)),
            "correct": jnp.sum(correct_BxT * mask_BxT), "num_tokens": jnp.sum(mask_BxT)}
  return eval_step
