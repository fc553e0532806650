"""A Llama-style decoder in Flax NNX: RMSNorm, RoPE, SwiGLU, grouped-query attention.

Every parameter carries logical axis names in its `axes` metadata (`vocab`, `embed`, `heads`,
`kv_heads`, `kv`, `mlp`, `norm`); `rlhf_jax.parallel.sharding` maps them to mesh axes through the
config's logical axis rules.

Layout (DESIGN.md): a row is [prompt | completion], prompts left-padded; `mask_BxS` marks real
tokens and positions come from it (`positions_from_mask`). The same forward serves training (no
cache) and generation (a preallocated KV cache written at `cache_index`): query slot i attends to
key slot j iff j <= i and slot j holds a real token (`kv_mask_BxL`).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from rlhf_jax.models.presets import ModelConfig

LayerCache = dict[str, jax.Array]  # {'k': [B, L, K, H], 'v': [B, L, K, H]}
_MASKED = -1e30


def positions_from_mask(mask_BxS: jax.Array) -> jax.Array:
  """RoPE positions: 0 at the first real token of each row, counting real tokens only."""
  return jnp.maximum(jnp.cumsum(mask_BxS.astype(jnp.int32), axis=-1) - 1, 0)


def _param(rngs: nnx.Rngs, shape, axes, scale: float, dtype) -> nnx.Param:
  value = jax.random.normal(rngs.params(), shape, dtype) * scale
  return nnx.Param(value, axes=axes)


def apply_rope(x_BxSxNxH: jax.Array, positions_BxS: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding (Su et al. 2021), half-split convention as in Llama's HF implementation."""
  h = x_BxSxNxH.shape[-1]
  inv_freq_F = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  angles_BxSxF = positions_BxS.astype(jnp.float32)[..., None] * inv_freq_F
  sin = jnp.sin(angles_BxSxF)[:, :, None, :]
  cos = jnp.cos(angles_BxSxF)[:, :, None, :]
  x = x_BxSxNxH.astype(jnp.float32)
  x1, x2 = x[..., : h // 2], x[..., h // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxSxNxH.dtype)


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale (Zhang & Sennrich 2019), computed in float32."""

  def __init__(self, dim: int, eps: float, param_dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), axes=("norm",))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query attention: n_heads query heads share n_kv_heads key/value heads."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pd = jnp.dtype(cfg.param_dtype)
    self.cfg = cfg
    self.wq = _param(rngs, (d, n, h), ("embed", "heads", "kv"), d ** -0.5, pd)
    self.wk = _param(rngs, (d, k, h), ("embed", "kv_heads", "kv"), d ** -0.5, pd)
    self.wv = _param(rngs, (d, k, h), ("embed", "kv_heads", "kv"), d ** -0.5, pd)
    self.wo = _param(rngs, (n, h, d), ("heads", "kv", "embed"),
                     (n * h) ** -0.5 / math.sqrt(2 * cfg.n_layers), pd)

  def __call__(self, x_BxSxD, positions_BxS, kv_mask_BxL, cache: Optional[LayerCache],
               cache_index):
    cfg = self.cfg
    dt = x_BxSxD.dtype
    q_BxSxNxH = jnp.einsum("bsd,dnh->bsnh", x_BxSxD, self.wq[...].astype(dt))
    k_BxSxKxH = jnp.einsum("bsd,dkh->bskh", x_BxSxD, self.wk[...].astype(dt))
    v_BxSxKxH = jnp.einsum("bsd,dkh->bskh", x_BxSxD, self.wv[...].astype(dt))
    q_BxSxNxH = apply_rope(q_BxSxNxH, positions_BxS, cfg.rope_theta)
    k_BxSxKxH = apply_rope(k_BxSxKxH, positions_BxS, cfg.rope_theta)

    s = x_BxSxD.shape[1]
    if cache is None:
      keys_BxLxKxH, values_BxLxKxH, new_cache = k_BxSxKxH, v_BxSxKxH, None
    else:
      start = (0, cache_index, 0, 0)
      keys_BxLxKxH = jax.lax.dynamic_update_slice(cache["k"], k_BxSxKxH.astype(cache["k"].dtype),
                                                  start)
      values_BxLxKxH = jax.lax.dynamic_update_slice(cache["v"],
                                                    v_BxSxKxH.astype(cache["v"].dtype), start)
      new_cache = {"k": keys_BxLxKxH, "v": values_BxLxKxH}
    length = keys_BxLxKxH.shape[1]

    b, _, n, h = q_BxSxNxH.shape
    kh = cfg.n_kv_heads
    q_BxSxKxGxH = q_BxSxNxH.reshape(b, s, kh, n // kh, h)
    scores_BxKxGxSxL = jnp.einsum("bskgh,blkh->bkgsl", q_BxSxKxGxH, keys_BxLxKxH.astype(dt),
                                  preferred_element_type=jnp.float32) * (h ** -0.5)
    q_slot_S = cache_index + jnp.arange(s)
    allowed_BxSxL = (kv_mask_BxL[:, None, :].astype(bool)
                     & (jnp.arange(length)[None, :] <= q_slot_S[:, None])[None])
    scores_BxKxGxSxL = jnp.where(allowed_BxSxL[:, None, None], scores_BxKxGxSxL, _MASKED)
    probs = jax.nn.softmax(scores_BxKxGxSxL, axis=-1).astype(dt)
    out_BxSxKxGxH = jnp.einsum("bkgsl,blkh->bskgh", probs, values_BxLxKxH.astype(dt))
    out_BxSxNxH = out_BxSxKxGxH.reshape(b, s, n, h)
    y_BxSxD = jnp.einsum("bsnh,nhd->bsd", out_BxSxNxH, self.wo[...].astype(dt))
    return y_BxSxD, new_cache


class MLP(nnx.Module):
  """SwiGLU feed-forward (Shazeer 2020): down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, f = cfg.d_model, cfg.d_ff
    pd = jnp.dtype(cfg.param_dtype)
    self.w_gate = _param(rngs, (d, f), ("embed", "mlp"), d ** -0.5, pd)
    self.w_up = _param(rngs, (d, f), ("embed", "mlp"), d ** -0.5, pd)
    self.w_down = _param(rngs, (f, d), ("mlp", "embed"), f ** -0.5 / math.sqrt(2 * cfg.n_layers),
                         pd)

  def __call__(self, x_BxSxD):
    dt = x_BxSxD.dtype
    gate = jnp.einsum("bsd,df->bsf", x_BxSxD, self.w_gate[...].astype(dt))
    up = jnp.einsum("bsd,df->bsf", x_BxSxD, self.w_up[...].astype(dt))
    return jnp.einsum("bsf,fd->bsd", jax.nn.silu(gate) * up, self.w_down[...].astype(dt))


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x, positions_BxS, kv_mask_BxL, cache, cache_index):
    y, cache = self.attn(self.attn_norm(x), positions_BxS, kv_mask_BxL, cache, cache_index)
    x = x + y
    x = x + self.mlp(self.mlp_norm(x))
    return x, cache


