r"""Advantage estimators: GAE for PPO, group-relative (GRPO / Dr. GRPO), RLOO, REINFORCE, and whitening.

Group layout: for the group estimators the batch holds `B / G` prompts with `G` samples each, stored
contiguously (`rewards_B[i * G:(i + 1) * G]` are the samples of prompt i), as produced by repeating each
prompt G times before generation.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp

from rlhf_jax.losses import _checks

GROUP_SCALES = ("group", "batch", "none")
REINFORCE_BASELINES = ("none", "batch_mean")


def gae(rewards_BxT: jax.Array, values_BxT: jax.Array, mask_BxT: jax.Array, *,
        gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
  r"""Generalised Advantage Estimation (Schulman et al. 2016), computed with a reverse `lax.scan`.

  .. math::
      \delta_t = r_t + \gamma V_{t+1} - V_t, \qquad A_t = \delta_t + \gamma\lambda A_{t+1},
      \qquad R_t = A_t + V_t

  with :math:`V_{t+1} = 0` and :math:`A_{t+1} = 0` after the last valid token (the episode ends there).
  Masks are right-padded; rewards and values at padded positions are ignored, so extra right padding
  changes nothing. With :math:`\gamma = \lambda = 1`, :math:`A_t = \sum_{s \ge t} r_s - V_t`.

  Args:
    rewards_BxT: [B, T] per-token rewards (e.g. from `kl_shaped_rewards`).
    values_BxT: [B, T] value estimates V(s_t) (treated as constants).
    mask_BxT: [B, T] right-padded completion mask.
    gamma: discount in [0, 1].
    lam: GAE lambda in [0, 1].

  Returns:
    (advantages_BxT, returns_BxT): [B, T] each, 0 on padding, no gradient.
  """
  fn = "gae"
  _checks.check_rank(fn, "rewards_BxT", rewards_BxT, 2, "[B, T]")
  _checks.check_same_shape(fn, rewards_BxT=rewards_BxT, values_BxT=values_BxT, mask_BxT=mask_BxT)
  _checks.check_static_range(fn, "gamma", gamma, low=0.0, high=1.0)
  _checks.check_static_range(fn, "lam", lam, low=0.0, high=1.0)
  rewards = jax.lax.stop_gradient(_checks.as_float(rewards_BxT))
  values = jax.lax.stop_gradient(_checks.as_float(values_BxT))
  mask = _checks.as_mask(mask_BxT, rewards)
  rewards = jnp.where(mask > 0, rewards, 0.0)
  values = jnp.where(mask > 0, values, 0.0)
  zeros_Bx1 = jnp.zeros_like(values[:, :1])
  next_values = jnp.concatenate([values[:, 1:], zeros_Bx1], axis=1)
  next_mask = jnp.concatenate([mask[:, 1:], zeros_Bx1], axis=1)
  deltas = rewards + gamma * next_values * next_mask - values

  def step(next_adv_B, inputs):
    delta_B, next_mask_B = inputs
    adv_B = delta_B + gamma * lam * next_mask_B * next_adv_B
    return adv_B, adv_B

  _, adv_TxB = jax.lax.scan(step, zeros_Bx1[:, 0], (deltas.T, next_mask.T), reverse=True)
  advantages = adv_TxB.T * mask
  return advantages, (advantages + values) * mask


def whiten(x: jax.Array, mask: jax.Array, *, shift_mean: bool = True, unbiased: bool = True,
           eps: float = 1e-8) -> jax.Array:
  r"""Masked whitening: :math:`(x - \mu) / \sqrt{\sigma^2 + \epsilon}` over the valid entries.

  :math:`\mu` and :math:`\sigma^2` are the mean and variance of the entries where `mask` is 1 (Bessel's
  correction when `unbiased`, as TRL's `masked_whiten`). With `shift_mean=False` the mean is added back
  (only the scale is normalised), as TRL does for rewards. Used to normalise PPO advantages.

  Args:
    x: array of any shape (typically [B, T] advantages).
    mask: same shape, 1 for valid entries.
    shift_mean: whether the output has zero mean.
    unbiased: divide the variance by n - 1 instead of n.
    eps: added to the variance.

  Returns:
    Same shape as `x`, 0 where the mask is 0.
  """
  fn = "whiten"
  _checks.check_same_shape(fn, x=x, mask=mask)
  x = _checks.as_float(x)
  m = _checks.as_mask(mask, x)
  n = jnp.sum(m)
  mean = jnp.sum(jnp.where(m > 0, x, 0.0)) / jnp.maximum(n, 1.0)
  centered = jnp.where(m > 0, x - mean, 0.0)
  denom = jnp.maximum(n - 1.0, 1.0) if unbiased else jnp.maximum(n, 1.0)
  var = jnp.sum(jnp.square(centered)) / denom
  out = centered * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return out * m


def _groups(fn: str, rewards_B: jax.Array, group_size: int, *, min_size: int) -> jax.Array:
  _checks.check_rank(fn, "rewards_B", rewards_B, 1, "[B]")
  try:
    size = operator.index(group_size)
  except TypeError:
    size = None
  if size is None or size < min_size:
    raise ValueError(f"{fn}: `group_size` must be a static int >= {min_size}, got {group_size!r}.")
  group_size = size
  b = jnp.shape(rewards_B)[0]
  if b % group_size:
    raise ValueError(f"{fn}: batch size {b} of `rewards_B` is not a multiple of group_size={group_size}.")
  return _checks.as_float(rewards_B).reshape(b // group_size, group_size)


def group_advantages(rewards_B: jax.Array, *, group_size: int, scale: str = "group",
                     eps: float = 1e-4) -> jax.Array:
  r"""Group-relative advantages of GRPO (Shao et al. 2024, "DeepSeekMath") and its variants.

  For sample i of a group g of size G:

  .. math::
      A_i = \frac{r_i - \mathrm{mean}(r_g)}{s + \epsilon}

  - ``group`` (GRPO, TRL default): :math:`s` = unbiased (n - 1) std of the group's rewards.
  - ``batch``: :math:`s` = unbiased std of all rewards in the batch (TRL `scale_rewards="batch"`;
    more robust with small groups, cf. Hu 2025 "REINFORCE++"). Under data parallelism pass the global
    batch for the statistics to match TRL, which gathers rewards across processes.
  - ``none`` (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like Training"): :math:`s = 1,
    \epsilon = 0` -- no std normalisation, which removes the question-difficulty bias.

  Advantages of each group sum to 0. Broadcast them over tokens with `sequence_to_token`.

  Args:
    rewards_B: [B] rewards, groups contiguous (see the module docstring).
    group_size: G >= 2, dividing B.
    scale: one of `GROUP_SCALES`.
    eps: added to the std (1e-4 as in TRL).

  Returns:
    advantages_B: [B], no gradient.
  """
  fn = "group_advantages"
  _checks.check_choice(fn, "scale", scale, GROUP_SCALES)
  r_GxN = jax.lax.stop_gradient(_groups(fn, rewards_B, group_size, min_size=2))
  centered = r_GxN - jnp.mean(r_GxN, axis=1, keepdims=True)
  if scale == "group":
    centered = centered / (jnp.std(r_GxN, axis=1, ddof=1, keepdims=True) + eps)
  elif scale == "batch":
    centered = centered / (jnp.std(r_GxN, ddof=1) + eps)
  return centered.reshape(-1)


def rloo_advantages(rewards_B: jax.Array, *, group_size: int) -> jax.Array:
  r"""REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics").

  .. math::
      A_i = r_i - \frac{1}{G - 1}\sum_{j \ne i} r_j = \frac{G}{G - 1}\,(r_i - \mathrm{mean}(r_g))

  Each sample's baseline is the mean of the other samples for the same prompt, so it is independent of the
  sample and the estimator stays unbiased. Groups are contiguous, as in `group_advantages`.

  Args:
    rewards_B: [B] rewards (for RLHF, typically score minus beta * sequence KL).
    group_size: G >= 2 samples per prompt, dividing B.

  Returns:
    advantages_B: [B], no gradient; each group sums to 0.
  """
  fn = "rloo_advantages"
  r_GxN = jax.lax.stop_gradient(_groups(fn, rewards_B, group_size, min_size=2))
  baseline = (jnp.sum(r_GxN, axis=1, keepdims=True) - r_GxN) / (group_size - 1)
  return (r_GxN - baseline).reshape(-1)


def reinforce_advantages(rewards_B: jax.Array, *,
                         baseline: str | float | jax.Array | None = None) -> jax.Array:
  r"""REINFORCE (Williams 1992) advantages with an optional baseline: :math:`A_i = r_i - b_i`.

  Baselines:

  - None or ``"none"``: :math:`b = 0` (vanilla REINFORCE).
  - ``"batch_mean"``: :math:`b` = mean reward of the batch (slightly biased, as it includes :math:`r_i`).
  - a number or a [B] array: a caller-supplied baseline, e.g. an exponential moving average of past
    rewards kept in the train state, or a learned value :math:`V(x)` per prompt. It receives no gradient.

  Args:
    rewards_B: [B] rewards.
    baseline: see above.

  Returns:
    advantages_B: [B], no gradient.
  """
  fn = "reinforce_advantages"
  _checks.check_rank(fn, "rewards_B", rewards_B, 1, "[B]")
  r = jax.lax.stop_gradient(_checks.as_float(rewards_B))
  if baseline is None:
    return r
  if isinstance(baseline, str):
    _checks.check_choice(fn, "baseline", baseline, REINFORCE_BASELINES)
    return r if baseline == "none" else r - jnp.mean(r)
  _checks.check_scalar_or_batch(fn, "baseline", baseline, r.shape[0])
  return r - jax.lax.stop_gradient(_checks.as_float(baseline))


def reinforce_pp_advantages(scores_B: jax.Array, kl_BxT: jax.Array, mask_BxT: jax.Array, *,
                            beta: float | jax.Array, gamma: float = 1.0) -> jax.Array:
  r"""REINFORCE++ token advantages (Hu 2025, "REINFORCE++: a simple and efficient approach for
  aligning LLMs"; verl's ``reinforce_plus_plus`` outcome advantage).

  The KL is a per-token reward, the score arrives at the last completion token, the return is
  the discounted sum of what follows, and the advantages are whitened over every valid token of
  the global batch (no critic, no per-prompt group):

  .. math::
      r_t = -eta\,\mathrm{kl}_t + s\,[t = T_{last}], \qquad
      G_t = \sum_{u \ge t} \gamma^{u - t} r_u, \qquad
      A_t = rac{G_t - \mu_G}{\sqrt{\sigma_G^2 + 10^{-8}}}

  with :math:`\mu_G, \sigma_G^2` the mean and (Bessel-corrected) variance of :math:`G` over the
  valid tokens of the batch.

  Args:
    scores_B: [B] sequence rewards.
    kl_BxT: [B, T] per-token KL estimates (e.g. k1 against the reference).
    mask_BxT: [B, T] completion mask (contiguous from t = 0).
    beta: KL coefficient.
    gamma: discount (1 in the paper's setting).

  Returns:
    advantages_BxT: [B, T], no gradient, 0 on padding.
  """
  fn = "reinforce_pp_advantages"
  _checks.check_rank(fn, "scores_B", scores_B, 1, "[B]")
  _checks.check_rank(fn, "kl_BxT", kl_BxT, 2, "[B, T]")
  _checks.check_same_shape(fn, kl_BxT=kl_BxT, mask_BxT=mask_BxT)
  kl = jax.lax.stop_gradient(_checks.as_float(kl_BxT))
  mask = _checks.as_mask(mask_BxT, kl)
  scores = jax.lax.stop_gradient(_checks.as_float(scores_B))
  length_B = jnp.sum(mask, axis=-1).astype(jnp.int32)
  last_BxT = jax.nn.one_hot(jnp.maximum(length_B - 1, 0), kl.shape[-1]) * (length_B > 0)[:, None]
  rewards = jnp.where(mask > 0, -beta * kl, 0.0) + scores[:, None] * last_BxT

  def step(next_return_B, reward_B):
    g_B = reward_B + gamma * next_return_B
    return g_B, g_B

  _, returns_TxB = jax.lax.scan(step, jnp.zeros_like(scores), rewards.T, reverse=True)
  return whiten(returns_TxB.T, mask)


def sequence_to_token(x_B: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """Broadcasts a per-sequence value (e.g. a GRPO advantage) onto its tokens, 0 where `mask_BxT` is 0
  (even if the value of a padded row is NaN).

  Args:
    x_B: [B] per-sequence values.
    mask_BxT: [B, T] completion mask.

  Returns:
    [B, T], 0 on padding.
  """
  fn = "sequence_to_token"
  _checks.check_rank(fn, "x_B", x_B, 1, "[B]")
  _checks.check_rank(fn, "mask_BxT", mask_BxT, 2, "[B, T]")
  if jnp.shape(mask_BxT)[0] != jnp.shape(x_B)[0]:
    raise ValueError(f"{fn}: `x_B` has {jnp.shape(x_B)[0]} rows but `mask_BxT` has "
                     f"{jnp.shape(mask_BxT)[0]}.")
  x = _checks.as_float(x_B)
  return jnp.where(_checks.as_mask(mask_BxT, x) > 0, x[:, None], 0.0)
