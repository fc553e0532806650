"""Model families: parameter counts, unchanged Llama defaults, and KV-cache decoding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_testlib import random_params
from rlhf_jax import models
from rlhf_jax.models.hf.checkpoint import abstract_model
from rlhf_jax.parallel import sharding as sharding_lib

FAMILIES = sorted(models.FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("preset", sorted(models.PRESETS))
def test_num_params_matches_the_model(family, preset):
  cfg = models.get_model_config(preset, family=family)
  for lm_head in (True, False) if preset == "tiny" else (True,):
    _, abstract = abstract_model(cfg, lm_head)
    counted = sum(x.size for x in jax.tree.leaves(nnx.to_pure_dict(abstract)))
    head = 0 if lm_head or cfg.tie_embeddings else cfg.d_model * cfg.vocab_size
    assert counted == cfg.num_params() - head, (family, preset, lm_head)


def test_known_sizes():
  # Llama-3.2-1B has 1,235,814,400 parameters with its tied 128,256 x 2048 embedding.
  assert models.get_model_config("1b").num_params() == 1_235_814_400
  # GPT-2 small (124M): 12 layers, d=768, 12 heads, d_ff=3072, 1024 positions, vocab 50257.
  gpt2 = models.ModelConfig(**{**models.FAMILIES["gpt2"], "vocab_size": 50257, "d_model": 768,
                               "n_layers": 12, "n_heads": 12, "n_kv_heads": 12, "head_dim": 64,
                               "d_ff": 3072, "max_positions": 1024, "family": "gpt2"})
  assert gpt2.num_params() == 124_439_808


def test_llama_defaults_are_unchanged():
  cfg = models.get_model_config("tiny")
  assert cfg == models.get_model_config("tiny", family="llama")
  assert (cfg.norm, cfg.position_embedding, cfg.mlp_activation, cfg.mlp_gated) == (
      "rms", "rope", "silu", True)
  assert not (cfg.qkv_bias or cfg.attn_out_bias or cfg.mlp_bias or cfg.scale_embeddings)
  _, abstract = abstract_model(cfg)
  layer = {"attn_norm/scale", "attn/wq", "attn/wk", "attn/wv", "attn/wo", "mlp_norm/scale",
           "mlp/w_gate", "mlp/w_up", "mlp/w_down"}
  expected = {"embed", "lm_head", "final_norm/scale"} | {f"layers/{i}/{n}" for i in range(2)
                                                          for n in layer}
  assert _slash_paths(nnx.to_pure_dict(abstract)) == expected


def _slash_paths(tree, prefix=""):
  if isinstance(tree, dict):
    return set().union(*[_slash_paths(v, f"{prefix}{k}/") for k, v in tree.items()])
  return {prefix[:-1]}


def test_every_parameter_has_logical_axes():
  for family in FAMILIES:
    cfg = models.get_model_config("tiny", family=family)
    _, abstract = abstract_model(cfg)
    for path, var in jax.tree_util.tree_flatten_with_path(
        abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]:
      axes = var.get_metadata().get("axes")
      assert axes is not None and len(axes) == var.get_value().ndim, (family, path, axes)
      assert set(axes) - {None} <= {name for name, _ in sharding_lib.DEFAULT_RULES}, axes


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"family 'bert'.*valid families"):
    models.get_model_config("tiny", family="bert")
  with pytest.raises(ValueError, match=r"ModelConfig.norm 'batch'"):
    models.ModelConfig(norm="batch")
  with pytest.raises(ValueError, match=r"rope_type 'ntk'"):
    models.ModelConfig(rope_scaling=(("rope_type", "ntk"),))


@functools.partial(jax.jit, static_argnums=0)
def _cached_step(graphdef, params, tokens_BxS, positions_BxS, cache, cache_index, kv_mask_BxL):
  """One cached forward (prefill or a decode step): logits of the last slot and the new cache."""
  model = nnx.merge(graphdef, params)
  h, cache = model.hidden(tokens_BxS, mask_BxS=jnp.ones_like(tokens_BxS),
                          positions_BxS=positions_BxS, cache=cache, cache_index=cache_index,
                          kv_mask_BxL=kv_mask_BxL)
  return model.logits(h[:, -1:])[:, 0], cache


def _greedy_with_cache(graphdef, params, prompt_BxP, mask_BxP, steps):
  """Prefill the left-padded prompt into a cache, then decode `steps` greedy tokens."""
  b, p = prompt_BxP.shape
  cache = nnx.merge(graphdef, params).init_cache(b, p + steps)
  kv_mask_BxL = np.zeros((b, p + steps), np.int32)
  kv_mask_BxL[:, :p] = mask_BxP
  positions_BxP = np.asarray(models.positions_from_mask(mask_BxP))
  logits_BxV, cache = _cached_step(graphdef, params, prompt_BxP, positions_BxP, cache, 0,
                                   kv_mask_BxL)
  position_B = positions_BxP[:, -1] + 1
  tokens, step_logits = [], []
  for t in range(steps):
    token_B = np.asarray(jnp.argmax(logits_BxV, axis=-1)).astype(np.int32)
    tokens.append(token_B)
    step_logits.append(np.asarray(logits_BxV))
    kv_mask_BxL[:, p + t] = 1
    logits_BxV, cache = _cached_step(graphdef, params, token_B[:, None], position_B[:, None],
                                     cache, p + t, kv_mask_BxL)
    position_B = position_B + 1
  return np.stack(tokens, 1), np.stack(step_logits, 1)


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(graphdef, params, tokens_BxS, mask_BxS):
  return nnx.merge(graphdef, params)(tokens_BxS, mask_BxS=mask_BxS)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_decoding_equals_full_recomputation(family):
  cfg = models.get_model_config("tiny", family=family, vocab_size=64, max_positions=16)
  graphdef, _ = abstract_model(cfg)
  params = random_params(cfg, seed=1)
  rng = np.random.default_rng(0)
  prompt_BxP = rng.integers(3, 64, (3, 6)).astype(np.int32)
  mask_BxP = np.ones_like(prompt_BxP)
  mask_BxP[1, :2] = 0
  mask_BxP[2, :4] = 0  # left-padded prompts
  prompt_BxP = prompt_BxP * mask_BxP
  steps = 4
  tokens_BxT, step_logits_BxTxV = _greedy_with_cache(graphdef, params, prompt_BxP, mask_BxP,
                                                     steps)
  full_BxS = np.concatenate([prompt_BxP, np.asarray(tokens_BxT)], axis=1)
  full_mask_BxS = np.concatenate([mask_BxP, np.ones_like(tokens_BxT)], axis=1)
  logits_BxSxV = np.asarray(_full_logits(graphdef, params, full_BxS, full_mask_BxS))
  p = prompt_BxP.shape[1]
  np.testing.assert_allclose(step_logits_BxTxV, logits_BxSxV[:, p - 1:p - 1 + steps], atol=1e-5)
  np.testing.assert_array_equal(tokens_BxT, logits_BxSxV[:, p - 1:p - 1 + steps].argmax(-1))
  assert len(set(np.asarray(tokens_BxT).ravel().tolist())) > 1  # not a degenerate check
