"""Scalar heads on a decoder backbone: reward models and value functions (critics).

A scalar model maps hidden states h_BxSxD to per-position scalars v_BxS = h·w + b. A reward model
reads v at the last real token of each row (Ouyang et al. 2022); a critic reads every position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlhf_jax.models.presets import ModelConfig
from rlhf_jax.models.transformer import Transformer


class ScalarHead(nnx.Module):
  """Linear map from d_model to one scalar per position, float32 output."""

  def __init__(self, d_model: int, *, rngs: nnx.Rngs):
    self.w = nnx.Param(jax.random.normal(rngs.params(), (d_model,)) * d_model ** -0.5,
                       axes=("embed",))
    self.b = nnx.Param(jnp.zeros(()), axes=())

  def __call__(self, hidden_BxSxD):
    h = hidden_BxSxD.astype(jnp.float32)
    return jnp.einsum("bsd,d->bs", h, self.w[...]) + self.b[...]


class ScalarModel(nnx.Module):
  """Backbone (no LM head) + scalar head: per-position scalars [B, S]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.backbone = Transformer(cfg, rngs=rngs, lm_head=False)
    self.head = ScalarHead(cfg.d_model, rngs=rngs)

  def __call__(self, tokens_BxS, *, mask_BxS, positions_BxS=None):
    h, _ = self.backbone.hidden(tokens_BxS, mask_BxS=mask_BxS, positions_BxS=positions_BxS)
    return self.head(h)


def last_token_values(values_BxS: jax.Array, mask_BxS: jax.Array) -> jax.Array:
  """The scalar at the last real token of each row (right-padded completions), shape [B]."""
  last_B = mask_BxS.shape[1] - 1 - jnp.argmax(mask_BxS[:, ::-1].astype(jnp.int32), axis=1)
  return jnp.take_along_axis(values_BxS, last_B[:, None], axis=1)[:, 0]
