"""Scores from a learned reward model or an ensemble of them.

An ensemble of E members keeps parameters stacked on a leading axis [E, ...] (E = 1 for a single
model), applied with `jax.vmap`. A member's reward for a [prompt | completion] row is its scalar
head at the last real token (Ouyang et al. 2022). Ensemble rewards combine as (Coste et al. 2024,
"Reward Model Ensembles Help Mitigate Overoptimization"):

  mean:              mean_e r_e
  worst_case:        min_e r_e
  mean_minus_var:    mean_e r_e − λ · var_e r_e      (uncertainty-weighted optimisation)

Normalisation (optional, from the export): r ← (r − μ) / σ with μ, σ the mean and std of the
reward of reference-policy samples, so those score mean 0, std 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlhf_jax.models import last_token_values

COMBINE_MODES = ("mean", "worst_case", "mean_minus_var")


def member_scores(graphdef, params, tokens_BxS, mask_BxS) -> jax.Array:
  """One scalar model's reward per row, float32 [B]."""
  model = nnx.merge(graphdef, params)
  values_BxS = model(tokens_BxS, mask_BxS=mask_BxS)
  return last_token_values(values_BxS, mask_BxS)


def ensemble_scores(graphdef, stacked_params, tokens_BxS, mask_BxS) -> jax.Array:
  """Every member's reward per row, [E, B]."""
  return jax.vmap(lambda p: member_scores(graphdef, p, tokens_BxS, mask_BxS))(stacked_params)


def combine(rewards_ExB: jax.Array, *, mode: str = "mean", lam: float = 0.0) -> jax.Array:
  if mode == "mean":
    return jnp.mean(rewards_ExB, axis=0)
  if mode == "worst_case":
    return jnp.min(rewards_ExB, axis=0)
  if mode == "mean_minus_var":
    return jnp.mean(rewards_ExB, axis=0) - lam * jnp.var(rewards_ExB, axis=0)
  raise ValueError(f"unknown ensemble combine mode {mode!r}; valid: {list(COMBINE_MODES)}")


def normalize(rewards: jax.Array, normalization: dict | None) -> jax.Array:
  if not normalization:
    return rewards
  return (rewards - normalization["mean"]) / normalization["std"]
