"""Per-token and per-sequence log-probabilities and entropies from logits.

Alignment convention: `logits_BxTxV[b, t]` is the distribution that scored `tokens_BxT[b, t]`. The caller does
the usual next-token shift (logits of positions 0..S-2 against tokens 1..S-1) before calling these functions.

Every function here upcasts the logits to float32 before the softmax, so bfloat16 models still get float32
log-probs, and uses the max-subtracted log-sum-exp, so large logits do not overflow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses import _checks

REDUCTIONS = ("sum", "mean")


def token_logps(logits_BxTxV: jax.Array, tokens_BxT: jax.Array) -> jax.Array:
  r"""Log-probability of each given token, in float32.

  .. math::
      \log \pi(y_t \mid \cdot) = z_{t, y_t} - \log \sum_v \exp z_{t, v}

  Args:
    logits_BxTxV: [B, T, V] logits (any float dtype; computed in float32).
    tokens_BxT: [B, T] integer token ids in [0, V). Out-of-range ids (e.g. a padding id of -1) are clipped
      into range so padded positions stay finite; mask them out downstream.

  Returns:
    logp_BxT: [B, T] float32 (float64 if the logits are float64) log-probabilities.
  """
  fn = "token_logps"
  _checks.check_rank(fn, "logits_BxTxV", logits_BxTxV, 3, "[B, T, V]")
  _checks.check_rank(fn, "tokens_BxT", tokens_BxT, 2, "[B, T]")
  if jnp.shape(logits_BxTxV)[:2] != jnp.shape(tokens_BxT):
    raise ValueError(f"{fn}: `logits_BxTxV` has shape {tuple(jnp.shape(logits_BxTxV))} but `tokens_BxT` "
                     f"has shape {tuple(jnp.shape(tokens_BxT))}; the leading [B, T] must match.")
  logits = _checks.as_float(logits_BxTxV)
  vocab = logits.shape[-1]
  tokens = jnp.clip(jnp.asarray(tokens_BxT).astype(jnp.int32), 0, vocab - 1)
  picked_BxT = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
  return picked_BxT - jax.nn.logsumexp(logits, axis=-1)


def token_entropy(logits_BxTxV: jax.Array) -> jax.Array:
  r"""Entropy of each next-token distribution, in float32.

  .. math::
      H_t = -\sum_v p_{t, v} \log p_{t, v}, \qquad p_t = \mathrm{softmax}(z_t)

  Entries with probability exactly 0 (e.g. logits of -inf from a vocabulary mask) contribute 0.

  Args:
    logits_BxTxV: [B, T, V] logits (any float dtype; computed in float32).

  Returns:
    entropy_BxT: [B, T] entropies in nats, >= 0.
  """
  _checks.check_rank("token_entropy", "logits_BxTxV", logits_BxTxV, 3, "[B, T, V]")
  logits = _checks.as_float(logits_BxTxV)
  logp_BxTxV = jax.nn.log_softmax(logits, axis=-1)
  p_BxTxV = jnp.exp(logp_BxTxV)
  plogp = jnp.where(p_BxTxV > 0, p_BxTxV * jnp.where(p_BxTxV > 0, logp_BxTxV, 0.0), 0.0)
  return -jnp.sum(plogp, axis=-1)


def reduce_token_logps(logp_BxT: jax.Array, mask_BxT: jax.Array, *, reduction: str = "sum") -> jax.Array:
  r"""Masked sum or mean over time of per-token values (typically log-probs).

  .. math::
      \text{sum: } \sum_t m_t \ell_t, \qquad \text{mean: } \frac{\sum_t m_t \ell_t}{\max(1, \sum_t m_t)}

  Args:
    logp_BxT: [B, T] per-token values.
    mask_BxT: [B, T] 1 for completion tokens, 0 for prompt/padding.
    reduction: "sum" (sequence log-likelihood) or "mean" (per-token average, as used by IPO/SimPO/ORPO).

  Returns:
    [B] reduced values; 0 for rows with an empty mask.
  """
  fn = "reduce_token_logps"
  _checks.check_choice(fn, "reduction", reduction, REDUCTIONS)
  _checks.check_rank(fn, "logp_BxT", logp_BxT, 2, "[B, T]")
  _checks.check_same_shape(fn, logp_BxT=logp_BxT, mask_BxT=mask_BxT)
  logp = _checks.as_float(logp_BxT)
  mask = _checks.as_mask(mask_BxT, logp)
  total_B = jnp.sum(jnp.where(mask > 0, logp, 0.0), axis=-1)
  if reduction == "sum":
    return total_B
  return total_B / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


def sequence_logps(logits_BxTxV: jax.Array, tokens_BxT: jax.Array, mask_BxT: jax.Array, *,
                   reduction: str = "sum") -> jax.Array:
  r"""Log-probability of each (masked) completion: :math:`\sum_t m_t \log \pi(y_t \mid \cdot)`.

  Args:
    logits_BxTxV: [B, T, V] logits aligned with `tokens_BxT` (see the module docstring).
    tokens_BxT: [B, T] token ids.
    mask_BxT: [B, T] 1 for completion tokens.
    reduction: "sum" (log-likelihood of the sequence) or "mean" (average per-token log-prob).

  Returns:
    logps_B: [B] float32 sequence log-probabilities.
  """
  fn = "sequence_logps"
  _checks.check_choice(fn, "reduction", reduction, REDUCTIONS)
  _checks.check_same_shape(fn, tokens_BxT=tokens_BxT, mask_BxT=mask_BxT)
  return reduce_token_logps(token_logps(logits_BxTxV, tokens_BxT), mask_BxT, reduction=reduction)
