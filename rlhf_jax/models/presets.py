"""Model shapes by name, from `tiny` (trains in seconds on a CPU) to 1B-class for accelerators,
and model families (Llama, Qwen2, Gemma, GPT-2) as sets of architecture options.

A family is a label plus the options that make the decoder compute what that family computes:

  llama  RMSNorm, RoPE, SwiGLU, grouped-query attention (Touvron et al. 2023)      — the defaults
  qwen2  llama + biases on the q/k/v projections (Qwen team 2024)
  gemma  llama + embeddings scaled by sqrt(d_model), RMSNorm weight used as (1 + w), GeGLU with
         tanh-approximate GELU, tied embeddings, head_dim free of d_model / n_heads (Gemma team 2024)
  gpt2   LayerNorm with bias, learned absolute positions, no RoPE, a plain (ungated) GELU MLP with
         biases, biased attention projections, tied embeddings (Radford et al. 2019)

`get_model_config(preset, family=...)` applies a family's options to a preset's shapes. The
family label is what the Hugging Face import/export (`models/hf/`) reads and writes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rlhf_jax.models.remat import check_remat

NORMS = ("rms", "layer")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
POSITION_EMBEDDINGS = ("rope", "learned")
ROPE_TYPES = ("default", "linear", "llama3")

# The options each family sets on top of the (Llama) defaults.
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "qwen2": dict(qkv_bias=True),
    "gemma": dict(scale_embeddings=True, norm_scale_offset=1.0, mlp_activation="gelu_tanh",
                  tie_embeddings=True),
    "gpt2": dict(norm="layer", norm_eps=1e-5, position_embedding="learned", mlp_gated=False,
                 mlp_activation="gelu_tanh", mlp_bias=True, qkv_bias=True, attn_out_bias=True,
                 tie_embeddings=True),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape, architecture options and numerics of the decoder.

  vocab_size is usually filled in from the tokenizer at build time.
  dtype is the compute dtype; parameters are kept in param_dtype (float32 master weights).
  Mixed precision (dtype="bfloat16"): every matmul takes bfloat16 inputs (weights cast at use),
  norms, RoPE and the attention softmax compute in float32, and the vocabulary logits are
  accumulated and returned in float32, so log-probs and losses are float32.
  remat: rematerialisation policy of each block in training (models/remat.py: none | full |
  dots_saveable | dots_with_no_batch_dims_saveable); it changes memory and time, not values.
  attention: the fused attention's implementation (models/attention.py: auto | xla | cudnn);
  it changes speed and memory, not values (up to rounding).
  lm_head_chunk: > 0 computes the log-probs of given tokens (the SFT loss, completion scoring)
  C vocabulary columns at a time, never the whole [B, T, V] logits (models/lm_head.py); 0 = off.
  scan_layers: run the blocks of passes without a KV cache as one jax.lax.scan (models/scan.py):
  the block compiles once instead of once per layer; same values up to rounding.

  Architecture options (defaults = Llama):
    family: label of the model family (see FAMILIES); Hugging Face export writes this family.
    norm: "rms" (RMSNorm) or "layer" (LayerNorm with bias).
    norm_scale_offset: the norm multiplies by (offset + scale); Gemma stores w with offset 1.
    mlp_activation: "silu", "gelu" (exact) or "gelu_tanh" (tanh approximation).
    mlp_gated: act(x W_gate) * (x W_up) (SwiGLU / GeGLU) if True, act(x W_up) otherwise.
    mlp_bias / qkv_bias / attn_out_bias: biases on the MLP, the q/k/v and the output projection.
    position_embedding: "rope" or "learned" (a [max_positions, D] table added to the embeddings).
    max_positions: the context length; the size of the learned position table.
    scale_embeddings: multiply token embeddings by sqrt(d_model) (Gemma).
    rope_scaling: RoPE frequency scaling as sorted (key, value) pairs: () for none,
      (("factor", f), ("rope_type", "linear")) or the llama3 keys (factor, low_freq_factor,
      high_freq_factor, original_max_position_embeddings, rope_type="llama3").
  """
  vocab_size: int = 512
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 16
  d_ff: int = 128
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  attention: str = "auto"
  lm_head_chunk: int = 0
  scan_layers: bool = False
  family: str = "llama"
  norm: str = "rms"
  norm_scale_offset: float = 0.0
  mlp_activation: str = "silu"
  mlp_gated: bool = True
  mlp_bias: bool = False
  qkv_bias: bool = False
  attn_out_bias: bool = False
  position_embedding: str = "rope"
  max_positions: int = 2048
  scale_embeddings: bool = False
  rope_scaling: tuple = ()

  def __post_init__(self):
    # JSON (export.json) gives rope_scaling back as lists; keep the config hashable and equal.
    object.__setattr__(self, "rope_scaling", tuple(tuple(p) for p in self.rope_scaling))
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "d_ff",
                 "max_positions"):
      if getattr(self, name) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
    for name, valid in (("family", tuple(FAMILIES)), ("norm", NORMS),
                        ("mlp_activation", ACTIVATIONS),
                        ("position_embedding", POSITION_EMBEDDINGS)):
      if getattr(self, name) not in valid:
        raise ValueError(f"unknown ModelConfig.{name} {getattr(self, name)!r}; valid: {list(valid)}")
    check_remat(self.remat)
    if self.lm_head_chunk < 0:
      raise ValueError(f"ModelConfig.lm_head_chunk must be >= 0 (0 = off), "
                       f"got {self.lm_head_chunk}")
    # imported here: attention.py imports layers.py, which imports this module
    from rlhf_jax.models import attention  # pylint: disable=g-import-not-at-top
    attention.check_implementation(self.attention)
    if self.rope_scaling:
      scaling = dict(self.rope_scaling)
      if scaling.get("rope_type") not in ROPE_TYPES:
        raise ValueError(f"ModelConfig.rope_scaling has rope_type {scaling.get('rope_type')!r}; "
                         f"valid: {list(ROPE_TYPES)}")

  def num_params(self) -> int:
    """The exact number of parameter scalars of `Transformer(self, lm_head=True)`."""
    d, f, v, h = self.d_model, self.d_ff, self.vocab_size, self.head_dim
    n, k = self.n_heads, self.n_kv_heads
    attn = d * h * (n * 2 + k * 2)
    attn += h * (n + 2 * k) if self.qkv_bias else 0
    attn += d if self.attn_out_bias else 0
    mlp = (3 if self.mlp_gated else 2) * d * f
    if self.mlp_bias:
      mlp += (2 if self.mlp_gated else 1) * f + d
    norm = 2 * d if self.norm == "layer" else d
    per_layer = attn + mlp + 2 * norm
    positions = self.max_positions * d if self.position_embedding == "learned" else 0
    head = 0 if self.tie_embeddings else d * v
    return v * d + positions + self.n_layers * per_layer + norm + head


