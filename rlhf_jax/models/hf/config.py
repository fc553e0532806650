"""Hugging Face `config.json` <-> ModelConfig, for the Llama, Qwen2, Gemma and GPT-2 families.

`model_type` (or, failing that, `architectures`) picks the family. Fields missing from a
config.json take the defaults of the matching `transformers` config class (older versions of
`save_pretrained` left out fields equal to their defaults). Anything our decoder does not compute
(sliding windows, partial rotary, unknown activations or RoPE scalings) fails loudly rather than
loading into a silently different model.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from rlhf_jax.models.presets import ModelConfig

# family -> (model_type, the CausalLM class name transformers builds).
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
SUPPORTED_MODEL_TYPES = tuple(sorted(ARCHITECTURES))

# The transformers config classes' defaults for the fields read here.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                  num_hidden_layers=32, num_attention_heads=32, hidden_act="silu",
                  max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  rope_theta=10000.0, attention_bias=False, mlp_bias=False),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016,
                  num_hidden_layers=32, num_attention_heads=32, hidden_act="silu",
                  max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                  rope_theta=10000.0, use_sliding_window=False),
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576,
                  num_hidden_layers=28, num_attention_heads=16, head_dim=256,
                  hidden_act="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6,
                  tie_word_embeddings=True, rope_theta=10000.0, attention_bias=False),
    "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                 n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                 tie_word_embeddings=True, scale_attn_weights=True,
                 scale_attn_by_inverse_layer_idx=False),
}

# HF activation name -> ours.
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh"}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def family_of(hf: Mapping[str, Any]) -> str:
  """The family named by `model_type`, or by `architectures` when model_type is absent."""
  model_type = hf.get("model_type")
  if model_type is None:
    by_class = {cls: fam for fam, cls in ARCHITECTURES.items()}
    archs = [by_class[a] for a in hf.get("architectures") or () if a in by_class]
    model_type = archs[0] if archs else None
  if model_type not in ARCHITECTURES:
    raise ValueError(
        f"unsupported Hugging Face model_type {hf.get('model_type')!r} (architectures "
        f"{hf.get('architectures')}); supported model_types: {list(SUPPORTED_MODEL_TYPES)}")
  return model_type


def _activation(name: str, family: str) -> str:
  if family == "gemma" and name == "gelu":
    name = "gelu_pytorch_tanh"  # legacy Gemma configs say "gelu" but mean the tanh approximation
  if name not in _ACTIVATIONS:
    raise ValueError(f"{family} config.json: unsupported activation {name!r}; "
                     f"supported: {sorted(_ACTIVATIONS)}")
  return _ACTIVATIONS[name]


def _rope(hf: Mapping[str, Any], get) -> tuple[float, tuple]:
  """(rope_theta, rope_scaling pairs) from `rope_parameters` (transformers 5) or the older
  top-level `rope_theta` + `rope_scaling`."""
  params = dict(hf.get("rope_parameters") or {})
  if params and all(isinstance(v, Mapping) for v in params.values()):
    raise ValueError(f"config.json: per-layer-type rope_parameters {sorted(params)} "
                     "are not supported")
  scaling = dict(hf.get("rope_scaling") or {}) or params
  theta = float(params.get("rope_theta", get("rope_theta")))
  if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor") or 1.0)) != 1.0:
    raise ValueError("config.json: partial_rotary_factor != 1 is not supported")
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  if kind == "default":
    return theta, ()
  if kind == "linear":
    return theta, (("factor", float(scaling["factor"])), ("rope_type", "linear"))
  if kind == "llama3":
    scaling.setdefault("original_max_position_embeddings", get("max_position_embeddings"))
    pairs = [(k, float(scaling[k]) if k != "original_max_position_embeddings" else int(scaling[k]))
             for k in _LLAMA3_KEYS]
    return theta, tuple(sorted(pairs + [("rope_type", "llama3")]))
  raise ValueError(f"config.json: unsupported rope_type {kind!r}; "
                   "supported: ['default', 'linear', 'llama3']")


def config_from_hf(hf: Mapping[str, Any], *, dtype: str = "float32",
                   param_dtype: str = "float32") -> ModelConfig:
  """The ModelConfig of a Hugging Face config.json (as a dict)."""
  family = family_of(hf)
  defaults = _DEFAULTS[family]

  def get(key):
    value = hf.get(key)
    return defaults.get(key) if value is None else value

  common = dict(family=family, dtype=dtype, param_dtype=param_dtype,
                vocab_size=int(get("vocab_size")),
                tie_embeddings=bool(get("tie_word_embeddings")))
  if family == "gpt2":
    d, n = int(get("n_embd")), int(get("n_head"))
    if not get("scale_attn_weights") or get("scale_attn_by_inverse_layer_idx"):
      raise ValueError("gpt2 config.json: only scale_attn_weights=true with "
                       "scale_attn_by_inverse_layer_idx=false is supported")
    if d % n:
      raise ValueError(f"gpt2 config.json: n_embd={d} is not a multiple of n_head={n}")
    return ModelConfig(**common, norm="layer", position_embedding="learned", mlp_gated=False,
                       mlp_bias=True, qkv_bias=True, attn_out_bias=True,
                       d_model=d, n_layers=int(get("n_layer")), n_heads=n, n_kv_heads=n,
                       head_dim=d // n, d_ff=int(get("n_inner") or 4 * d),
                       max_positions=int(get("n_positions")),
                       norm_eps=float(get("layer_norm_epsilon")),
                       mlp_activation=_activation(get("activation_function"), family))

  if family == "qwen2" and get("use_sliding_window"):
    raise ValueError("qwen2 config.json: use_sliding_window=true is not supported")
  d, n = int(get("hidden_size")), int(get("num_attention_heads"))
  theta, scaling = _rope(hf, get)
  activation_name = hf.get("hidden_activation") or get("hidden_act")
  options = dict(qkv_bias=True) if family == "qwen2" else dict(
      qkv_bias=bool(get("attention_bias")), attn_out_bias=bool(get("attention_bias")),
      mlp_bias=bool(get("mlp_bias") or False))
  if family == "gemma":
    options.update(scale_embeddings=True, norm_scale_offset=1.0)
  return ModelConfig(**common, **options, d_model=d, n_layers=int(get("num_hidden_layers")),
                     n_heads=n, n_kv_heads=int(hf.get("num_key_value_heads") or n),
                     head_dim=int(hf.get("head_dim") or defaults.get("head_dim") or d // n),
                     d_ff=int(get("intermediate_size")),
                     max_positions=int(get("max_position_embeddings")),
                     norm_eps=float(get("rms_norm_eps")), rope_theta=theta, rope_scaling=scaling,
                     mlp_activation=_activation(activation_name, family))


def config_to_hf(cfg: ModelConfig, *, dtype: str | None = None) -> dict[str, Any]:
  """The config.json dict transformers loads for `cfg` (dtype defaults to cfg.param_dtype).

  Raises if `cfg` uses an option the Hugging Face class of its family cannot express.
  """
  family = cfg.family
  hf: dict[str, Any] = {"architectures": [ARCHITECTURES[family]], "model_type": family,
                        "dtype": dtype or cfg.param_dtype, "vocab_size": cfg.vocab_size,
                        "tie_word_embeddings": cfg.tie_embeddings}
  if family == "gpt2":
    hf.update(n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
              n_positions=cfg.max_positions, layer_norm_epsilon=cfg.norm_eps,
              activation_function={"gelu_tanh": "gelu_new"}.get(cfg.mlp_activation,
                                                                cfg.mlp_activation),
              scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
              reorder_and_upcast_attn=False)
  else:
    hf.update(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
              num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
              head_dim=cfg.head_dim, intermediate_size=cfg.d_ff,
              max_position_embeddings=cfg.max_positions, rms_norm_eps=cfg.norm_eps,
              hidden_act={"gelu_tanh": "gelu_pytorch_tanh"}.get(cfg.mlp_activation,
                                                                cfg.mlp_activation),
              rope_parameters={"rope_theta": cfg.rope_theta, "rope_type": "default",
                               **dict(cfg.rope_scaling)},
              # The transformers 4 spelling of the same, for older readers.
              rope_theta=cfg.rope_theta, rope_scaling=dict(cfg.rope_scaling) or None)
    if family == "qwen2":
      hf.update(use_sliding_window=False)
    else:
      hf.update(attention_bias=cfg.qkv_bias)
    if family == "llama":
      hf.update(mlp_bias=cfg.mlp_bias)
  # Whatever the family cannot express shows up as a difference after the round trip.
  back = dataclasses.replace(config_from_hf(hf, dtype=cfg.dtype, param_dtype=cfg.param_dtype),
                             remat=cfg.remat)  # numerics options, not in config.json
  diff = {f.name: (getattr(cfg, f.name), getattr(back, f.name))
          for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(back, f.name)}
  if diff:
    raise ValueError(f"ModelConfig cannot be written as a Hugging Face {family} config; "
                     f"fields (ours, expressible): {diff}")
  return hf
