"""Tests of rlhf_jax.losses.advantages (GAE, whitening, GRPO, RLOO, REINFORCE)."""

import math

import jax
import numpy as np
import pytest

from rlhf_jax.losses import advantages



def test_gae_hand_values(call):
  rewards = np.array([[1.0, 0.0, 2.0]])
  values = np.array([[0.5, 0.2, 0.1]])
  mask = np.ones((1, 3))
  # gamma = 0.9, lam = 0.8, gamma * lam = 0.72:
  # t=2: delta = 2 - 0.1 = 1.9; A = 1.9
  # t=1: delta = 0 + 0.9 * 0.1 - 0.2 = -0.11; A = -0.11 + 0.72 * 1.9 = 1.258
  # t=0: delta = 1 + 0.9 * 0.2 - 0.5 = 0.68; A = 0.68 + 0.72 * 1.258 = 1.58576
  adv, ret = call(advantages.gae, rewards, values, mask, gamma=0.9, lam=0.8)
  np.testing.assert_allclose(adv, [[1.58576, 1.258, 1.9]], rtol=1e-6)
  np.testing.assert_allclose(ret, [[2.08576, 1.458, 2.0]], rtol=1e-6)


def test_gae_lambda_one_is_reward_to_go_minus_value(call):
  rng = np.random.default_rng(0)
  rewards, values = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
  adv, ret = call(advantages.gae, rewards, values, mask, gamma=1.0, lam=1.0)
  expected_ret = np.zeros((3, 5))
  for b in range(3):
    n = int(mask[b].sum())
    for t in range(n):
      expected_ret[b, t] = rewards[b, t:n].sum()
  np.testing.assert_allclose(ret, expected_ret, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(adv, (expected_ret - values) * mask, rtol=1e-5, atol=1e-6)
  # lam = 1, gamma < 1: returns are discounted reward-to-go.
  _, ret = call(advantages.gae, rewards[:1], values[:1], mask[:1], gamma=0.5, lam=1.0)
  np.testing.assert_allclose(ret[0, 0], sum(0.5**k * rewards[0, k] for k in range(5)), rtol=1e-5)


def test_gae_padding_invariance(call):
  rng = np.random.default_rng(1)
  rewards, values = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  base = call(advantages.gae, rewards, values, mask, gamma=0.99, lam=0.95)
  pad = lambda x, v: np.concatenate([x, np.full((2, 3), v)], axis=1)
  padded = call(advantages.gae, pad(rewards, 100.0), pad(values, -50.0), pad(mask, 0), gamma=0.99, lam=0.95)
  for b_arr, p_arr in zip(base, padded):
    np.testing.assert_allclose(np.asarray(p_arr)[:, :4], b_arr, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(p_arr)[:, 4:], 0.0)
  # Garbage inside the original padding is ignored too.
  r2, v2 = rewards.copy(), values.copy()
  r2[mask == 0], v2[mask == 0] = 1e3, -1e3
  for b_arr, p_arr in zip(base, call(advantages.gae, r2, v2, mask, gamma=0.99, lam=0.95)):
    np.testing.assert_allclose(p_arr, b_arr, rtol=1e-6)


def test_whiten(call):
  x = np.array([[1.0, 2.0, 3.0, 4.0, 99.0]])
  mask = np.array([[1, 1, 1, 1, 0]])
  # mean 2.5, unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3.
  std = math.sqrt(5.0 / 3.0 + 1e-8)
  expected = np.array([[-1.5, -0.5, 0.5, 1.5, 0.0]]) / std
  np.testing.assert_allclose(call(advantages.whiten, x, mask), expected, rtol=1e-6)
  np.testing.assert_allclose(call(advantages.whiten, x, mask, shift_mean=False),
                             (expected + 2.5) * mask, rtol=1e-6)
  biased = np.array([[-1.5, -0.5, 0.5, 1.5, 0.0]]) / math.sqrt(1.25 + 1e-8)
  np.testing.assert_allclose(call(advantages.whiten, x, mask, unbiased=False), biased, rtol=1e-6)


def test_group_advantages_hand_values(call):
  r = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 6.0])
  # Group means 2 and 2; unbiased group stds 1 and sqrt(24 / 2) = sqrt(12).
  got = call(advantages.group_advantages, r, group_size=3)
  expected = np.concatenate([np.array([-1.0, 0.0, 1.0]) / (1.0 + 1e-4),
                             np.array([-2.0, -2.0, 4.0]) / (math.sqrt(12.0) + 1e-4)])
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # Batch std: all six rewards, mean 2, unbiased variance 26 / 5.
  got = call(advantages.group_advantages, r, group_size=3, scale="batch")
  np.testing.assert_allclose(got, np.array([-1, 0, 1, -2, -2, 4]) / (math.sqrt(5.2) + 1e-4), rtol=1e-6)
  # Dr. GRPO: no scaling.
  got = call(advantages.group_advantages, r, group_size=3, scale="none")
  np.testing.assert_allclose(got, [-1, 0, 1, -2, -2, 4], rtol=1e-6)


