"""Scoring given [prompt | completion] batches: per-token log-probs, entropies, values, rewards.

One forward pass without a cache over the concatenated row (prompt left-padded to P, completion
right-padded to T; positions from the mask, DESIGN.md). Completion token t is scored by the
hidden state of the slot before it, P - 1 + t:

  logp_BxT[b, t]    = log pi(y_t | x, y_<t)           policy / reference passes
  entropy_BxT[b, t] = -sum_v pi(v | x, y_<t) log pi(v | x, y_<t)
  values_BxT[b, t]  = V(x, y_<t)                      critic pass (the state that emits y_t)
  last_B[b]         = scalar at the last real token    reward-model pass (Ouyang et al. 2022)

pi is the distribution a `SamplingConfig` describes (sampling.py; default: the raw model softmax),
so scoring a generated batch with the config that sampled it reproduces `Generation.logp_BxT`.
Everything returned is float32 and 0 where completion_mask_BxT is 0.
"""

from __future__ import annotations

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax.generation.sampling import SamplingConfig, process_logits
from rlhf_jax.losses.logprobs import token_entropy
from rlhf_jax.models.heads import last_token_values


@flax.struct.dataclass
class TokenScores:
  """logp_BxT: float32 log-probs of the completion tokens; entropy_BxT: float32 or None."""
  logp_BxT: jax.Array
  entropy_BxT: Optional[jax.Array] = None


@flax.struct.dataclass
class ValueScores:
  """values_BxT: V(x, y_<t) per completion token; last_B: scalar at each row's last real token."""
  values_BxT: jax.Array
  last_B: jax.Array


def concat_rows(prompt_tokens_BxP, prompt_mask_BxP, completion_tokens_BxT, completion_mask_BxT):
  """[prompt | completion] tokens and mask, [B, P + T] int32, with shape checks."""
  named = dict(prompt_tokens_BxP=prompt_tokens_BxP, prompt_mask_BxP=prompt_mask_BxP,
               completion_tokens_BxT=completion_tokens_BxT, completion_mask_BxT=completion_mask_BxT)
  for name, x in named.items():
    if np.ndim(x) != 2:
      raise ValueError(f"scoring: {name} must be 2-D, got shape {np.shape(x)}")
  if np.shape(prompt_tokens_BxP) != np.shape(prompt_mask_BxP):
    raise ValueError(f"scoring: prompt_tokens_BxP {np.shape(prompt_tokens_BxP)} and "
                     f"prompt_mask_BxP {np.shape(prompt_mask_BxP)} differ in shape")
  if np.shape(completion_tokens_BxT) != np.shape(completion_mask_BxT):
    raise ValueError(f"scoring: completion_tokens_BxT {np.shape(completion_tokens_BxT)} and "
                     f"completion_mask_BxT {np.shape(completion_mask_BxT)} differ in shape")
  if np.shape(prompt_tokens_BxP)[0] != np.shape(completion_tokens_BxT)[0]:
    raise ValueError(f"scoring: prompt batch {np.shape(prompt_tokens_BxP)[0]} != completion batch "
                     f"{np.shape(completion_tokens_BxT)[0]}")
  if np.shape(prompt_tokens_BxP)[1] < 1 or np.shape(completion_tokens_BxT)[1] < 1:
    raise ValueError("scoring: prompt length P and completion length T must both be >= 1")
  tokens_BxS = jnp.concatenate([jnp.asarray(prompt_tokens_BxP), jnp.asarray(completion_tokens_BxT)],
                               axis=1).astype(jnp.int32)
  mask_BxS = jnp.concatenate([jnp.asarray(prompt_mask_BxP), jnp.asarray(completion_mask_BxT)],
                             axis=1).astype(jnp.int32)
  return tokens_BxS, mask_BxS


