"""Logit processing and token sampling: temperature, top-k, top-p (nucleus), greedy.

One `SamplingConfig` describes the sampling distribution. `process_logits` turns model logits z
into the logits of that distribution, and the same function serves the decode loop (decode.py)
and the re-scoring of finished completions (scoring.py), so the log-probs returned by generation
can be recomputed exactly by a full forward pass. Steps, in order (as in common LM samplers):

  1. min_new_tokens: z_v <- -inf for every stop token v while the completion index
                     t < min_new_tokens.
  2. temperature:    z <- z / tau                                  (skipped when greedy)
  3. top-k:          z_v <- -inf unless z_v >= z_(k), the k-th largest logit
  4. top-p:          over the top-k-filtered distribution p = softmax(z) sorted descending,
                     keep the smallest prefix whose mass reaches p_top: token i (in sorted order) is
                     kept iff sum_{j < i} p_j < p_top; z_v <- -inf for the rest.

Ties at a cut-off value are kept (so top-k may keep more than k tokens when logits tie exactly).
The sampling distribution is pi(v) = softmax(z')_v for the processed logits z', and its log-probs
log pi(v) = z'_v - logsumexp(z') are float32. Greedy decoding takes argmax z' and reports the
log-probs of the untempered, untruncated distribution softmax(z) (after step 1), since the greedy
distribution itself is a point mass with log-prob 0.

Special ids match data/tokenizer.py: pad = 0, eos = 2.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

PAD_ID, EOS_ID = 0, 2
_NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to sample a completion. Hashable: jitted functions take it as a static argument.

  Attributes:
    max_new_tokens: T, the completion length (static; completions are right-padded to T).
    temperature: tau > 0; logits are divided by it (ignored when greedy).
    top_k: keep the k most likely tokens; 0 disables.
    top_p: nucleus mass in (0, 1]; 1.0 disables.
    greedy: argmax decoding (deterministic; rng unused).
    min_new_tokens: stop tokens are suppressed for completion indices t < min_new_tokens.
    eos_id: the end-of-sequence token; generation of a row stops after it (it is kept, mask 1).
    stop_token_ids: extra tokens that also end a row (kept, mask 1).
    pad_id: the token written after a row has stopped (mask 0).
  """
  max_new_tokens: int
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  greedy: bool = False
  min_new_tokens: int = 0
  eos_id: int = EOS_ID
  stop_token_ids: tuple[int, ...] = ()
  pad_id: int = PAD_ID

  def __post_init__(self):
    if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
      raise ValueError("SamplingConfig.max_new_tokens must be a positive int, got "
                       f"{self.max_new_tokens!r}")
    if not self.temperature > 0:
      raise ValueError(f"SamplingConfig.temperature must be > 0, got {self.temperature!r} "
                       "(use greedy=True for argmax decoding)")
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise ValueError(f"SamplingConfig.top_k must be an int >= 0 (0 disables), got {self.top_k!r}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingConfig.top_p must be in (0, 1] (1 disables), got {self.top_p!r}")
    if not 0 <= self.min_new_tokens <= self.max_new_tokens:
      raise ValueError(f"SamplingConfig.min_new_tokens={self.min_new_tokens} must be in "
                       f"[0, max_new_tokens={self.max_new_tokens}]")
    if not isinstance(self.stop_token_ids, tuple):
      # A list would make the config unhashable (and so unusable as a static jit argument).
      object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
    if self.pad_id in self.stop_ids:
      raise ValueError(f"SamplingConfig.pad_id={self.pad_id} must not be a stop token "
                       f"{self.stop_ids}")

  @property
  def stop_ids(self) -> tuple[int, ...]:
    """Every token that ends a row: eos_id first, then stop_token_ids (duplicates removed)."""
    return tuple(dict.fromkeys((self.eos_id, *self.stop_token_ids)))


def is_stop_token(tokens: jax.Array, config: SamplingConfig) -> jax.Array:
  """Boolean array, True where `tokens` is eos_id or one of stop_token_ids."""
  stop = jnp.asarray(config.stop_ids, tokens.dtype)
  return jnp.any(tokens[..., None] == stop, axis=-1)


