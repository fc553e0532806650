r"""Per-token KL estimators and the KL-shaped reward of RLHF with PPO.

The estimators follow Schulman 2020, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html).
For tokens sampled from :math:`\pi` and log-ratio :math:`\delta = \log\pi - \log\pi_{ref}`, each estimates
:math:`KL(\pi \,\|\, \pi_{ref}) = E_{\pi}[\delta]`:

- ``k1`` = :math:`\delta` -- unbiased, high variance, can be negative per sample.
- ``k2`` = :math:`\tfrac12 \delta^2` -- biased (its mean is a second-order approximation of the KL), low
  variance, >= 0.
- ``k3`` = :math:`e^{-\delta} + \delta - 1` -- unbiased (:math:`E_\pi[e^{-\delta}] = 1`), low variance,
  >= 0. This is the KL term of GRPO (Shao et al. 2024). The log-ratio is clamped to [-20, 20] before the
  exponential, as in verl's ``low_var_kl`` (see `kl_penalty`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses import _checks

KL_ESTIMATORS = ("k1", "k2", "k3")
# The log-ratio clamp of verl's `kl_penalty(..., "low_var_kl")` before the exponential.
K3_LOG_RATIO_CLAMP = 20.0


def kl_penalty(logp_BxT: jax.Array, ref_logp_BxT: jax.Array, *, estimator: str,
               value_clamp: float | None = None) -> jax.Array:
  r"""Per-token estimate of :math:`KL(\pi \| \pi_{ref})` at the sampled tokens (unmasked).

  With :math:`\delta_t = \log\pi(y_t) - \log\pi_{ref}(y_t)`:

  .. math::
      k1 = \delta_t, \qquad k2 = \tfrac12\delta_t^2, \qquad k3 = e^{-\delta_t} + \delta_t - 1

  See the module docstring for bias/variance (Schulman 2020). The reference is a constant (stop-gradient);
  gradients flow into `logp_BxT`, so `beta * k3` can be added to a GRPO loss. Mask and reduce the result
  with `aggregate_loss` / `masked_mean`.

  k3 clamps the log-ratio before the exponential, as verl's ``low_var_kl`` does:

  .. math::
      k3 = e^{-\bar\delta_t} + \bar\delta_t - 1, \qquad \bar\delta_t = \mathrm{clip}(\delta_t, -20, 20)

  so it stays finite (k3 <= e^20, and so does its gradient) for any finite log-probs: without the clamp
  :math:`e^{-\delta}` overflows float32 for :math:`\delta < -88` and its gradient is NaN. Only
  :math:`|\delta| > 20` (a probability ratio beyond e^20) is affected, where k3 is constant with zero
  gradient. verl also clamps the k3 value to [-10, 10], which already bites at :math:`\delta \lesssim -2.6`;
  `value_clamp` = c does that for any estimator (the result clipped to [-c, c], zero gradient beyond); the
  default None leaves values unclamped (TRL's k3 is unclamped). k1 and k2 clamp nothing else.

  Args:
    logp_BxT: [B, T] log-probs of the sampled tokens under the policy (any shape works if both match).
    ref_logp_BxT: [B, T] log-probs of the same tokens under the reference model.
    estimator: one of `KL_ESTIMATORS`: "k1", "k2", "k3".
    value_clamp: optional c > 0: the estimate clipped to [-c, c] (verl's ``low_var_kl`` uses 10).

  Returns:
    kl_BxT: same shape as the inputs.
  """
  fn = "kl_penalty"
  _checks.check_choice(fn, "estimator", estimator, KL_ESTIMATORS)
  _checks.check_same_shape(fn, logp_BxT=logp_BxT, ref_logp_BxT=ref_logp_BxT)
  delta = _checks.as_float(logp_BxT) - jax.lax.stop_gradient(_checks.as_float(ref_logp_BxT))
  if value_clamp is not None:
    _checks.check_static_range(fn, "value_clamp", value_clamp, low=0.0, low_inclusive=False)
  if estimator == "k1":
    kl = delta
  elif estimator == "k2":
    kl = 0.5 * jnp.square(delta)
  else:  # k3; expm1 keeps precision when delta is small: e^{-d} - 1 + d.
    delta = jnp.clip(delta, -K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    kl = jnp.expm1(-delta) + delta
  return kl if value_clamp is None else jnp.clip(kl, -value_clamp, value_clamp)


def sequence_kl(logp_BxT: jax.Array, ref_logp_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  r"""Sampled estimate of :math:`KL(\pi \| \pi_{ref})` per sequence: :math:`\sum_t m_t\,k1_t`.

  Args:
    logp_BxT, ref_logp_BxT: [B, T] log-probs of the sampled tokens under the policy and reference.
    mask_BxT: [B, T] 1 on completion tokens, 0 on padding (padded log-probs are ignored, even NaN).

  Returns:
    kl_B: [B] float32.
  """
  _checks.check_same_shape("sequence_kl", logp_BxT=logp_BxT, mask_BxT=mask_BxT)
  logp, ref = _checks.as_float(logp_BxT), _checks.as_float(ref_logp_BxT)
  valid = _checks.as_mask(mask_BxT, logp) > 0
  # Zero padded inputs before the arithmetic, so NaN garbage reaches neither the value nor the gradient.
  k1_BxT = kl_penalty(jnp.where(valid, logp, 0.0), jnp.where(valid, ref, 0.0), estimator="k1")
  return jnp.sum(k1_BxT, axis=1)


def kl_shaped_rewards(scores_B: jax.Array, logp_BxT: jax.Array, ref_logp_BxT: jax.Array,
                      mask_BxT: jax.Array, has_eos_B: jax.Array | None = None, *,
                      beta: float | jax.Array, estimator: str = "k1",
                      missing_eos_penalty: float | None = None,
                      value_clamp: float | None = None) -> jax.Array:
  r"""Per-token rewards for PPO-style RLHF: a KL penalty on every token plus the score at the end.

  .. math::
      R_t = -\beta\,\mathrm{kl}_t \, m_t + \mathbb{1}[t = t_{last}]\,\big(s - p\,\mathbb{1}[\text{no EOS}]\big)

  where :math:`\mathrm{kl}_t` is `kl_penalty(logp, ref_logp, estimator)`, :math:`t_{last}` is the last
  completion token (mask must be right-padded), :math:`s` the sequence score (reward model or verifier) and
  :math:`p` the optional `missing_eos_penalty` applied to completions that did not emit EOS (truncated).
  This is the reward of Ziegler et al. 2019 / Stiennon et al. 2020 / Ouyang et al. 2022 as implemented in
  TRL's PPO trainer (`kl_coef`, `missing_eos_penalty`, `kl_estimator` in {k1, k3}). Use the sampling-time
  log-probs for `logp_BxT`; the result carries no gradient (it is a reward). Pass it to `gae`.
  Masked entries (and the score of a row with an empty mask) are ignored even if they hold NaN. With
  ``estimator="k3"`` the per-token KL is clamped as described in `kl_penalty`.

  Args:
    scores_B: [B] sequence-level scores.
    logp_BxT: [B, T] policy log-probs of the completion tokens.
    ref_logp_BxT: [B, T] reference log-probs of the same tokens.
    mask_BxT: [B, T] right-padded completion mask.
    has_eos_B: optional [B] bool, True where the completion ended with EOS.
    beta: KL coefficient (scalar; may be a traced value from an adaptive KL controller).
    estimator: "k1" (TRL default), "k2" or "k3".
    missing_eos_penalty: optional penalty subtracted from the score where `has_eos_B` is False.
    value_clamp: optional clip of the per-token KL estimate to [-c, c] (see `kl_penalty`).

  Returns:
    rewards_BxT: [B, T], 0 on padding; rows with an empty mask get no score.
  """
  fn = "kl_shaped_rewards"
  _checks.check_rank(fn, "logp_BxT", logp_BxT, 2, "[B, T]")
  _checks.check_same_shape(fn, logp_BxT=logp_BxT, ref_logp_BxT=ref_logp_BxT, mask_BxT=mask_BxT)
  b, t = jnp.shape(logp_BxT)
  _checks.check_rank(fn, "scores_B", scores_B, 1, "[B]")
  if jnp.shape(scores_B) != (b,):
    raise ValueError(f"{fn}: `scores_B` must have shape [B] = ({b},), got {tuple(jnp.shape(scores_B))}.")
  if missing_eos_penalty is not None and has_eos_B is None:
    raise ValueError(f"{fn}: `missing_eos_penalty` needs `has_eos_B` (which rows emitted EOS).")
  kl_BxT = jax.lax.stop_gradient(kl_penalty(logp_BxT, ref_logp_BxT, estimator=estimator,
                                            value_clamp=value_clamp))
  mask = _checks.as_mask(mask_BxT, kl_BxT)
  scores = jax.lax.stop_gradient(_checks.as_float(scores_B))
  if missing_eos_penalty is not None:
    if jnp.shape(has_eos_B) != (b,):
      raise ValueError(f"{fn}: `has_eos_B` must have shape [B] = ({b},), "
                       f"got {tuple(jnp.shape(has_eos_B))}.")
    scores = jnp.where(jnp.asarray(has_eos_B).astype(bool), scores, scores - missing_eos_penalty)
  lengths_B = jnp.sum(mask, axis=-1).astype(jnp.int32)
  # one_hot(-1) is all zeros, so rows with an empty mask receive no score.
  last_BxT = jax.nn.one_hot(lengths_B - 1, t, dtype=kl_BxT.dtype)
  # jnp.where, not a product: a NaN score of a padded (all-masked) row must not leak into its zeros.
  return jnp.where(mask > 0, -beta * kl_BxT, 0.0) + jnp.where(last_BxT > 0, scores[:, None], 0.0)
