"""Tests of rlhf_jax.losses.reward (Bradley-Terry, Plackett-Luce, pairwise accuracy)."""

import math

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax.losses import reward



def softplus(x):  # -log sigmoid(-x), written out by hand.
  return math.log1p(math.exp(x))


def test_bradley_terry_hand_values(call):
  r_w, r_l = np.array([1.0, 0.0]), np.array([0.0, 2.0])
  # -log sigmoid(1) = log(1 + e^-1) = 0.3132617; -log sigmoid(-2) = log(1 + e^2) = 2.1269280.
  np.testing.assert_allclose(call(reward.bradley_terry_loss, r_w, r_l), [0.31326169, 2.12692801], rtol=1e-6)
  # Margin 0.5 on the first pair: -log sigmoid(0.5) = 0.4740770; per-pair margins work too.
  np.testing.assert_allclose(call(reward.bradley_terry_loss, r_w, r_l, margin=np.array([0.5, 0.0])),
                             [0.47407698, 2.12692801], rtol=1e-6)
  # Centering 0.1 * (r_w + r_l)^2 = [0.1, 0.4].
  np.testing.assert_allclose(call(reward.bradley_terry_loss, r_w, r_l, centering_coef=0.1),
                             [0.31326169 + 0.1, 2.12692801 + 0.4], rtol=1e-6)


def test_bradley_terry_antisymmetry(call):
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=8), rng.normal(size=8)
  # BT(a, b) - BT(b, a) = softplus(b - a) - softplus(a - b) = b - a.
  diff = call(reward.bradley_terry_loss, a, b) - call(reward.bradley_terry_loss, b, a)
  np.testing.assert_allclose(diff, b - a, rtol=1e-5, atol=1e-6)


def test_plackett_luce_hand_values_and_bt_identity(call):
  # Ranking [2, 1, 0]: (lse(2, 1, 0) - 2) + (lse(1, 0) - 1) = 0.40760596 + 0.31326169.
  expected = (math.log(math.exp(2) + math.exp(1) + 1) - 2) + (math.log(math.exp(1) + 1) - 1)
  np.testing.assert_allclose(expected, 0.72086765, rtol=1e-7)
  np.testing.assert_allclose(call(reward.plackett_luce_loss, np.array([[2.0, 1.0, 0.0]])), [expected],
                             rtol=1e-6)
  # K = 2 is Bradley-Terry.
  rng = np.random.default_rng(1)
  r = rng.normal(size=(5, 2))
  np.testing.assert_allclose(call(reward.plackett_luce_loss, r),
                             call(reward.bradley_terry_loss, r[:, 0], r[:, 1]), rtol=1e-5)


def test_plackett_luce_mask_invariance(call):
  r = np.array([[2.0, 1.0, 0.0], [0.5, -1.0, 3.0]])
  base = call(reward.plackett_luce_loss, r)
  padded = np.concatenate([r, np.full((2, 2), 50.0)], axis=1)
  mask = np.array([[1, 1, 1, 0, 0]] * 2)
  np.testing.assert_allclose(call(reward.plackett_luce_loss, padded, mask), base, rtol=1e-6)
  # A hole in the middle removes that response from the ranking: [2, x, 0] == [2, 0].
  got = call(reward.plackett_luce_loss, np.array([[2.0, 99.0, 0.0]]), np.array([[1, 0, 1]]))
  np.testing.assert_allclose(got, [softplus(-2.0)], rtol=1e-6)
  # Fewer than two valid responses: no information, loss 0.
  np.testing.assert_allclose(call(reward.plackett_luce_loss, r, np.array([[1, 0, 0], [0, 0, 0]])), [0, 0])


def test_reward_gradients():
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    a, b = rng.normal(size=4), rng.normal(size=4)
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    both = jax.jit(lambda x, y, z: (reward.bradley_terry_loss(x, y, margin=0.3, centering_coef=0.1),
                                    reward.plackett_luce_loss(z, mask)))
    check_grads(both, (a, b, rng.normal(size=(2, 3))), order=1, modes=("rev",))
    # Masked entries get exactly zero gradient and no NaN.
    g = jax.jit(jax.grad(lambda x: reward.plackett_luce_loss(x, mask).sum()))(rng.normal(size=(2, 3)))
    assert np.all(np.isfinite(g)) and g[0, 2] == 0.0


def test_pairwise_accuracy(call):
  got = call(reward.pairwise_accuracy, np.array([1.0, 0.0, 0.5]), np.array([0.0, 1.0, 0.5]))
  np.testing.assert_array_equal(got, [1.0, 0.0, 0.0])  # ties count as wrong (TRL)


def test_reward_shape_errors():
  with pytest.raises(ValueError, match="rejected_rewards_B"):
    reward.bradley_terry_loss(np.zeros(3), np.zeros(4))
  with pytest.raises(ValueError, match=r"chosen_rewards_B.*\[B\]"):
    reward.bradley_terry_loss(np.zeros((3, 1)), np.zeros((3, 1)))
  with pytest.raises(ValueError, match="margin"):
    reward.bradley_terry_loss(np.zeros(3), np.zeros(3), margin=np.zeros(2))
  with pytest.raises(ValueError, match="mask_BxK"):
    reward.plackett_luce_loss(np.zeros((2, 3)), np.ones((2, 4)))
