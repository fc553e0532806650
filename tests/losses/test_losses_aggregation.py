"""Tests of rlhf_jax.losses.aggregation."""

import functools

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax.losses import aggregation

LOSS = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = np.array([[1, 1, 1], [1, 0, 0]])



def test_modes_hand_values(call):
  agg = functools.partial(call, aggregation.aggregate_loss, LOSS, MASK)
  np.testing.assert_allclose(agg(mode="token-mean"), 10.0 / 4)                       # 2.5
  np.testing.assert_allclose(agg(mode="sequence-mean-token-mean"), (6.0 / 3 + 4.0) / 2)  # 3
  np.testing.assert_allclose(agg(mode="sequence-mean-token-sum"), 10.0 / 2)
  np.testing.assert_allclose(agg(mode="sequence-mean-token-sum-norm"), 10.0 / (2 * 3))
  np.testing.assert_allclose(agg(mode="sequence-mean-token-sum-norm", max_len=5), 10.0 / (2 * 5))
  np.testing.assert_allclose(agg(mode="token-mean", num_tokens=8), 10.0 / 8)
  np.testing.assert_allclose(agg(mode="sequence-mean-token-mean", num_sequences=4), 6.0 / 4)


def test_global_token_mean_across_micro_batches(call):
  """DAPO: summing micro-batch losses normalised by the global token count gives the global mean."""
  rng = np.random.default_rng(0)
  loss = rng.normal(size=(4, 5))
  mask = np.array([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
  full = call(aggregation.aggregate_loss, loss, mask, mode="token-mean")
  n = mask.sum()
  parts = [call(aggregation.aggregate_loss, loss[i:i + 2], mask[i:i + 2], mode="token-mean", num_tokens=n)
           for i in (0, 2)]
  np.testing.assert_allclose(sum(parts), full, rtol=1e-6)
  # The naive mean of micro-batch means differs (the mask is unbalanced).
  naive = np.mean([call(aggregation.aggregate_loss, loss[i:i + 2], mask[i:i + 2], mode="token-mean")
                   for i in (0, 2)])
  assert abs(naive - full) > 1e-3


def test_padding_invariance_and_nan_in_padding(call):
  padded_loss = np.concatenate([LOSS, np.full((2, 2), np.nan)], axis=1)
  padded_mask = np.concatenate([MASK, np.zeros((2, 2))], axis=1)
  for mode in aggregation.AGGREGATION_MODES:
    kw = dict(max_len=7) if mode == "sequence-mean-token-sum-norm" else {}
    np.testing.assert_allclose(call(aggregation.aggregate_loss, padded_loss, padded_mask, mode=mode, **kw),
                               call(aggregation.aggregate_loss, LOSS, MASK, mode=mode, **kw), rtol=1e-6)
  np.testing.assert_allclose(call(aggregation.masked_mean, padded_loss, padded_mask), 2.5)
  np.testing.assert_allclose(call(aggregation.masked_sum, padded_loss, padded_mask, axis=1), [6.0, 4.0])


def test_aggregation_gradients():
  with jax.enable_x64(True):
    all_modes = jax.jit(lambda x: [aggregation.aggregate_loss(x, MASK, mode=m)
                                   for m in aggregation.AGGREGATION_MODES])
    check_grads(all_modes, (LOSS,), order=1, modes=("rev",))
    # Gradients are zero (not NaN) on NaN padding.
    g = jax.jit(jax.grad(lambda x: aggregation.aggregate_loss(x, MASK, mode="token-mean")))(
        np.where(MASK > 0, LOSS, np.nan))
    np.testing.assert_allclose(g, MASK / 4.0)


def test_aggregation_errors():
  with pytest.raises(ValueError, match=r"mode='mean'.*'token-mean', 'sequence-mean-token-mean'"):
    aggregation.aggregate_loss(LOSS, MASK, mode="mean")
  with pytest.raises(ValueError, match="mask_BxT"):
    aggregation.aggregate_loss(LOSS, MASK[:, :2], mode="token-mean")
  with pytest.raises(ValueError, match="num_tokens"):
    aggregation.aggregate_loss(LOSS, MASK, mode="sequence-mean-token-mean", num_tokens=3)
  with pytest.raises(ValueError, match="max_len"):
    aggregation.aggregate_loss(LOSS, MASK, mode="token-mean", max_len=3)
  with pytest.raises(ValueError, match=r"loss_BxT.*\[B, T\]"):
    aggregation.aggregate_loss(LOSS[0], MASK[0], mode="token-mean")
