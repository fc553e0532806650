"""Tests of rlhf_jax.losses.kl (KL estimators and KL-shaped rewards)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax import losses
from rlhf_jax.losses import kl



def test_estimators_hand_values(call):
  logp = np.array([[-1.0, -2.0, -3.0]])
  ref = np.array([[-2.0, -1.0, -3.0]])  # delta = [1, -1, 0]
  np.testing.assert_allclose(call(kl.kl_penalty, logp, ref, estimator="k1"), [[1.0, -1.0, 0.0]])
  np.testing.assert_allclose(call(kl.kl_penalty, logp, ref, estimator="k2"), [[0.5, 0.5, 0.0]])
  # k3 = e^{-delta} + delta - 1: e^-1 = 0.36787944, e^1 - 2 = 0.71828183.
  np.testing.assert_allclose(call(kl.kl_penalty, logp, ref, estimator="k3"),
                             [[0.36787944, 0.71828183, 0.0]], rtol=1e-6, atol=1e-8)


def test_k3_clamps_the_log_ratio_before_the_exponential(call):
  """k3 = e^{-d} + d - 1 with d = clip(delta, -20, 20): finite value and gradient for any log-ratio."""
  delta = np.array([[-3.0, 11.0, 50.0, -50.0, -2e4, 2e4]], np.float32)
  zeros = np.zeros_like(delta)
  # -3: e^3 - 4 = 16.085537 and 11: e^-11 + 10 = 10.0000167 are unclamped (TRL's values); beyond the
  # clamp, 50 -> e^-20 + 19 and -50 -> e^20 - 21 = 485165174.4 (where e^{-delta} would overflow at -2e4).
  e20 = np.exp(np.float64(20.0))
  np.testing.assert_allclose(call(kl.kl_penalty, delta, zeros, estimator="k3"),
                             [[16.085537, 10.0000167, 19.0, e20 - 21, e20 - 21, 19.0]], rtol=1e-6)
  g = jax.jit(jax.grad(lambda x: kl.kl_penalty(x, zeros, estimator="k3").sum()))(delta)
  # d k3 / d delta = 1 - e^{-delta} inside the clamp (1 - e^3 = -19.085537, 1 - e^-11), 0 beyond it
  # (without the clamp it would be 1 - inf and 0 * inf = NaN at -2e4).
  np.testing.assert_allclose(g, [[-19.085537, 0.9999833, 0, 0, 0, 0]], rtol=1e-6)
  # k1 and k2 are not clamped.
  np.testing.assert_allclose(call(kl.kl_penalty, delta, zeros, estimator="k1"), delta)


def test_masked_nan_is_ignored_eagerly():
  """NaN in padding stays out of the results also outside jit (where XLA cannot rewrite x * mask)."""
  logp = np.array([[-1.0, np.nan], [np.nan, np.nan]], np.float32)
  ref = np.array([[-2.0, np.nan], [0.0, np.nan]], np.float32)
  mask = np.array([[1, 0], [0, 0]])
  np.testing.assert_array_equal(kl.sequence_kl(logp, ref, mask), [1.0, 0.0])
  g = jax.grad(lambda x: kl.sequence_kl(x, ref, mask).sum())(logp)
  np.testing.assert_array_equal(g, [[1.0, 0.0], [0.0, 0.0]])
  # The second row is empty: no score even if it is NaN.
  got = kl.kl_shaped_rewards(np.array([2.0, np.nan]), logp, ref, mask, beta=0.1)
  np.testing.assert_allclose(got, [[1.9, 0.0], [0.0, 0.0]], rtol=1e-6)


def test_sequence_kl_sums_k1_over_real_tokens(call):
  logp = np.array([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
  ref = np.array([[-2.0, -1.5, -9.0], [-1.0, -1.0, -1.0]])  # delta = [1, -0.5, 6], [0.5, 0.5, 0.5]
  mask = np.array([[1, 1, 0], [1, 0, 0]])
  np.testing.assert_allclose(call(kl.sequence_kl, logp, ref, mask), [0.5, 0.5])
  with pytest.raises(ValueError, match="mask_BxT"):
    kl.sequence_kl(logp, ref, mask[:, :2])


def test_k3_nonnegative_and_precise_near_zero(call):
  rng = np.random.default_rng(0)
  delta = rng.normal(size=(4, 64)) * 3
  k3 = call(kl.kl_penalty, delta, np.zeros_like(delta), estimator="k3")
  assert np.all(np.asarray(k3) >= 0.0)
  # Tiny deltas: k3 ~ delta^2 / 2 without cancellation error.
  tiny = np.array([[1e-4]])
  np.testing.assert_allclose(call(kl.kl_penalty, tiny, np.zeros_like(tiny), estimator="k3"), [[5e-9]],
                             rtol=1e-3)


def test_estimators_match_exact_kl_on_categorical_samples(call):
  """Mean over samples y ~ p of each estimator vs the exact KL(p || q).

  k1 and k3 are unbiased: within 5 standard errors. k2 is biased; for these near distributions its mean
  is within 10% of the KL (and matches its own exact expectation 0.5 E_p[delta^2]).
  """
  rng = np.random.default_rng(1)
  vocab, n = 6, 40_000
  z = rng.normal(size=vocab)
  log_p = z - np.log(np.exp(z).sum())
  z_q = z + 0.3 * rng.normal(size=vocab)
  log_q = z_q - np.log(np.exp(z_q).sum())
  p = np.exp(log_p)
  exact_kl = float((p * (log_p - log_q)).sum())
  samples = rng.choice(vocab, size=n, p=p)
  logp, ref = log_p[samples][None], log_q[samples][None]
  for estimator in ("k1", "k3"):
    vals = np.asarray(call(kl.kl_penalty, logp, ref, estimator=estimator), dtype=np.float64)
    stderr = vals.std() / math.sqrt(n)
    assert abs(vals.mean() - exact_kl) < 5 * stderr, (estimator, vals.mean(), exact_kl, stderr)
  k2 = np.asarray(call(kl.kl_penalty, logp, ref, estimator="k2"), dtype=np.float64)
  assert abs(k2.mean() - exact_kl) < 0.1 * exact_kl, (k2.mean(), exact_kl)
  exact_k2 = float((p * 0.5 * (log_p - log_q) ** 2).sum())
  assert abs(k2.mean() - exact_k2) < 5 * k2.std() / math.sqrt(n)


def test_kl_gradients():
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    ref = rng.normal(size=(2, 3))
    all_estimators = jax.jit(lambda x: [kl.kl_penalty(x, ref, estimator=e) for e in kl.KL_ESTIMATORS])
    check_grads(all_estimators, (rng.normal(size=(2, 3)),), order=1, modes=("rev",))
    # The reference is a constant; d k3 / d logp = 1 - e^{-delta}.
    logp = rng.normal(size=(2, 3))
    g_ref = jax.jit(jax.grad(lambda r: kl.kl_penalty(logp, r, estimator="k3").sum()))(ref)
    np.testing.assert_array_equal(g_ref, 0.0)
    g = jax.jit(jax.grad(lambda x: kl.kl_penalty(x, ref, estimator="k3").sum()))(logp)
    np.testing.assert_allclose(g, 1.0 - np.exp(-(logp - ref)), rtol=1e-10)


def test_kl_shaped_rewards_hand_values(call):
  logp = np.array([[-1.0, -1.0, -1.0, -1.0], [-1.0, -2.0, 0.0, 0.0]])
  ref = np.array([[-2.0, -1.0, -1.5, -9.0], [-1.5, -1.0, 0.0, 0.0]])  # k1 = [1, 0, .5, x], [.5, -1, x, x]
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  scores = np.array([1.0, 2.0])
  got = call(kl.kl_shaped_rewards, scores, logp, ref, mask, beta=0.1)
  np.testing.assert_allclose(got, [[-0.1, 0.0, -0.05 + 1.0, 0.0], [-0.05, 0.1 + 2.0, 0.0, 0.0]],
                             rtol=1e-6, atol=1e-7)
  # Missing-EOS penalty subtracts from the score of rows without EOS.
  got = call(kl.kl_shaped_rewards, scores, logp, ref, mask, np.array([True, False]), beta=0.1,
             missing_eos_penalty=1.0)
  np.testing.assert_allclose(got, [[-0.1, 0.0, 0.95, 0.0], [-0.05, 1.1, 0.0, 0.0]], rtol=1e-6, atol=1e-7)


def test_kl_shaped_rewards_padding_invariance_and_empty_rows(call):
  rng = np.random.default_rng(3)
  logp, ref = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
  mask = np.array([[1, 1, 0], [0, 0, 0]])
  scores = np.array([1.0, 5.0])
  base = call(kl.kl_shaped_rewards, scores, logp, ref, mask, beta=0.2, estimator="k3")
  assert np.all(np.asarray(base)[1] == 0.0)  # empty completion: no score, no penalty
  pad = lambda x, v: np.concatenate([x, np.full((2, 2), v)], axis=1)
  padded = call(kl.kl_shaped_rewards, scores, pad(logp, 7.0), pad(ref, -7.0), pad(mask, 0), beta=0.2,
                estimator="k3")
  np.testing.assert_allclose(np.asarray(padded)[:, :3], base, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(padded)[:, 3:], 0.0)


def test_kl_errors():
  z = np.zeros((2, 3))
  with pytest.raises(ValueError, match=r"estimator='k4'.*'k1', 'k2', 'k3'"):
    kl.kl_penalty(z, z, estimator="k4")
  with pytest.raises(ValueError, match="ref_logp_BxT"):
    kl.kl_penalty(z, np.zeros((2, 4)), estimator="k1")
  with pytest.raises(ValueError, match="has_eos_B"):
    kl.kl_shaped_rewards(np.zeros(2), z, z, z, beta=0.1, missing_eos_penalty=1.0)
  with pytest.raises(ValueError, match="scores_B"):
    kl.kl_shaped_rewards(np.zeros(3), z, z, z, beta=0.1)
  with pytest.raises(TypeError):
    kl.kl_penalty(z, z)  # estimator is required and keyword-only


def test_value_clamp_clips_any_estimator_as_verl_does():
  logp = jnp.array([[0.0, -5.0, 3.0]])
  ref = jnp.array([[0.0, 0.0, 0.0]])
  # k3 at delta = -5: e^5 - 5 - 1 = 142.4 -> 10; at 3: e^-3 + 2 = 2.05 (inside).
  k3 = losses.kl_penalty(logp, ref, estimator="k3", value_clamp=10.0)
  np.testing.assert_allclose(k3, [[0.0, 10.0, np.exp(-3.0) + 2.0]], rtol=1e-6)
  k1 = losses.kl_penalty(logp, ref, estimator="k1", value_clamp=2.0)
  np.testing.assert_allclose(k1, [[0.0, -2.0, 2.0]])
  grad = jax.grad(lambda lp: jnp.sum(losses.kl_penalty(lp, ref, estimator="k3",
                                                       value_clamp=10.0)))(logp)
  assert float(grad[0, 1]) == 0.0 and float(grad[0, 2]) != 0.0   # no gradient beyond the clip
  shaped = losses.kl_shaped_rewards(jnp.array([1.0]), logp, ref, jnp.ones((1, 3)), beta=1.0,
                                    estimator="k1", value_clamp=2.0)
  np.testing.assert_allclose(shaped, [[0.0, 2.0, -2.0 + 1.0]])
  with pytest.raises(ValueError, match="value_clamp"):
    losses.kl_penalty(logp, ref, estimator="k3", value_clamp=0.0)
