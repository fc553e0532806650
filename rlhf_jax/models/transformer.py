"""A decoder-only transformer in Flax NNX: Llama-style by default (RMSNorm, RoPE, SwiGLU,
grouped-query attention), with the options of the Qwen2, Gemma and GPT-2 families (presets.py).

Every parameter carries logical axis names in its `axes` metadata (`vocab`, `embed`, `heads`,
`kv_heads`, `kv`, `mlp`, `norm`); `rlhf_jax.parallel.sharding` maps them to mesh axes through the
config's logical axis rules. The learned position table's first axis is deliberately unnamed
(None: replicated) so the default rules cover every family.

Layout (DESIGN.md): a row is [prompt | completion], prompts left-padded; `mask_BxS` marks real
tokens and positions come from it (`positions_from_mask`), for RoPE and learned positions alike.
The same forward serves training (no cache) and generation (a preallocated KV cache written at
`cache_index`): query slot i attends to key slot j iff j <= i and slot j holds a real token
(`kv_mask_BxL`).

Packed rows (training only, no cache; data/packing.py): several examples share a row, told apart
by `segment_ids_BxS` (0 = padding, 1..k = example within the row) with positions restarting at 0
per example. Query i then attends to key j iff j <= i, j is real and seg_i = seg_j, so each
example sees exactly what it would see alone in its own row. Without segment ids the mask and
its cost are unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from rlhf_jax.models import lm_head
from rlhf_jax.models.attention import attend
from rlhf_jax.models.layers import (MLP, LayerNorm, RMSNorm, apply_rope, einsum_f32, make_norm,
                                    param, zeros)
from rlhf_jax.models.lora import project
from rlhf_jax.models.presets import ModelConfig
from rlhf_jax.models.remat import remat_block
from rlhf_jax.models.scan import scan_blocks

__all__ = ["Attention", "Block", "LayerCache", "LayerNorm", "MLP", "RMSNorm", "Transformer",
           "apply_rope", "positions_from_mask"]

LayerCache = dict[str, jax.Array]  # {'k': [B, L, K, H], 'v': [B, L, K, H]}


def positions_from_mask(mask_BxS: jax.Array) -> jax.Array:
  """Positions: 0 at the first real token of each row, counting real tokens only."""
  return jnp.maximum(jnp.cumsum(mask_BxS.astype(jnp.int32), axis=-1) - 1, 0)


class Attention(nnx.Module):
  """Grouped-query attention (Ainslie et al. 2023): n_heads query heads share n_kv_heads key/value
  heads; softmax(q k^T / sqrt(head_dim) + mask) v (fused: models/attention.py), optional biases
  on q/k/v and the output. Projections add their LoRA adapters when attached (models/lora.py)."""

  LORA_TARGETS = {"wq": 1, "wk": 1, "wv": 1, "wo": 2}  # weight -> leading input dims (lora.py)

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pd = jnp.dtype(cfg.param_dtype)
    self.cfg = cfg
    self.wq = param(rngs, (d, n, h), ("embed", "heads", "kv"), d ** -0.5, pd)
    self.wk = param(rngs, (d, k, h), ("embed", "kv_heads", "kv"), d ** -0.5, pd)
    self.wv = param(rngs, (d, k, h), ("embed", "kv_heads", "kv"), d ** -0.5, pd)
    self.wo = param(rngs, (n, h, d), ("heads", "kv", "embed"),
                    (n * h) ** -0.5 / math.sqrt(2 * cfg.n_layers), pd)
    if cfg.qkv_bias:
      self.bq = zeros((n, h), ("heads", "kv"), pd)
      self.bk = zeros((k, h), ("kv_heads", "kv"), pd)
      self.bv = zeros((k, h), ("kv_heads", "kv"), pd)
    if cfg.attn_out_bias:
      self.bo = zeros((d,), ("embed",), pd)

  def __call__(self, x_BxSxD, positions_BxS, kv_mask_BxL, cache: Optional[LayerCache],
               cache_index, segment_ids_BxS=None):
    cfg = self.cfg
    dt = x_BxSxD.dtype
    q_BxSxNxH = project(self, "wq", "bsd,dnh->bsnh", x_BxSxD)
    k_BxSxKxH = project(self, "wk", "bsd,dkh->bskh", x_BxSxD)
    v_BxSxKxH = project(self, "wv", "bsd,dkh->bskh", x_BxSxD)
    if cfg.qkv_bias:
      q_BxSxNxH = q_BxSxNxH + self.bq[...].astype(dt)
      k_BxSxKxH = k_BxSxKxH + self.bk[...].astype(dt)
      v_BxSxKxH = v_BxSxKxH + self.bv[...].astype(dt)
    if cfg.position_embedding == "rope":
      q_BxSxNxH = apply_rope(q_BxSxNxH, positions_BxS, cfg.rope_theta, cfg.rope_scaling)
      k_BxSxKxH = apply_rope(k_BxSxKxH, positions_BxS, cfg.rope_theta, cfg.rope_scaling)

    if cache is None:
      keys_BxLxKxH, values_BxLxKxH, new_cache = k_BxSxKxH, v_BxSxKxH, None
    else:
      start = (0, cache_index, 0, 0)
      keys_BxLxKxH = jax.lax.dynamic_update_slice(cache["k"], k_BxSxKxH.astype(cache["k"].dtype),
                                                  start)
      values_BxLxKxH = jax.lax.dynamic_update_slice(cache["v"],
                                                    v_BxSxKxH.astype(cache["v"].dtype), start)
      new_cache = {"k": keys_BxLxKxH, "v": values_BxLxKxH}
    out_BxSxNxH = attend(q_BxSxNxH, keys_BxLxKxH, values_BxLxKxH, kv_mask_BxL=kv_mask_BxL,
                         cache_index=cache_index, segment_ids_BxS=segment_ids_BxS,
                         cached=cache is not None, implementation=cfg.attention)
    y_BxSxD = project(self, "wo", "bsnh,nhd->bsd", out_BxSxNxH)
    if cfg.attn_out_bias:
      y_BxSxD = y_BxSxD + self.bo[...].astype(dt)
    return y_BxSxD, new_cache


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.attn_norm = make_norm(cfg)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = make_norm(cfg)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x, positions_BxS, kv_mask_BxL, cache, cache_index, segment_ids_BxS=None):
    y, cache = self.attn(self.attn_norm(x), positions_BxS, kv_mask_BxL, cache, cache_index,
                         segment_ids_BxS)
    x = x + y
    x = x + self.mlp(self.mlp_norm(x))
    return x, cache


class Transformer(nnx.Module):
  """Decoder-only LM. `hidden` gives final-norm activations; `logits` maps them to the vocab.

  Input embedding: x_0 = E[token] * (sqrt(D) if cfg.scale_embeddings) + P[position] (learned
  positions only; RoPE acts inside attention instead).
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lm_head: bool = True):
    pd = jnp.dtype(cfg.param_dtype)
    self.cfg = cfg
    # Tied embeddings double as the output projection, so they start at the fan-in scale.
    embed_scale = cfg.d_model ** -0.5 if cfg.tie_embeddings else 1.0
    self.embed = param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), embed_scale, pd)
    self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.final_norm = make_norm(cfg)
    self.has_lm_head = lm_head and not cfg.tie_embeddings
    if self.has_lm_head:
      self.lm_head = param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                           cfg.d_model ** -0.5, pd)
    if cfg.position_embedding == "learned":
      self.pos_embed = param(rngs, (cfg.max_positions, cfg.d_model), (None, "embed"), 0.02, pd)

  def embed_tokens(self, tokens_BxS, positions_BxS):
    """x_0 [B, S, D] in the compute dtype. Learned positions >= max_positions give NaN."""
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    x = jnp.take(self.embed[...], tokens_BxS, axis=0).astype(dt)
    if cfg.scale_embeddings:
      x = x * jnp.asarray(math.sqrt(cfg.d_model), dt)  # rounded to dt, as Gemma does
    if cfg.position_embedding == "learned":
      x = x + jnp.take(self.pos_embed[...], positions_BxS, axis=0, mode="fill",
                       fill_value=jnp.nan).astype(dt)
    return x

  def hidden(self, tokens_BxS, *, mask_BxS, positions_BxS=None,
             cache: Optional[list[LayerCache]] = None, cache_index=0, kv_mask_BxL=None,
             segment_ids_BxS=None):
    """Final hidden states [B, S, D] (and the updated cache when one is given).

    Without a cache, keys are the S input tokens and `kv_mask_BxL` defaults to `mask_BxS`, and
    each block is rematerialised in the backward pass as `cfg.remat` says (models/remat.py),
    and with `cfg.scan_layers` the blocks run as one scan (models/scan.py).
    With a cache of length L, the inputs occupy slots [cache_index, cache_index + S) and
    `kv_mask_BxL` must mark every real slot of the whole cache.
    `segment_ids_BxS` (packed rows, no cache): attention stays within a segment; pass the
    packed rows' positions too (positions_from_mask would run on across examples).
    """
    if segment_ids_BxS is not None and cache is not None:
      raise ValueError("Transformer.hidden: segment_ids_BxS (packed rows) is for training only, "
                       "not with a KV cache")
    if positions_BxS is None:
      positions_BxS = positions_from_mask(mask_BxS)
    if kv_mask_BxL is None:
      if cache is not None:
        raise ValueError("Transformer.hidden: kv_mask_BxL is required with a cache")
      kv_mask_BxL = mask_BxS
    x = self.embed_tokens(tokens_BxS, positions_BxS)
    if cache is None and self.cfg.scan_layers:
      x = scan_blocks(list(self.layers), self.cfg.remat, x, positions_BxS, kv_mask_BxL,
                      cache_index, segment_ids_BxS)
      return self.final_norm(x), None
    new_cache = []
    for i, layer in enumerate(self.layers):
      if cache is None and self.cfg.remat != "none":
        x, c = remat_block(layer, self.cfg.remat, x, positions_BxS, kv_mask_BxL, cache_index,
                           segment_ids_BxS), None
      else:
        x, c = layer(x, positions_BxS, kv_mask_BxL, None if cache is None else cache[i],
                     cache_index, segment_ids_BxS)
      new_cache.append(c)
    x = self.final_norm(x)
    return (x, new_cache) if cache is not None else (x, None)

  def logits(self, hidden_BxSxD):
    """Vocabulary logits, accumulated and returned in float32 (layers.einsum_f32)."""
    w = self.lm_head[...] if self.has_lm_head else self.embed[...].T
    return einsum_f32("bsd,dv->bsv", hidden_BxSxD, w.astype(hidden_BxSxD.dtype))

  def token_logps(self, hidden_BxTxD, tokens_BxT):
    """[B, T] float32 log-probs of `tokens_BxT` under the logits of `hidden_BxTxD`: chunked
    over the vocabulary when cfg.lm_head_chunk > 0 (models/lm_head.py), else from the full
    logits. Token ids are clipped into [0, V) (mask the positions that do not count)."""
    w = self.lm_head[...] if self.has_lm_head else self.embed[...].T
    if self.cfg.lm_head_chunk > 0:
      return lm_head.chunked_token_logps(hidden_BxTxD, w, tokens_BxT,
                                         chunk=self.cfg.lm_head_chunk)
    logits_BxTxV = self.logits(hidden_BxTxD)
    tokens_BxT = jnp.clip(tokens_BxT, 0, logits_BxTxV.shape[-1] - 1)
    picked_BxT = jnp.take_along_axis(logits_BxTxV, tokens_BxT[..., None], axis=-1)[..., 0]
    return picked_BxT - jax.nn.logsumexp(logits_BxTxV, axis=-1)

  def __call__(self, tokens_BxS, *, mask_BxS, positions_BxS=None, segment_ids_BxS=None):
    h, _ = self.hidden(tokens_BxS, mask_BxS=mask_BxS, positions_BxS=positions_BxS,
                       segment_ids_BxS=segment_ids_BxS)
    return self.logits(h)

  def init_cache(self, batch: int, length: int, dtype: Any = None) -> list[LayerCache]:
    cfg = self.cfg
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, length, cfg.n_kv_heads, cfg.head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
            for _ in range(cfg.n_layers)]
