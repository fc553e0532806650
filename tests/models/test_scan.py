"""`ModelConfig.scan_layers` (models/scan.py): the blocks as one jax.lax.scan give the same
logits and the same parameter gradients as the unrolled loop (with and without remat, left
padding, packed segments, LoRA adapters, bf16 compute), the parameters stay stored per layer,
and the scanned program holds one copy of the block where the unrolled one holds one per layer.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlhf_jax import models
from rlhf_jax.models import lora

B, S, V, LAYERS = 2, 12, 61, 4


def model_pair(with_lora=False, **fields):
  """(unrolled, scanned) Transformers with the same weights: 4 layers, GQA (tiny's heads)."""
  cfg = models.get_model_config("tiny", vocab_size=V, n_layers=LAYERS, **fields)
  pair = []
  for scan in (False, True):
    model = models.Transformer(dataclasses.replace(cfg, scan_layers=scan), rngs=nnx.Rngs(0))
    if with_lora:
      lora.attach(model, rank=4, alpha=8.0, targets="all", rngs=nnx.Rngs(1))
    pair.append(model)
  if with_lora:  # B starts at zero (then A has no gradient): give it values
    rng = np.random.default_rng(2)
    nudge = lambda path, x: (jnp.asarray(rng.normal(size=x.shape) * 0.1, x.dtype)
                             if jax.tree_util.keystr(path).endswith("_lora']['b']") else x)
    pure = nnx.to_pure_dict(nnx.state(pair[0]))
    nnx.replace_by_pure_dict(state := nnx.state(pair[0]),
                             jax.tree_util.tree_map_with_path(nudge, pure))
    nnx.update(pair[0], state)
  nnx.update(pair[1], nnx.state(pair[0]))
  return pair


def inputs(packed=False):
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(3, V, (B, S)), jnp.int32)
  mask = np.ones((B, S), np.int32)
  mask[1, :4] = 0  # a left-padded row
  kwargs = {"mask_BxS": jnp.asarray(mask)}
  if packed:  # row 0 holds two examples of 5 and 7 tokens
    segments = np.ones((B, S), np.int32)
    segments[0, 5:] = 2
    positions = np.tile(np.arange(S), (B, 1))
    positions[0, 5:] -= 5
    positions[1] = np.maximum(np.arange(S) - 4, 0)
    kwargs.update(segment_ids_BxS=jnp.asarray(segments), positions_BxS=jnp.asarray(positions))
  return tokens, kwargs


def logits_and_grads(model, tokens, kwargs):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(B, S, V)), jnp.float32)
  weights = weights * kwargs["mask_BxS"][..., None]

  def loss(params):
    logits = nnx.merge(graphdef, params, rest)(tokens, **kwargs)
    return jnp.sum(logits * weights), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return np.asarray(logits, np.float32), nnx.to_pure_dict(grads)


@pytest.mark.parametrize("case", [
    dict(), dict(remat="full"), dict(remat="dots_saveable", packed=True),
    dict(with_lora=True), dict(dtype="bfloat16")], ids=lambda c: "-".join(map(str, c.values()))
                         or "plain")
def test_scanned_equals_unrolled_in_logits_and_gradients(case):
  case = dict(case)
  packed = case.pop("packed", False)
  unrolled, scanned = model_pair(**case)
  tokens, kwargs = inputs(packed)
  want_logits, want_grads = logits_and_grads(unrolled, tokens, kwargs)
  got_logits, got_grads = logits_and_grads(scanned, tokens, kwargs)
  tol = 3e-2 if case.get("dtype") == "bfloat16" else 2e-5
  real = np.asarray(kwargs["mask_BxS"], bool)
  np.testing.assert_allclose(got_logits[real], want_logits[real], atol=tol, rtol=tol)
  flat_want = dict(jax.tree_util.tree_flatten_with_path(want_grads)[0])
  flat_got = dict(jax.tree_util.tree_flatten_with_path(got_grads)[0])
  assert flat_got.keys() == flat_want.keys()   # the same per-layer parameters
  assert sum(1 for k in flat_want if "layers" in jax.tree_util.keystr(k)) >= LAYERS * 9
  for key, want in flat_want.items():
    want, got = np.asarray(want, np.float32), np.asarray(flat_got[key], np.float32)
    assert np.abs(want).max() > 0, jax.tree_util.keystr(key)  # every layer gets a gradient
    np.testing.assert_allclose(got, want, atol=tol * max(1.0, np.abs(want).max()), rtol=tol,
                               err_msg=jax.tree_util.keystr(key))


def test_the_scanned_program_holds_one_block():
  """Matmuls in the jaxpr: one block's worth (inside the scan) instead of one per layer."""
  unrolled, scanned = model_pair()
  tokens, kwargs = inputs()

  def dots(model):
    graphdef, params = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(tokens, **kwargs))(params)
    return str(jaxpr).count("dot_general"), str(jaxpr).count("scan[")

  (unrolled_dots, unrolled_scans), (scanned_dots, scanned_scans) = dots(unrolled), dots(scanned)
  assert unrolled_scans == 0 and scanned_scans == 1
  # unrolled = LAYERS k + outside, scanned = k + outside: k matmuls per block (q, k, v, o,
  # scores, probs @ v, gate, up, down)
  per_block, left = divmod(unrolled_dots - scanned_dots, LAYERS - 1)
  assert left == 0 and per_block >= 9 and scanned_dots >= per_block, (unrolled_dots,
                                                                      scanned_dots)


def test_a_kv_cache_pass_stays_unrolled_and_equal():
  """Generation (a KV cache) does not scan: the scanned model decodes as the unrolled one."""
  unrolled, scanned = model_pair()
  tokens, kwargs = inputs()
  outs = []
  for model in (unrolled, scanned):
    cache = model.init_cache(B, S)
    h, _ = model.hidden(tokens, mask_BxS=kwargs["mask_BxS"], cache=cache,
                        kv_mask_BxL=kwargs["mask_BxS"])
    outs.append(np.asarray(h))
  np.testing.assert_array_equal(outs[0], outs[1])
