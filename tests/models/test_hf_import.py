"""Hugging Face import: logits parity with transformers (CPU, float32) for every family, config
mapping, and clear errors for what we cannot load."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from hf_testlib import FAMILY, HF_CONFIGS, jax_logits, padded_batch, torch_logits
from rlhf_jax import models
from rlhf_jax.models.hf import checkpoint as checkpoint_lib
from rlhf_jax.models.hf import config as config_lib


@pytest.mark.parametrize("variant", sorted(HF_CONFIGS))
def test_logits_match_transformers_on_left_padded_batch(hf_checkpoints, variant):
  path, hf_model = hf_checkpoints[variant]
  loaded = models.load_hf(path)
  assert loaded.cfg.family == FAMILY[variant]
  tokens, mask, positions = padded_batch()
  ours_BxSxV = jax_logits(loaded.graphdef, loaded.params, tokens, mask)
  ref_BxSxV = torch_logits(hf_model, tokens, mask, positions)
  assert ours_BxSxV.shape == (3, 9, hf_model.config.vocab_size)
  real = mask.astype(bool)  # padded query slots are don't-cares in both implementations
  np.testing.assert_allclose(ours_BxSxV[real], ref_BxSxV[real], atol=1e-4, rtol=0)


def test_config_mapping_per_family(hf_checkpoints):
  gemma = models.load_hf(hf_checkpoints["gemma"][0]).cfg
  assert (gemma.head_dim, gemma.n_kv_heads, gemma.tie_embeddings) == (12, 1, True)
  assert gemma.scale_embeddings and gemma.norm_scale_offset == 1.0
  assert gemma.mlp_activation == "gelu_tanh" and gemma.mlp_gated
  gpt2 = models.load_hf(hf_checkpoints["gpt2"][0]).cfg
  assert (gpt2.norm, gpt2.position_embedding, gpt2.max_positions) == ("layer", "learned", 32)
  assert (gpt2.d_ff, gpt2.head_dim, gpt2.mlp_gated) == (128, 8, False)
  llama = models.load_hf(hf_checkpoints["llama"][0]).cfg
  assert dict(llama.rope_scaling)["rope_type"] == "llama3" and llama.rope_theta == 500000.0
  assert not llama.tie_embeddings and llama.norm_eps == 1e-5
  qwen = models.load_hf(hf_checkpoints["qwen2"][0]).cfg
  assert qwen.qkv_bias and not qwen.attn_out_bias and qwen.rope_theta == 1e6


def test_legacy_config_fields_and_defaults():
  # transformers 4 style: top-level rope_theta + rope_scaling, defaults left out, no model_type.
  cfg = config_lib.config_from_hf({
      "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4,
      "intermediate_size": 128, "num_hidden_layers": 1, "vocab_size": 100, "rope_theta": 5e5,
      "rope_scaling": {"type": "linear", "factor": 4.0}})
  assert cfg.family == "llama" and cfg.head_dim == 16 and cfg.n_kv_heads == 4
  assert cfg.rope_theta == 5e5 and dict(cfg.rope_scaling) == {"rope_type": "linear",
                                                              "factor": 4.0}
  assert cfg.norm_eps == 1e-6 and not cfg.tie_embeddings and cfg.max_positions == 2048
  gemma = config_lib.config_from_hf({"model_type": "gemma", "hidden_act": "gelu",
                                     "num_hidden_layers": 1})
  assert gemma.mlp_activation == "gelu_tanh"  # legacy "gelu" means the tanh approximation


def test_unknown_model_type_lists_supported_ones(tmp_path):
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}, f)
  with pytest.raises(ValueError, match=r"'mamba'.*\['gemma', 'gpt2', 'llama', 'qwen2'\]"):
    models.load_hf(str(tmp_path))


@pytest.mark.parametrize("hf_fields, message", [
    ({"model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window"),
    ({"model_type": "llama", "hidden_act": "relu2"}, "unsupported activation 'relu2'"),
    ({"model_type": "llama", "rope_parameters": {"rope_type": "yarn", "factor": 2.0}},
     "unsupported rope_type 'yarn'"),
    ({"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": True}, "scale_attn"),
])
def test_unsupported_options_fail_loudly(hf_fields, message):
  with pytest.raises(ValueError, match=message):
    config_lib.config_from_hf(hf_fields)


def test_missing_and_misshapen_tensors_are_named(hf_checkpoints, tmp_path):
  src, _ = hf_checkpoints["qwen2"]
  with safe_open(os.path.join(src, "model.safetensors"), "numpy") as f:
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  shutil.copy(os.path.join(src, "config.json"), tmp_path / "config.json")
  from safetensors.numpy import save_file
  dropped = dict(tensors)
  del dropped["model.layers.1.self_attn.k_proj.bias"]
  save_file(dropped, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match=r"lacks tensors \['model.layers.1.self_attn.k_proj.bias'"):
    models.load_hf(str(tmp_path))
  bad = dict(tensors)
  bad["model.norm.weight"] = np.zeros((31,), np.float32)
  save_file(bad, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match=r"model.norm.weight has shape \(31,\).*\(32,\)"):
    models.load_hf(str(tmp_path))


def test_gpt2_names_without_transformer_prefix(hf_checkpoints, tmp_path):
  """The original GPT-2 files store `h.0.attn...` rather than `transformer.h.0.attn...`."""
  src, hf_model = hf_checkpoints["gpt2"]
  with safe_open(os.path.join(src, "model.safetensors"), "numpy") as f:
    tensors = {k.removeprefix("transformer."): f.get_tensor(k) for k in f.keys()}
  from safetensors.numpy import save_file
  save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  shutil.copy(os.path.join(src, "config.json"), tmp_path / "config.json")
  a = models.load_hf(str(tmp_path)).params
  b = models.load_hf(src).params
  np.testing.assert_array_equal(a["layers"][1]["attn"]["wk"], b["layers"][1]["attn"]["wk"])


def test_bfloat16_load_and_backbone_only(hf_checkpoints):
  path, _ = hf_checkpoints["llama"]
  loaded = models.load_hf(path, dtype="bfloat16")
  assert loaded.cfg.dtype == loaded.cfg.param_dtype == "bfloat16"
  assert loaded.params["layers"][0]["attn"]["wq"].dtype == jnp.bfloat16
  backbone = models.load_hf(path, lm_head=False, overrides={"dtype": "bfloat16"})
  assert "lm_head" not in backbone.params and backbone.cfg.param_dtype == "float32"
  cfg, graphdef, params = backbone  # unpacks like a tuple
  assert cfg is backbone.cfg and params is backbone.params


def test_each_tensor_is_read_once(hf_checkpoints, monkeypatch):
  """Tensor-by-tensor loading: every stored tensor (GPT-2's fused c_attn included) is read once."""
  reads = []
  real_safe_open = checkpoint_lib.safe_open

  class Spy:
    def __init__(self, *a, **k):
      self._f = real_safe_open(*a, **k)

    def __enter__(self):
      self._h = self._f.__enter__()
      return self

    def __exit__(self, *exc):
      return self._f.__exit__(*exc)

    def keys(self):
      return self._h.keys()

    def get_tensor(self, name):
      reads.append(name)
      return self._h.get_tensor(name)

  monkeypatch.setattr(checkpoint_lib, "safe_open", Spy)
  path, _ = hf_checkpoints["gpt2"]
  models.load_hf(path)
  assert len(reads) == len(set(reads)) == 2 + 2 * 12 + 2
