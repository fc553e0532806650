"""Non-finite guard: a run that produces NaN or inf stops loudly (or skips the step, by config).

Inside the jitted step (`guard_step`), every floating-point metric of the step -- the loss, the
gradient norm (non-finite as soon as any gradient entry is: ||g|| = sqrt(sum g^2)) and the rest
-- is tested with `isfinite`, and one int32 scalar is added to the metrics:

  metrics["nonfinite"] = -1                      every checked value finite
                       = i >= 0                  checked_names[i] is the first non-finite one
(a step made of host work, online RL's iteration, gives the name itself: "" when finite).

Online RL also checks the update's inputs (rewards, advantages, returns, log-probs) this way.
With train.nonfinite = "skip" the step's new state is replaced by the old one when the flag is
set (parameters, optimizer state and step count unchanged).

On the host (`Monitor`) the flags of the steps since the last check are fetched together at the
points where the loop already waits for the device (logging, evaluation, checkpoints, the end),
so the guard adds no per-step synchronisation. Default ("stop"): a flagged step raises
`NonFiniteError` naming the stage, the step, the first non-finite metric and the last good
checkpoint, before anything is evaluated, checkpointed or exported after it. "skip": flagged
steps are counted (metric `nonfinite_skips`) and the run stops after `max_skips` consecutive
ones.

`check_finite` tests loaded weights (Hugging Face imports, exports, restored checkpoints).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("stop", "skip")
FLAG = "nonfinite"        # the per-step flag's metric name
SKIPS = "nonfinite_skips"  # metric: steps skipped so far in this invocation (skip mode)


class NonFiniteError(RuntimeError):
  """A run produced (or loaded) NaN/inf values; its message says where and what to do."""


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def first_nonfinite(values: Mapping[str, Any]) -> tuple[jax.Array, list[str]]:
  """(int32 index of the first non-finite value in `names`, or -1; `names`).

  `names` are the sorted keys of the floating-point entries (arrays of any shape: one non-finite
  element marks the entry)."""
  names = sorted(k for k, v in values.items() if _is_float(v))
  if not names:
    return jnp.int32(-1), names
  bad_N = jnp.stack([jnp.logical_not(jnp.all(jnp.isfinite(values[k]))) for k in names])
  return jnp.where(jnp.any(bad_N), jnp.argmax(bad_N), -1).astype(jnp.int32), names


def guard_step(step_fn: Callable, *, mode: str, check_inputs: Sequence[str] = ()) -> Callable:
  """`step_fn(state, batch, rng) -> (state, metrics)` with the non-finite flag added.

  check_inputs: batch fields (keys, or attributes of a dataclass batch such as an RL rollout)
    tested too (named `batch/<field>`), e.g. a rollout's rewards, whose non-finite values would
    otherwise surface one step later.
  The returned function has `checked_names`: the names the flag indexes (known once traced)."""
  if mode not in MODES:
    raise ValueError(f"unknown train.nonfinite {mode!r}; valid: {list(MODES)}")
  checked_names: list[str] = []

  def guarded(state, batch, rng):
    new_state, metrics = step_fn(state, batch, rng)
    values = dict(metrics)
    field = (lambda k: batch[k]) if isinstance(batch, Mapping) else (lambda k: getattr(batch, k))
    values.update({f"batch/{k}": field(k) for k in check_inputs})
    flag, names = first_nonfinite(values)
    checked_names[:] = names
    if mode == "skip":
      ok = flag < 0
      new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    return new_state, {**metrics, FLAG: flag}

  guarded.checked_names = checked_names
  return guarded


def host_flag(metrics: Mapping[str, Any]) -> tuple[int, list[str]]:
  """The flag of host-side metrics (floats, numpy or fetched jax scalars): (index, names)."""
  names = sorted(k for k, v in metrics.items()
                 if k != FLAG and np.issubdtype(np.asarray(v).dtype, np.inexact))
  for i, k in enumerate(names):
    if not np.all(np.isfinite(np.asarray(metrics[k]))):
      return i, names
  return -1, names


class Monitor:
  """Host side of the guard: collects each step's flag, checks them in batches.

  `names_of()` gives the names the flags index (the guarded step's `checked_names`)."""

  def __init__(self, *, stage: str, mode: str, max_skips: int,
               names_of: Callable[[], Sequence[str]]):
    if mode not in MODES:
      raise ValueError(f"unknown train.nonfinite {mode!r}; valid: {list(MODES)}")
    self.stage, self.mode, self.max_skips = stage, mode, int(max_skips)
    self._names_of = names_of
    self._pending: list[tuple[int, Any]] = []
    self.skipped = 0
    self.consecutive = 0

  def record(self, step: int, metrics: dict) -> dict:
    """Takes the flag out of `metrics` (kept on device until `check`); returns the rest."""
    metrics = dict(metrics)
    flag = metrics.pop(FLAG, None)
    if flag is not None:
      self._pending.append((step, flag))
    return metrics

  def check(self, *, last_good: str) -> None:
    """Fetches the pending flags (one transfer); raises NonFiniteError on a flagged step in stop
    mode, or on the max_skips-th consecutive flagged step in skip mode."""
    if not self._pending:
      return
    steps = [s for s, _ in self._pending]
    fetched = jax.device_get([f for _, f in self._pending if not isinstance(f, str)])[::-1]
    flags = [f if isinstance(f, str) else int(fetched.pop()) for _, f in self._pending]
    self._pending.clear()
    for step, flag in zip(steps, flags):
      if flag == "" or flag == -1:
        self.consecutive = 0
        continue
      if isinstance(flag, str):
        name = flag
      else:
        names = list(self._names_of())
        name = names[flag] if 0 <= flag < len(names) else f"#{flag}"
      if self.mode == "stop":
        raise NonFiniteError(
            f"{self.stage}: non-finite value (NaN or inf) at step {step}: the first non-finite "
            f"metric of the step is {name!r}. The run stopped; nothing after step {step - 1} was "
            f"checkpointed and no export was written. Last good checkpoint: {last_good}. Lower "
            "optimizer.lr or check the data, or set train.nonfinite=skip to skip such steps.")
      self.skipped += 1
      self.consecutive += 1
      if self.consecutive >= self.max_skips:
        raise NonFiniteError(
            f"{self.stage}: {self.consecutive} consecutive steps skipped as non-finite (last at "
            f"step {step}, first non-finite metric {name!r}; train.nonfinite_max_skips="
            f"{self.max_skips}); {self.skipped} skipped in all. The run stopped without an "
            f"export. Last good checkpoint: {last_good}.")

  def metrics(self) -> dict:
    return {SKIPS: self.skipped} if self.mode == "skip" else {}


def check_finite(tree: Any, what: str) -> None:
  """Raises NonFiniteError naming the first leaf of `tree` holding NaN or inf.

  One jitted reduction per leaf (sharded arrays are reduced where they live)."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  floats = [(p, x) for p, x in leaves if _is_float(x)]
  if not floats:
    return
  ok = jax.device_get(_all_finite([x for _, x in floats]))
  for (path, _), good in zip(floats, ok):
    if not good:
      raise NonFiniteError(f"{what}: {jax.tree_util.keystr(path)} holds non-finite values "
                           "(NaN or inf)")


@jax.jit
def _all_finite(xs):
  return [jnp.all(jnp.isfinite(x)) for x in xs]
