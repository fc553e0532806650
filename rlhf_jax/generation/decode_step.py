"""One-token decode step of the `Transformer` (any family) over a head-major KV cache.

`Transformer.hidden(..., cache=...)` serves prefill and decode alike with a [B, L, K, H] cache.
For one query token per row that layout is slow on CPU: every step XLA transposes each layer's
whole cache to put the (batch, kv-head) dimensions first for the batched attention matmuls. This
module keeps the decode cache head-major instead (keys [B, K, H, L], values [B, K, L, H]), so
q·k and p·v are plain batched matmuls with no per-step copies; it concatenates the q/k/v
projections into one 2-D weight (one matmul per layer instead of three) and builds the RoPE
cos/sin tables of all steps once, before the loop (XLA would otherwise recompute the sin/cos
inside every layer's q and k at every step).

The math is the model's (models/transformer.py) for every family (presets.py): it reuses the
modules (embedding, norms, MLP, logits) and reads the attention weights; only the single-query
attention core and the half-split RoPE rotation of `apply_rope` (from precomputed tables) are
written out here:

  [q | k | v] = x [Wq | Wk | Wv] + [bq | bk | bv]  x: [B, D]; biases only with cfg.qkv_bias
  q, k <- rope(q), rope(k) at position pos_b        only with RoPE (not GPT-2's learned positions)
  K[b, :, :, slot], V[b, :, slot] <- k, v           write the new token's key/value
  s_{b,k,g,l} = q_{b,(k,g)} . K_{b,k,l} / sqrt(H) for l <= slot with kv_mask[b, l], else -inf
  o_{b,(k,g)} = sum_l softmax_l(s)_{b,k,g,l} V_{b,k,l}
  y = o Wo + bo                                    (grouped-query: G = n_heads / n_kv_heads)

tests/generation checks that decoding with this step reproduces the model's full forward pass.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from rlhf_jax.models import lora
from rlhf_jax.models.layers import rope_inv_freq

KEY_AXES = ("batch", "kv_heads", "kv", None)    # logical axes of a [B, K, H, L] key cache leaf
VALUE_AXES = ("batch", "kv_heads", None, "kv")  # logical axes of a [B, K, L, H] value cache leaf
CACHE_AXES = {"k": KEY_AXES, "v": VALUE_AXES}
_MASKED = -1e30  # as in models/transformer.py


def empty_cache(cfg, batch: int, length: int, dtype=None) -> list[dict]:
  """A zero decode cache: per layer keys [B, K, H, L] and values [B, K, L, H]."""
  dtype = jnp.dtype(dtype or cfg.dtype)
  k, h = cfg.n_kv_heads, cfg.head_dim
  return [{"k": jnp.zeros((batch, k, h, length), dtype),
           "v": jnp.zeros((batch, k, length, h), dtype)} for _ in range(cfg.n_layers)]


def cache_from_prefill(prefill_cache: list[dict], length: int) -> list[dict]:
  """Converts the model's [B, P, K, H] prefill cache to keys [B, K, H, length] and values
  [B, K, length, H] (slots after P are zero)."""
  out = []
  for layer in prefill_cache:
    extra = length - layer["k"].shape[1]
    keys = jnp.pad(jnp.transpose(layer["k"], (0, 2, 3, 1)), ((0, 0), (0, 0), (0, 0), (0, extra)))
    values = jnp.pad(jnp.transpose(layer["v"], (0, 2, 1, 3)), ((0, 0), (0, 0), (0, extra), (0, 0)))
    out.append({"k": keys, "v": values})
  return out


def _weight(attn, name: str) -> jax.Array:
  """The attention weight `name`, with its LoRA adapter folded in when one is attached
  (W + (alpha / r) A B, models/lora.py): this step reads the weights, not the modules."""
  w = getattr(attn, name)[...]
  adapter = getattr(attn, name + lora.SUFFIX, None)
  if adapter is None:
    return w
  delta = jnp.tensordot(adapter.a[...].astype(jnp.float32), adapter.b[...].astype(jnp.float32),
                        axes=1)
  return (w.astype(jnp.float32) + adapter.scale * delta).astype(w.dtype)


def flat_weights(model) -> list[dict]:
  """Per-layer attention weights for the step, built once per `generate` call:

    wqkv [D, (N + 2K) H]  q, k and v projections side by side (one matmul instead of three),
    wo   [N H, D],
    bqkv [(N + 2K) H] and bo [D] where the family has those biases (Qwen2, GPT-2).

  LoRA adapters on the attention projections are merged in; the MLP's run in the module itself.
  """
  out = []
  for layer in model.layers:
    a = layer.attn
    d = a.wq.shape[0]
    w = {"wqkv": jnp.concatenate([_weight(a, n).reshape(d, -1) for n in ("wq", "wk", "wv")], 1),
         "wo": _weight(a, "wo").reshape(-1, d)}
    if a.cfg.qkv_bias:
      w["bqkv"] = jnp.concatenate([getattr(a, n)[...].reshape(-1) for n in ("bq", "bk", "bv")])
    if a.cfg.attn_out_bias:
      w["bo"] = a.bo[...]
    out.append(w)
  return out


def rope_tables(positions_NxB: jax.Array, cfg):
  """cos, sin [N, B, 1, H/2] of the rotary angles at the given positions (as `apply_rope`, with
  the config's theta and frequency scaling).

  The decode loop builds them for all steps before the loop: inside it XLA would recompute the
  sin/cos in every consumer (each layer's q and k), which costs more than the rotation itself.
  """
  inv_freq_F = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  angles_NxBxF = positions_NxB.astype(jnp.float32)[..., None] * inv_freq_F
  return jnp.cos(angles_NxBxF)[:, :, None, :], jnp.sin(angles_NxBxF)[:, :, None, :]


def _rotate(x_BxNxH, cos_Bx1xF, sin_Bx1xF):
  """`apply_rope` (half-split convention) with precomputed tables."""
  half = x_BxNxH.shape[-1] // 2
  x = x_BxNxH.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos_Bx1xF - x2 * sin_Bx1xF, x2 * cos_Bx1xF + x1 * sin_Bx1xF], -1)
  return out.astype(x_BxNxH.dtype)


def _attend(cfg, w, x_BxD, rope, cache, slot, kv_mask_BxL):
  """Attention of one new token per row; returns (y_BxD, updated layer cache)."""
  b = x_BxD.shape[0]
  n, k, h = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  dt = x_BxD.dtype
  qkv_BxE = x_BxD @ w["wqkv"].astype(dt)
  if "bqkv" in w:
    qkv_BxE = qkv_BxE + w["bqkv"].astype(dt)
  q_BxNxH = qkv_BxE[:, :n * h].reshape(b, n, h)
  k_BxKxH = qkv_BxE[:, n * h:(n + k) * h].reshape(b, k, h)
  v_BxKx1xH = qkv_BxE[:, (n + k) * h:].reshape(b, k, 1, h)
  if rope is not None:
    q_BxNxH, k_BxKxH = _rotate(q_BxNxH, *rope), _rotate(k_BxKxH, *rope)
  keys_BxKxHxL = jax.lax.dynamic_update_slice(
      cache["k"], k_BxKxH[..., None].astype(cache["k"].dtype), (0, 0, 0, slot))
  values_BxKxLxH = jax.lax.dynamic_update_slice(
      cache["v"], v_BxKx1xH.astype(cache["v"].dtype), (0, 0, slot, 0))
  length = keys_BxKxHxL.shape[3]
  q_BxKxGxH = q_BxNxH.reshape(b, k, n // k, h)
  scores_BxKxGxL = jnp.einsum("bkgh,bkhl->bkgl", q_BxKxGxH, keys_BxKxHxL.astype(dt),
                              preferred_element_type=jnp.float32) * (h ** -0.5)
  allowed_BxL = kv_mask_BxL.astype(bool) & (jnp.arange(length) <= slot)[None, :]
  scores_BxKxGxL = jnp.where(allowed_BxL[:, None, None, :], scores_BxKxGxL, _MASKED)
  probs_BxKxGxL = jax.nn.softmax(scores_BxKxGxL, axis=-1).astype(dt)
  out_BxKxGxH = jnp.einsum("bkgl,bklh->bkgh", probs_BxKxGxL, values_BxKxLxH.astype(dt))
  y_BxD = out_BxKxGxH.reshape(b, n * h) @ w["wo"].astype(dt)
  if "bo" in w:
    y_BxD = y_BxD + w["bo"].astype(dt)
  return y_BxD, {"k": keys_BxKxHxL, "v": values_BxKxLxH}


def decode_step(model, weights: list[dict], tokens_B: jax.Array, positions_B: jax.Array,
                rope: Optional[tuple[jax.Array, jax.Array]], cache: list[dict], slot: jax.Array,
                kv_mask_BxL: jax.Array, constrain: Callable[[Any, tuple], Any] = lambda x, axes: x):
  """Feeds one token per row at cache `slot`; returns (float32 logits_BxV, new cache).

  Args:
    model: the merged `Transformer`; weights: `flat_weights(model)` (computed once per call).
    tokens_B, positions_B: the new tokens and their positions (learned position embeddings);
      rope: their (cos, sin) tables [B, 1, H/2] (one step of `rope_tables`), None without RoPE.
    cache: per layer {'k': [B, K, H, L], 'v': [B, K, L, H]}; kv_mask_BxL marks every real slot,
      this one included.
    constrain: `constrain(x, logical_axes)` sharding constraint, applied to the activations and
      to each new cache leaf (with its CACHE_AXES).
  """
  cfg = model.cfg
  x_BxD = constrain(model.embed_tokens(tokens_B[:, None], positions_B[:, None])[:, 0],
                    ("batch", None))
  new_cache = []
  for layer, w, c in zip(model.layers, weights, cache):
    y_BxD, c = _attend(cfg, w, layer.attn_norm(x_BxD), rope, c, slot, kv_mask_BxL)
    new_cache.append({name: constrain(v, CACHE_AXES[name]) for name, v in c.items()})
    x_BxD = x_BxD + y_BxD
    x_BxD = x_BxD + layer.mlp(layer.mlp_norm(x_BxD)[:, None])[:, 0]
  logits_BxV = model.logits(model.final_norm(x_BxD)[:, None])[:, 0]
  # Sampling needs whole rows: gather the vocabulary, keep the batch split.
  return constrain(logits_BxV, ("batch", None)), new_cache
