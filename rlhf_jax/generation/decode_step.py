"""One-token decode step of the Llama-style `Transformer` over a head-major KV cache.

`Transformer.hidden(..., cache=...)` serves prefill and decode alike with a [B, L, K, H] cache.
For one query token per row that layout is slow on CPU: every step XLA transposes each layer's
whole cache to put the (batch, kv-head) dimensions first for the batched attention matmuls. This
module keeps the decode cache as [B, K, L, H] instead, so q·k and p·v are plain batched matmuls
with no per-step copies, and flattens the projection weights to 2-D once, before the loop.

The math is the model's (models/transformer.py), reusing its modules (norms, MLP, RoPE, logits)
and reading its attention weights; only the attention core for a single query is written here:

  q = rope(x Wq), k = rope(x Wk), v = x Wv        x: [B, D] at RoPE position pos_b
  K[b, :, slot], V[b, :, slot] <- k, v            write the new token's key/value
  s_{b,k,g,l} = q_{b,(k,g)} . K_{b,k,l} / sqrt(H) for l <= slot with kv_mask[b, l], else -inf
  o_{b,(k,g)} = sum_l softmax_l(s)_{b,k,g,l} V_{b,k,l}
  y = o Wo                                         (grouped-query: G = n_heads / n_kv_heads)

tests/generation checks that decoding with this step reproduces the model's full forward pass.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlhf_jax.models.transformer import apply_rope

CACHE_AXES = ("batch", "kv_heads", None, "kv")  # logical axes of a [B, K, L, H] cache leaf
_MASKED = -1e30  # as in models/transformer.py


def cache_from_prefill(prefill_cache: list[dict], length: int) -> list[dict]:
  """Converts the model's [B, P, K, H] prefill cache to [B, K, length, H] (zero slots after P)."""
  out = []
  for layer in prefill_cache:
    out.append({name: jnp.pad(jnp.transpose(x, (0, 2, 1, 3)),
                              ((0, 0), (0, 0), (0, length - x.shape[1]), (0, 0)))
                for name, x in layer.items()})
  return out


def flat_weights(model) -> list[dict]:
  """Per-layer attention projections as 2-D matrices (reshapes of the model's parameters)."""
  out = []
  for layer in model.layers:
    a = layer.attn
    d = a.wq.shape[0]
    out.append({"wq": a.wq[...].reshape(d, -1), "wk": a.wk[...].reshape(d, -1),
                "wv": a.wv[...].reshape(d, -1), "wo": a.wo[...].reshape(-1, d)})
  return out


def _attend(cfg, w, x_BxD, positions_B, cache, slot, kv_mask_BxL):
  """Attention of one new token per row; returns (y_BxD, updated layer cache)."""
  b = x_BxD.shape[0]
  n, k, h = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  dt = x_BxD.dtype
  q_Bx1xNxH = (x_BxD @ w["wq"].astype(dt)).reshape(b, 1, n, h)
  k_Bx1xKxH = (x_BxD @ w["wk"].astype(dt)).reshape(b, 1, k, h)
  v_BxKx1xH = (x_BxD @ w["wv"].astype(dt)).reshape(b, k, 1, h)
  q_Bx1xNxH = apply_rope(q_Bx1xNxH, positions_B[:, None], cfg.rope_theta)
  k_BxKx1xH = apply_rope(k_Bx1xKxH, positions_B[:, None], cfg.rope_theta).reshape(b, k, 1, h)
  keys_BxKxLxH = jax.lax.dynamic_update_slice(cache["k"], k_BxKx1xH.astype(cache["k"].dtype),
                                              (0, 0, slot, 0))
  values_BxKxLxH = jax.lax.dynamic_update_slice(cache["v"], v_BxKx1xH.astype(cache["v"].dtype),
                                                (0, 0, slot, 0))
  length = keys_BxKxLxH.shape[2]
  q_BxKxGxH = q_Bx1xNxH.reshape(b, k, n // k, h)
  scores_BxKxGxL = jnp.einsum("bkgh,bklh->bkgl", q_BxKxGxH, keys_BxKxLxH.astype(dt),
                              preferred_element_type=jnp.float32) * (h ** -0.5)
  allowed_BxL = kv_mask_BxL.astype(bool) & (jnp.arange(length) <= slot)[None, :]
  scores_BxKxGxL = jnp.where(allowed_BxL[:, None, None, :], scores_BxKxGxL, _MASKED)
  probs_BxKxGxL = jax.nn.softmax(scores_BxKxGxL, axis=-1).astype(dt)
  out_BxKxGxH = jnp.einsum("bkgl,bklh->bkgh", probs_BxKxGxL, values_BxKxLxH.astype(dt))
  y_BxD = out_BxKxGxH.reshape(b, n * h) @ w["wo"].astype(dt)
  return y_BxD, {"k": keys_BxKxLxH, "v": values_BxKxLxH}


def decode_step(model, weights: list[dict], tokens_B: jax.Array, positions_B: jax.Array,
                cache: list[dict], slot: jax.Array, kv_mask_BxL: jax.Array,
                constrain: Callable[[Any, tuple], Any] = lambda x, axes: x):
  """Feeds one token per row at cache `slot`; returns (float32 logits_BxV, new cache).

  Args:
    model: the merged `Transformer`; weights: `flat_weights(model)` (computed once per call).
    tokens_B, positions_B: the new tokens and their RoPE positions.
    cache: per layer {'k', 'v'} of [B, K, L, H]; kv_mask_BxL marks every real slot, this one
      included.
    constrain: applied to each new cache leaf with CACHE_AXES (sharding constraints).
  """
  cfg = model.cfg
  x_BxD = jnp.take(model.embed[...], tokens_B, axis=0).astype(jnp.dtype(cfg.dtype))
  new_cache = []
  for layer, w, c in zip(model.layers, weights, cache):
    y_BxD, c = _attend(cfg, w, layer.attn_norm(x_BxD), positions_B, c, slot, kv_mask_BxL)
    new_cache.append({name: constrain(v, CACHE_AXES) for name, v in c.items()})
    x_BxD = x_BxD + y_BxD
    x_BxD = x_BxD + layer.mlp(layer.mlp_norm(x_BxD)[:, None])[:, 0]
  logits_BxV = model.logits(model.final_norm(x_BxD)[:, None])[:, 0]
  return logits_BxV, new_cache
