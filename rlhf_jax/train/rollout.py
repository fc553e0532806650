"""Rollouts for online RL: generate, then score (policy, reference, critic, reward model).

Two jitted functions (each compiled once per shape) do the device work of a rollout, so their
times are reported apart; rewards that need text (gold functions, verifiers) are computed on the
host between scoring and the update. Prompts are repeated `group_size` times in contiguous
groups (GRPO/RLOO).

  old_logp_BxT   log π_θ_old(y_t | x, y_<t)   (the raw policy, the ratio's denominator; taken
                                              from generation when it sampled π_θ itself)
  ref_logp_BxT   log π_ref(y_t | x, y_<t)     (frozen reference, for KL penalties and metrics)
  values_BxT     V(x, y_<t)                   (critic; zeros without one)
  rm_scores_B    learned reward (normalised, ensemble-combined; zeros without one)
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.generation import SamplingConfig, generate, score_tokens, score_values
from rlhf_jax.rewards import learned


@flax.struct.dataclass
class RewardModel:
  """A learned reward model for rollouts: stacked ensemble params + how to combine them."""
  params: Any
  normalization: Optional[dict] = None


def make_generate_fn(policy_graphdef, sampling: SamplingConfig, *, group_size: int = 1):
  """Jitted `(policy_params, prompt_tokens_BxP, prompt_mask_BxP, rng) -> (prompt rows repeated
  group_size times, Generation)`."""
  def gen(policy_params, prompt_tokens_BxP, prompt_mask_BxP, rng):
    prompt_tokens_BxP = jnp.repeat(prompt_tokens_BxP, group_size, axis=0)
    prompt_mask_BxP = jnp.repeat(prompt_mask_BxP, group_size, axis=0)
    out = generate(policy_graphdef, policy_params, prompt_tokens_BxP, prompt_mask_BxP, rng,
                   config=sampling)
    return prompt_tokens_BxP, prompt_mask_BxP, out
  return jax.jit(gen)


def sampler_is_policy(sampling: SamplingConfig, model_dtype) -> bool:
  """Whether generation's log-probs are the policy's own, so the old-policy pass can reuse them.

  They are when the sampler draws from pi_theta unchanged (temperature 1, no top-k / top-p, no
  min_new_tokens, not greedy) and the model computes in float32: decoding then reproduces the
  full forward pass's log-probs to float rounding (tests/generation: allclose 2e-5). In bfloat16
  the cached decode and the full forward round differently, so the policy is re-scored (as PPO
  implementations do to keep the first ratio at exactly 1).
  """
  untempered = (not sampling.greedy and sampling.temperature == 1.0 and sampling.top_k == 0
                and sampling.top_p == 1.0 and sampling.min_new_tokens == 0)
  return untempered and jnp.dtype(model_dtype) == jnp.float32


def make_score_fn(policy_graphdef, *, ref_graphdef=None, value_fn: Optional[Callable] = None,
                  rm_graphdef=None, rm_combine: str = "mean", rm_lambda: float = 0.0,
                  rescore_policy: bool = True):
  """Jitted `(policy_params, ref_params, critic_params, rm, prompt_tokens, prompt_mask, tokens,
  mask, sampler_logp) -> dict(old_logp, ref_logp, values, rm_scores)`.

  ref_graphdef: the reference's model when it differs from the policy's (a LoRA policy has
  adapters, its frozen reference none); default policy_graphdef. value_fn(critic_params,
  policy_params, *rows) -> values_BxT (train/ppo.py); rm is a RewardModel or None.
  rescore_policy: False takes old_logp = sampler_logp (generation's log-probs) instead of a
  policy forward pass; only valid when `sampler_is_policy` holds.
  """
  ref_graphdef = policy_graphdef if ref_graphdef is None else ref_graphdef

  def score(policy_params, ref_params, critic_params, rm, *rows_and_sampler_logp):
    *rows, sampler_logp = rows_and_sampler_logp
    if rescore_policy:
      old = score_tokens(policy_graphdef, policy_params, *rows).logp_BxT
    else:
      old = sampler_logp.astype(jnp.float32)
    ref = score_tokens(ref_graphdef, ref_params, *rows).logp_BxT
    values = (value_fn(critic_params, policy_params, *rows) if value_fn is not None
              else jnp.zeros_like(old))
    if rm is not None:
      scores_ExB = jax.vmap(lambda p: score_values(rm_graphdef, p, *rows).last_B)(rm.params)
      scores_ExB = learned.normalize(scores_ExB, rm.normalization)
      rm_scores = learned.combine(scores_ExB, mode=rm_combine, lam=rm_lambda)
    else:
      rm_scores = jnp.zeros(old.shape[:1], jnp.float32)
    return {"old_logp": old, "ref_logp": ref, "values": values, "rm_scores": rm_scores}
  return jax.jit(score)


def host_array(x: jax.Array) -> np.ndarray:
  """The full value of a (possibly multi-process sharded) array on every host."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def to_device_like(x_np: np.ndarray, like: jax.Array) -> jax.Array:
  """A host array (identical on every process) placed with `like`'s sharding."""
  return jax.make_array_from_callback(x_np.shape, like.sharding, lambda idx: x_np[idx])
