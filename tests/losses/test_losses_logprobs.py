"""Tests of rlhf_jax.losses.logprobs and rlhf_jax.losses.sft."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax import losses
from rlhf_jax.losses import logprobs, sft

LSE_123 = math.log(math.e + math.e**2 + math.e**3)  # 3.4076059644...



def test_token_logps_hand_values(call):
  logits = np.array([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]])
  tokens = np.array([[2, 0]])
  got = call(logprobs.token_logps, logits, tokens)
  np.testing.assert_allclose(got, [[3.0 - LSE_123, 1.0 - LSE_123]], rtol=1e-6)
  np.testing.assert_allclose(got, [[-0.40760596, -2.40760596]], rtol=1e-6)


def test_token_logps_bf16_is_float32_and_stable(call):
  logits = np.array([[[1000.0, 0.0, -1000.0]]], dtype=jnp.bfloat16)
  got = call(logprobs.token_logps, logits, np.array([[1]]))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, [[-1000.0]], rtol=1e-6)
  rng = np.random.default_rng(0)
  x = np.asarray(rng.normal(size=(2, 3, 7)) * 5, dtype=jnp.bfloat16)
  toks = rng.integers(0, 7, size=(2, 3))
  x32 = x.astype(np.float64)
  ref = np.take_along_axis(x32, toks[..., None], -1)[..., 0] - np.log(np.exp(x32).sum(-1))
  np.testing.assert_allclose(call(logprobs.token_logps, x, toks), ref, rtol=1e-5, atol=1e-5)


def test_token_logps_out_of_range_ids_stay_finite(call):
  got = call(logprobs.token_logps, np.zeros((1, 2, 3)), np.array([[-1, 7]]))
  assert np.all(np.isfinite(got))


def test_token_entropy_values(call):
  uniform = np.zeros((1, 1, 4))
  np.testing.assert_allclose(call(logprobs.token_entropy, uniform), [[math.log(4.0)]], rtol=1e-6)
  masked_vocab = np.array([[[0.0, 0.0, -np.inf]]])
  np.testing.assert_allclose(call(logprobs.token_entropy, masked_vocab), [[math.log(2.0)]], rtol=1e-6)
  # p = softmax([1, 2, 3]) computed by hand.
  p = np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum()
  h = -(p * np.log(p)).sum()  # 0.8323955...
  got = call(logprobs.token_entropy, np.array([[[1.0, 2.0, 3.0]]], dtype=jnp.bfloat16))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, [[h]], rtol=1e-5)
  np.testing.assert_allclose(h, 0.8323955, rtol=1e-6)


def test_sequence_logps_sum_mean_and_padding_invariance(call):
  logits = np.array([[[1.0, 2.0, 3.0]] * 3])  # [1, 3, 3]
  tokens = np.array([[2, 0, 1]])
  mask = np.array([[1, 1, 0]])
  total = (3.0 - LSE_123) + (1.0 - LSE_123)
  np.testing.assert_allclose(call(logprobs.sequence_logps, logits, tokens, mask), [total], rtol=1e-6)
  np.testing.assert_allclose(call(logprobs.sequence_logps, logits, tokens, mask, reduction="mean"),
                             [total / 2], rtol=1e-6)
  # Extra right padding with garbage logits changes nothing.
  pad_logits = np.concatenate([logits, np.full((1, 2, 3), 1e4)], axis=1)
  pad_tokens = np.concatenate([tokens, [[1, 2]]], axis=1)
  pad_mask = np.concatenate([mask, [[0, 0]]], axis=1)
  for red in ("sum", "mean"):
    np.testing.assert_allclose(
        call(logprobs.sequence_logps, pad_logits, pad_tokens, pad_mask, reduction=red),
        call(logprobs.sequence_logps, logits, tokens, mask, reduction=red), rtol=1e-6)
  # Empty rows give 0, not NaN.
  np.testing.assert_allclose(call(logprobs.reduce_token_logps, np.ones((1, 2)), np.zeros((1, 2)),
                                  reduction="mean"), [0.0])


def test_logprobs_gradients():
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    logits = rng.normal(size=(2, 3, 5))
    tokens = rng.integers(0, 5, size=(2, 3))
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    # One check (one compilation) covering the three functions.
    fn = jax.jit(lambda z: (logprobs.token_logps(z, tokens), logprobs.token_entropy(z),
                            sft.sft_loss(z, tokens, mask, label_smoothing=0.1)))
    check_grads(fn, (logits,), order=1, modes=("rev",))


def test_sft_loss_hand_values_and_mask(call):
  logits = np.array([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]])
  tokens = np.array([[2, 0]])
  mask = np.array([[1, 0]])
  np.testing.assert_allclose(call(sft.sft_loss, logits, tokens, mask), [[LSE_123 - 3.0, 0.0]], rtol=1e-6)
  # No mask: every token counts.
  np.testing.assert_allclose(call(sft.sft_loss, logits, tokens), [[0.40760596, 2.40760596]], rtol=1e-6)
  # Label smoothing 0.1: 0.9 * 0.40760596 + 0.1 * (LSE - mean(logits) = 1.40760596) = 0.50760596.
  np.testing.assert_allclose(call(sft.sft_loss, logits, tokens, mask, label_smoothing=0.1),
                             [[0.50760596, 0.0]], rtol=1e-6)


def test_sft_loss_from_logps_equals_sft_loss_and_ignores_nan_padding(call):
  logits = np.array([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]])
  tokens, mask = np.array([[2, 0]]), np.array([[1, 0]])
  logps = np.asarray(logprobs.token_logps(logits, tokens))
  np.testing.assert_allclose(call(sft.sft_loss_from_logps, logps, mask),
                             call(sft.sft_loss, logits, tokens, mask), rtol=1e-6)
  # A NaN log-prob where the mask is 0 (padding) reaches neither the loss nor its gradient.
  padded = np.array([[logps[0, 0], np.nan]], np.float32)
  loss, grad = jax.value_and_grad(lambda x: sft.sft_loss_from_logps(x, mask).sum())(padded)
  np.testing.assert_allclose(loss, -logps[0, 0], rtol=1e-6)
  np.testing.assert_array_equal(grad, [[-1.0, 0.0]])
  with pytest.raises(ValueError, match="mask_BxT"):
    sft.sft_loss_from_logps(logps, np.ones((1, 3)))
  assert losses.sft_loss_from_logps is sft.sft_loss_from_logps


def test_logprobs_jit_and_shape_errors():
  logits, tokens = np.zeros((2, 3, 4)), np.zeros((2, 3), np.int32)
  np.testing.assert_allclose(jax.jit(logprobs.token_logps)(logits, tokens),
                             -math.log(4.0) * np.ones((2, 3)), rtol=1e-6)
  with pytest.raises(ValueError, match="tokens_BxT"):
    logprobs.token_logps(logits, np.zeros((2, 4), np.int32))
  with pytest.raises(ValueError, match=r"logits_BxTxV.*\[B, T, V\]"):
    logprobs.token_logps(np.zeros((2, 3)), tokens)
  with pytest.raises(ValueError, match="reduction.*'sum', 'mean'"):
    logprobs.sequence_logps(logits, tokens, np.ones((2, 3)), reduction="max")
  with pytest.raises(ValueError, match="label_smoothing"):
    sft.sft_loss(logits, tokens, np.ones((2, 3)), label_smoothing=1.5)
  assert losses.token_logps is logprobs.token_logps and losses.sft_loss is sft.sft_loss
