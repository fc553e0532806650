"""Reward-model losses: Bradley-Terry pairs, Plackett-Luce rankings, and pairwise accuracy."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses import _checks

# Finite stand-in for -inf: keeps gradients of masked log-sum-exps free of NaNs.
_MASKED_LOGIT = -1e9


def bradley_terry_loss(chosen_rewards_B: jax.Array, rejected_rewards_B: jax.Array, *,
                       margin: float | jax.Array = 0.0,
                       centering_coef: float = 0.0) -> jax.Array:
  r"""Per-pair Bradley-Terry negative log-likelihood of the human preference.

  .. math::
      \ell = -\log \sigma(r_w - r_l - m) + c \, (r_w + r_l)^2

  The first term is the reward-model objective of Christiano et al. 2017 / Stiennon et al. 2020 /
  Ouyang et al. 2022 (Bradley & Terry 1952 preference model). The optional margin `m` is Llama 2's
  preference-strength margin (Touvron et al. 2023); the centering term with coefficient `c` keeps the
  rewards near zero mean (Eisenstein et al. 2023, "Helping or Herding?"; TRL `center_rewards_coefficient`).
  TRL averages the centering term over the batch; here it is kept per pair, so the batch mean of this loss
  equals TRL's loss.

  Args:
    chosen_rewards_B: [B] scalar rewards of the preferred responses.
    rejected_rewards_B: [B] scalar rewards of the dispreferred responses.
    margin: scalar or [B] margin `m` (0 gives the plain Bradley-Terry loss).
    centering_coef: `c` >= 0.

  Returns:
    loss_B: [B] per-pair losses.
  """
  fn = "bradley_terry_loss"
  _checks.check_rank(fn, "chosen_rewards_B", chosen_rewards_B, 1, "[B]")
  _checks.check_same_shape(fn, chosen_rewards_B=chosen_rewards_B, rejected_rewards_B=rejected_rewards_B)
  _checks.check_scalar_or_batch(fn, "margin", margin, jnp.shape(chosen_rewards_B)[0])
  _checks.check_static_range(fn, "centering_coef", centering_coef, low=0.0)
  r_w = _checks.as_float(chosen_rewards_B)
  r_l = _checks.as_float(rejected_rewards_B)
  loss_B = -jax.nn.log_sigmoid(r_w - r_l - margin)
  return loss_B + centering_coef * jnp.square(r_w + r_l)


def plackett_luce_loss(rewards_BxK: jax.Array, mask_BxK: jax.Array | None = None) -> jax.Array:
  r"""Per-example Plackett-Luce negative log-likelihood of a K-wise ranking.

  The K responses of each row are given best first. With valid set :math:`\mathcal{V}`
  (mask = 1):

  .. math::
      \ell = -\sum_{k \in \mathcal{V}} \Big[ r_k - \log \sum_{j \ge k,\, j \in \mathcal{V}} e^{r_j} \Big]

  (Plackett 1975, Luce 1959; used for K-wise reward models by Zhu et al. 2023, "Principled RLHF with
  Pairwise or K-wise Comparisons", and in the DPO paper's Plackett-Luce section.) For K = 2 it equals
  `bradley_terry_loss`. Masked entries are removed from the ranking, so padding to a larger K changes
  nothing.

  Args:
    rewards_BxK: [B, K] rewards in ranked order (index 0 is the best response).
    mask_BxK: optional [B, K] 1 for responses that exist in that row; None means all K are valid.

  Returns:
    loss_B: [B] per-example losses (0 for rows with fewer than two valid responses).
  """
  fn = "plackett_luce_loss"
  _checks.check_rank(fn, "rewards_BxK", rewards_BxK, 2, "[B, K]")
  r = _checks.as_float(rewards_BxK)
  if mask_BxK is None:
    mask_BxK = jnp.ones_like(r)
  _checks.check_same_shape(fn, rewards_BxK=rewards_BxK, mask_BxK=mask_BxK)
  mask = _checks.as_mask(mask_BxK, r) > 0
  k = r.shape[1]
  r_masked = jnp.where(mask, r, _MASKED_LOGIT)
  # later_KxK[k, j] = j >= k: the responses still in the pool when position k is picked.
  later_KxK = jnp.arange(k)[None, :] >= jnp.arange(k)[:, None]
  pool_BxKxK = later_KxK[None] & mask[:, None, :]
  logits_BxKxK = jnp.where(pool_BxKxK, r_masked[:, None, :], _MASKED_LOGIT)
  log_norm_BxK = jax.nn.logsumexp(logits_BxKxK, axis=-1)
  terms_BxK = jnp.where(mask, r_masked - log_norm_BxK, 0.0)
  return -jnp.sum(terms_BxK, axis=-1)


def pairwise_accuracy(chosen_rewards_B: jax.Array, rejected_rewards_B: jax.Array) -> jax.Array:
  r"""Per-pair ranking accuracy :math:`\mathbb{1}[r_w > r_l]` as float (ties count as wrong, as in TRL).

  Works for reward-model scores and for DPO implicit rewards (see `dpo_implicit_rewards`).

  Args:
    chosen_rewards_B: [B] rewards of the preferred responses.
    rejected_rewards_B: [B] rewards of the dispreferred responses.

  Returns:
    accuracy_B: [B] values in {0., 1.}; no gradient.
  """
  fn = "pairwise_accuracy"
  _checks.check_rank(fn, "chosen_rewards_B", chosen_rewards_B, 1, "[B]")
  _checks.check_same_shape(fn, chosen_rewards_B=chosen_rewards_B, rejected_rewards_B=rejected_rewards_B)
  r_w = jax.lax.stop_gradient(_checks.as_float(chosen_rewards_B))
  r_l = jax.lax.stop_gradient(_checks.as_float(rejected_rewards_B))
  return (r_w > r_l).astype(r_w.dtype)
