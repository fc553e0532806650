"""Fused attention (models/attention.py) equals the plain softmax(q k^T / sqrt(H) + mask) v:
left padding, grouped/multi-query heads, packed rows, a KV cache, float32 and bfloat16, values
and gradients. (The decoder's cached decoding against its full forward: test_families.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import models
from rlhf_jax.models import attention

B, S, N, H = 3, 8, 4, 16
# cuDNN flash attention where there is a GPU (16-bit only); XLA's everywhere.
ON_GPU = jax.default_backend() == "gpu"
IMPLS_16BIT = ["xla", "cudnn"] if ON_GPU else ["xla"]


def reference(q_BxSxNxH, k_BxLxKxH, v_BxLxKxH, allowed_BxSxL):
  """The textbook form, one head at a time: key/value head n // (N / K) for query head n."""
  n, k = q_BxSxNxH.shape[2], k_BxLxKxH.shape[2]
  q32, k32, v32 = (x.astype(jnp.float32) for x in (q_BxSxNxH, k_BxLxKxH, v_BxLxKxH))
  k32, v32 = jnp.repeat(k32, n // k, axis=2), jnp.repeat(v32, n // k, axis=2)
  scores_BxNxSxL = jnp.einsum("bsnh,blnh->bnsl", q32, k32) / np.sqrt(q32.shape[-1])
  scores_BxNxSxL = jnp.where(allowed_BxSxL[:, None], scores_BxNxSxL, -1e30)
  probs = jax.nn.softmax(scores_BxNxSxL, axis=-1)
  return jnp.einsum("bnsl,blnh->bsnh", probs, v32)


def inputs(k_heads, dtype, seed=0, length=S):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(B, length, N, H)), dtype)
  k = jnp.asarray(rng.normal(size=(B, length, k_heads, H)), dtype)
  v = jnp.asarray(rng.normal(size=(B, length, k_heads, H)), dtype)
  # Left padding of 0, 3 and 5 slots.
  mask = jnp.asarray(np.arange(length)[None, :] >= np.array([0, 3, 5])[:, None])
  return q, k, v, mask


def causal_allowed(mask_BxL, length):
  return mask_BxL[:, None, :] & jnp.tril(jnp.ones((length, length), bool))[None]


CASES = [(jnp.float32, 1e-5, "xla")] + [(jnp.bfloat16, 3e-2, impl) for impl in IMPLS_16BIT]


@pytest.mark.parametrize("k_heads", [4, 2, 1])  # multi-head, grouped, multi-query
@pytest.mark.parametrize("dtype,tol,impl", CASES)
def test_fused_equals_reference_with_left_padding(k_heads, dtype, tol, impl):
  q, k, v, mask = inputs(k_heads, dtype)
  out = attention.attend(q, k, v, kv_mask_BxL=mask, implementation=impl)
  want = reference(q, k, v, causal_allowed(mask, S))
  assert out.shape == (B, S, N, H) and out.dtype == dtype
  real = np.asarray(mask)  # padding queries are never read by the decoder
  np.testing.assert_allclose(np.asarray(out, np.float32)[real], np.asarray(want)[real],
                             atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype,tol,impl", CASES)
def test_fused_gradients_equal_reference(dtype, tol, impl):
  q, k, v, mask = inputs(2, dtype)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(B, S, N, H)), jnp.float32)
  w = w * mask[:, :, None, None]  # a loss on the real positions only

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * w)

  fused = loss(lambda q, k, v: attention.attend(q, k, v, kv_mask_BxL=mask, implementation=impl))
  plain = loss(lambda q, k, v: reference(q, k, v, causal_allowed(mask, S)))
  for got, want in zip(jax.grad(fused, (0, 1, 2))(q, k, v), jax.grad(plain, (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               atol=tol * 4, rtol=tol)


@pytest.mark.parametrize("dtype,tol,impl", CASES)
def test_packed_rows_attend_within_their_segment(dtype, tol, impl):
  q, k, v, _ = inputs(2, dtype)
  segments = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 1],
                          [1, 2, 2, 3, 3, 3, 0, 0]])
  mask = segments > 0
  out = attention.attend(q, k, v, kv_mask_BxL=mask, segment_ids_BxS=segments,
                         implementation=impl)
  allowed = causal_allowed(mask, S) & (segments[:, :, None] == segments[:, None, :])
  real = np.asarray(mask)
  out = np.asarray(out, np.float32)
  np.testing.assert_allclose(out[real], np.asarray(reference(q, k, v, allowed))[real],
                             atol=tol, rtol=tol)
  # Segment 1 of row 2 is one token: it attends to itself alone, so its output is its value.
  np.testing.assert_allclose(out[2, 0], np.asarray(jnp.repeat(v[2, 0], 2, axis=0), np.float32),
                             atol=tol)


def test_cache_queries_attend_to_earlier_real_slots():
  length, cache_index, s = 12, 5, 3  # 3 new queries at slots 5, 6, 7 of a 12-slot cache
  q, _, _, _ = inputs(2, jnp.float32, length=s)
  _, k, v, _ = inputs(2, jnp.float32, seed=2, length=length)
  mask = jnp.asarray(np.arange(length)[None, :] >= np.array([0, 2, 4])[:, None])
  mask = mask & (jnp.arange(length) < cache_index + s)[None]  # slots after the queries are empty
  out = attention.attend(q, k, v, kv_mask_BxL=mask, cache_index=cache_index, cached=True)
  allowed = mask[:, None, :] & (jnp.arange(length)[None, :]
                                <= (cache_index + jnp.arange(s))[:, None])[None]
  np.testing.assert_allclose(out, reference(q, k, v, allowed), atol=1e-5, rtol=1e-5)


def test_auto_picks_cudnn_only_for_uncached_16bit_gpu_passes(monkeypatch):
  q16 = jnp.zeros((1, 8, 4, 64), jnp.bfloat16)
  q32 = q16.astype(jnp.float32)
  assert attention.resolve("auto", q16, cached=False) == "xla"  # this CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert attention.resolve("auto", q16, cached=False) == "cudnn"
  assert attention.resolve("auto", q16, cached=True) == "xla"       # decode with a KV cache
  assert attention.resolve("auto", q32, cached=False) == "xla"      # float32
  assert attention.resolve("auto", q16[:, :7], cached=False) == "xla"  # odd length
  assert attention.resolve("cudnn", q32, cached=False) == "cudnn"   # asked for: its own error
  with pytest.raises(ValueError, match=r"valid: \['auto', 'xla', 'cudnn'\]"):
    attention.resolve("flash", q16, cached=False)
  with pytest.raises(ValueError, match="attention implementation 'flash'"):
    models.get_model_config("tiny", attention="flash")
