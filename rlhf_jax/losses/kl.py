r"""Per-token KL estimators and the KL-shaped reward of RLHF with PPO.

The estimators follow Schulman 2020, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html).
For tokens sampled from :math:`\pi` and log-ratio :math:`\delta = \log\pi - \log\pi_{ref}`, each estimates
:math:`KL(\pi \,\|\, \pi_{ref}) = E_{\pi}[\delta]`:

- ``k1`` = :math:`\delta` -- unbiased, high variance, can be negative per sample.
- ``k2`` = :math:`\tfrac12 \delta^2` -- biased (its mean is a second-order approximation of the KL), low
  variance, >= 0.
- ``k3`` = :math:`e^{-\delta} + \delta - 1` -- unbiased (:math:`E_\pi[e^{-\delta}] = 1`), low variance,
  >= 0. This is the KL term of GRPO (Shao et al. 2024).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses import _checks

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logp_BxT: jax.Array, ref_logp_BxT: jax.Array, *, estimator: str) -> jax.Array:
  r"""Per-token estimate of :math:`KL(\pi \| \pi_{ref})` at the sampled tokens (unmasked).

  With :math:`\delta_t = \log\pi(y_t) - \log\pi_{ref}(y_t)`:

  .. math::
      k1 = \delta_t, \qquad k2 = \tfrac12\delta_t^2, \qquad k3 = e^{-\delta_t} + \delta_t - 1

  See the module docstring for bias/variance (Schulman 2020). The reference is a constant (stop-gradient);
  gradients flow into `logp_BxT`, so `beta * k3` can be added to a GRPO loss. Mask and reduce the result
  with `aggregate_loss` / `masked_mean`.

  Args:
    logp_BxT: [B, T] log-probs of the sampled tokens under the policy (any shape works if both match).
    ref_logp_BxT: [B, T] log-probs of the same tokens under the reference model.
    estimator: one of `KL_ESTIMATORS`: "k1", "k2", "k3".

  Returns:
    kl_BxT: same shape as the inputs.
  """
  fn = "kl_penalty"
  _checks.check_choice(fn, "estimator", estimator, KL_ESTIMATORS)
  _checks.check_same_shape(fn, logp_BxT=logp_BxT, ref_logp_BxT=ref_logp_BxT)
  delta = _checks.as_float(logp_BxT) - jax.lax.stop_gradient(_checks.as_float(ref_logp_BxT))
  if estimator == "k1":
    return delta
  if estimator == "k2":
    return 0.5 * jnp.square(delta)
  # k3; expm1 keeps precision when delta is small: e^{-d} - 1 + d.
  return jnp.expm1(-delta) + delta


def sequence_kl(logp_BxT: jax.Array, ref_logp_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  r"""Sampled estimate of :math:`KL(\pi \| \pi_{ref})` per sequence: :math:`\sum_t m_t\,k1_t`.

  Args:
    logp_BxT, ref_logp_BxT: [B, T] log-probs of the sampled tokens under the policy and reference.
    mask_BxT: [B, T] 1 on completion tokens, 0 on padding.

  Returns:
    kl_B: [B] float32.
  """
  _checks.check_same_shape("sequence_kl", logp_BxT=logp_BxT, mask_BxT=mask_BxT)
  k1_BxT = kl_penalty(logp_BxT, ref_logp_BxT, estimator="k1")
  return jnp.sum(k1_BxT * _checks.as_float(mask_BxT), axis=1)


def kl_shaped_rewards(scores_B: jax.Array, logp_BxT: jax.Array, ref_logp_BxT: jax.Array,
                      mask_BxT: jax.Array, has_eos_B: jax.Array | None = None, *,
                      beta: float | jax.Array, estimator: str = "k1",
                      missing_eos_penalty: float | None = None) -> jax.Array:
  r"""Per-token rewards for PPO-style RLHF: a KL penalty on every token plus the score at the end.

  .. math::
      R_t = -\beta\,\mathrm{kl}_t \, m_t + \mathbb{1}[t = t_{last}]\,\big(s - p\,\mathbb{1}[\text{no EOS}]\big)

  where :math:`\mathrm{kl}_t` is `kl_penalty(logp, ref_logp, estimator)`, :math:`t_{last}` is the last
  completion token (mask must be right-padded), :math:`s` the sequence score (reward model or verifier) and
  :math:`p` the optional `missing_eos_penalty` applied to completions that did not emit EOS (truncated).
  This is the reward of Ziegler et al. 2019 / Stiennon et al. 2020 / Ouyang et al. 2022 as implemented in
  TRL's PPO trainer (`kl_coef`, `missing_eos_penalty`, `kl_estimator` in {k1, k3}). Use the sampling-time
  log-probs for `logp_BxT`; the result carries no gradient (it is a reward). Pass it to `gae`.

  Args:
    scores_B: [B] sequence-level scores.
    logp_BxT: [B, T] policy log-probs of the completion tokens.
    ref_logp_BxT: [B, T] reference log-probs of the same tokens.
    mask_BxT: [B, T] right-padded completion mask.
    has_eos_B: optional [B] bool, True where the completion ended with EOS.
    beta: KL coefficient (scalar; may be a traced value from an adaptive KL controller).
    estimator: "k1" (TRL default), "k2" or "k3".
    missing_eos_penalty: optional penalty subtracted from the score where `has_eos_B` is False.

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
  kl_BxT = jax.lax.stop_gradient(kl_penalty(logp_BxT, ref_logp_BxT, estimator=estimator))
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
  return jnp.where(mask > 0, -beta * kl_BxT, 0.0) + last_BxT * scores[:, None]
