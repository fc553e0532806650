"""Fused scaled dot-product attention with the decoder's masks, through
`jax.nn.dot_product_attention`.

  out = softmax(q k^T / sqrt(H) + mask) v      (Vaswani et al. 2017), per query head, with
  grouped-query attention (Ainslie et al. 2023): query head n reads key/value head n // (N / K).

Implementations (`ModelConfig.attention`):
  xla    XLA's composition of the same einsums (any backend; CPU and the KV-cache paths).
  cudnn  cuDNN flash attention (Dao 2023) on NVIDIA GPUs: tiles through on-chip memory, never
         writes the [B, N, S, L] scores, and skips the blocks above the causal diagonal. Needs a
         16-bit compute dtype and head_dim a multiple of 8 (<= 128; 256 on Hopper).
  auto   cudnn where it applies (a GPU, a 16-bit compute dtype, a training/scoring pass without
         a KV cache, a supported head_dim and an even length), xla otherwise.

Masks (transformer.py's layout): query slot i attends to key slot j iff j <= i, slot j holds a
real token, and (packed rows) both are in the same segment. Without a cache the causal part is
`is_causal` (the kernels make it themselves) and the rest is one boolean [B, 1, S, S] mask
shared by all heads; with a cache the queries sit at slots cache_index + [0, S) and the whole
[B, 1, S, L] mask is passed. A query with no allowed key (a left-padding slot) gets the mean of
the values, as the softmax of equal scores; the decoder never reads it.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn")
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def check_implementation(name: str) -> None:
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {name!r}; valid: {list(IMPLEMENTATIONS)}")


def _cudnn_applies(q_BxSxNxH: jax.Array, cached: bool) -> bool:
  head_dim, length = q_BxSxNxH.shape[-1], q_BxSxNxH.shape[1]
  return (not cached and jax.default_backend() == "gpu"
          and q_BxSxNxH.dtype in _CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= 128
          and length % 2 == 0)


def resolve(implementation: str, q_BxSxNxH: jax.Array, *, cached: bool) -> str:
  """The implementation a call uses: `auto` decided by the call's shapes, dtype and backend;
  the KV-cache (generation) path always uses xla."""
  check_implementation(implementation)
  if cached:
    return "xla"
  if implementation == "auto":
    return "cudnn" if _cudnn_applies(q_BxSxNxH, cached) else "xla"
  return implementation


def attend(q_BxSxNxH: jax.Array, k_BxLxKxH: jax.Array, v_BxLxKxH: jax.Array, *,
           kv_mask_BxL: jax.Array, cache_index=0, segment_ids_BxS: Optional[jax.Array] = None,
           cached: bool = False, implementation: str = "auto") -> jax.Array:
  """Attention output [B, S, N, H] in the dtype of q (k and v are cast to it).

  kv_mask_BxL: real key slots. cached=False: keys are the S query tokens themselves (L = S,
  cache_index 0). cached=True: keys are a cache of L slots, queries at cache_index + [0, S).
  segment_ids_BxS: packed rows (training only)."""
  dt = q_BxSxNxH.dtype
  k_BxLxKxH, v_BxLxKxH = k_BxLxKxH.astype(dt), v_BxLxKxH.astype(dt)
  allowed_BxSxL = jnp.broadcast_to(kv_mask_BxL[:, None, :].astype(bool),
                                   (q_BxSxNxH.shape[0], q_BxSxNxH.shape[1], kv_mask_BxL.shape[1]))
  if cached:
    q_slot_S = cache_index + jnp.arange(q_BxSxNxH.shape[1])
    allowed_BxSxL = allowed_BxSxL & (jnp.arange(kv_mask_BxL.shape[1])[None, :]
                                     <= q_slot_S[:, None])[None]
  if segment_ids_BxS is not None:
    allowed_BxSxL = allowed_BxSxL & (segment_ids_BxS[:, :, None] == segment_ids_BxS[:, None, :])
  return jax.nn.dot_product_attention(
      q_BxSxNxH, k_BxLxKxH, v_BxLxKxH, mask=allowed_BxSxL[:, None], is_causal=not cached,
      implementation=resolve(implementation, q_BxSxNxH, cached=cached))