def test_group_estimators_sum_to_zero_per_group(call):
  rng = np.random.default_rng(2)
  r = rng.normal(size=12)
  for scale in advantages.GROUP_SCALES:
    adv = np.asarray(call(advantages.group_advantages, r, group_size=4, scale=scale))
    np.testing.assert_allclose(adv.reshape(3, 4).sum(1), 0.0, atol=1e-5)
  adv = np.asarray(call(advantages.rloo_advantages, r, group_size=4))
  np.testing.assert_allclose(adv.reshape(3, 4).sum(1), 0.0, atol=1e-5)
  # Identical rewards in a group: zero advantage, no NaN.
  np.testing.assert_array_equal(call(advantages.group_advantages, np.ones(4), group_size=2), 0.0)


def test_rloo_hand_values(call):
  # Baselines: (2 + 3) / 2 = 2.5, (1 + 3) / 2 = 2, (1 + 2) / 2 = 1.5.
  got = call(advantages.rloo_advantages, np.array([1.0, 2.0, 3.0, 5.0, 5.0, 8.0]), group_size=3)
  np.testing.assert_allclose(got, [-1.5, 0.0, 1.5, -1.5, -1.5, 3.0], rtol=1e-6)


def test_reinforce_baselines(call):
  r = np.array([1.0, 2.0, 6.0])
  np.testing.assert_allclose(call(advantages.reinforce_advantages, r), r)
  np.testing.assert_allclose(call(advantages.reinforce_advantages, r, baseline="none"), r)
  np.testing.assert_allclose(call(advantages.reinforce_advantages, r, baseline="batch_mean"), [-2, -1, 3])
  np.testing.assert_allclose(call(advantages.reinforce_advantages, r, baseline=0.5), [0.5, 1.5, 5.5])
  with_array = jax.jit(lambda x, b: advantages.reinforce_advantages(x, baseline=b))
  np.testing.assert_allclose(with_array(r, np.array([1.0, 1.0, 2.0])), [0, 1, 4])
  np.testing.assert_allclose(call(advantages.sequence_to_token, np.array([2.0, -1.0]),
                                  np.array([[1, 1, 0], [1, 0, 0]])), [[2, 2, 0], [-1, 0, 0]])
  # A padded row (empty mask) stays 0 even if its value is NaN, also outside jit.
  np.testing.assert_array_equal(advantages.sequence_to_token(np.array([2.0, np.nan]),
                                                             np.array([[1, 0], [0, 0]])), [[2, 0], [0, 0]])


def test_advantage_errors():
  with pytest.raises(ValueError, match="not a multiple of group_size=4"):
    advantages.group_advantages(np.zeros(6), group_size=4)
  with pytest.raises(ValueError, match="group_size"):
    advantages.rloo_advantages(np.zeros(6), group_size=1)
  with pytest.raises(ValueError, match=r"scale='std'.*'group', 'batch', 'none'"):
    advantages.group_advantages(np.zeros(6), group_size=3, scale="std")
  with pytest.raises(ValueError, match=r"baseline='ema'.*'none', 'batch_mean'"):
    advantages.reinforce_advantages(np.zeros(3), baseline="ema")
  with pytest.raises(ValueError, match="values_BxT"):
    advantages.gae(np.zeros((2, 3)), np.zeros((2, 4)), np.ones((2, 3)), gamma=1.0, lam=1.0)
  with pytest.raises(ValueError, match="lam"):
    advantages.gae(np.zeros((2, 3)), np.zeros((2, 3)), np.ones((2, 3)), gamma=1.0, lam=1.5)
  with pytest.raises(ValueError, match=r"rewards_B.*\[B\]"):
    advantages.group_advantages(np.zeros((2, 3)), group_size=3)
