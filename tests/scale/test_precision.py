"""Mixed precision: bfloat16 matmuls, float32 master weights, float32 logits / log-probs / loss."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax import models
from rlhf_jax.generation import score_tokens
from rlhf_jax.models import layers
from rlhf_jax.train import precision, sft
from scale_testlib import random_params


def _batch(b=4, s=10, vocab=64):
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, vocab, (b, s)), jnp.int32)
  completion = jnp.zeros((b, s), jnp.int32).at[:, s // 2:].set(1)
  return {"tokens": tokens, "mask": jnp.ones_like(tokens), "completion_mask": completion}


def _model(dtype):
  cfg = models.get_model_config("tiny", vocab_size=64, dtype=dtype)
  return random_params(lambda r: models.Transformer(cfg, rngs=r))


def test_bf16_compute_keeps_float32_weights_grads_and_losses():
  graphdef, params = _model("bfloat16")
  batch = _batch()
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}

  def loss_and_grads(p):
    return jax.value_and_grad(lambda q: sft.sft_objective(graphdef, q, batch), has_aux=True)(p)

  # Every matmul, forward and backward, multiplies bfloat16 operands; logits and attention
  # scores come out in float32 (their cotangents are cast back, so no mixed f32 x bf16 matmul).
  counts = precision.matmul_dtypes(loss_and_grads, params)
  assert {k[:2] for k in counts} == {("bfloat16", "bfloat16")}, counts
  assert counts[("bfloat16", "bfloat16", "float32")] == 1 + models.get_model_config("tiny").n_layers

  (loss, _), grads = jax.eval_shape(loss_and_grads, params)
  assert loss.dtype == jnp.float32
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  tokens, mask = batch["tokens"], batch["mask"]
  logits = jax.eval_shape(lambda p: nnx.merge(graphdef, p)(tokens, mask_BxS=mask), params)
  assert logits.dtype == jnp.float32
  logp = jax.eval_shape(lambda p: score_tokens(graphdef, p, tokens[:, :5], mask[:, :5],
                                               tokens[:, 5:], mask[:, 5:]).logp_BxT, params)
  assert logp.dtype == jnp.float32


def test_bf16_loss_tracks_float32():
  batch = _batch()
  losses = {}
  for dtype in ("float32", "bfloat16"):
    graphdef, params = _model(dtype)  # the same float32 parameters for both
    losses[dtype] = jax.jit(lambda p: sft.sft_objective(graphdef, p, batch)[0])(params)
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=1e-2)


def test_einsum_f32_value_and_bf16_backward():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 5, 8)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((8, 7)), jnp.bfloat16)
  spec = "bsd,dv->bsv"
  y = layers.einsum_f32(spec, x, w)
  assert y.dtype == jnp.float32
  np.testing.assert_array_equal(y, jnp.einsum(spec, x, w, preferred_element_type=jnp.float32))
  ct = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  gx, gw = jax.grad(lambda a, b: jnp.sum(layers.einsum_f32(spec, a, b) * ct), (0, 1))(x, w)
  assert gx.dtype == gw.dtype == jnp.bfloat16
  rx, rw = jax.grad(lambda a, b: jnp.sum(jnp.einsum(spec, a, b) * ct), (0, 1))(
      x.astype(jnp.float32), w.astype(jnp.float32))
  np.testing.assert_allclose(np.float32(gx), rx, rtol=3e-2, atol=3e-2)
  np.testing.assert_allclose(np.float32(gw), rw, rtol=3e-2, atol=3e-2)
