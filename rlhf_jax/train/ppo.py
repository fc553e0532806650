"""PPO for language models with a learned critic (Ziegler et al. 2019; Ouyang et al. 2022).

Per rollout (right-padded completions, mask m):
  r_t   = −β·k(log π_old − log π_ref)_t  + [t = last] · (score − missing-EOS penalty)
          (losses.kl_shaped_rewards; k = k1 or k3), optionally whitened (no mean shift)
  A, R  = GAE(r, V_old; γ, λ)  (losses.gae), A whitened over the batch
then K epochs of minibatch steps on
  L = agg( clipped policy loss + c_v · clipped value loss − c_H · entropy ) [+ γ_ptx · SFT NLL]
The critic is a scalar head on its own backbone (`critic.shared_backbone=False`, params
{"policy", "critic": ScalarModel}) or on the policy's (params {"policy", "critic": {"head"}}).
"""

from __future__ import annotations

import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.generation import score_tokens, score_values


def make_value_fn(critic_graphdef, *, shared_backbone: bool):
  """values_BxT from (critic_params, policy_params, rows...). With a shared backbone the scalar
  model is assembled from the policy's trunk and the critic's head."""
  def value_fn(critic_params, policy_params, prompt_tokens, prompt_mask, tokens, mask):
    if shared_backbone:
      trunk = {k: v for k, v in policy_params.items() if k != "lm_head"}
      params = {"backbone": trunk, "head": critic_params["head"]}
    else:
      params = critic_params
    return score_values(critic_graphdef, params, prompt_tokens, prompt_mask, tokens,
                        mask).values_BxT
  return value_fn


def advantages_and_returns(cfg, rollout_fields: dict, scores_B, beta):
  """(advantages_BxT, returns_BxT, rewards_BxT) from a rollout and its sequence scores."""
  mask = rollout_fields["mask"].astype(jnp.float32)
  penalty = cfg.missing_eos_penalty if cfg.missing_eos_penalty else None
  rewards_BxT = losses.kl_shaped_rewards(
      scores_B, rollout_fields["old_logp"], rollout_fields["ref_logp"], mask,
      rollout_fields["stopped"], beta=beta, estimator=cfg.kl_estimator,
      missing_eos_penalty=penalty)
  if cfg.whiten_rewards:
    rewards_BxT = losses.whiten(rewards_BxT, mask, shift_mean=False)
  adv_BxT, returns_BxT = losses.gae(rewards_BxT, rollout_fields["values"], mask, gamma=cfg.gamma,
                                    lam=cfg.lam)
  return losses.whiten(adv_BxT, mask), returns_BxT, rewards_BxT


def make_loss_fn(policy_graphdef, value_fn, cfg, sft_prompt_len: int | None = None):
  def loss_fn(params, mb):
    mask = mb["mask"].astype(jnp.float32)
    rows = (mb["prompt_tokens"], mb["prompt_mask"], mb["tokens"], mb["mask"])
    scores = score_tokens(policy_graphdef, params["policy"], *rows, with_entropy=True)
    values_BxT = value_fn(params["critic"], params["policy"], *rows)
    clip = dict(clip_eps=cfg.clip_eps)
    policy_BxT = losses.ppo_policy_loss(scores.logp_BxT, mb["old_logp"], mb["advantages"], mask,
                                        **clip)
    value_BxT = losses.value_loss(values_BxT, mb["values"], mb["returns"], mask,
                                  clip_eps=cfg.value_clip_eps or None)
    total_BxT = policy_BxT + cfg.value_coef * value_BxT
    if cfg.entropy_coef:
      total_BxT = total_BxT - cfg.entropy_coef * scores.entropy_BxT * mask
    loss = losses.aggregate_loss(total_BxT, mask, mode="token-mean")
    metrics = losses.ppo_policy_metrics(scores.logp_BxT, mb["old_logp"], mb["advantages"], mask,
                                        **clip)
    if cfg.ptx_coef:
      ptx = score_tokens(policy_graphdef, params["policy"], mb["ptx_tokens"][:, :sft_prompt_len],
                         mb["ptx_mask"][:, :sft_prompt_len], mb["ptx_tokens"][:, sft_prompt_len:],
                         mb["ptx_completion_mask"][:, sft_prompt_len:])
      ptx_mask = mb["ptx_completion_mask"][:, sft_prompt_len:].astype(jnp.float32)
      ptx_loss = -losses.masked_mean(ptx.logp_BxT, ptx_mask)
      loss = loss + cfg.ptx_coef * ptx_loss
      metrics["ptx_loss"] = ptx_loss
    metrics.update(loss=loss,
                   policy_loss=losses.masked_mean(policy_BxT, mask),
                   value_loss=losses.masked_mean(value_BxT, mask),
                   value_error=losses.masked_mean(jnp.square(values_BxT - mb["returns"]), mask),
                   entropy=losses.masked_mean(scores.entropy_BxT, mask))
    return loss, metrics

  return loss_fn