PRESETS: dict[str, dict] = {
    # ~60k parameters + embeddings: SFT on the toy tasks in well under a minute on 2 CPU cores.
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=192),
    "small": dict(d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, head_dim=32, d_ff=768),
    "medium": dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, head_dim=64, d_ff=2048),
    # Llama-3.2-1B shapes.
    "1b": dict(vocab_size=128_256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
               head_dim=64, d_ff=8192, rope_theta=500_000.0, norm_eps=1e-5,
               tie_embeddings=True, dtype="bfloat16"),
}


def get_model_config(preset: str, **overrides) -> ModelConfig:
  """Returns the preset's ModelConfig with `overrides` (e.g. vocab_size) applied.

  `family=<name>` also applies that family's options (FAMILIES) before the other overrides.
  """
  if preset not in PRESETS:
    raise ValueError(f"unknown model preset {preset!r}; valid presets: {sorted(PRESETS)}")
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = set(overrides) - fields
  if unknown:
    raise ValueError(f"unknown model fields {sorted(unknown)}; valid fields: {sorted(fields)}")
  family = overrides.get("family", "llama")
  if family not in FAMILIES:
    raise ValueError(f"unknown model family {family!r}; valid families: {sorted(FAMILIES)}")
  return ModelConfig(**{**PRESETS[preset], **FAMILIES[family], **overrides})
