"""REINFORCE++ advantages and the CISPO loss against hand-computed values (losses/)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import losses


def test_reinforce_pp_returns_are_kl_shaped_and_batch_whitened():
  kl = jnp.array([[0.1, 0.2, 0.3], [0.5, -0.1, 9.0]])
  mask = jnp.array([[1, 1, 1], [1, 1, 0]])
  adv = np.asarray(losses.reinforce_pp_advantages(jnp.array([1.0, 0.0]), kl, mask, beta=0.5))
  # Rewards -β·kl per token, the score on the last real token; returns summed from the right:
  # row 0: [-0.05, -0.1, -0.15 + 1] -> G = [0.70, 0.75, 0.85]; row 1: [-0.25, 0.05] -> [-0.2, 0.05]
  g = np.array([0.70, 0.75, 0.85, -0.2, 0.05])
  want = (g - g.mean()) / np.sqrt(g.var(ddof=1) + 1e-8)
  np.testing.assert_allclose(adv[mask > 0], want, rtol=1e-5)
  assert adv[1, 2] == 0.0   # padding (its kl of 9 ignored)
  discounted = np.asarray(losses.reinforce_pp_advantages(jnp.array([1.0, 0.0]), kl, mask,
                                                         beta=0.5, gamma=0.5))
  g = np.array([-0.05 + 0.5 * (-0.1 + 0.5 * 0.85), -0.1 + 0.5 * 0.85, 0.85, -0.25 + 0.5 * 0.05,
                0.05])
  np.testing.assert_allclose(discounted[mask > 0], (g - g.mean()) / np.sqrt(g.var(ddof=1) + 1e-8),
                             rtol=1e-5)


def test_cispo_gives_every_token_its_clipped_weight_times_the_advantage():
  old = jnp.log(jnp.array([[0.5, 0.5, 0.5, 0.5]]))
  logp = jnp.log(jnp.array([[0.5, 0.9, 0.1, 0.7]]))   # ratios 1, 1.8, 0.2, 1.4
  adv = jnp.array([[1.0, 2.0, -1.0, 0.5]])
  mask = jnp.array([[1, 1, 1, 0]])
  loss = losses.cispo_policy_loss(logp, old, adv, mask, clip_eps_high=0.28)
  weight = np.array([1.0, 1.28, 0.2, 0.0])   # clipped above at 1.28, unbounded below
  np.testing.assert_allclose(loss, -weight * np.asarray(adv) * np.asarray(logp) * np.asarray(mask),
                             rtol=1e-6)
  grad = jax.grad(lambda lp: jnp.sum(losses.cispo_policy_loss(lp, old, adv, mask,
                                                              clip_eps_high=0.28)))(logp)
  # d/dlogp = -ŵ·A on every real token, the clipped one included (PPO's would be 0 there).
  np.testing.assert_allclose(grad, [[-1.0, -2.56, 0.2, 0.0]], rtol=1e-6)
  ppo_grad = jax.grad(lambda lp: jnp.sum(losses.ppo_policy_loss(lp, old, adv, mask,
                                                                clip_eps=0.28)))(logp)
  assert float(ppo_grad[0, 1]) == 0.0
  lower = losses.cispo_policy_loss(logp, old, adv, mask, clip_eps_high=0.28, clip_eps_low=0.5)
  assert float(lower[0, 2]) == pytest.approx(-0.5 * -1.0 * float(logp[0, 2]), rel=1e-6)


def test_both_are_registered_in_their_families():
  assert losses.family("reinforce_pp") == "advantages"
  assert losses.family("cispo_policy") == "policy"


def test_overlong_penalty_is_dapos_soft_punishment():
  lengths = jnp.array([0, 12, 13, 14, 16, 17])
  got = losses.overlong_penalty(lengths, max_len=16, buffer=4, factor=0.5)
  # 0 up to L_max - L_buf = 12, then (12 - |y|) / 4 down to -1 at the budget, -1 beyond; x 0.5.
  np.testing.assert_allclose(got, 0.5 * np.array([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
  with pytest.raises(ValueError, match="buffer must be in"):
    losses.overlong_penalty(lengths, max_len=16, buffer=0)
