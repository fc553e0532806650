"""Log-probabilities of given tokens through the LM head, chunked over the vocabulary.

  log p(y_t) = z_{t, y_t} - logsumexp_v z_{t, v},   z_t = h_t W   (W: [D, V])

The plain way materialises the [B, T, V] float32 logits, and autodiff keeps them (or the
softmax) for the backward pass: 4 B T V bytes, 2 GiB per 4k tokens at a 128k vocabulary. Here
the vocabulary is scanned in chunks of C columns with an online log-sum-exp (Milakov &
Gimelshein 2018): per chunk c, m' = max(m, max_v z_c), s' = s e^{m - m'} + sum_v e^{z_c - m'},
and the target's logit is picked from the chunk that holds it. Each chunk is rematerialised in
the backward pass (jax.checkpoint), so at most [B, T, C] logits exist at a time, forward or
backward. The values equal the plain ones up to float rounding; the matmuls run as in
`Transformer.logits` (compute-dtype operands, float32 accumulation and result, layers.einsum_f32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.models.layers import einsum_f32


def chunked_token_logps(hidden_BxTxD: jax.Array, w_DxV: jax.Array, tokens_BxT: jax.Array, *,
                        chunk: int) -> jax.Array:
  """[B, T] float32 log-probs of `tokens_BxT` under softmax(hidden W), C = `chunk` vocabulary
  columns at a time. V need not be a multiple of C: the last chunk's missing columns are
  masked out. Token ids outside [0, V) are clipped into range (mask such positions)."""
  if chunk <= 0:
    raise ValueError(f"chunked_token_logps: chunk must be positive, got {chunk}")
  d, v = w_DxV.shape
  n = -(-v // chunk)
  w_DxV = w_DxV.astype(hidden_BxTxD.dtype)
  w_NxDxC = jnp.pad(w_DxV, ((0, 0), (0, n * chunk - v))).reshape(d, n, chunk).transpose(1, 0, 2)
  tokens_BxT = jnp.clip(tokens_BxT.astype(jnp.int32), 0, v - 1)
  b, t = tokens_BxT.shape

  @jax.checkpoint
  def step(carry, xs):
    m_BxT, s_BxT, picked_BxT = carry
    i, w_DxC = xs
    z_BxTxC = einsum_f32("btd,dc->btc", hidden_BxTxD, w_DxC)
    column_C = i * chunk + jnp.arange(chunk)
    z_BxTxC = jnp.where(column_C < v, z_BxTxC, -jnp.inf)  # the padding columns
    m_new = jnp.maximum(m_BxT, jnp.max(z_BxTxC, axis=-1))
    s_BxT = s_BxT * jnp.exp(m_BxT - m_new) + jnp.sum(jnp.exp(z_BxTxC - m_new[..., None]), -1)
    hit_BxTxC = column_C == tokens_BxT[..., None]
    picked_BxT = picked_BxT + jnp.sum(jnp.where(hit_BxTxC, z_BxTxC, 0.0), axis=-1)
    return (m_new, s_BxT, picked_BxT), None

  init = (jnp.full((b, t), -jnp.inf, jnp.float32), jnp.zeros((b, t), jnp.float32),
          jnp.zeros((b, t), jnp.float32))
  (m_BxT, s_BxT, picked_BxT), _ = jax.lax.scan(step, init, (jnp.arange(n), w_NxDxC))
  return picked_BxT - (m_BxT + jnp.log(s_BxT))
