"""Analytic FLOPs of the decoder: the numerator of tokens/s-based MFU.

Counting convention (Kaplan et al. 2020, App. B; Chowdhery et al. 2022, App. B, "PaLM"): a
multiply-add is 2 FLOPs; only matmuls count (norms, softmax, RoPE and the optimizer are left
out). Per token of a forward pass over a row of S tokens:

  matmuls     2 * N_mm,  N_mm = the matmul weights (q, k, v, o, the MLP, the LM head if used;
              not the embedding lookup, which is a gather)
  attention   n_layers * 4 * n_heads * head_dim * C,  C = keys attended: S for a full row,
              (S + 1) / 2 on average for a causal row ("causal halved")

A training step (forward + backward) is 3x the forward: the backward computes the gradients of
both the activations and the weights (Kaplan et al.: C = 6N per token); with frozen weights
(LoRA) only the activations' gradients are computed, about 2x the forward (the adapters' own
rank-r matmuls are left out). Rematerialisation recomputes parts of the forward; that is
hardware work, not model work, and is not counted (MFU, not HFU; PaLM App. B). Decoding one
token against a cache of C keys is a forward of one token with that C.

Scoring passes (generation/scoring.py: log-probs of given completions, the DPO and RL steps)
run the backbone over the whole [prompt | completion] row but the LM head over the completion
positions only: `score_flops`.
"""

from __future__ import annotations

from rlhf_jax.models.presets import ModelConfig


def matmul_params(cfg: ModelConfig, *, lm_head: bool = True) -> int:
  """N_mm: the weights that enter a matmul per token (the LM head only if `lm_head`).

  A tied embedding used as the output projection counts as the LM head."""
  d, f, h, n, k = cfg.d_model, cfg.d_ff, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
  attn = d * h * (2 * n + 2 * k)
  mlp = (3 if cfg.mlp_gated else 2) * d * f
  return cfg.n_layers * (attn + mlp) + (d * cfg.vocab_size if lm_head else 0)


def attention_flops_per_token(cfg: ModelConfig, keys: float) -> float:
  """Scores (q k^T) and the weighted sum (p v) of one query over `keys` keys, all layers."""
  return cfg.n_layers * 4 * cfg.n_heads * cfg.head_dim * keys


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, *, lm_head: bool = True,
                            causal: bool = True) -> float:
  """FLOPs per token of a forward pass over rows of `seq_len` tokens."""
  keys = (seq_len + 1) / 2 if causal else seq_len
  return 2 * matmul_params(cfg, lm_head=lm_head) + attention_flops_per_token(cfg, keys)


def forward_flops(cfg: ModelConfig, batch: int, seq_len: int, *, lm_head: bool = True) -> float:
  """A causal forward pass over a [batch, seq_len] block (padding counts: it is computed)."""
  return batch * seq_len * forward_flops_per_token(cfg, seq_len, lm_head=lm_head)


def backward_factor(frozen: bool = False) -> int:
  """Forward + backward over forward: 3 (activation and weight gradients), or 2 when the
  weights are frozen (LoRA: activation gradients only)."""
  return 2 if frozen else 3


def train_flops(cfg: ModelConfig, batch: int, seq_len: int, *, lm_head: bool = True,
                frozen: bool = False) -> float:
  """Forward + backward over a [batch, seq_len] block: 3x the forward (2x if `frozen`)."""
  return backward_factor(frozen) * forward_flops(cfg, batch, seq_len, lm_head=lm_head)


def lm_head_flops(cfg: ModelConfig, tokens: float) -> float:
  """The LM head (d_model x vocab matmul) at `tokens` positions."""
  return 2 * cfg.d_model * cfg.vocab_size * tokens


def score_flops(cfg: ModelConfig, batch: int, prompt_len: int, completion_len: int, *,
                lm_head: bool = True) -> float:
  """A causal forward over [batch, prompt_len + completion_len] rows with the LM head at the
  completion positions only (generation/scoring.py), or nowhere (`lm_head=False`: a scalar
  model, whose d_model x 1 head is left out)."""
  backbone = forward_flops(cfg, batch, prompt_len + completion_len, lm_head=False)
  return backbone + (lm_head_flops(cfg, batch * completion_len) if lm_head else 0.0)


def decode_flops(cfg: ModelConfig, batch: int, prompt_len: int, new_tokens: int, *,
                 prefill_lm_head: bool = True) -> float:
  """Generation: a causal prefill of the prompts, then `new_tokens` one-token forwards, the
  t-th (0-based) attending to prompt_len + t + 1 cache slots. prefill_lm_head=False: the
  prefill computes no logits (generation/decode.py prefills the backbone's cache only)."""
  prefill = forward_flops(cfg, batch, prompt_len, lm_head=prefill_lm_head)
  n_mm = matmul_params(cfg)
  keys = new_tokens * prompt_len + new_tokens * (new_tokens + 1) / 2
  decode = batch * (new_tokens * 2 * n_mm + attention_flops_per_token(cfg, keys))
  return prefill + decode
