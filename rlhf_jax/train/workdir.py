"""A stage's workdir remembers its config and admits one run at a time.

Config fingerprint: the first run into a workdir records its resolved config in
`<workdir>/config.json`. A later run into it (a resume, a rerun, a recipe stage) compares its
config with the recorded one before any work and stops with the list of differing fields, since
resuming or skipping under another config would silently mix two experiments. The ways on: a
new workdir, or `train.allow_config_change=True`, which accepts differences in the fields of
SAFE_ON_RESUME only (and records the new config):

  train.num_steps, train.eval_every, train.eval_examples, train.checkpoint_every,
  train.keep_checkpoints, train.log_every, train.nonfinite, train.nonfinite_max_skips,
  optimizer.lr, data.data_dir, mesh.*, logical_axis_rules

(cadence and length of the run, the learning rate from here on, where cached data lives, and the
device layout: orbax restores into any sharding). Fields of IGNORED never count (they steer one
invocation, not the experiment): train.stop_at_step, train.allow_config_change,
train.tensorboard, train.aot_memory, model.attention, model.lm_head_chunk and model.scan_layers
(how, not what, is computed), logging.*, distributed.*.

Lock: process 0 holds an exclusive `fcntl.flock` on `<workdir>/.lock` while the run lasts, so a
second run into the same workdir is refused with the holder's pid, host and start time. The
kernel drops the lock when its process dies, so a lock file left by a dead process does not
block.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
from typing import Any, Iterator

import jax

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
SAFE_ON_RESUME = ("train.num_steps", "train.eval_every", "train.eval_examples",
                  "train.eval_samples", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.log_every", "train.nonfinite", "train.nonfinite_max_skips",
                  "optimizer.lr", "data.data_dir", "mesh.", "logical_axis_rules")
IGNORED = ("train.stop_at_step", "train.allow_config_change", "train.tensorboard",
           "train.aot_memory", "model.attention", "model.lm_head_chunk", "model.scan_layers",
           "logging.", "distributed.")


class ConfigChangedError(ValueError):
  """The config differs from the one recorded in the workdir."""


class WorkdirBusyError(RuntimeError):
  """Another live run holds the workdir."""


def _matches(key: str, patterns) -> bool:
  return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".")
             for p in patterns)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  """{"a.b": value} of a nested dict, values JSON-normalised (tuples as lists)."""
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: json.loads(json.dumps(d))}


def config_diff(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
  """(field, recorded value, new value) of every field that differs, IGNORED fields excluded;
  a field present on one side only shows `<absent>` on the other."""
  a, b = flatten(old), flatten(new)
  missing = "<absent>"
  return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
          if not _matches(k, IGNORED) and a.get(k, missing) != b.get(k, missing)]


def recorded_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_config(config, workdir: str, *, name: str = "", override_prefix: str = "") -> bool:
  """Compares `config` with the config recorded in `workdir`; raises ConfigChangedError listing
  the differing fields unless none differ, or all are SAFE_ON_RESUME and
  train.allow_config_change is set. Returns whether a recorded config exists.

  name / override_prefix: how the error names the stage and its override keys (a recipe step
  `ppo` is overridden as `--config.ppo.<field>`)."""
  old = recorded_config(workdir)
  if old is None:
    return False
  diff = config_diff(old, config.to_dict())
  if not diff:
    return True
  allowed = bool(config.get("train", {}).get("allow_config_change", False))
  unsafe = [d for d in diff if not _matches(d[0], SAFE_ON_RESUME)]
  if allowed and not unsafe:
    logging.warning("%s: config changed on resume (train.allow_config_change): %s", name or workdir,
                    "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff))
    return True
  lines = "\n".join(f"  {override_prefix}{k}: {a!r} (recorded) -> {b!r} (now)"
                    + ("" if _matches(k, SAFE_ON_RESUME) else "   [not safe to change]")
                    for k, a, b in diff)
  safe = ", ".join(p.rstrip(".") + ("*" if p.endswith(".") else "") for p in SAFE_ON_RESUME)
  raise ConfigChangedError(
      f"{name or 'run'}: the config differs from the one recorded in "
      f"{os.path.join(workdir, CONFIG_FILE)} by:\n{lines}\n"
      f"Either run into a new --workdir, or, if only fields safe to change on resume differ "
      f"({safe}), add --config.{override_prefix}train.allow_config_change=True.")


def record_config(config, workdir: str) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(config.to_dict(), f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds `<workdir>/.lock` exclusively (process 0 only) for the duration of the block."""
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
      raise WorkdirBusyError(f"workdir {os.path.abspath(workdir)} is in use by another run "
                             f"({holder}); wait for it to end or use another --workdir") from None
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the flock


@contextlib.contextmanager
def claim(config, workdir: str, *, name: str = "", override_prefix: str = "") -> Iterator[None]:
  """Lock, then config check (before any work), then record the config; for a stage run."""
  with lock(workdir):
    check_config(config, workdir, name=name, override_prefix=override_prefix)
    record_config(config, workdir)
    yield
