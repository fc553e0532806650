"""Reward-model train and eval steps over an ensemble of E scalar models (E = 1: one RM).

Per pair and member e, with r = the member's last-token score (rewards/learned.py):
  loss_e = mean_b w_eb · ℓ(r_e(x_b, y_w), r_e(x_b, y_l)) / mean_b w_eb
where ℓ is the configured reward loss (`bradley_terry`: −log σ(r_w − r_l − m) + c·(r_w + r_l)²,
losses/reward.py) and w_eb ∈ {0, 1} keeps a member-specific random subset of the data
(fraction `data_fraction`; 1.0 = every member sees every pair and members differ by seed only).
The members' losses are summed, so each member follows its own gradient. With LoRA
(train/lora.py) only the adapters and the scalar head train; `train.microbatches` accumulates
gradients over micro-batches (train/microbatch.py) with the same result as the full batch.

Ranked data (`plackett_luce`, data/ranked.py): each example is one prompt with K completions,
best first, and completion_valid [B, K]. Every completion is scored by each member, r_e [B, K],
and per example and member
  loss_e = mean_b w_eb · ℓ(r_e(x_b, y_b1), ..., r_e(x_b, y_bK); valid_b) / mean_b w_eb
with ℓ the Plackett-Luce negative log-likelihood of the ranking (losses/reward.py; padded slots
leave the ranking). Metrics: top-1 accuracy (the best completion scores strictly highest), pairwise
accuracy over all ranked pairs (i better than j and r_i > r_j; ties wrong, as in TRL) and
Kendall's tau (concordant minus discordant pairs over pairs, per example).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.rewards import learned
from rlhf_jax.train import microbatch

# Reward-family losses of one (chosen, rejected) score pair, ℓ(r_w, r_l), that the step can call.
PAIRWISE_LOSSES = ("bradley_terry",)
# Losses of a best-first ranking of K completions' scores, ℓ(r_BxK, valid_BxK): ranked steps.
RANKED_LOSSES = ("plackett_luce",)
LOSSES = PAIRWISE_LOSSES + RANKED_LOSSES


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


def ranked_scores(graphdef, stacked_params, batch) -> jax.Array:
  """Every member's score of every completion, [E, B, K] (one model call on B·K rows)."""
  b, k, s = batch["tokens"].shape
  scores_ExN = learned.ensemble_scores(graphdef, stacked_params, batch["tokens"].reshape(b * k, s),
                                       batch["mask"].reshape(b * k, s))
  return scores_ExN.reshape(-1, b, k)


def ranking_stats(scores_BxK: jax.Array, valid_BxK: jax.Array) -> dict[str, jax.Array]:
  """Per-example ranking counts of best-first scores (padded slots ignored), all [B] float32:
  ranked (1 where >= 2 completions), top1 (slot 0 scores strictly above every other valid slot),
  pairs (i < j both valid), correct (of those, r_i > r_j), tau (Kendall's tau-a: (correct −
  reversed) / pairs, score ties count 0; 0 for rows without pairs)."""
  valid_BxK = valid_BxK > 0
  k = scores_BxK.shape[1]
  ranked_B = (jnp.sum(valid_BxK, axis=1) >= 2).astype(jnp.float32)
  upper_KxK = jnp.arange(k)[:, None] < jnp.arange(k)[None, :]
  pair_BxKxK = upper_KxK[None] & valid_BxK[:, :, None] & valid_BxK[:, None, :]
  diff_BxKxK = scores_BxK[:, :, None] - scores_BxK[:, None, :]   # r_i − r_j
  pairs_B = jnp.sum(pair_BxKxK, axis=(1, 2)).astype(jnp.float32)
  correct_B = jnp.sum(pair_BxKxK & (diff_BxKxK > 0), axis=(1, 2)).astype(jnp.float32)
  reversed_B = jnp.sum(pair_BxKxK & (diff_BxKxK < 0), axis=(1, 2)).astype(jnp.float32)
  # top-1: the best completion beats every other valid one (its pairs (0, j) are all correct).
  top1_B = jnp.all(~pair_BxKxK[:, 0, :] | (diff_BxKxK[:, 0, :] > 0), axis=1) * ranked_B
  return {"ranked": ranked_B, "top1": top1_B.astype(jnp.float32), "pairs": pairs_B,
          "correct": correct_B, "tau": (correct_B - reversed_B) / jnp.maximum(pairs_B, 1.0)}


