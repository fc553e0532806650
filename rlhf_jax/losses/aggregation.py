r"""Reduction of per-token losses to a scalar, and masked statistics.

The choice of normaliser is an algorithmic decision in LLM RL, not a detail:

- ``token-mean``: :math:`\sum_{b,t} m\ell / \sum_{b,t} m` -- every token weighs the same (PPO in TRL, DAPO).
  Pass `num_tokens` = the token count of the whole (global) batch when a step is split into micro-batches
  or data-parallel shards, and **sum** the micro-batch losses: then the result equals DAPO's global token
  mean (Yu et al. 2025) instead of a mean of per-micro-batch means.
- ``sequence-mean-token-mean``: :math:`\frac1B\sum_b \frac{\sum_t m\ell}{\sum_t m}` -- every sequence weighs
  the same (GRPO, Shao et al. 2024); long sequences' tokens count less.
- ``sequence-mean-token-sum``: :math:`\frac1B\sum_{b,t} m\ell` -- sum over tokens, mean over sequences
  (the textbook REINFORCE objective on the sequence log-likelihood).
- ``sequence-mean-token-sum-norm``: :math:`\frac{1}{B\,L}\sum_{b,t} m\ell` with a constant L
  (`max_len`, the maximum completion length) -- Dr. GRPO (Liu et al. 2025), free of length bias.

For the sequence modes, `num_sequences` replaces B in the same way as `num_tokens` for token-mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses import _checks

AGGREGATION_MODES = ("token-mean", "sequence-mean-token-mean", "sequence-mean-token-sum",
                     "sequence-mean-token-sum-norm")


def aggregate_loss(loss_BxT: jax.Array, mask_BxT: jax.Array, *, mode: str,
                   max_len: int | None = None, num_tokens: float | jax.Array | None = None,
                   num_sequences: float | jax.Array | None = None) -> jax.Array:
  """Reduces a per-token loss to a scalar; see the module docstring for the modes and their papers.

  Args:
    loss_BxT: [B, T] per-token loss.
    mask_BxT: [B, T] completion mask; masked entries are ignored even if they hold NaN/inf.
    mode: one of `AGGREGATION_MODES`.
    max_len: L for "sequence-mean-token-sum-norm"; defaults to T. Set it to the configured maximum
      completion length so the result does not depend on the padded width.
    num_tokens: "token-mean" only: the normaliser (global valid-token count) instead of this batch's
      count.
    num_sequences: sequence modes only: the normaliser instead of B.

  Returns:
    A scalar.
  """
  fn = "aggregate_loss"
  _checks.check_choice(fn, "mode", mode, AGGREGATION_MODES)
  _checks.check_rank(fn, "loss_BxT", loss_BxT, 2, "[B, T]")
  _checks.check_same_shape(fn, loss_BxT=loss_BxT, mask_BxT=mask_BxT)
  if num_tokens is not None and mode != "token-mean":
    raise ValueError(f"{fn}: `num_tokens` is only used by mode='token-mean', got mode={mode!r}.")
  if num_sequences is not None and mode == "token-mean":
    raise ValueError(f"{fn}: `num_sequences` is only used by the sequence modes, got mode={mode!r}.")
  if max_len is not None and mode != "sequence-mean-token-sum-norm":
    raise ValueError(f"{fn}: `max_len` is only used by mode='sequence-mean-token-sum-norm', "
                     f"got mode={mode!r}.")
  loss = _checks.as_float(loss_BxT)
  mask = _checks.as_mask(mask_BxT, loss)
  masked = jnp.where(mask > 0, loss, 0.0)
  b, t = loss.shape
  if mode == "token-mean":
    denom = jnp.maximum(jnp.sum(mask), 1.0) if num_tokens is None else num_tokens
    return jnp.sum(masked) / denom
  n_seq = b if num_sequences is None else num_sequences
  if mode == "sequence-mean-token-mean":
    per_seq_B = jnp.sum(masked, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    return jnp.sum(per_seq_B) / n_seq
  if mode == "sequence-mean-token-sum":
    return jnp.sum(masked) / n_seq
  length = t if max_len is None else max_len
  return jnp.sum(masked) / (n_seq * length)


def masked_sum(x: jax.Array, mask: jax.Array, *, axis: int | tuple[int, ...] | None = None) -> jax.Array:
  """Sum of `x` where `mask` is 1 (NaN/inf in masked entries are ignored)."""
  _checks.check_same_shape("masked_sum", x=x, mask=mask)
  x = _checks.as_float(x)
  return jnp.sum(jnp.where(_checks.as_mask(mask, x) > 0, x, 0.0), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, *, axis: int | tuple[int, ...] | None = None) -> jax.Array:
  """Mean of `x` over the entries where `mask` is 1 (0 if there are none)."""
  _checks.check_same_shape("masked_mean", x=x, mask=mask)
  x = _checks.as_float(x)
  m = _checks.as_mask(mask, x)
  return masked_sum(x, m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)
