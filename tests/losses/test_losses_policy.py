"""Tests of rlhf_jax.losses.policy (PPO/GSPO surrogate, value loss, entropy bonus, PPO-ptx)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax.losses import logprobs, policy, sft

# Ratios [1.5, 0.5, 1.1, 1.0] with advantages [1, -1, -2, 3].
OLD = np.zeros((1, 4))
LOGP = np.log(np.array([[1.5, 0.5, 1.1, 1.0]]))
ADV = np.array([[1.0, -1.0, -2.0, 3.0]])
MASK = np.ones((1, 4))



def test_ppo_policy_loss_hand_values(call):
  # max(-A r, -A clip(r, 0.8, 1.2)):
  #   r=1.5, A=1:  max(-1.5, -1.2) = -1.2     r=0.5, A=-1: max(0.5, 0.8) = 0.8
  #   r=1.1, A=-2: max(2.2, 2.2) = 2.2        r=1.0, A=3:  -3
  got = call(policy.ppo_policy_loss, LOGP, OLD, ADV, MASK, clip_eps=0.2)
  np.testing.assert_allclose(got, [[-1.2, 0.8, 2.2, -3.0]], rtol=1e-6)
  # Clip-higher (DAPO) eps_high = 0.6: the first token is no longer clipped.
  got = call(policy.ppo_policy_loss, LOGP, OLD, ADV, MASK, clip_eps=0.2, clip_eps_high=0.6)
  np.testing.assert_allclose(got, [[-1.5, 0.8, 2.2, -3.0]], rtol=1e-6)
  metrics = call(policy.ppo_policy_metrics, LOGP, OLD, ADV, MASK, clip_eps=0.2)
  np.testing.assert_allclose(metrics["clip_frac"], 0.5)
  np.testing.assert_allclose(metrics["clip_frac_high"], 0.25)
  np.testing.assert_allclose(metrics["clip_frac_low"], 0.25)
  np.testing.assert_allclose(metrics["ratio_mean"], 1.025, rtol=1e-6)
  expected_kl = np.mean(0.5 * np.log([1.5, 0.5, 1.1, 1.0]) ** 2)
  np.testing.assert_allclose(metrics["approx_kl"], expected_kl, rtol=1e-5)


def test_log_ratio_clamp_as_verl(call):
  """r = exp(clip(log pi - log pi_old, -20, 20)), as verl's compute_policy_loss."""
  logp = np.array([[50.0, 50.0, -50.0, 2e4]], np.float32)
  adv = np.array([[-1.0, 1.0, 1.0, -2.0]], np.float32)
  old, mask = np.zeros((1, 4), np.float32), np.ones((1, 4))
  e20 = math.exp(20.0)  # 4.8516520e8
  # A = -1: max(r, 1.2) = e^20.  A = 1: max(-e^20, -1.2) = -1.2.  r = e^-20, A = 1: max(-e^-20, -0.8).
  # A = -2 at a log-ratio of 2e4 (exp overflows float32 without the clamp): 2 e^20.
  got = call(policy.ppo_policy_loss, logp, old, adv, mask, clip_eps=0.2)
  np.testing.assert_allclose(got, [[e20, -1.2, -math.exp(-20.0), 2 * e20]], rtol=1e-6)
  # Beyond the clamp the ratio is constant: zero gradient (and no inf / NaN).
  g = jax.jit(jax.grad(lambda x: policy.ppo_policy_loss(x, old, adv, mask, clip_eps=0.2).sum()))(logp)
  np.testing.assert_array_equal(g, 0.0)
  # Dual clip: min(e^20, 3 |A|).
  got = call(policy.ppo_policy_loss, logp, old, adv, mask, clip_eps=0.2, dual_clip=3.0)
  np.testing.assert_allclose(got, [[3.0, -1.2, -math.exp(-20.0), 6.0]], rtol=1e-6)
  metrics = call(policy.ppo_policy_metrics, logp[:, :3], old[:, :3], adv[:, :3], mask[:, :3], clip_eps=0.2)
  np.testing.assert_allclose(metrics["ratio_max"], e20, rtol=1e-6)
  np.testing.assert_allclose(metrics["approx_kl"], 0.5 * 50.0**2, rtol=1e-6)  # of the unclamped log-ratio
  # GSPO: the sequence log-ratio mean(100, 0) = 50 is clamped to 20.
  got = call(policy.ppo_policy_loss, np.array([[100.0, 0.0]]), np.zeros((1, 2)), -np.ones((1, 2)),
             np.ones((1, 2)), clip_eps=0.2, level="sequence")
  np.testing.assert_allclose(got, [[e20, e20]], rtol=1e-6)


