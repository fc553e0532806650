"""Critic-free policy-gradient losses on a rollout: GRPO, Dr. GRPO, DAPO, GSPO, RLOO, REINFORCE,
REINFORCE++, CISPO.

Advantages from the rollout's scores r_B (groups of G samples per prompt):
  grpo          A = (r − mean_g r) / (std_g r + 1e-4)   scale group | batch | none (Dr. GRPO)
                (Shao et al. 2024; Liu et al. 2025 "Understanding R1-Zero-like training")
  rloo          A = r' − mean of the other G−1 r'        (Ahmadian et al. 2024), r' = r − β·KL_seq
  reinforce     A = r' − baseline                        (Williams 1992), r' = r − β·KL_seq
  reinforce_pp  A_t = whiten_batch(Σ_{u≥t} r_u), r_u = −β·kl_u + r·[u last]   per token (Hu 2025)
  cispo         as grpo
broadcast to tokens (sequence advantages), then the clipped surrogate (losses.ppo_policy_loss;
asymmetric clip as in DAPO, Yu et al. 2025; `level=sequence` for GSPO), or for cispo the
clipped-IS-weight REINFORCE loss (losses.cispo_policy_loss, MiniMax-M1 2025: ε_high =
pg.clip_eps_high or pg.clip_eps, no lower bound), aggregated by mode (GRPO: per-sequence token
means; Dr. GRPO: token sums / (B·T); DAPO, CISPO: token mean). GRPO and CISPO put the KL in the
loss (β·k3 per token); RLOO, REINFORCE and REINFORCE++ put it in the reward, as TRL and verl do.
"""

from __future__ import annotations

import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.generation import score_tokens

ALGORITHMS = ("grpo", "rloo", "reinforce", "reinforce_pp", "cispo")
# Smallest pg.group_size per algorithm: group statistics (mean, std, leave-one-out) need two
# samples per prompt (losses/advantages.py); REINFORCE's and REINFORCE++'s batch statistics do not.
MIN_GROUP_SIZE = {"grpo": 2, "rloo": 2, "reinforce": 1, "reinforce_pp": 1, "cispo": 2}


def kl_in_loss(cfg) -> bool:
  return cfg.algorithm in ("grpo", "cispo")


def advantages(cfg, scores_B, kl_B, beta, kl_BxT=None, mask_BxT=None):
  """Sequence advantages [B], or (reinforce_pp) token advantages [B, T] from the per-token KL."""
  if cfg.algorithm in ("grpo", "cispo"):
    return losses.group_advantages(scores_B, group_size=cfg.group_size, scale=cfg.scale)
  if cfg.algorithm == "reinforce_pp":
    return losses.reinforce_pp_advantages(scores_B, kl_BxT, mask_BxT, beta=beta)
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
    adv = mb["advantages"]
    adv_BxT = adv * mask if adv.ndim == 2 else losses.sequence_to_token(adv, mask)
    if cfg.algorithm == "cispo":
      per_token = losses.cispo_policy_loss(scores.logp_BxT, mb["old_logp"], adv_BxT, mask,
                                           clip_eps_high=cfg.clip_eps_high or cfg.clip_eps)
    else:
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
