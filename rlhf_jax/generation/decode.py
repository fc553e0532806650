"""Prefill + decode over a preallocated KV cache, in one jitted `lax.while_loop`.

Layout (DESIGN.md): prompts are left-padded to a fixed length P (`prompt_mask_BxP` marks real
tokens, each row needs at least one, e.g. BOS); the completion is right-padded to T =
max_new_tokens. The cache holds L = P + T - 1 slots: slot s < P is prompt position s, slot P + t
holds completion token t (the last completion token is never fed back, so it needs no slot).

  prefill:   one forward over the P prompt slots -> logits of completion token 0
  step t>=1: feed token t-1 at slot P + t - 1 (RoPE position n_b + t - 1, n_b = real prompt
             tokens of row b) -> logits of token t -> sample token t

so positions equal `positions_from_mask` of the concatenated [prompt | completion] row, and a
forward pass over the finished row without a cache reproduces every logit (scoring.py).

Rows stop independently: once a row emits a stop token (eos_id or stop_token_ids) it is done; the
stop token itself is part of the completion (mask 1: the losses see EOS), later slots hold pad_id
with mask 0 and log-prob 0. The loop exits early when every row is done, or after T tokens. Noise
for step t is `fold_in(rng, t)`, so a given rng gives the same completion on any mesh.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax.generation import decode_step
from rlhf_jax.generation.sampling import SamplingConfig, is_stop_token, sample_tokens
from rlhf_jax.parallel import sharding as sharding_lib


@flax.struct.dataclass
class Generation:
  """Result of `generate` (a pytree; all arrays have leading dimension B).

  tokens_BxT: int32 completion tokens, right-padded with pad_id after the stop token.
  mask_BxT:   int32, 1 on completion tokens (including the stop token), 0 on padding.
  logp_BxT:   float32 log pi(token) under the sampling distribution (sampling.py), 0 on padding.
  stopped_B:  bool, True if the row ended with a stop token, False if truncated at T tokens.
  """
  tokens_BxT: jax.Array
  mask_BxT: jax.Array
  logp_BxT: jax.Array
  stopped_B: jax.Array


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_prompts(prompt_tokens_BxP, prompt_mask_BxP, *, vocab_size: Optional[int] = None) -> None:
  """Raises ValueError for malformed prompts: shapes always; values when the arrays are concrete.

  Checked: both [B, P] with equal shapes, integer tokens; when concrete also every row has a real
  token, masks are 0/1 and left-padded (0...0 1...1), and real tokens lie in [0, vocab_size).
  """
  shape_t, shape_m = np.shape(prompt_tokens_BxP), np.shape(prompt_mask_BxP)
  if len(shape_t) != 2:
    raise ValueError(f"generate: prompt_tokens_BxP must be [B, P], got shape {shape_t}")
  if shape_t != shape_m:
    raise ValueError(f"generate: prompt_mask_BxP has shape {shape_m}, prompt_tokens_BxP has {shape_t}")
  if shape_t[1] == 0:
    raise ValueError("generate: prompt length P must be >= 1")
  if not jnp.issubdtype(jnp.result_type(prompt_tokens_BxP), jnp.integer):
    raise ValueError(f"generate: prompt_tokens_BxP must be integer, got {jnp.result_type(prompt_tokens_BxP)}")
  if not (_is_concrete(prompt_tokens_BxP) and _is_concrete(prompt_mask_BxP)):
    return
  mask = np.asarray(prompt_mask_BxP)
  if not np.isin(mask, (0, 1)).all():
    raise ValueError("generate: prompt_mask_BxP must hold only 0 and 1")
  empty = np.flatnonzero(mask.sum(axis=1) == 0)
  if empty.size:
    raise ValueError(f"generate: prompt rows {empty[:10].tolist()} have no real token "
                     "(every prompt needs at least one, e.g. BOS)")
  not_left = np.flatnonzero((np.diff(mask.astype(np.int32), axis=1) < 0).any(axis=1))
  if not_left.size:
    raise ValueError(f"generate: prompt rows {not_left[:10].tolist()} are not left-padded "
                     "(mask must look like 0...0 1...1)")
  if vocab_size is not None:
    tokens = np.asarray(prompt_tokens_BxP)
    bad = np.flatnonzero(((tokens < 0) | (tokens >= vocab_size))[mask.astype(bool)].reshape(-1))
    if bad.size:
      raise ValueError(f"generate: prompt tokens must lie in [0, {vocab_size}), got "
                       f"{tokens[mask.astype(bool)][bad[:5]].tolist()}")


def _constrainer(mesh, rules):
  """Sharding constraints for loop state: batch over the data axes, KV heads over `heads` rules."""
  if mesh is None:
    return lambda x, axes: x

  def constrain(x, axes):
    spec = sharding_lib.logical_to_spec(axes, x.shape, mesh, rules)
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))
  return constrain


def generate(graphdef: nnx.GraphDef, params: Any, prompt_tokens_BxP: jax.Array,
             prompt_mask_BxP: jax.Array, rng: jax.Array, *, config: SamplingConfig,
             cache_dtype: Any = None, mesh: Optional[jax.sharding.Mesh] = None,
             rules: Iterable[Sequence[Any]] = sharding_lib.DEFAULT_RULES) -> Generation:
  """Samples a completion for every prompt row. Pure and traceable: call it inside jit.

  Args:
    graphdef, params: the policy, as `nnx.split` gives them (params may be a pure dict).
    prompt_tokens_BxP: int prompt tokens, left-padded.
    prompt_mask_BxP: 1 on real prompt tokens, left-padded; at least one per row.
    rng: a PRNG key (unused when config.greedy).
    config: sampling settings; static (T = config.max_new_tokens fixes the output shape).
    cache_dtype: KV cache dtype (default: the model's compute dtype).
    mesh, rules: when given, the cache and loop state are constrained to the batch / head
      sharding that the logical axis `rules` give on `mesh` (as training shards activations).

  Returns:
    Generation with [B, T] tokens, mask and float32 sampling log-probs, and stopped_B.
  """
  check_prompts(prompt_tokens_BxP, prompt_mask_BxP)
  model = nnx.merge(graphdef, params)
  constrain = _constrainer(mesh, rules)
  b, p = prompt_tokens_BxP.shape
  t_max = config.max_new_tokens
  length = p + t_max - 1
  prompt_tokens_BxP = jnp.asarray(prompt_tokens_BxP).astype(jnp.int32)
  prompt_mask_BxP = jnp.asarray(prompt_mask_BxP).astype(jnp.int32)

  # Prefill: the model's own cached forward over the P prompt slots gives the logits of token 0;
  # its keys/values move into the head-major decode cache of L slots (decode_step.py).
  prefill_cache = model.init_cache(b, p, dtype=cache_dtype)
  hidden_BxPxD, prefill_cache = model.hidden(prompt_tokens_BxP, mask_BxS=prompt_mask_BxP,
                                             cache=prefill_cache, cache_index=0,
                                             kv_mask_BxL=prompt_mask_BxP)
  logits_BxV = model.logits(hidden_BxPxD[:, -1:])[:, 0]
  cache = [{name: constrain(x, decode_step.CACHE_AXES[name]) for name, x in layer.items()}
           for layer in decode_step.cache_from_prefill(prefill_cache, length)]
  kv_mask_BxL = jnp.pad(prompt_mask_BxP, ((0, 0), (0, t_max - 1)))
  weights = decode_step.flat_weights(model)
  # RoPE tables of every step: step t feeds token t-1 at position n_b + t - 1.
  num_prompt_B = jnp.sum(prompt_mask_BxP, axis=1)
  steps_T = jnp.arange(t_max, dtype=jnp.int32)
  cos_TxBx1xF, sin_TxBx1xF = decode_step.rope_tables(
      num_prompt_B[None, :] + steps_T[:, None] - 1, model.cfg.head_dim, model.cfg.rope_theta)

  token_B, logp_B = sample_tokens(logits_BxV, jax.random.fold_in(rng, 0), config, jnp.int32(0))
  tokens_BxT = jnp.full((b, t_max), config.pad_id, jnp.int32).at[:, 0].set(token_B)
  mask_BxT = jnp.zeros((b, t_max), jnp.int32).at[:, 0].set(1)
  logp_BxT = jnp.zeros((b, t_max), jnp.float32).at[:, 0].set(logp_B)
  done_B = is_stop_token(token_B, config)
  batch_axes = lambda x: constrain(x, ("batch",) + (None,) * (x.ndim - 1))
  init = (jnp.int32(1), token_B, done_B, tokens_BxT, mask_BxT, logp_BxT, cache, kv_mask_BxL)

  def cond(state):
    t, _, done_B, *_ = state
    return (t < t_max) & ~jnp.all(done_B)

  def body(state):
    t, prev_B, done_B, tokens_BxT, mask_BxT, logp_BxT, cache, kv_mask_BxL = state
    slot = p + t - 1
    # Token t-1 is real iff its row was alive when it was drawn (mask_BxT[:, t-1]).
    prev_real_Bx1 = jax.lax.dynamic_slice_in_dim(mask_BxT, t - 1, 1, axis=1)
    kv_mask_BxL = jax.lax.dynamic_update_slice_in_dim(kv_mask_BxL, prev_real_Bx1, slot, axis=1)
    logits_BxV, cache = decode_step.decode_step(model, weights, prev_B,
                                                (cos_TxBx1xF[t], sin_TxBx1xF[t]), cache, slot,
                                                kv_mask_BxL, constrain)
    token_B, logp_B = sample_tokens(logits_BxV, jax.random.fold_in(rng, t), config, t)
    alive_B = ~done_B
    token_B = jnp.where(alive_B, token_B, config.pad_id)
    logp_B = jnp.where(alive_B, logp_B, 0.0)
    put = lambda buf, col: jax.lax.dynamic_update_slice_in_dim(buf, col[:, None].astype(buf.dtype),
                                                               t, axis=1)
    tokens_BxT = batch_axes(put(tokens_BxT, token_B))
    mask_BxT = batch_axes(put(mask_BxT, alive_B))
    logp_BxT = batch_axes(put(logp_BxT, logp_B))
    done_B = done_B | is_stop_token(token_B, config)
    return (t + 1, token_B, done_B, tokens_BxT, mask_BxT, logp_BxT, cache, kv_mask_BxL)

  if t_max > 1:
    _, _, done_B, tokens_BxT, mask_BxT, logp_BxT, _, _ = jax.lax.while_loop(cond, body, init)
  stopped_B = jnp.any(is_stop_token(tokens_BxT, config) & (mask_BxT > 0), axis=1)
  return Generation(tokens_BxT=tokens_BxT, mask_BxT=mask_BxT, logp_BxT=logp_BxT,
                    stopped_B=stopped_B)
