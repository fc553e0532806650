"""Mixed precision: float32 master weights, a lower-precision compute dtype, float32 results.

The policy (Micikevicius et al. 2018, "Mixed Precision Training"; bfloat16 needs no loss scaling):
  parameters, gradients, optimizer state   param_dtype = float32 (ModelConfig.param_dtype)
  matmul inputs (activations, weights)      dtype = bfloat16 (ModelConfig.dtype; cast at use)
  norms, RoPE, attention softmax            float32 inside, results cast back to dtype
  vocabulary logits, log-probs, losses      float32 (logits accumulate in float32)
The model implements it (models/transformer.py, layers.py); this module maps config fields onto
the ModelConfig and audits a function's matmuls, to check the policy holds.

config.model fields used here: dtype (compute dtype), remat (models/remat.py).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable

import jax

from rlhf_jax import models

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def apply_model_options(model_cfg: models.ModelConfig, config) -> models.ModelConfig:
  """model_cfg with the run's runtime options: config.model.remat, .attention, .lm_head_chunk and
  .scan_layers (where the config has them).

  Runtime options only: a checkpoint's shapes and its stored compute dtype are kept."""
  check_compute_dtype(model_cfg.dtype)
  model = config.model if "model" in config else {}
  options = {k: model[k] for k in ("remat", "attention", "lm_head_chunk", "scan_layers") if model.get(k, None)}
  return dataclasses.replace(model_cfg, **options) if options else model_cfg


def check_compute_dtype(name: str) -> None:
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"unknown compute dtype {name!r}; valid: {list(COMPUTE_DTYPES)}")


def _sub_jaxprs(value):
  if hasattr(value, "eqns"):
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def _walk(jaxpr, counts):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      key = tuple(str(v.aval.dtype) for v in eqn.invars) + (str(eqn.outvars[0].aval.dtype),)
      counts[key] += 1
    for value in eqn.params.values():
      for sub in _sub_jaxprs(value):
        _walk(sub, counts)


def matmul_dtypes(fn: Callable, *args: Any) -> collections.Counter:
  """{(lhs dtype, rhs dtype, out dtype): count} over every matmul (dot_general) that tracing
  `fn(*args)` produces, inside jit / scan / remat / custom-derivative bodies too."""
  counts: collections.Counter = collections.Counter()
  _walk(jax.make_jaxpr(fn)(*args).jaxpr, counts)
  return counts