def test_dual_clip(call):
  logp = np.log(np.array([[5.0, 5.0]]))
  adv = np.array([[-1.0, 1.0]])
  # A = -1, r = 5: max(5, 1.2) = 5, capped at c * |A| = 3. Positive advantages are unaffected.
  got = call(policy.ppo_policy_loss, logp, np.zeros((1, 2)), adv, np.ones((1, 2)), clip_eps=0.2, dual_clip=3.0)
  np.testing.assert_allclose(got, [[3.0, -1.2]], rtol=1e-6)
  metrics = call(policy.ppo_policy_metrics, logp, np.zeros((1, 2)), adv, np.ones((1, 2)), clip_eps=0.2,
                 dual_clip=3.0)
  np.testing.assert_allclose(metrics["dual_clip_frac"], 0.5)


def test_sequence_level_ratio_gspo(call):
  # Valid log-ratios [ln 2, 0] -> s = exp(ln 2 / 2) = sqrt(2), shared by both valid tokens.
  logp = np.array([[math.log(2.0), 0.0, 9.0]])
  mask = np.array([[1, 1, 0]])
  adv = np.ones((1, 3))
  got = call(policy.ppo_policy_loss, logp, np.zeros((1, 3)), adv, mask, clip_eps=0.5, level="sequence")
  np.testing.assert_allclose(got, [[-math.sqrt(2.0), -math.sqrt(2.0), 0.0]], rtol=1e-6)
  got = call(policy.ppo_policy_loss, logp, np.zeros((1, 3)), adv, mask, clip_eps=0.2, level="sequence")
  np.testing.assert_allclose(got, [[-1.2, -1.2, 0.0]], rtol=1e-6)


def test_policy_padding_invariance(call):
  rng = np.random.default_rng(0)
  logp, old, adv = rng.normal(size=(3, 2, 4)) * 0.3
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  pad = lambda x, v: np.concatenate([x, np.full((2, 2), v)], axis=1)
  for level in policy.RATIO_LEVELS:
    base = call(policy.ppo_policy_loss, logp, old, adv, mask, clip_eps=0.2, level=level)
    padded = call(policy.ppo_policy_loss, pad(logp, 50.0), pad(old, -50.0), pad(adv, 9.0), pad(mask, 0),
                  clip_eps=0.2, level=level)
    np.testing.assert_allclose(np.asarray(padded)[:, :4], base, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(padded)[:, 4:], 0.0)
    assert np.all(np.isfinite(padded))
  base = call(policy.value_loss, logp, old, adv, mask, clip_eps=0.2)
  padded = call(policy.value_loss, pad(logp, 50.0), pad(old, -5.0), pad(adv, 9.0), pad(mask, 0), clip_eps=0.2)
  np.testing.assert_allclose(np.asarray(padded)[:, :4], base, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(padded)[:, 4:], 0.0)


def test_policy_gradients():
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    old, adv = rng.normal(size=(2, 2, 3))
    # Ratios exactly 1.4 or 0.9: away from the clip kinks at 0.8 / 1.2.
    logp = old + np.log(np.array([[1.4, 0.9, 1.0], [0.9, 1.4, 1.0]]))
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    values = np.array([[1.0, 0.0, 2.0], [0.1, 0.2, 0.3]])
    old_v, ret = values + np.array([[0.5, -0.05, 0.0], [0.0, 0.4, -0.3]]), rng.normal(size=(2, 3))
    entropy = rng.uniform(0.1, 1.5, size=(2, 3))

    @jax.jit
    def all_policy_losses(x, v, h):  # one check, one compilation
      return ([policy.ppo_policy_loss(x, old, adv, mask, clip_eps=0.2, level=lv)
               for lv in policy.RATIO_LEVELS]
              + [policy.value_loss(v, old_v, ret, mask, clip_eps=0.2),
                 policy.entropy_bonus(h, mask, coef=0.1), policy.ptx_loss(x, mask, coef=0.5)])

    check_grads(all_policy_losses, (logp, values, entropy), order=1, modes=("rev",))