def make_ranked_train_step(graphdef, tx, *, loss_name: str, ensemble_size: int,
                           data_fraction: float, seed: int, microbatches: int = 1,
                           trainable=None):
  """`train_step(state, batch, rng) -> (state, metrics)` for ranked batches (tokens/mask
  [B, K, S] best first, completion_valid [B, K], index [B]); the ranking loss `loss_name`
  (RANKED_LOSSES) of each member's scores, members summed as in make_train_step.

  metrics: loss (mean over members of loss_e), top1_accuracy (over members and examples),
    pairwise_accuracy (over members and ranked pairs), reward_mean (over members and valid
    completions), grad_norm.
  """
  if loss_name not in RANKED_LOSSES:
    raise ValueError(f"loss {loss_name!r} is not a ranking loss; valid: {list(RANKED_LOSSES)}")
  loss_fn = losses.get(loss_name)

  def objective(params, micro, batch):
    total_w_E = jnp.sum(member_weights(batch["index"], ensemble_size, data_fraction, seed), 1)
    valid_BxK = micro["completion_valid"]
    scores_ExBxK = ranked_scores(graphdef, params, micro)
    loss_ExB = jax.vmap(lambda r: loss_fn(r, valid_BxK))(scores_ExBxK)
    w_ExB = member_weights(micro["index"], ensemble_size, data_fraction, seed)
    loss_E = jnp.sum(loss_ExB * w_ExB, axis=1) / jnp.maximum(total_w_E, 1.0)
    stats = jax.vmap(lambda r: ranking_stats(r, valid_BxK))(jax.lax.stop_gradient(scores_ExBxK))
    # Sums over this micro-batch, divided by the whole batch's counts: they add up to means.
    n_B = jnp.sum(batch["completion_valid"] > 0, axis=1).astype(jnp.float32)
    e = float(ensemble_size)
    examples, pairs = jnp.sum(n_B >= 2) * e, jnp.sum(n_B * (n_B - 1) / 2) * e
    sums = {"loss": jnp.sum(loss_E) / e,
            "top1_accuracy": jnp.sum(stats["top1"]) / jnp.maximum(examples, 1.0),
            "pairwise_accuracy": jnp.sum(stats["correct"]) / jnp.maximum(pairs, 1.0),
            "reward_mean": (jnp.sum(scores_ExBxK * (valid_BxK > 0))
                            / jnp.maximum(jnp.sum(n_B) * e, 1.0))}
    return jnp.sum(loss_E), sums

  return microbatch.make_step(objective, tx, microbatches=microbatches, trainable=trainable)


def make_ranked_eval_step(graphdef, loss_name: str):
  """Sums over a ranked batch (padded rows and slots count nothing): examples, pairs, loss (the
  members' mean ranking loss), top-1 and correct pairs of the ensemble (mean score) and of the
  members (mean over members), and the ensemble's Kendall tau."""
  loss_fn = losses.get(loss_name)

  def eval_step(params, batch):
    valid_BxK = batch["completion_valid"]
    scores_ExBxK = ranked_scores(graphdef, params, batch)
    ensemble = ranking_stats(jnp.mean(scores_ExBxK, axis=0), valid_BxK)
    members = jax.vmap(lambda r: ranking_stats(r, valid_BxK))(scores_ExBxK)
    loss_B = jnp.mean(jax.vmap(lambda r: loss_fn(r, valid_BxK))(scores_ExBxK), axis=0)
    ranked_B = ensemble["ranked"]
    return {"examples": jnp.sum(ranked_B), "pairs": jnp.sum(ensemble["pairs"]),
            "loss": jnp.sum(loss_B * ranked_B),
            "top1_ensemble": jnp.sum(ensemble["top1"]),
            "top1_members": jnp.sum(jnp.mean(members["top1"], axis=0)),
            "correct_ensemble": jnp.sum(ensemble["correct"]),
            "correct_members": jnp.sum(jnp.mean(members["correct"], axis=0)),
            "tau": jnp.sum(ensemble["tau"] * ranked_B)}
  return eval_step
