"""The vocabulary-chunked LM-head log-probs (models/lm_head.py) equal the plain
log_softmax(h W) gather, in value and gradient, whatever the chunk size; and the SFT objective and
completion scoring give the same numbers with `lm_head_chunk` on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlhf_jax import models
from rlhf_jax.generation import score_tokens
from rlhf_jax.models import lm_head
from rlhf_jax.models.layers import einsum_f32
from rlhf_jax.train import sft

B, T, D, V = 2, 5, 16, 37  # a prime vocabulary: no chunk size divides it


def plain(h, w, tokens):
  z = einsum_f32("btd,dv->btv", h, w.astype(h.dtype))
  return jnp.take_along_axis(jax.nn.log_softmax(z, -1), tokens[..., None], -1)[..., 0]


def arrays(dtype):
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(B, T, D)), dtype)
  w = jnp.asarray(rng.normal(size=(D, V)) * 0.5, jnp.float32)
  tokens = jnp.asarray(rng.integers(0, V, size=(B, T)))
  return h, w, tokens


@pytest.mark.parametrize("chunk", [1, 8, 37, 64])
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_chunked_equals_plain_in_value_and_gradient(chunk, dtype, tol):
  h, w, tokens = arrays(dtype)
  got = lm_head.chunked_token_logps(h, w, tokens, chunk=chunk)
  assert got.dtype == jnp.float32 and got.shape == (B, T)
  np.testing.assert_allclose(got, plain(h, w, tokens), atol=tol, rtol=tol)
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(B, T)), jnp.float32)
  loss = lambda fn: (lambda h, w: jnp.sum(fn(h, w) * weights))
  g_got = jax.grad(loss(lambda h, w: lm_head.chunked_token_logps(h, w, tokens, chunk=chunk)),
                   (0, 1))(h, w)
  g_want = jax.grad(loss(lambda h, w: plain(h, w, tokens)), (0, 1))(h, w)
  for a, b in zip(g_got, g_want):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               atol=tol * 4, rtol=tol * 4)


def test_no_full_logits_in_the_backward():
  """The largest intermediate of the chunked gradient is a [B, T, C] chunk, not [B, T, V]."""
  h, w, tokens = arrays(jnp.float32)
  h, tokens = jnp.tile(h, (2, 8, 1)), jnp.tile(tokens, (2, 8))  # B T = 160 rows > D = 16
  w = jnp.tile(w, (1, 64))  # V = 2368
  b, t = tokens.shape
  grad = jax.grad(lambda h: jnp.sum(lm_head.chunked_token_logps(h, w, tokens, chunk=128)))
  sizes = [np.prod(v.aval.shape) for eqn in jax.make_jaxpr(grad)(h).jaxpr.eqns
           for v in eqn.outvars if hasattr(v.aval, "shape")]
  assert max(sizes) < b * t * w.shape[1] / 4, max(sizes)  # the padded weight is the largest
  plain_sizes = [np.prod(v.aval.shape) for eqn in jax.make_jaxpr(
      jax.grad(lambda h: jnp.sum(plain(h, w, tokens))))(h).jaxpr.eqns for v in eqn.outvars
      if hasattr(v.aval, "shape")]
  assert max(plain_sizes) >= b * t * w.shape[1]


def test_sft_objective_and_scoring_unchanged_by_chunking():
  cfg = models.get_model_config("tiny", vocab_size=50)
  graphdef, params = nnx.split(models.Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  chunked_def, _ = nnx.split(models.Transformer(
      models.get_model_config("tiny", vocab_size=50, lm_head_chunk=16), rngs=nnx.Rngs(0)),
      nnx.Param)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(3, 50, (4, 9)))
  batch = {"tokens": tokens, "mask": jnp.ones_like(tokens),
           "completion_mask": jnp.zeros_like(tokens).at[:, 4:].set(1)}
  (l0, _), g0 = jax.value_and_grad(lambda p: sft.sft_objective(graphdef, p, batch),
                                   has_aux=True)(params)
  (l1, _), g1 = jax.value_and_grad(lambda p: sft.sft_objective(chunked_def, p, batch),
                                   has_aux=True)(params)
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), g1, g0)
  args = (tokens[:, :4], jnp.ones((4, 4), jnp.int32), tokens[:, 4:], jnp.ones((4, 5), jnp.int32))
  np.testing.assert_allclose(score_tokens(chunked_def, params, *args).logp_BxT,
                             score_tokens(graphdef, params, *args).logp_BxT, atol=1e-5)
