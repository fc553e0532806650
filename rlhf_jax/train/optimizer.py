"""Optimizers from config: optax transformation + learning-rate schedule + gradient clipping.

config.optimizer fields: name (adamw | adam | sgd | lion | adafactor), lr, schedule
(constant | cosine | linear), warmup_steps, end_lr_fraction, weight_decay, b1, b2, eps,
grad_clip (global-norm clip, 0 = off).
"""

from __future__ import annotations

import optax


def _adamw(c, lr):
  return optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay)


def _adam(c, lr):
  return optax.adam(lr, b1=c.b1, b2=c.b2, eps=c.eps)


def _sgd(c, lr):
  return optax.sgd(lr, momentum=c.b1 or None)


def _lion(c, lr):
  return optax.lion(lr, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay)


def _adafactor(c, lr):
  return optax.adafactor(lr, weight_decay_rate=c.weight_decay or None)


OPTIMIZERS = {"adamw": _adamw, "adam": _adam, "sgd": _sgd, "lion": _lion, "adafactor": _adafactor}
SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(c, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to lr over warmup_steps, then constant / cosine / linear decay."""
  if c.schedule not in SCHEDULES:
    raise ValueError(f"unknown optimizer.schedule {c.schedule!r}; valid: {list(SCHEDULES)}")
  warmup = min(int(c.warmup_steps), max(num_steps - 1, 0))
  decay_steps = max(num_steps - warmup, 1)
  end = c.lr * c.end_lr_fraction
  if c.schedule == "constant":
    after = optax.constant_schedule(c.lr)
  elif c.schedule == "cosine":
    after = optax.cosine_decay_schedule(c.lr, decay_steps, alpha=c.end_lr_fraction)
  else:
    after = optax.linear_schedule(c.lr, end, decay_steps)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, c.lr, warmup), after], [warmup])


def make_optimizer(c, num_steps: int) -> optax.GradientTransformation:
  if c.name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer.name {c.name!r}; valid optimizers: {sorted(OPTIMIZERS)}")
  tx = OPTIMIZERS[c.name](c, make_schedule(c, num_steps))
  if c.grad_clip and c.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(c.grad_clip), tx)
  return tx
