"""Hugging Face export: bitwise round trips and checkpoints that transformers loads."""

import json
import os

import jax
import numpy as np
import pytest
import transformers
from safetensors import safe_open

from hf_testlib import HF_CONFIGS, padded_batch, random_params, torch_logits
from rlhf_jax import models


def _tensors(path):
  out = {}
  for file in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
    with safe_open(os.path.join(path, file), "numpy") as f:
      out.update({k: f.get_tensor(k) for k in f.keys()})
  return out


def _assert_trees_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("variant", sorted(HF_CONFIGS))
def test_hf_to_ours_to_hf_is_exact_and_loads_in_transformers(hf_checkpoints, tmp_path, variant):
  """save_pretrained -> load_hf -> save_hf -> from_pretrained: same tensors, same logits."""
  src, hf_model = hf_checkpoints[variant]
  loaded = models.load_hf(src)
  token_ids = {k: v for k, v in loaded.hf_config.items() if k.endswith("_token_id")}
  models.save_hf(str(tmp_path), loaded.cfg, loaded.params, extra_config=token_ids)
  theirs, ours = _tensors(src), _tensors(str(tmp_path))
  assert sorted(ours) == sorted(theirs)
  for name in theirs:
    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)

  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  assert type(reloaded) is type(hf_model)
  tokens, mask, positions = padded_batch(seed=1)
  np.testing.assert_array_equal(torch_logits(reloaded, tokens, mask, positions),
                                torch_logits(hf_model, tokens, mask, positions))


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "gpt2"])
def test_ours_to_hf_to_ours_is_bitwise(tmp_path, family):
  """A model initialised here (MHA for GPT-2) survives export + import bit for bit, in bf16 too."""
  overrides = dict(n_kv_heads=4) if family == "gpt2" else {}
  cfg = models.get_model_config("tiny", family=family, vocab_size=64, max_positions=32,
                                **overrides)
  params = random_params(cfg, seed=3)
  models.save_hf(str(tmp_path / "f32"), cfg, params)
  back = models.load_hf(str(tmp_path / "f32"))
  assert back.cfg == cfg
  _assert_trees_bitwise_equal(back.params, params)

  bf16 = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), params)
  models.save_hf(str(tmp_path / "bf16"), cfg, bf16, dtype="bfloat16")
  with open(tmp_path / "bf16" / "config.json") as f:
    assert json.load(f)["dtype"] == "bfloat16"
  _assert_trees_bitwise_equal(models.load_hf(str(tmp_path / "bf16"), dtype="bfloat16").params,
                              bf16)


def test_sharded_export_writes_an_index_transformers_reads(hf_checkpoints, tmp_path):
  src, hf_model = hf_checkpoints["llama"]
  loaded = models.load_hf(src)
  models.save_hf(str(tmp_path), loaded.cfg, loaded.params, max_shard_bytes=20_000)
  with open(tmp_path / "model.safetensors.index.json") as f:
    index = json.load(f)
  files = set(index["weight_map"].values())
  assert len(files) > 2 and not os.path.exists(tmp_path / "model.safetensors")
  assert all(os.path.getsize(tmp_path / file) < 20_000 + 4096 for file in files)
  _assert_trees_bitwise_equal(models.load_hf(str(tmp_path)).params, loaded.params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  tokens, mask, positions = padded_batch(seed=2)
  np.testing.assert_array_equal(torch_logits(reloaded, tokens, mask, positions),
                                torch_logits(hf_model, tokens, mask, positions))


def test_export_rejects_what_the_family_cannot_express(tmp_path):
  gqa = models.get_model_config("tiny", family="gpt2", vocab_size=64)  # n_kv_heads=2 < n_heads
  params = random_params(gqa)
  with pytest.raises(ValueError, match="n_kv_heads"):
    models.save_hf(str(tmp_path), gqa, params)
  odd = models.get_model_config("tiny", family="gemma", vocab_size=64, qkv_bias=True)
  with pytest.raises(ValueError, match=r"Hugging Face gemma.*'attn_out_bias': \(False, True\)"):
    models.config_to_hf(odd)
  untied = models.get_model_config("tiny", vocab_size=64)
  backbone = random_params(untied, lm_head=False)
  with pytest.raises(ValueError, match="no 'lm_head'"):
    models.save_hf(str(tmp_path), untied, backbone)
