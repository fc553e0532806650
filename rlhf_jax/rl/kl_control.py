"""KL coefficient controllers (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences", sec. 2.2).

  fixed:     β stays at its initial value.
  adaptive:  e = clip((KL − KL_target) / KL_target, −0.2, 0.2);  β ← β · (1 + e · n / horizon)
             with KL the measured mean sequence KL of the last rollout and n its batch size.
"""

from __future__ import annotations

import jax.numpy as jnp

KINDS = ("fixed", "adaptive")


def update(beta, kl, *, kind: str, target: float, horizon: float, batch_size: int):
  if kind == "fixed":
    return beta
  if kind == "adaptive":
    error = jnp.clip((kl - target) / target, -0.2, 0.2)
    return beta * (1.0 + error * batch_size / horizon)
  raise ValueError(f"unknown kl controller {kind!r}; valid: {list(KINDS)}")