def _truncate(z_NxV: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Top-k then top-p filtering of float32 logits along the last axis (see module docstring).

  A full sort rather than `lax.top_k`: XLA's SPMD partitioner splits a sort over the batch but
  gathers the whole batch onto every device for top_k; the sort costs O(V log V) per row, far
  below the O(D V) of the logits that precede it.
  """
  vocab = z_NxV.shape[-1]
  k = top_k if 0 < top_k < vocab else vocab
  if k == vocab and top_p >= 1.0:
    return z_NxV
  sorted_NxK = -jnp.sort(-z_NxV, axis=-1)[..., :k]  # descending
  if top_p < 1.0:
    probs_NxK = jax.nn.softmax(sorted_NxK, axis=-1)
    mass_before_NxK = jnp.cumsum(probs_NxK, axis=-1) - probs_NxK
    # The first (most likely) token is always kept: its mass_before is 0 < top_p.
    num_kept_N = jnp.sum(mass_before_NxK < top_p, axis=-1)
    cutoff_N = jnp.take_along_axis(sorted_NxK, num_kept_N[..., None] - 1, axis=-1)[..., 0]
  else:
    cutoff_N = sorted_NxK[..., -1]
  return jnp.where(z_NxV >= cutoff_N[..., None], z_NxV, _NEG_INF)


def process_logits(logits_NxV: jax.Array, config: SamplingConfig,
                   step_N: Optional[jax.Array] = None) -> jax.Array:
  """Float32 logits of the sampling distribution (excluded tokens are -inf).

  Args:
    logits_NxV: model logits with any leading shape N (e.g. [B, V] or [B, T, V]).
    config: the sampling configuration.
    step_N: completion index t of each distribution (broadcastable to N); needed only when
      config.min_new_tokens > 0.

  Returns:
    float32 logits z' of the same shape; softmax(z') is the sampling distribution (for greedy:
    the untempered, untruncated distribution, see the module docstring).
  """
  z = logits_NxV.astype(jnp.float32)
  if config.min_new_tokens > 0:
    if step_N is None:
      raise ValueError("process_logits: step_N is required when min_new_tokens > 0")
    vocab_ids_V = jnp.arange(z.shape[-1], dtype=jnp.int32)
    early_N = jnp.asarray(step_N) < config.min_new_tokens
    z = jnp.where(early_N[..., None] & is_stop_token(vocab_ids_V, config), _NEG_INF, z)
  if config.greedy:
    return z
  if config.temperature != 1.0:
    z = z / jnp.float32(config.temperature)
  return _truncate(z, config.top_k, config.top_p)


def _argmax(z_BxV: jax.Array) -> jax.Array:
  """First index of the row maximum (= jnp.argmax for finite z), as two vectorizable reductions
  (XLA's CPU argmax is a slower scalar (value, index) reduction)."""
  ids_V = jnp.arange(z_BxV.shape[-1], dtype=jnp.int32)
  is_max_BxV = z_BxV == jnp.max(z_BxV, axis=-1, keepdims=True)
  return jnp.min(jnp.where(is_max_BxV, ids_V, z_BxV.shape[-1]), axis=-1)


def sample_tokens(logits_BxV: jax.Array, rng: jax.Array, config: SamplingConfig,
                  step: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """Draws one token per row; returns (tokens_B int32, logp_B float32).

  logp_B[b] = log pi(tokens_B[b]) under the processed distribution (see `process_logits`). Rows
  draw independent noise from one `rng` (Gumbel-max over the vocabulary).
  """
  z_BxV = process_logits(logits_BxV, config, step)
  if config.greedy:
    tokens_B = _argmax(z_BxV)
  else:
    tokens_B = jax.random.categorical(rng, z_BxV, axis=-1).astype(jnp.int32)
  picked_B = jnp.take_along_axis(z_BxV, tokens_B[:, None], axis=-1)[:, 0]
  return tokens_B, picked_B - jax.nn.logsumexp(z_BxV, axis=-1)