def score_tokens(graphdef: nnx.GraphDef, params: Any, prompt_tokens_BxP, prompt_mask_BxP,
                 completion_tokens_BxT, completion_mask_BxT, *,
                 config: Optional[SamplingConfig] = None,
                 with_entropy: bool = False) -> TokenScores:
  """Log-probs (and entropies) of the completion tokens under an LM policy. Traceable.

  Args:
    graphdef, params: a `Transformer` split by nnx (params may be a pure dict).
    prompt_tokens_BxP, prompt_mask_BxP: left-padded prompts.
    completion_tokens_BxT, completion_mask_BxT: right-padded completions (mask 1 incl. EOS).
    config: the logit processing of the sampling distribution (temperature, top-k, top-p,
      min_new_tokens; greedy means the raw softmax). None: the raw model softmax.
    with_entropy: also return the per-token entropy of that distribution.

  Returns:
    TokenScores(logp_BxT, entropy_BxT or None), float32, 0 where the completion mask is 0. A
    token that the config's top-k / top-p excludes gets log-prob -inf.
  """
  tokens_BxS, mask_BxS = concat_rows(prompt_tokens_BxP, prompt_mask_BxP, completion_tokens_BxT,
                                     completion_mask_BxT)
  p, t = np.shape(prompt_tokens_BxP)[1], np.shape(completion_tokens_BxT)[1]
  model = nnx.merge(graphdef, params)
  hidden_BxSxD, _ = model.hidden(tokens_BxS, mask_BxS=mask_BxS)
  real_BxT = mask_BxS[:, p:] > 0
  if config is None and not with_entropy and model.cfg.lm_head_chunk > 0:
    # the raw softmax, a vocabulary chunk at a time (models/lm_head.py)
    logp_BxT = model.token_logps(hidden_BxSxD[:, p - 1:p + t - 1], tokens_BxS[:, p:])
    return TokenScores(logp_BxT=jnp.where(real_BxT, logp_BxT, 0.0), entropy_BxT=None)
  logits_BxTxV = model.logits(hidden_BxSxD[:, p - 1:p + t - 1])
  if config is not None:
    logits_BxTxV = process_logits(logits_BxTxV, config, jnp.arange(t, dtype=jnp.int32)[None, :])
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  targets_BxT = tokens_BxS[:, p:]
  targets_BxT = jnp.clip(targets_BxT, 0, logits_BxTxV.shape[-1] - 1)
  picked_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  logp_BxT = jnp.where(real_BxT, picked_BxT - jax.nn.logsumexp(logits_BxTxV, axis=-1), 0.0)
  entropy_BxT = None
  if with_entropy:
    entropy_BxT = jnp.where(real_BxT, token_entropy(logits_BxTxV), 0.0)
  return TokenScores(logp_BxT=logp_BxT, entropy_BxT=entropy_BxT)


def score_values(graphdef: nnx.GraphDef, params: Any, prompt_tokens_BxP, prompt_mask_BxP,
                 completion_tokens_BxT, completion_mask_BxT) -> ValueScores:
  """Per-token values and last-token scalars from a scalar-head model (e.g. `ScalarModel`).

  The model is called as `model(tokens_BxS, mask_BxS=...)` and must return float [B, S] scalars.
  values_BxT[b, t] is read at slot P - 1 + t (the state before completion token t), masked by the
  completion mask; last_B[b] is read at the last real token of the row (the reward).
  """
  tokens_BxS, mask_BxS = concat_rows(prompt_tokens_BxP, prompt_mask_BxP, completion_tokens_BxT,
                                     completion_mask_BxT)
  p, t = np.shape(prompt_tokens_BxP)[1], np.shape(completion_tokens_BxT)[1]
  model = nnx.merge(graphdef, params)
  values_BxS = model(tokens_BxS, mask_BxS=mask_BxS).astype(jnp.float32)
  if values_BxS.shape != tokens_BxS.shape:
    raise ValueError(f"score_values: the model returned shape {values_BxS.shape}; expected "
                     f"per-token scalars {tokens_BxS.shape} (a ScalarModel, not an LM)")
  values_BxT = jnp.where(mask_BxS[:, p:] > 0, values_BxS[:, p - 1:p + t - 1], 0.0)
  return ValueScores(values_BxT=values_BxT, last_B=last_token_values(values_BxS, mask_BxS))
