"""Reward-model train and eval steps over an ensemble of E scalar models (E = 1: one RM).

Per pair and member e, with r = the member's last-token score (rewards/learned.py):
  loss_e = mean_b w_eb · ℓ(r_e(x_b, y_w), r_e(x_b, y_l)) / mean_b w_eb
where ℓ is the configured reward loss (`bradley_terry`: −log σ(r_w − r_l − m) + c·(r_w + r_l)²,
losses/reward.py) and w_eb ∈ {0, 1} keeps a member-specific random subset of the data
(fraction `data_fraction`; 1.0 = every member sees every pair and members differ by seed only).
The members' losses are summed, so each member follows its own gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.rewards import learned
from rlhf_jax.train.state import make_gradient_step


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
                    data_fraction: float, seed: int):
  loss_fn = losses.get(loss_name)

  def objective(params, batch):
    chosen_ExB, rejected_ExB = pair_scores(graphdef, params, batch)
    per_pair_ExB = jax.vmap(lambda c, r: loss_fn(c, r, **loss_kwargs))(chosen_ExB, rejected_ExB)
    w_ExB = member_weights(batch["index"], ensemble_size, data_fraction, seed)
    loss_E = jnp.sum(per_pair_ExB * w_ExB, axis=1) / jnp.maximum(jnp.sum(w_ExB, axis=1), 1.0)
    accuracy = jnp.mean((chosen_ExB > rejected_ExB).astype(jnp.float32))
    metrics = {"loss": jnp.mean(loss_E), "accuracy": accuracy,
               "margin": jnp.mean(chosen_ExB - rejected_ExB),
               "reward_mean": jnp.mean(0.5 * (chosen_ExB + rejected_ExB))}
    return jnp.sum(loss_E), metrics

  return make_gradient_step(objective, tx)


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
