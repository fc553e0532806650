"""Which Hugging Face tensor holds which of our parameters, and how the layouts convert.

One `TensorRule` per Hugging Face tensor: its name and shape, the paths of the parameters it
holds in our pure-dict params, and the two conversions. Most rules hold one parameter; GPT-2's
fused `c_attn` holds three (q, k, v side by side on its output axis), split on import and
concatenated on export.

Layouts. torch `nn.Linear` stores W as [out, in] and computes x W^T; GPT-2's `Conv1D` stores
[in, out]. Ours are einsum-ready with split heads: wq [D, N, H], wk/wv [D, K, H], wo [N, H, D],
w_gate/w_up [D, F], w_down [F, D], embed [V, D], lm_head [D, V]. RoPE needs no permutation: the
Hugging Face Llama layout already uses the half-split rotation that `layers.apply_rope` computes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from rlhf_jax.models.presets import ModelConfig

Path = tuple  # keys into the params pure dict, e.g. ("layers", 0, "attn", "wq")

# The prefix of the backbone's tensors inside the CausalLM checkpoint (lm_head has none).
PREFIXES = {"llama": "model.", "qwen2": "model.", "gemma": "model.", "gpt2": "transformer."}


@dataclasses.dataclass(frozen=True)
class TensorRule:
  hf_name: str
  hf_shape: tuple[int, ...]
  paths: tuple[Path, ...]
  to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]  # hf tensor -> one array per path
  to_hf: Callable[..., np.ndarray]  # one array per path -> hf tensor


def _same(name, shape, path) -> TensorRule:
  return TensorRule(name, tuple(shape), (path,), lambda t: (t,), lambda w: w)


def _transposed(name, hf_shape, path) -> TensorRule:
  """[out, in] (nn.Linear) <-> [in, out]."""
  return TensorRule(name, tuple(hf_shape), (path,), lambda t: (t.T,), lambda w: w.T)


def _linear_heads_in(name, d, heads, h, path) -> TensorRule:
  """q/k/v_proj.weight [heads*H, D] <-> [D, heads, H]."""
  return TensorRule(name, (heads * h, d), (path,), lambda t: (t.T.reshape(d, heads, h),),
                    lambda w: w.reshape(d, heads * h).T)


def _linear_heads_out(name, d, n, h, path) -> TensorRule:
  """o_proj.weight [D, N*H] <-> [N, H, D]."""
  return TensorRule(name, (d, n * h), (path,), lambda t: (t.T.reshape(n, h, d),),
                    lambda w: w.reshape(n * h, d).T)


def _bias_heads(name, heads, h, path) -> TensorRule:
  """[heads*H] <-> [heads, H]."""
  return TensorRule(name, (heads * h,), (path,), lambda t: (t.reshape(heads, h),),
                    lambda b: b.reshape(heads * h))


def _fused(name, parts: tuple[tuple[Path, tuple[int, ...]], ...], axis: int) -> TensorRule:
  """One HF tensor = our parameters flattened to [.., width_i] (or [width_i]) and concatenated
  along the last axis (`axis` = its index)."""
  widths = [int(np.prod(shape[axis:])) for _, shape in parts]
  lead = parts[0][1][:axis]
  hf_shape = (*lead, sum(widths))

  def to_ours(t):
    pieces = np.split(t, np.cumsum(widths)[:-1], axis=axis)
    return tuple(p.reshape(shape) for p, (_, shape) in zip(pieces, parts))

  def to_hf(*ws):
    return np.concatenate([w.reshape(*lead, -1) for w in ws], axis=axis)

  return TensorRule(name, hf_shape, tuple(p for p, _ in parts), to_ours, to_hf)


def _llama_rules(cfg: ModelConfig, lm_head: bool) -> list[TensorRule]:
  """Llama, Qwen2 and Gemma share tensor names; biases and tying vary by config."""
  d, n, k, h, f, v = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff,
                      cfg.vocab_size)
  rules = [_same("model.embed_tokens.weight", (v, d), ("embed",))]
  for i in range(cfg.n_layers):
    pre, at, ml = f"model.layers.{i}.", ("layers", i, "attn"), ("layers", i, "mlp")
    rules += [
        _same(pre + "input_layernorm.weight", (d,), ("layers", i, "attn_norm", "scale")),
        _linear_heads_in(pre + "self_attn.q_proj.weight", d, n, h, (*at, "wq")),
        _linear_heads_in(pre + "self_attn.k_proj.weight", d, k, h, (*at, "wk")),
        _linear_heads_in(pre + "self_attn.v_proj.weight", d, k, h, (*at, "wv")),
        _linear_heads_out(pre + "self_attn.o_proj.weight", d, n, h, (*at, "wo")),
        _same(pre + "post_attention_layernorm.weight", (d,), ("layers", i, "mlp_norm", "scale")),
        _transposed(pre + "mlp.gate_proj.weight", (f, d), (*ml, "w_gate")),
        _transposed(pre + "mlp.up_proj.weight", (f, d), (*ml, "w_up")),
        _transposed(pre + "mlp.down_proj.weight", (d, f), (*ml, "w_down")),
    ]
    if cfg.qkv_bias:
      rules += [_bias_heads(pre + "self_attn.q_proj.bias", n, h, (*at, "bq")),
                _bias_heads(pre + "self_attn.k_proj.bias", k, h, (*at, "bk")),
                _bias_heads(pre + "self_attn.v_proj.bias", k, h, (*at, "bv"))]
    if cfg.attn_out_bias:
      rules.append(_same(pre + "self_attn.o_proj.bias", (d,), (*at, "bo")))
    if cfg.mlp_bias:
      rules += [_same(pre + "mlp.gate_proj.bias", (f,), (*ml, "b_gate")),
                _same(pre + "mlp.up_proj.bias", (f,), (*ml, "b_up")),
                _same(pre + "mlp.down_proj.bias", (d,), (*ml, "b_down"))]
  rules.append(_same("model.norm.weight", (d,), ("final_norm", "scale")))
  if lm_head and not cfg.tie_embeddings:
    rules.append(_transposed("lm_head.weight", (v, d), ("lm_head",)))
  return rules


def _gpt2_rules(cfg: ModelConfig, lm_head: bool) -> list[TensorRule]:
  d, n, h, f, v = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
  rules = [_same("transformer.wte.weight", (v, d), ("embed",)),
           _same("transformer.wpe.weight", (cfg.max_positions, d), ("pos_embed",))]
  for i in range(cfg.n_layers):
    pre, at, ml = f"transformer.h.{i}.", ("layers", i, "attn"), ("layers", i, "mlp")
    rules += [
        _same(pre + "ln_1.weight", (d,), ("layers", i, "attn_norm", "scale")),
        _same(pre + "ln_1.bias", (d,), ("layers", i, "attn_norm", "bias")),
        _fused(pre + "attn.c_attn.weight",
               tuple(((*at, w), (d, n, h)) for w in ("wq", "wk", "wv")), axis=1),
        _fused(pre + "attn.c_attn.bias",
               tuple(((*at, b), (n, h)) for b in ("bq", "bk", "bv")), axis=0),
        TensorRule(pre + "attn.c_proj.weight", (n * h, d), ((*at, "wo"),),
                   lambda t: (t.reshape(n, h, d),), lambda w: w.reshape(n * h, d)),
        _same(pre + "attn.c_proj.bias", (d,), (*at, "bo")),
        _same(pre + "ln_2.weight", (d,), ("layers", i, "mlp_norm", "scale")),
        _same(pre + "ln_2.bias", (d,), ("layers", i, "mlp_norm", "bias")),
        _same(pre + "mlp.c_fc.weight", (d, f), (*ml, "w_up")),
        _same(pre + "mlp.c_fc.bias", (f,), (*ml, "b_up")),
        _same(pre + "mlp.c_proj.weight", (f, d), (*ml, "w_down")),
        _same(pre + "mlp.c_proj.bias", (d,), (*ml, "b_down")),
    ]
  rules += [_same("transformer.ln_f.weight", (d,), ("final_norm", "scale")),
            _same("transformer.ln_f.bias", (d,), ("final_norm", "bias"))]
  if lm_head and not cfg.tie_embeddings:
    rules.append(_transposed("lm_head.weight", (v, d), ("lm_head",)))
  return rules


def tensor_rules(cfg: ModelConfig, *, lm_head: bool = True) -> list[TensorRule]:
  """The rules covering every parameter of `Transformer(cfg, lm_head=lm_head)`."""
  if cfg.family == "gpt2":
    if cfg.n_kv_heads != cfg.n_heads or cfg.n_heads * cfg.head_dim != cfg.d_model:
      raise ValueError(f"gpt2 checkpoints need n_kv_heads == n_heads and n_heads * head_dim == "
                       f"d_model; got n_heads={cfg.n_heads}, n_kv_heads={cfg.n_kv_heads}, "
                       f"head_dim={cfg.head_dim}, d_model={cfg.d_model}")
    return _gpt2_rules(cfg, lm_head)
  return _llama_rules(cfg, lm_head)


def resolve_name(name: str, family: str, available) -> str | None:
  """`name` as stored in a checkpoint: as is, or with the backbone prefix dropped or added
  (the original GPT-2 files store `h.0...`, transformers' `transformer.h.0...`)."""
  if name in available:
    return name
  prefix = PREFIXES[family]
  alt = name[len(prefix):] if name.startswith(prefix) else prefix + name
  return alt if alt in available else None
