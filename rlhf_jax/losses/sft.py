"""Supervised fine-tuning (next-token cross-entropy) loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses import _checks
from rlhf_jax.losses import logprobs


def sft_loss(logits_BxTxV: jax.Array, tokens_BxT: jax.Array, mask_BxT: jax.Array | None = None, *,
             label_smoothing: float = 0.0) -> jax.Array:
  r"""Per-token negative log-likelihood (optionally label-smoothed), unreduced.

  .. math::
      \ell_t = m_t \Big[ -(1 - \epsilon) \log p(y_t) - \frac{\epsilon}{V} \sum_v \log p(v) \Big]

  With :math:`\epsilon = 0` this is the maximum-likelihood objective of supervised fine-tuning
  (Ouyang et al. 2022, "Training language models to follow instructions with human feedback", step 1).
  Label smoothing follows Szegedy et al. 2016, "Rethinking the Inception Architecture".
  Reduce with `aggregate_loss` (e.g. mode="token-mean"). Masked positions are ignored even if their
  logits hold NaN (in the loss and in its gradient).

  Args:
    logits_BxTxV: [B, T, V] logits aligned with `tokens_BxT` (computed in float32).
    tokens_BxT: [B, T] target token ids.
    mask_BxT: [B, T] 1 for tokens that count (completion), 0 otherwise; None means every token counts.
    label_smoothing: epsilon in [0, 1).

  Returns:
    loss_BxT: [B, T] float32, 0 where the mask is 0.
  """
  fn = "sft_loss"
  _checks.check_static_range(fn, "label_smoothing", label_smoothing, low=0.0, high=1.0,
                             high_inclusive=False)
  if mask_BxT is not None:
    _checks.check_same_shape(fn, tokens_BxT=tokens_BxT, mask_BxT=mask_BxT)
  if mask_BxT is None:
    logits, valid = _checks.as_float(logits_BxTxV), True
  else:  # masked logits are zeroed before the softmax: NaN garbage reaches no value or gradient
    logits, valid = _checks.masked_logits(fn, logits_BxTxV, mask_BxT)
  nll_BxT = -logprobs.token_logps(logits, tokens_BxT)
  if not (isinstance(label_smoothing, (int, float)) and label_smoothing == 0.0):
    # -mean_v log p(v) = logsumexp(z) - mean_v z.
    uniform_ce_BxT = jax.nn.logsumexp(logits, axis=-1) - jnp.mean(logits, axis=-1)
    nll_BxT = (1.0 - label_smoothing) * nll_BxT + label_smoothing * uniform_ce_BxT
  return jnp.where(valid, nll_BxT, 0.0)


def sft_loss_from_logps(logps_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  r"""`sft_loss` without label smoothing, from the target tokens' log-probs.

  .. math::
      \ell_t = -m_t \log p(y_t)

  For callers that never materialise the [B, T, V] logits (the chunked LM head,
  models/lm_head.py, computes log p(y_t) a vocabulary chunk at a time). Masked positions are 0
  even where their log-prob is NaN or infinite (padding), in the loss and in its gradient.

  Args:
    logps_BxT: [B, T] log p(y_t) of each target token.
    mask_BxT: [B, T] 1 for tokens that count, 0 otherwise.

  Returns:
    loss_BxT: [B, T] float32, 0 where the mask is 0.
  """
  _checks.check_same_shape("sft_loss_from_logps", logps_BxT=logps_BxT, mask_BxT=mask_BxT)
  return jnp.where(mask_BxT > 0, -_checks.as_float(logps_BxT), 0.0)