def test_value_loss_hand_values(call):
  values = np.array([[1.0, 1.0, 1.0]])
  old = np.array([[0.5, 0.9, 0.0]])
  returns = np.array([[2.0, 0.0, 1.0]])
  # t0: (1-2)^2 = 1; clip(1, 0.3, 0.7) = 0.7 -> 1.69; 0.5 * max = 0.845.
  # t1: (1-0)^2 = 1; clip(1, 0.7, 1.1) = 1 -> 1; 0.5.   t2: masked.
  got = call(policy.value_loss, values, old, returns, np.array([[1, 1, 0]]), clip_eps=0.2)
  np.testing.assert_allclose(got, [[0.845, 0.5, 0.0]], rtol=1e-6)
  got = call(policy.value_loss, values, old, returns, np.array([[1, 1, 0]]), clip_eps=None)
  np.testing.assert_allclose(got, [[0.5, 0.5, 0.0]], rtol=1e-6)


def test_entropy_bonus_and_ptx_hand_values(call):
  # A uniform 4-way softmax: H = ln 4 and log p = -ln 4 per token (the second token is padding).
  entropy = np.asarray(logprobs.token_entropy(jnp.zeros((1, 2, 4))))
  logp = np.asarray(logprobs.token_logps(jnp.zeros((1, 2, 4)), jnp.array([[3, 1]])))
  mask = np.array([[1, 0]])
  np.testing.assert_allclose(call(policy.entropy_bonus, entropy, mask, coef=0.01),
                             [[-0.01 * math.log(4.0), 0.0]], rtol=1e-6)
  np.testing.assert_allclose(call(policy.ptx_loss, logp, mask, coef=0.5),
                             [[0.5 * math.log(4.0), 0.0]], rtol=1e-6)


def test_tis_weights_hand_values_and_no_gradient(call):
  old = np.log(np.array([[0.5, 0.2, 0.9, 0.3]]))
  sampler = np.log(np.array([[0.25, 0.4, 0.1, 0.3]]))
  mask = np.array([[1, 1, 1, 0]])
  # ratios 2, 0.5, 9 (capped at 3); the padded token gets 0 whatever its values.
  np.testing.assert_allclose(call(policy.tis_weights, old, sampler, mask, cap=3.0),
                             [[2.0, 0.5, 3.0, 0.0]], rtol=1e-6)
  grad = jax.grad(lambda o: jnp.sum(policy.tis_weights(o, sampler, mask, cap=3.0)))(old)
  np.testing.assert_array_equal(grad, 0.0)
  with pytest.raises(ValueError, match="cap"):
    policy.tis_weights(old, sampler, mask, cap=0.5)


def test_token_losses_padding_invariance():
  rng = np.random.default_rng(2)
  logits, tokens = rng.normal(size=(2, 3, 5)), rng.integers(0, 5, size=(2, 3))
  mask = np.array([[1, 1, 0], [1, 0, 0]])
  padded = (np.concatenate([logits, np.full((2, 2, 5), 1e4)], axis=1),
            np.concatenate([tokens, np.zeros((2, 2), np.int64)], axis=1),
            np.concatenate([mask, np.zeros((2, 2), np.int64)], axis=1))

  @jax.jit
  def all_token_losses(z, y, m):
    # Padding holds NaN entropies / log-probs: they must reach neither value nor gradient.
    h = jnp.where(m > 0, logprobs.token_entropy(z), jnp.nan)
    lp = jnp.where(m > 0, logprobs.token_logps(z, y), jnp.nan)
    return (policy.entropy_bonus(h, m, coef=0.1), policy.ptx_loss(lp, m, coef=0.5),
            sft.sft_loss(z, y, m, label_smoothing=0.1))

  for base, pad in zip(all_token_losses(logits, tokens, mask), all_token_losses(*padded)):
    np.testing.assert_allclose(np.asarray(pad)[:, :3], base, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(pad)[:, 3:], 0.0)


def test_policy_errors():
  z = np.zeros((2, 3))
  with pytest.raises(ValueError, match=r"level='seq'.*'token', 'sequence'"):
    policy.ppo_policy_loss(z, z, z, z, clip_eps=0.2, level="seq")
  with pytest.raises(ValueError, match="advantages_BxT"):
    policy.ppo_policy_loss(z, z, np.zeros((2, 4)), z, clip_eps=0.2)
  with pytest.raises(ValueError, match="dual_clip"):
    policy.ppo_policy_loss(z, z, z, z, clip_eps=0.2, dual_clip=0.5)
  with pytest.raises(ValueError, match="returns_BxT"):
    policy.value_loss(z, z, np.zeros(2), z, clip_eps=0.2)
  with pytest.raises(ValueError, match="mask_BxT"):
    policy.entropy_bonus(np.zeros((2, 3)), np.zeros((2, 4)), coef=0.1)
