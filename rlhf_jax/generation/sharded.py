"""Jitted, mesh-sharded entry points for generation and scoring, laid out like training.

Batch arrays are split over the data-parallel axes ('data', 'fsdp'); params keep the shardings the
train state gives them (`train/state.py`); outputs come back batch-sharded. Each returned function
compiles once per input shape (batch B, prompt length P, completion length T): the sampling
config and the graphdef are baked in, prompts and rngs are traced.

  gen = make_generate_fn(graphdef, SamplingConfig(max_new_tokens=64), mesh=mesh,
                         param_shardings=shardings.params)
  out = gen(state.params, prompt_tokens_BxP, prompt_mask_BxP, rng)        # Generation
  ref = make_score_fn(ref_graphdef, config=cfg, mesh=mesh, param_shardings=ref_sh)(
      ref_params, prompt_tokens_BxP, prompt_mask_BxP, out.tokens_BxT, out.mask_BxT)

Inside a larger jitted rollout, call decode.generate / scoring.score_tokens directly instead.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Optional, Sequence

import jax
import numpy as np
from flax import nnx

from rlhf_jax.generation import decode, scoring
from rlhf_jax.generation.sampling import SamplingConfig
from rlhf_jax.parallel import sharding as sharding_lib


def _batch(mesh, ndim):
  return sharding_lib.batch_sharding(mesh, ndim)


def make_generate_fn(graphdef: nnx.GraphDef, config: SamplingConfig, *,
                     mesh: Optional[jax.sharding.Mesh] = None, param_shardings: Any = None,
                     rules: Iterable[Sequence[Any]] = sharding_lib.DEFAULT_RULES,
                     cache_dtype: Any = None,
                     validate: bool = True) -> Callable[..., decode.Generation]:
  """fn(params, prompt_tokens_BxP, prompt_mask_BxP, rng) -> Generation, jitted.

  With a mesh, `param_shardings` (a pure dict mirroring params, e.g. TrainState shardings.params)
  is required. `validate` runs `decode.check_prompts` on the host before each call (it reads the
  prompt mask back from the devices; pass False inside tight loops over trusted data).
  """
  body = functools.partial(decode.generate, graphdef, config=config, cache_dtype=cache_dtype,
                           mesh=mesh, rules=tuple(rules))
  if mesh is None:
    jitted = jax.jit(body)
  else:
    if param_shardings is None:
      raise ValueError("make_generate_fn: param_shardings is required with a mesh")
    out = decode.Generation(tokens_BxT=_batch(mesh, 2), mask_BxT=_batch(mesh, 2),
                            logp_BxT=_batch(mesh, 2), stopped_B=_batch(mesh, 1))
    jitted = jax.jit(body, in_shardings=(param_shardings, _batch(mesh, 2), _batch(mesh, 2),
                                         sharding_lib.replicated(mesh)),
                     out_shardings=out)

  def generate_fn(params, prompt_tokens_BxP, prompt_mask_BxP, rng):
    if validate:
      embed = params.get("embed") if isinstance(params, dict) else None
      vocab = None if embed is None else np.shape(embed)[0]
      decode.check_prompts(prompt_tokens_BxP, prompt_mask_BxP, vocab_size=vocab)
    return jitted(params, prompt_tokens_BxP, prompt_mask_BxP, rng)

  generate_fn.jitted = jitted  # exposes _cache_size() / lower() for compile counting and AOT
  return generate_fn


def _make_scorer(fn, out_tree_fn, graphdef, mesh, param_shardings, **kwargs):
  body = functools.partial(fn, graphdef, **kwargs)
  if mesh is None:
    return jax.jit(body)
  if param_shardings is None:
    raise ValueError(f"{fn.__name__}: param_shardings is required with a mesh")
  return jax.jit(body, in_shardings=(param_shardings,) + (_batch(mesh, 2),) * 4,
                 out_shardings=out_tree_fn(mesh))


def make_score_fn(graphdef: nnx.GraphDef, *, config: Optional[SamplingConfig] = None,
                  with_entropy: bool = False, mesh: Optional[jax.sharding.Mesh] = None,
                  param_shardings: Any = None) -> Callable[..., scoring.TokenScores]:
  """fn(params, prompt_tokens_BxP, prompt_mask_BxP, completion_tokens_BxT, completion_mask_BxT)
  -> TokenScores, jitted (policy and reference log-prob passes; see scoring.score_tokens)."""
  out = lambda m: scoring.TokenScores(logp_BxT=_batch(m, 2),
                                      entropy_BxT=_batch(m, 2) if with_entropy else None)
  return _make_scorer(scoring.score_tokens, out, graphdef, mesh, param_shardings, config=config,
                      with_entropy=with_entropy)


def make_value_fn(graphdef: nnx.GraphDef, *, mesh: Optional[jax.sharding.Mesh] = None,
                  param_shardings: Any = None) -> Callable[..., scoring.ValueScores]:
  """fn(params, prompt_tokens_BxP, prompt_mask_BxP, completion_tokens_BxT, completion_mask_BxT)
  -> ValueScores, jitted (critic and reward-model passes; see scoring.score_values)."""
  out = lambda m: scoring.ValueScores(values_BxT=_batch(m, 2), last_B=_batch(m, 1))
  return _make_scorer(scoring.score_values, out, graphdef, mesh, param_shardings)
