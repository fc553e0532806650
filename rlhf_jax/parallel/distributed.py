"""Multi-host initialisation from config or environment, and host-side coordination helpers.

- TPU pods and managed GPU clusters (SLURM, Open MPI, GKE...): `jax.distributed.initialize()`
  with no arguments detects everything; set `config.distributed.enabled = True` (or
  RLHF_JAX_DISTRIBUTED=1) and nothing else.
- Anywhere else (e.g. several CPU processes on one machine): give the coordinator address, the
  process count and this process's id in config or in the environment variables
  RLHF_JAX_COORDINATOR, RLHF_JAX_NUM_PROCESSES, RLHF_JAX_PROCESS_ID. CPU processes exchange data
  through gloo collectives.
Every process then loads its own shard of the data (see data/pipeline.py); process 0 alone
writes logs, metrics and files shared by all (tokenizer, prepared datasets), the others wait at
a barrier.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, TypeVar

import jax
from jax.experimental import multihost_utils

T = TypeVar("T")
_initialized = False


def settings_from(config) -> dict:
  """Coordinator settings from config.distributed, overridden by RLHF_JAX_* variables."""
  d = config.get("distributed") if hasattr(config, "get") else None
  out = {
      "enabled": bool(d.enabled) if d is not None else False,
      "coordinator_address": (d.coordinator_address if d is not None else "") or "",
      "num_processes": int(d.num_processes) if d is not None else 0,
      "process_id": int(d.process_id) if d is not None else -1,
  }
  env = os.environ
  if env.get("RLHF_JAX_DISTRIBUTED"):
    out["enabled"] = env["RLHF_JAX_DISTRIBUTED"] not in ("0", "false", "False")
  if env.get("RLHF_JAX_COORDINATOR"):
    out["coordinator_address"] = env["RLHF_JAX_COORDINATOR"]
  if env.get("RLHF_JAX_NUM_PROCESSES"):
    out["num_processes"] = int(env["RLHF_JAX_NUM_PROCESSES"])
  if env.get("RLHF_JAX_PROCESS_ID"):
    out["process_id"] = int(env["RLHF_JAX_PROCESS_ID"])
  if out["coordinator_address"]:
    out["enabled"] = True
  return out


def initialize(config) -> None:
  """Joins the processes of a multi-host run (once per process); a no-op for single-process."""
  global _initialized
  s = settings_from(config)
  if _initialized or not s["enabled"]:
    return
  if s["coordinator_address"]:
    if s["num_processes"] < 1 or not 0 <= s["process_id"] < s["num_processes"]:
      raise ValueError(f"distributed: with coordinator_address={s['coordinator_address']!r} set "
                       f"num_processes >= 1 and 0 <= process_id < num_processes, got "
                       f"num_processes={s['num_processes']}, process_id={s['process_id']}")
    if jax.config.jax_platforms in (None, "", "cpu") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(s["coordinator_address"], s["num_processes"], s["process_id"])
  else:
    jax.distributed.initialize()  # auto-detected: TPU pods, SLURM, MPI, GKE
  _initialized = True
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def on_process_zero_first(name: str, fn: Callable[[], T]) -> T:
  """Runs `fn` on process 0, waits, then on the others (which find its files ready)."""
  if jax.process_index() == 0:
    out = fn()
    barrier(name)
    return out
  barrier(name)
  return fn()
