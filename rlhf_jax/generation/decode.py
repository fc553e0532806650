"""Prefill + decode over a preallocated KV cache, in one jitted `lax.while_loop`.

Layout (DESIGN.md): prompts are left-padded to a fixed length P (`prompt_mask_BxP` marks real
tokens, each row needs at least one, e.g. BOS); the completion is right-padded to T =
max_new_tokens. The cache holds L = P + T - 1 slots: slot s < P is prompt slot s, slot P + t
holds completion token t (the last completion token is never fed back, so it needs no slot).

  prefill: `Transformer.hidden` with a cache over the first P - 1 prompt slots
  step t:  feed one token per row at slot P - 1 + t (t = 0: the last prompt token; t > 0:
           completion token t - 1) at RoPE position n_b - 1 + t (n_b = real prompt tokens of
           row b) through `decode_step` -> logits -> sample completion token t

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
from rlhf_jax.models.transformer import Transformer
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
    raise ValueError(f"generate: prompt_mask_BxP has shape {shape_m}, prompt_tokens_BxP has "
                     f"{shape_t}")
  if shape_t[1] == 0:
    raise ValueError("generate: prompt length P must be >= 1")
  if not jnp.issubdtype(jnp.result_type(prompt_tokens_BxP), jnp.integer):
    raise ValueError("generate: prompt_tokens_BxP must be integer, got "
                     f"{jnp.result_type(prompt_tokens_BxP)}")
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
  """constrain(x, logical_axes): a sharding constraint from the logical axis rules (identity
  without a mesh). Used for the activations, logits, KV cache and loop state."""
  if mesh is None:
    return lambda x, axes: x

  def constrain(x, axes):
    spec = sharding_lib.logical_to_spec(axes, x.shape, mesh, rules)
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))
  return constrain


def decode_rules(rules: Iterable[Sequence[Any]]) -> tuple:
  """Logical axis rules for the parameters while decoding: the mesh axes that split the batch
  (the 'batch' rule, e.g. data and fsdp) are dropped from every other logical axis.

  FSDP shards weights over the batch axes and gathers each weight where it is used; inside a
  decode loop that would gather every weight once per token. Instead `generate` gathers them once
  per call, keeping only the tensor-parallel split (the usual layout of inference engines).
  """
  rules = [(r[0], r[1]) for r in rules]
  as_tuple = lambda t: () if t is None else (tuple(t) if isinstance(t, (list, tuple)) else (t,))
  batch_axes = {a for name, target in rules if name == "batch" for a in as_tuple(target)}
  out = []
  for name, target in rules:
    if name != "batch":
      kept = tuple(a for a in as_tuple(target) if a not in batch_axes)
      target = kept if len(kept) > 1 else (kept[0] if kept else None)
    out.append((name, target))
  return tuple(out)


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
    mesh, rules: when given, the batch of the activations, cache and loop state is split as the
      logical axis `rules` say (as in training), KV heads as `kv_heads` say, and the parameters
      are re-laid out once per call by `decode_rules(rules)` (no per-token weight gathers).

  Returns:
    Generation with [B, T] tokens, mask and float32 sampling log-probs, and stopped_B.
  """
  model = nnx.merge(graphdef, params)
  if not isinstance(model, Transformer):
    raise TypeError("generate: the policy must be a models.Transformer, got "
                    f"{type(model).__name__}")
  check_prompts(prompt_tokens_BxP, prompt_mask_BxP, vocab_size=model.cfg.vocab_size)
  constrain = _constrainer(mesh, rules)
  if mesh is not None:
    state = nnx.state(model, nnx.Param)
    layout = sharding_lib.param_shardings(state, mesh, decode_rules(rules))
    model = nnx.merge(graphdef, jax.tree.map(jax.lax.with_sharding_constraint,
                                             nnx.to_pure_dict(state), layout))
  b, p = prompt_tokens_BxP.shape
  t_max = config.max_new_tokens
  length = p + t_max - 1
  prompt_tokens_BxP = jnp.asarray(prompt_tokens_BxP).astype(jnp.int32)
  prompt_mask_BxP = jnp.asarray(prompt_mask_BxP).astype(jnp.int32)

  # Prefill: the model's own cached forward over the first P - 1 prompt slots; its keys/values
  # move into the head-major decode cache (decode_step.py). The last prompt token (always real:
  # prompts are left-padded) is fed by the loop's first step, whose logits give token 0.
  if p == 1:
    cache = decode_step.empty_cache(model.cfg, b, length, cache_dtype)
  else:
    prefill_cache = model.init_cache(b, p - 1, dtype=cache_dtype)
    _, prefill_cache = model.hidden(prompt_tokens_BxP[:, :-1], mask_BxS=prompt_mask_BxP[:, :-1],
                                    cache=prefill_cache, cache_index=0,
                                    kv_mask_BxL=prompt_mask_BxP[:, :-1])
    cache = decode_step.cache_from_prefill(prefill_cache, length)
  cache = [{name: constrain(x, decode_step.CACHE_AXES[name]) for name, x in layer.items()}
           for layer in cache]
  kv_mask_BxL = jnp.pad(prompt_mask_BxP, ((0, 0), (0, t_max - 1)))
  weights = decode_step.flat_weights(model)
  # Step t feeds slot P - 1 + t at position n_b - 1 + t; the RoPE tables of every step are
  # built once, before the loop.
  num_prompt_B = jnp.sum(prompt_mask_BxP, axis=1)
  positions_TxB = num_prompt_B[None, :] - 1 + jnp.arange(t_max, dtype=jnp.int32)[:, None]
  rope_TxB = (decode_step.rope_tables(positions_TxB, model.cfg)
              if model.cfg.position_embedding == "rope" else None)

  batch_axes = lambda x: constrain(x, ("batch",) + (None,) * (x.ndim - 1))
  init = (jnp.int32(0), prompt_tokens_BxP[:, -1], jnp.ones((b,), jnp.int32),
          jnp.zeros((b,), bool), jnp.full((b, t_max), config.pad_id, jnp.int32),
          jnp.zeros((b, t_max), jnp.int32), jnp.zeros((b, t_max), jnp.float32), cache, kv_mask_BxL)

  def cond(state):
    t, _, _, done_B, *_ = state
    return (t < t_max) & ~jnp.all(done_B)

  def body(state):
    t, fed_B, fed_real_B, done_B, tokens_BxT, mask_BxT, logp_BxT, cache, kv_mask_BxL = state
    slot = p - 1 + t
    kv_mask_BxL = jax.lax.dynamic_update_slice_in_dim(kv_mask_BxL, fed_real_B[:, None], slot,
                                                      axis=1)
    rope = None if rope_TxB is None else (rope_TxB[0][t], rope_TxB[1][t])
    logits_BxV, cache = decode_step.decode_step(model, weights, fed_B, positions_TxB[t], rope,
                                                cache, slot, kv_mask_BxL, constrain)
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
    return (t + 1, token_B, alive_B.astype(jnp.int32), done_B, tokens_BxT, mask_BxT, logp_BxT,
            cache, kv_mask_BxL)

  _, _, _, _, tokens_BxT, mask_BxT, logp_BxT, _, _ = jax.lax.while_loop(cond, body, init)
  stopped_B = jnp.any(is_stop_token(tokens_BxT, config) & (mask_BxT > 0), axis=1)
  return Generation(tokens_BxT=tokens_BxT, mask_BxT=mask_BxT, logp_BxT=logp_BxT,
                    stopped_B=stopped_B)
