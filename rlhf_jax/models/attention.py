"""Scaled dot-product attention with the decoder's masks: cuDNN's fused flash attention through
`jax.nn.dot_product_attention` on GPUs, einsums in XLA elsewhere.

  out = softmax(q k^T / sqrt(H) + mask) v      (Vaswani et al. 2017), per query head, with
  grouped-query attention (Ainslie et al. 2023): query head n reads key/value head n // (N / K).

Implementations (`ModelConfig.attention`):
  xla    the einsums composed in XLA (any backend; CPU, TPU and the KV-cache paths): scores
         accumulated in float32, the softmax in float32, probabilities cast to the compute
         dtype. Written here rather than taken from jax.nn.dot_product_attention's XLA path,
         whose backward multiplies the float32 score cotangent with 16-bit q / k (mixed float32
         x bfloat16 matmuls run in float32); here the cotangent is cast back first
         (layers.einsum_f32), so every matmul runs in the compute dtype.
  cudnn  cuDNN flash attention (Dao 2023) on NVIDIA GPUs: tiles through on-chip memory, never
         writes the [B, N, S, L] scores, and skips the blocks above the causal diagonal. Needs a
         16-bit compute dtype and head_dim a multiple of 8 (<= 128; 256 on Hopper).
  auto   cudnn where it applies (a GPU, a 16-bit compute dtype, a training/scoring pass without
         a KV cache, a supported head_dim and an even length), xla otherwise.

Masks (transformer.py's layout): query slot i attends to key slot j iff j <= i, slot j holds a
real token, and (packed rows) both are in the same segment: one boolean [B, S, L] mask shared
by all heads (never materialised per head). cuDNN also gets `is_causal`, so it skips the blocks
above the diagonal. With a cache the queries sit at slots cache_index + [0, S). A query with no
allowed key (a left-padding slot) gets the mean of the values, as the softmax of equal scores;
the decoder never reads it.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from rlhf_jax.models.layers import einsum_f32

IMPLEMENTATIONS = ("auto", "xla", "cudnn")
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_MASKED = -1e30  # a masked score: exp(-1e30 - max) is 0 in float32


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
  if resolve(implementation, q_BxSxNxH, cached=cached) == "cudnn":
    return jax.nn.dot_product_attention(q_BxSxNxH, k_BxLxKxH, v_BxLxKxH,
                                        mask=allowed_BxSxL[:, None], is_causal=True,
                                        implementation="cudnn")
  if not cached:  # causal: key j <= query i
    length = q_BxSxNxH.shape[1]
    allowed_BxSxL = allowed_BxSxL & jnp.tril(jnp.ones((length, length), bool))[None]
  return _xla(q_BxSxNxH, k_BxLxKxH, v_BxLxKxH, allowed_BxSxL)


def _xla(q_BxSxNxH, k_BxLxKxH, v_BxLxKxH, allowed_BxSxL):
  """Grouped-query attention as einsums over [B, K, G, S, L] scores (G = N / K query heads per
  key/value head), the mask broadcast over the heads."""
  b, s, n, h = q_BxSxNxH.shape
  k = k_BxLxKxH.shape[2]
  q_BxSxKxGxH = q_BxSxNxH.reshape(b, s, k, n // k, h)
  scores_BxKxGxSxL = einsum_f32("bskgh,blkh->bkgsl", q_BxSxKxGxH, k_BxLxKxH) * (h ** -0.5)
  scores_BxKxGxSxL = jnp.where(allowed_BxSxL[:, None, None], scores_BxKxGxSxL, _MASKED)
  probs = jax.nn.softmax(scores_BxKxGxSxL, axis=-1).astype(q_BxSxNxH.dtype)
  out_BxSxKxGxH = jnp.einsum("bkgsl,blkh->bskgh", probs, v_BxLxKxH)
  return out_BxSxKxGxH.reshape(b, s, n, h)
