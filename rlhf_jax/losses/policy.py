r"""Policy-gradient losses: PPO / GRPO / DAPO / GSPO clipped surrogate, CISPO's clipped IS-weight
REINFORCE loss, clipped value loss, entropy bonus, the pretraining-mix (PPO-ptx) term and truncated
importance-sampling weights.

All losses are per token, [B, T], 0 on padding; reduce them with `aggregate_loss`, whose `mode` picks the
PPO/GRPO/Dr. GRPO/DAPO normalisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses import _checks

RATIO_LEVELS = ("token", "sequence")
# The log-ratio is clamped to [-20, 20] before exp, as verl's `compute_policy_loss` does.
LOG_RATIO_CLAMP = 20.0


def _masked_inputs(logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT):
  """(logp, old_logp, adv, mask, valid) as float32, the old log-probs and advantages without
  gradient. Padding may hold garbage, even NaN: every input is zeroed there before any
  arithmetic, so that it reaches neither the loss nor its gradient (a `where` on the result alone
  lets 0 * NaN into the gradient)."""
  logp = _checks.as_float(logp_BxT)
  mask = _checks.as_mask(mask_BxT, logp)
  valid = mask > 0
  logp = jnp.where(valid, logp, 0.0)
  old_logp = jnp.where(valid, jax.lax.stop_gradient(_checks.as_float(old_logp_BxT)), 0.0)
  adv = jnp.where(valid, jax.lax.stop_gradient(_checks.as_float(advantages_BxT)), 0.0)
  return logp, old_logp, adv, mask, valid


def _ratio_terms(fn, logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, clip_eps, clip_eps_high,
                 dual_clip, level):
  """Shared computation of `ppo_policy_loss` and `ppo_policy_metrics`."""
  _checks.check_choice(fn, "level", level, RATIO_LEVELS)
  _checks.check_rank(fn, "logp_BxT", logp_BxT, 2, "[B, T]")
  _checks.check_same_shape(fn, logp_BxT=logp_BxT, old_logp_BxT=old_logp_BxT,
                           advantages_BxT=advantages_BxT, mask_BxT=mask_BxT)
  if clip_eps is None:
    raise ValueError(f"{fn}: `clip_eps` is required (e.g. 0.2); use a large value to disable clipping.")
  _checks.check_static_range(fn, "clip_eps", clip_eps, low=0.0)
  _checks.check_static_range(fn, "clip_eps_high", clip_eps_high, low=0.0)
  _checks.check_static_range(fn, "dual_clip", dual_clip, low=1.0, low_inclusive=False)
  logp, old_logp, adv, mask, valid = _masked_inputs(logp_BxT, old_logp_BxT, advantages_BxT,
                                                     mask_BxT)
  log_ratio = logp - old_logp
  if level == "sequence":
    seq_log_ratio_B = jnp.sum(log_ratio, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    log_ratio = jnp.broadcast_to(seq_log_ratio_B[:, None], log_ratio.shape)
  ratio = jnp.exp(jnp.clip(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
  high = clip_eps if clip_eps_high is None else clip_eps_high
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high)
  loss = jnp.maximum(unclipped, clipped)
  dual_active = jnp.zeros_like(mask, dtype=bool)
  if dual_clip is not None:
    cap = -dual_clip * adv  # positive where adv < 0
    dual_active = (adv < 0) & (loss > cap)
    loss = jnp.where(adv < 0, jnp.minimum(loss, cap), loss)
  return dict(loss=jnp.where(valid, loss, 0.0), mask=mask, log_ratio=log_ratio, ratio=ratio, adv=adv,
              clip_active=clipped > unclipped, dual_active=dual_active, high=high)


def ppo_policy_loss(logp_BxT: jax.Array, old_logp_BxT: jax.Array, advantages_BxT: jax.Array,
                    mask_BxT: jax.Array, *, clip_eps: float, clip_eps_high: float | None = None,
                    dual_clip: float | None = None, level: str = "token") -> jax.Array:
  r"""Per-token clipped surrogate loss of PPO (Schulman et al. 2017) and its LLM variants.

  .. math::
      r_t = \exp(\log\pi_\theta(y_t) - \log\pi_{old}(y_t)), \qquad
      \ell_t = \max\big(-A_t r_t,\; -A_t\,\mathrm{clip}(r_t, 1 - \epsilon_{low}, 1 + \epsilon_{high})\big)

  - `clip_eps_high` (DAPO "clip-higher", Yu et al. 2025): a separate upper bound; None means symmetric.
  - `dual_clip` = c > 1 (Ye et al. 2020, "Mastering Complex Control in MOBA Games"): for
    :math:`A_t < 0` the loss is further capped at :math:`-c A_t`, bounding the update when the ratio
    is huge.
  - `level="sequence"` (GSPO, Zheng et al. 2025): every token of a sequence uses the length-normalised
    sequence ratio :math:`s = \exp\big(\frac{1}{|y|}\sum_t m_t(\log\pi_\theta - \log\pi_{old})\big)`
    (TRL `importance_sampling_level="sequence"`); GSPO uses small eps such as 3e-4 / 4e-4.

  GRPO (Shao et al. 2024) is this loss with group advantages broadcast over tokens, plus an optional
  `beta * kl_penalty(..., estimator="k3")` term. Old log-probs and advantages carry no gradient.

  Numerical safety, as verl's ``compute_policy_loss``: the log-ratio (per token, or per sequence for
  GSPO) is clamped to [-20, 20] before the exponential, i.e.
  :math:`r_t = \exp(\mathrm{clip}(\log\pi_\theta - \log\pi_{old}, -20, 20))`, so the ratio is at most
  :math:`e^{20} \approx 4.9 \cdot 10^8` instead of overflowing to inf (and -0 * inf = NaN). Beyond the
  clamp the ratio is constant and its gradient 0; ordinary ratios are unaffected. Masked entries are
  ignored even if they hold NaN (in the loss and in its gradient).

  Args:
    logp_BxT: [B, T] log-probs of the sampled tokens under the current policy.
    old_logp_BxT: [B, T] log-probs under the policy that generated the samples.
    advantages_BxT: [B, T] advantages (e.g. `gae` or `sequence_to_token(group_advantages(...))`).
    mask_BxT: [B, T] completion mask.
    clip_eps: lower clip range (and upper one if `clip_eps_high` is None), e.g. 0.2.
    clip_eps_high: optional upper clip range, e.g. 0.28 in DAPO.
    dual_clip: optional c > 1 (3.0 is common).
    level: "token" (PPO/GRPO) or "sequence" (GSPO).

  Returns:
    loss_BxT: [B, T], 0 on padding.
  """
  terms = _ratio_terms("ppo_policy_loss", logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, clip_eps,
                       clip_eps_high, dual_clip, level)
  return terms["loss"]


def ppo_policy_metrics(logp_BxT: jax.Array, old_logp_BxT: jax.Array, advantages_BxT: jax.Array,
                       mask_BxT: jax.Array, *, clip_eps: float, clip_eps_high: float | None = None,
                       dual_clip: float | None = None, level: str = "token") -> dict[str, jax.Array]:
  r"""Diagnostics of `ppo_policy_loss` (same arguments), as token-means over the mask, no gradient.

  Keys:
    - ``clip_frac``: fraction of tokens whose clipped branch is active (gradient zeroed by clipping).
    - ``clip_frac_low`` / ``clip_frac_high``: ratio below :math:`1-\epsilon_{low}` with A < 0 / above
      :math:`1+\epsilon_{high}` with A > 0.
    - ``dual_clip_frac``: fraction of tokens capped by the dual clip.
    - ``approx_kl``: :math:`\tfrac12 (\log r)^2` (the k2 estimate of KL(old || new), as TRL logs it), of
      the log-ratio before the clamp.
    - ``ratio_mean``, ``ratio_max``: statistics of the (clamped) importance ratio.

  Returns:
    dict of scalars.
  """
  t = _ratio_terms("ppo_policy_metrics", logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT, clip_eps,
                   clip_eps_high, dual_clip, level)
  t = jax.tree_util.tree_map(jax.lax.stop_gradient, t)
  mask, ratio, adv = t["mask"], t["ratio"], t["adv"]
  n = jnp.maximum(jnp.sum(mask), 1.0)

  def mean(x):
    return jnp.sum(jnp.where(mask > 0, x.astype(mask.dtype), 0.0)) / n

  return {
      "clip_frac": mean(t["clip_active"]),
      "clip_frac_low": mean((ratio < 1.0 - clip_eps) & (adv < 0)),
      "clip_frac_high": mean((ratio > 1.0 + t["high"]) & (adv > 0)),
      "dual_clip_frac": mean(t["dual_active"]),
      "approx_kl": mean(0.5 * jnp.square(t["log_ratio"])),
      "ratio_mean": mean(ratio),
      "ratio_max": jnp.max(jnp.where(mask > 0, ratio, -jnp.inf)),
  }


def cispo_policy_loss(logp_BxT: jax.Array, old_logp_BxT: jax.Array, advantages_BxT: jax.Array,
                      mask_BxT: jax.Array, *, clip_eps_high: float,
                      clip_eps_low: float | None = None) -> jax.Array:
  r"""CISPO per-token loss (MiniMax-M1, 2025, "Scaling test-time compute efficiently with
  lightning attention"): REINFORCE with a clipped, stop-gradient importance-sampling weight.

  .. math::
      \ell_t = -\,\mathrm{sg}ig(\mathrm{clip}(
ho_t, 1 - \epsilon_{low}, 1 + \epsilon_{high})ig)
               \,A_t \,\log\pi_	heta(y_t), \qquad 
ho_t = rac{\pi_	heta(y_t)}{\pi_{old}(y_t)}

  Unlike PPO's clipped surrogate, which gives a token zero gradient once its ratio leaves the
  trust region, every token keeps its gradient :math:`-\hat
ho_t A_t 
abla\log\pi_	heta(y_t)`;
  only the size of its weight is capped. `clip_eps_low=None` leaves the weight unbounded below
  (the paper's setting); the log-ratio is clamped to [-20, 20] before exp as in the PPO ratio.

  Args:
    logp_BxT: [B, T] log-probs of the sampled tokens under the current policy.
    old_logp_BxT: [B, T] log-probs under the sampling policy (no gradient).
    advantages_BxT: [B, T] advantages (no gradient).
    mask_BxT: [B, T] completion mask.
    clip_eps_high: upper clip of the weight, 1 + clip_eps_high.
    clip_eps_low: lower clip, 1 - clip_eps_low; None: no lower bound.

  Returns:
    loss_BxT: [B, T], 0 on padding; reduce with `aggregate_loss` (the paper: token-mean).
  """
  fn = "cispo_policy_loss"
  _checks.check_rank(fn, "logp_BxT", logp_BxT, 2, "[B, T]")
  _checks.check_same_shape(fn, logp_BxT=logp_BxT, old_logp_BxT=old_logp_BxT,
                           advantages_BxT=advantages_BxT, mask_BxT=mask_BxT)
  _checks.check_static_range(fn, "clip_eps_high", clip_eps_high, low=0.0)
  _checks.check_static_range(fn, "clip_eps_low", clip_eps_low, low=0.0)
  logp, old_logp, adv, mask, valid = _masked_inputs(logp_BxT, old_logp_BxT, advantages_BxT,
                                                     mask_BxT)
  log_ratio = jnp.clip(jax.lax.stop_gradient(logp) - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
  low = 0.0 if clip_eps_low is None else 1.0 - clip_eps_low
  weight = jnp.clip(jnp.exp(log_ratio), low, 1.0 + clip_eps_high)
  return jnp.where(valid, -weight * adv * logp, 0.0)


def value_loss(values_BxT: jax.Array, old_values_BxT: jax.Array, returns_BxT: jax.Array,
               mask_BxT: jax.Array, *, clip_eps: float | None) -> jax.Array:
  r"""Per-token clipped value loss of PPO (as in OpenAI baselines, TRL, Ouyang et al. 2022).

  .. math::
      \ell_t = \tfrac12 \max\big((V_t - R_t)^2,\;
               (\mathrm{clip}(V_t, V^{old}_t - \epsilon, V^{old}_t + \epsilon) - R_t)^2\big)

  `clip_eps=None` gives the unclipped :math:`\tfrac12 (V_t - R_t)^2`. Returns and old values carry no
  gradient. Masked entries are ignored even if they hold NaN (in the loss and in its gradient).

  Args:
    values_BxT: [B, T] current value predictions.
    old_values_BxT: [B, T] value predictions at rollout time.
    returns_BxT: [B, T] targets (e.g. from `gae`).
    mask_BxT: [B, T] completion mask.
    clip_eps: value clip range (e.g. 0.2), or None.

  Returns:
    loss_BxT: [B, T], 0 on padding.
  """
  fn = "value_loss"
  _checks.check_rank(fn, "values_BxT", values_BxT, 2, "[B, T]")
  _checks.check_same_shape(fn, values_BxT=values_BxT, old_values_BxT=old_values_BxT,
                           returns_BxT=returns_BxT, mask_BxT=mask_BxT)
  _checks.check_static_range(fn, "clip_eps", clip_eps, low=0.0)
  v = _checks.as_float(values_BxT)
  valid = _checks.as_mask(mask_BxT, v) > 0
  # Zero padded inputs first, so that NaN garbage reaches neither the loss nor its gradient.
  v = jnp.where(valid, v, 0.0)
  v_old = jnp.where(valid, jax.lax.stop_gradient(_checks.as_float(old_values_BxT)), 0.0)
  ret = jnp.where(valid, jax.lax.stop_gradient(_checks.as_float(returns_BxT)), 0.0)
  loss = jnp.square(v - ret)
  if clip_eps is not None:
    v_clipped = jnp.clip(v, v_old - clip_eps, v_old + clip_eps)
    loss = jnp.maximum(loss, jnp.square(v_clipped - ret))
  return jnp.where(valid, 0.5 * loss, 0.0)


def entropy_bonus(entropy_BxT: jax.Array, mask_BxT: jax.Array, *, coef: float) -> jax.Array:
  r"""Per-token entropy bonus written as a loss to add: :math:`\ell_t = -c\, H(\pi_\theta(\cdot \mid s_t))`.

  Maximising entropy keeps exploration up (Williams & Peng 1991; Mnih et al. 2016; the PPO paper's
  :math:`c_2 S` term). Takes the per-token entropies (`logprobs.token_entropy` of the logits, as
  `generation.score_tokens(..., with_entropy=True)` returns them), so no [B, T, V] tensor is kept for
  it. Masked positions are ignored even if they hold NaN (in the loss and in its gradient).

  Args:
    entropy_BxT: [B, T] entropies of the policy at the completion positions.
    mask_BxT: [B, T] completion mask.
    coef: entropy coefficient c >= 0 (e.g. 0.01).

  Returns:
    loss_BxT: [B, T], 0 on padding.
  """
  fn = "entropy_bonus"
  _checks.check_static_range(fn, "coef", coef, low=0.0)
  _checks.check_same_shape(fn, entropy_BxT=entropy_BxT, mask_BxT=mask_BxT)
  entropy = _checks.as_float(entropy_BxT)
  valid = _checks.as_mask(mask_BxT, entropy) > 0
  return jnp.where(valid, -coef * jnp.where(valid, entropy, 0.0), 0.0)


def ptx_loss(logp_BxT: jax.Array, mask_BxT: jax.Array, *, coef: float) -> jax.Array:
  r"""Per-token pretraining-mix term of PPO-ptx (Ouyang et al. 2022, eq. 2):
  :math:`\ell_t = -\gamma\,\log\pi_\theta(x_t)` on a batch of pretraining (or SFT) text.

  InstructGPT maximises :math:`\gamma E_{x \sim D_{pretrain}}[\log\pi_\theta(x)]` next to the RL objective
  to reduce the "alignment tax"; add the aggregated result to the PPO loss. Takes the policy's log-probs
  of the batch's tokens (`generation.score_tokens`). Masked positions are ignored even if they hold NaN
  (in the loss and in its gradient).

  Args:
    logp_BxT: [B, T] log-probs of the batch's tokens under the policy.
    mask_BxT: [B, T] 1 for tokens that count.
    coef: gamma >= 0.

  Returns:
    loss_BxT: [B, T], 0 on padding.
  """
  fn = "ptx_loss"
  _checks.check_static_range(fn, "coef", coef, low=0.0)
  _checks.check_same_shape(fn, logp_BxT=logp_BxT, mask_BxT=mask_BxT)
  logp = _checks.as_float(logp_BxT)
  valid = _checks.as_mask(mask_BxT, logp) > 0
  return jnp.where(valid, -coef * jnp.where(valid, logp, 0.0), 0.0)


def tis_weights(old_logp_BxT: jax.Array, sampler_logp_BxT: jax.Array, mask_BxT: jax.Array, *,
                cap: float) -> jax.Array:
  r"""Truncated importance-sampling weights of a rollout whose sampler differs from the trainer's
  policy (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training";
  verl's ``tis_imp_ratio_cap``):

  .. math::
      w_t = \min\big(\exp(\log\pi_{old}(y_t) - \log\pi_{sampler}(y_t)),\; C\big)

  Tokens were drawn from the sampler (bfloat16 decoding, a tempered or truncated distribution, another
  engine) but the policy-gradient estimator assumes :math:`\pi_{old}`; multiplying each token's policy
  loss by :math:`w_t` corrects the mismatch, truncated at C to bound the variance. The log-ratio is
  clamped to [-20, 20] before the exponential (as the PPO ratio). No gradient; 0 on padding.

  Args:
    old_logp_BxT: [B, T] log-probs of the sampled tokens under the trainer's old policy.
    sampler_logp_BxT: [B, T] their log-probs under the sampling distribution.
    mask_BxT: [B, T] completion mask.
    cap: C >= 1 (2 in Yao et al.).

  Returns:
    weights_BxT: [B, T] in [0, C], 0 on padding.
  """
  fn = "tis_weights"
  _checks.check_static_range(fn, "cap", cap, low=1.0)
  _checks.check_same_shape(fn, old_logp_BxT=old_logp_BxT, sampler_logp_BxT=sampler_logp_BxT,
                           mask_BxT=mask_BxT)
  old, sampler = _checks.as_float(old_logp_BxT), _checks.as_float(sampler_logp_BxT)
  valid = _checks.as_mask(mask_BxT, old) > 0
  log_w = jnp.clip(jnp.where(valid, old - sampler, 0.0), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
  return jax.lax.stop_gradient(jnp.where(valid, jnp.minimum(jnp.exp(log_w), cap), 0.0))
