"""Helpers for the model tests: tiny random Hugging Face models of every family, padded batches."""

import functools

import jax
import numpy as np
import torch
import transformers
from flax import nnx

from rlhf_jax.models.hf.checkpoint import abstract_model

VOCAB = 96

# Each variant exercises a different corner: llama3 RoPE scaling with GQA and an untied head;
# Llama attention/MLP biases with tied embeddings and linear RoPE scaling; Qwen2's q/k/v biases;
# Gemma's (1 + w) norms, scaled embeddings, GeGLU and a free head_dim; GPT-2's LayerNorm, learned
# positions and fused qkv.
HF_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16}),
    "llama_bias": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, attention_bias=True, mlp_bias=True,
        tie_word_embeddings=True, max_position_embeddings=64,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "gemma": lambda: transformers.GemmaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=12, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=2, eos_token_id=1),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1),
}
FAMILY = {"llama": "llama", "llama_bias": "llama", "qwen2": "qwen2", "gemma": "gemma",
          "gpt2": "gpt2"}


def random_hf_model(variant: str, seed: int = 0):
  """A transformers CausalLM whose every weight (norms and biases too) is random."""
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[variant]()).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.2)
  return model


def padded_batch(seed: int = 0, batch: int = 3, length: int = 9):
  """Random tokens with rows left-padded by 0, 3 and 5 pad slots; positions from the mask."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, VOCAB, (batch, length)).astype(np.int32)
  mask = np.ones_like(tokens)
  for row, pads in enumerate((0, 3, 5)[:batch]):
    mask[row, :pads] = 0
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  return tokens * mask, mask, positions


def torch_logits(model, tokens, mask, positions) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long),
                 position_ids=torch.tensor(positions, dtype=torch.long)).logits.float().numpy()


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, tokens_BxS, mask_BxS):
  return nnx.merge(graphdef, params)(tokens_BxS, mask_BxS=mask_BxS)


def jax_logits(graphdef, params, tokens, mask) -> np.ndarray:
  """Our model's logits, jitted (one compilation per model config, cheaper than eager)."""
  return np.asarray(_logits(graphdef, params, tokens, mask))


def random_params(cfg, *, lm_head: bool = True, seed: int = 0) -> dict:
  """Random host parameters (float32 N(0, 0.1^2), biases and norms too) for Transformer(cfg),
  built from the abstract shapes without running the initialisers."""
  rng = np.random.default_rng(seed)
  _, abstract = abstract_model(cfg, lm_head)
  return jax.tree.map(lambda x: (0.1 * rng.standard_normal(x.shape)).astype(np.float32),
                      nnx.to_pure_dict(abstract))
