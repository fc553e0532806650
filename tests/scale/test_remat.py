"""Rematerialisation changes what is stored for the backward pass, not the values."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlhf_jax import models
from rlhf_jax.models.remat import REMAT_POLICIES
from scale_testlib import random_params


def _loss_and_grads(remat):
  cfg = models.get_model_config("tiny", vocab_size=64, remat=remat)
  graphdef, params = random_params(lambda r: models.Transformer(cfg, rngs=r))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 8)), jnp.int32)

  def loss(p):
    logits = nnx.merge(graphdef, p)(tokens, mask_BxS=jnp.ones_like(tokens))
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  remat_blocks = sum(e.primitive.name.startswith(("checkpoint", "remat"))
                     for e in jax.make_jaxpr(loss)(params).jaxpr.eqns)
  return jax.jit(jax.value_and_grad(loss))(params), remat_blocks


def test_remat_policies_match_no_remat():
  (ref_loss, ref_grads), blocks = _loss_and_grads("none")
  assert blocks == 0
  (loss, grads), blocks = _loss_and_grads("full")
  assert blocks == models.get_model_config("tiny").n_layers  # one checkpoint per Block
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads,
               ref_grads)


def test_remat_policy_reaches_the_checkpoint():
  for name, policy in REMAT_POLICIES.items():
    if name == "none":
      continue
    cfg = models.get_model_config("tiny", vocab_size=64, n_layers=1, remat=name)
    graphdef, params = random_params(lambda r: models.Transformer(cfg, rngs=r))
    tokens = jnp.zeros((1, 4), jnp.int32)
    eqns = jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(tokens, mask_BxS=tokens + 1))(
        params).jaxpr.eqns
    remats = [e for e in eqns if e.primitive.name.startswith(("checkpoint", "remat"))]
    assert len(remats) == 1 and remats[0].params["policy"] is policy, name


def test_unknown_remat_policy_lists_valid_ones():
  with pytest.raises(ValueError, match="dots_saveable"):
    dataclasses.replace(models.get_model_config("tiny"), remat="sometimes")
