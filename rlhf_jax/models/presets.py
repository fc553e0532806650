"""Model shapes by name, from `tiny` (trains in seconds on a CPU) to 1B-class for accelerators."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a Llama-style decoder.

  vocab_size is usually filled in from the tokenizer at build time.
  dtype is the compute dtype; parameters are kept in param_dtype (float32 master weights).
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

  def __post_init__(self):
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "d_ff"):
      if getattr(self, name) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")

  def num_params(self) -> int:
    d, f, v, h = self.d_model, self.d_ff, self.vocab_size, self.head_dim
    attn = d * h * (self.n_heads * 2 + self.n_kv_heads * 2)
    per_layer = attn + 3 * d * f + 2 * d
    head = 0 if self.tie_embeddings else d * v
    return v * d + self.n_layers * per_layer + d + head


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
  """Returns the preset's ModelConfig with `overrides` (e.g. vocab_size) applied."""
  if preset not in PRESETS:
    raise ValueError(f"unknown model preset {preset!r}; valid presets: {sorted(PRESETS)}")
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = set(overrides) - fields
  if unknown:
    raise ValueError(f"unknown model fields {sorted(unknown)}; valid fields: {sorted(fields)}")
  return ModelConfig(**{**PRESETS[preset], **overrides})
