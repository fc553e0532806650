"""Graceful stop on SIGTERM (a preemption notice, a scheduler's stop) and SIGINT (Ctrl-C).

`install()` (called once by main) replaces the default handlers: a signal only records the
request, and the training loop, at the end of its current step, writes a checkpoint and raises
`Preempted`, which main turns into a one-line message and exit status 128 + signal number (143
for SIGTERM, 130 for SIGINT). Rerunning the same command resumes from that checkpoint; a recipe
resumes at the stage it was in. A second SIGINT while the first is being honoured exits at once.

Multi-host: every process must stop after the same step, or their collectives would hang. With
`jax.distributed` initialised, a SIGTERM to any process is propagated by JAX's preemption
service (its own SIGTERM handler, left in place), and `reached_preemption_sync_point(step)`
turns true on every process at the same agreed step (the largest step any process had reached
when the notice arrived, plus one). SIGINT on one process is forwarded to that service as a
SIGTERM to itself.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import jax
from jax.experimental import multihost_utils

_requested: int | None = None   # the signal number received, if any
_installed = False
_previous: dict[int, object] = {}   # the handlers install() replaced, restored by uninstall()


class Preempted(Exception):
  """The run stopped on a signal after checkpointing; `exit_code` is 128 + the signal number."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + int(signum)


def _multihost() -> bool:
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client is not None and jax.process_count() > 1


def _handle(signum, frame):
  del frame
  global _requested
  if _requested is not None and signum == signal.SIGINT:
    print("rlhf-jax: second interrupt, exiting without a checkpoint", file=sys.stderr, flush=True)
    os._exit(130)  # pylint: disable=protected-access
  _requested = signum
  print(f"rlhf-jax: {signal.Signals(signum).name} received: finishing the current step, then "
        "checkpointing and exiting (Ctrl-C again to abort at once)", file=sys.stderr, flush=True)
  if _multihost() and signum != signal.SIGTERM:
    signal.raise_signal(signal.SIGTERM)  # the preemption service spreads it to every process


def install() -> None:
  """Installs the handlers (main thread only; idempotent). In a multi-host run, call it after
  jax.distributed is initialised so that SIGTERM stays with JAX's preemption service."""
  global _installed
  if _installed:
    return
  signals = [signal.SIGINT] if _multihost() else [signal.SIGINT, signal.SIGTERM]
  for signum in signals:
    _previous[signum] = signal.signal(signum, _handle)
  _installed = True


def uninstall() -> None:
  """Restores the handlers install() replaced and forgets any request (tests)."""
  global _installed, _requested
  for signum, handler in _previous.items():
    signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
  _previous.clear()
  _installed, _requested = False, None


def requested_signal() -> int | None:
  return _requested


def should_stop(step: int) -> bool:
  """Whether to checkpoint and stop after `step`; call it after every step, with increasing
  steps. Multi-host: true on every process at the same step."""
  if not _installed:
    return False
  if _multihost():
    return multihost_utils.reached_preemption_sync_point(step)
  return _requested is not None


def stop_signal() -> int:
  """The signal that stopped the run (SIGTERM when it came through the preemption service)."""
  return _requested if _requested is not None else int(signal.SIGTERM)


def preempted(stage: str, step: int, checkpoint: str | None) -> Preempted:
  signum = stop_signal()
  name = signal.Signals(signum).name
  where = f"checkpoint {checkpoint}" if checkpoint else "nothing to checkpoint (no step had run)"
  logging.info("%s: stopped by %s after step %d", stage, name, step)
  return Preempted(f"{stage}: stopped by {name} after step {step}; {where}. Rerun the same "
                   "command to resume.", signum)
