"""Reward-model train and eval steps over an ensemble of E scalar models (E = 1: one RM).

Per pair and member e, with r = the member's last-token score (rewards/learned.py):
  loss_e = mean_b w_eb · ℓ(r_e(x_b, y_w), r_e(x_b, y_l)) / mean_b w_eb
where ℓ is the configured reward loss (`bradley_terry`: −log σ(r_w − r_l − m) + c·(r_w + r_l)²,
losses/reward.py) and w_eb ∈ {0, 1} keeps a member-specific random subset of the data
(fraction `data_fraction`; 1.0 = every member sees every pair and members differ by seed only).
The members' losses are summed, so each member follows its own gradient. With LoRA
(train/lora.py) only the adapters and the scalar head train; `train.microbatches` accumulates
gradients over micro-batches (train/microbatch.py) with the same result as the full batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.rewards import learned
from rlhf_jax.train import microbatch

# Reward-family losses of one (chosen, rejected) score pair, ℓ(r_w, r_l), that the step can call;
# plackett_luce ranks K > 2 completions per prompt and has no pairwise form here.
PAIRWISE_LOSSES = ("bradley_terry",)


def pair_scores(graphdef, stacked_params, batch):
  chosen_ExB = learned.ensemble_scores(graphdef, stacked_params, batch["chosen_tokens"],
                                       batch["chosen_mask"])
  rejected_ExB = learned.ensemble_scores(graphdef, stacked_params, batch["rejected_tokens"],
                                         batch["rejected_mask"])
  return chosen_ExB, rejected_ExB


def member_weights(index_B: jax.Array, ensemble_size: int, data_fraction: float, seed: int):
  """[E, B] 0/1 weights: a fixed pseudo-random subset of examples per member."""
  if data_fraction >= 1.0:
    return jnp.ones((ensemble_size, index_B.shape[0]), jnp.float32)
  def member(e):
    key = jax.random.fold_in(jax.random.key(seed), e)
    u_B = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(index_B)
    return (u_B < data_fraction).astype(jnp.float32)
  return jax.vmap(member)(jnp.arange(ensemble_size))


def make_train_step(graphdef, tx, *, loss_name: str, loss_kwargs: dict, ensemble_size: int,
                    data_fraction: float, seed: int, microbatches: int = 1, trainable=None):
  """`train_step(state, batch, rng) -> (state, metrics)` on the summed member losses.

  microbatches = k: the pairs are processed in k micro-batches (train/microbatch.py); each member's
    weight total sum_b w_eb is counted over the whole batch first, so the accumulated gradient
    equals the full-batch one.
  trainable: a pytree of bools like one member's params (train/lora.py's mask: adapters and the
    head), or None (all). Frozen leaves get stop_gradient (exact zero gradients).
  metrics: loss (mean over members of loss_e), accuracy, margin and reward_mean (means over
    members and pairs), grad_norm.
  """
  loss_fn = losses.get(loss_name)

  def objective(params, micro, batch):
    total_w_E = jnp.sum(member_weights(batch["index"], ensemble_size, data_fraction, seed), 1)
    num_pairs = batch["index"].shape[0]
    chosen_ExB, rejected_ExB = pair_scores(graphdef, params, micro)
    per_pair_ExB = jax.vmap(lambda c, r: loss_fn(c, r, **loss_kwargs))(chosen_ExB, rejected_ExB)
    w_ExB = member_weights(micro["index"], ensemble_size, data_fraction, seed)
    loss_E = jnp.sum(per_pair_ExB * w_ExB, axis=1) / jnp.maximum(total_w_E, 1.0)
    # Sums over this micro-batch, divided by the whole batch's counts: they add up to means.
    denom = float(ensemble_size * num_pairs)
    sums = {"loss": jnp.sum(loss_E) / ensemble_size,
            "accuracy": jnp.sum((chosen_ExB > rejected_ExB).astype(jnp.float32)) / denom,
            "margin": jnp.sum(chosen_ExB - rejected_ExB) / denom,
            "reward_mean": jnp.sum(0.5 * (chosen_ExB + rejected_ExB)) / denom}
    return jnp.sum(loss_E), sums

  return microbatch.make_step(objective, tx, microbatches=microbatches, trainable=trainable)


def make_eval_step(graphdef):
  """Sums over a batch (weighted by the row mask, so padded rows count nothing)."""
  def eval_step(params, batch):
    chosen_ExB, rejected_ExB = pair_scores(graphdef, params, batch)
    valid_B = (jnp.sum(batch["chosen_mask"], axis=1) > 0).astype(jnp.float32)
    bt_ExB = -jax.nn.log_sigmoid(chosen_ExB - rejected_ExB)
    combined_B = jnp.mean(chosen_ExB - rejected_ExB, axis=0)
    return {"pairs": jnp.sum(valid_B),
            "correct_members": jnp.sum(jnp.mean((chosen_ExB > rejected_ExB), axis=0) * valid_B),
            "correct_ensemble": jnp.sum((combined_B > 0) * valid_B),
            "bt_loss": jnp.sum(jnp.mean(bt_ExB, axis=0) * valid_B)}
  return eval_step
