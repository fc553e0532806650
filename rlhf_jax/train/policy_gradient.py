"""Critic-free policy-gradient losses on a rollout: GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE.

Sequence advantages from the rollout's scores r_B (groups of G samples per prompt):
  grpo        A = (r − mean_g r) / (std_g r + 1e-4)     scale group | batch | none (Dr. GRPO)
              (Shao et al. 2024; Liu et al. 2025 "Understanding R1-Zero-like training")
  rloo        A = r' − mean of the other G−1 r'          (Ahmadian et al. 2024), r' = r − β·KL_seq
  reinforce   A = r' − baseline                          (Williams 1992), r' = r − β·KL_seq
broadcast to tokens, then the clipped surrogate (losses.ppo_policy_loss; asymmetric clip as in
DAPO, Yu et al. 2025; `level=sequence` for GSPO) aggregated by mode (GRPO: per-sequence token
means; Dr. GRPO: token sums / (B·T); DAPO: token mean). GRPO puts the KL in the loss
(β·k3 per token); RLOO and REINFORCE put it in the reward (β·Σ_t k1), as TRL does.
"""

from __future__ import annotations

import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.generation import score_tokens

ALGORITHMS = ("grpo", "rloo", "reinforce")
# Smallest pg.group_size per algorithm: group statistics (mean, std, leave-one-out) need two
# samples per prompt (losses/advantages.py); REINFORCE's batch baseline does not.
MIN_GROUP_SIZE = {"grpo": 2, "rloo": 2, "reinforce": 1}


def kl_in_loss(cfg) -> bool:
  return cfg.algorithm == "grpo"


def advantages(cfg, scores_B, kl_B, beta):
  if cfg.algorithm == "grpo":
    return losses.group_advantages(scores_B, group_size=cfg.group_size, scale=cfg.scale)
  shaped_B = scores_B - beta * kl_B
  if cfg.algorithm == "rloo":
    return losses.rloo_advantages(shaped_B, group_size=cfg.group_size)
  if cfg.algorithm == "reinforce":
    return losses.reinforce_advantages(shaped_B, baseline=cfg.baseline)
  raise ValueError(f"unknown pg.algorithm {cfg.algorithm!r}; valid: {list(ALGORITHMS)}")


def make_loss_fn(graphdef, cfg, max_len: int):
  """loss_fn(params, minibatch) -> (loss, metrics); minibatch carries the rollout fields,
  `advantages` [B] and `kl_coef` (β, constant within an update)."""
  clip = dict(clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high or None, level=cfg.level)

  def loss_fn(params, mb):
    mask = mb["mask"].astype(jnp.float32)
    scores = score_tokens(graphdef, params, mb["prompt_tokens"], mb["prompt_mask"], mb["tokens"],
                          mb["mask"], with_entropy=True)
    adv_BxT = losses.sequence_to_token(mb["advantages"], mask)
    per_token = losses.ppo_policy_loss(scores.logp_BxT, mb["old_logp"], adv_BxT, mask, **clip)
    kl_BxT = losses.kl_penalty(scores.logp_BxT, mb["ref_logp"], estimator=cfg.kl_estimator)
    if kl_in_loss(cfg):
      per_token = per_token + mb["kl_coef"][0] * kl_BxT * mask
    if cfg.entropy_coef:
      per_token = per_token - cfg.entropy_coef * scores.entropy_BxT * mask
    extra = {"max_len": max_len} if cfg.aggregation == "sequence-mean-token-sum-norm" else {}
    loss = losses.aggregate_loss(per_token, mask, mode=cfg.aggregation, **extra)
    metrics = losses.ppo_policy_metrics(scores.logp_BxT, mb["old_logp"], adv_BxT, mask, **clip)
    metrics.update(loss=loss, entropy=losses.masked_mean(scores.entropy_BxT, mask),
                   kl_loss_term=losses.masked_mean(kl_BxT, mask))
    return loss, metrics

  return loss_fn