class Transformer(nnx.Module):
  """Decoder-only LM. `hidden` gives final-norm activations; `logits` maps them to the vocab."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lm_head: bool = True):
    pd = jnp.dtype(cfg.param_dtype)
    self.cfg = cfg
    # Tied embeddings double as the output projection, so they start at the fan-in scale.
    embed_scale = cfg.d_model ** -0.5 if cfg.tie_embeddings else 1.0
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), embed_scale, pd)
    self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pd)
    self.has_lm_head = lm_head and not cfg.tie_embeddings
    if self.has_lm_head:
      self.lm_head = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                            cfg.d_model ** -0.5, pd)

  def hidden(self, tokens_BxS, *, mask_BxS, positions_BxS=None,
             cache: Optional[list[LayerCache]] = None, cache_index=0, kv_mask_BxL=None):
    """Final hidden states [B, S, D] (and the updated cache when one is given).

    Without a cache, keys are the S input tokens and `kv_mask_BxL` defaults to `mask_BxS`.
    With a cache of length L, the inputs occupy slots [cache_index, cache_index + S) and
    `kv_mask_BxL` must mark every real slot of the whole cache.
    """
    dt = jnp.dtype(self.cfg.dtype)
    if positions_BxS is None:
      positions_BxS = positions_from_mask(mask_BxS)
    if kv_mask_BxL is None:
      if cache is not None:
        raise ValueError("Transformer.hidden: kv_mask_BxL is required with a cache")
      kv_mask_BxL = mask_BxS
    x = jnp.take(self.embed[...], tokens_BxS, axis=0).astype(dt)
    new_cache = []
    for i, layer in enumerate(self.layers):
      x, c = layer(x, positions_BxS, kv_mask_BxL, None if cache is None else cache[i], cache_index)
      new_cache.append(c)
    x = self.final_norm(x)
    return (x, new_cache) if cache is not None else (x, None)

  def logits(self, hidden_BxSxD):
    """Vocabulary logits, accumulated in float32."""
    w = self.lm_head[...] if self.has_lm_head else self.embed[...].T
    return jnp.einsum("bsd,dv->bsv", hidden_BxSxD, w.astype(hidden_BxSxD.dtype),
                      preferred_element_type=jnp.float32)

  def __call__(self, tokens_BxS, *, mask_BxS, positions_BxS=None):
    h, _ = self.hidden(tokens_BxS, mask_BxS=mask_BxS, positions_BxS=positions_BxS)
    return self.logits(h)

  def init_cache(self, batch: int, length: int, dtype: Any = None) -> list[LayerCache]:
    cfg = self.cfg
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, length, cfg.n_kv_heads, cfg.head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
            for _ in range(cfg.n_layers)]
