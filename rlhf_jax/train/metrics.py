"""Metrics sinks: `<workdir>/metrics.jsonl` (one JSON object per logged step, with `step`),
TensorBoard event files with the same keys, and optionally a Weights & Biases run with the same
keys (config.logging.wandb, train/wandb_sink.py). Only process 0 writes.

The JSONL file is strict JSON: a non-finite value is written as `null` and the row names it in
`nonfinite_keys` (NaN and Infinity are not JSON; strict parsers reject them). A run resumed from
the checkpoint at step S first drops the rows a previous invocation logged after S (and, at a
fresh start, its initial evaluation): they are logged again as the steps are replayed, so no
step appears twice. TensorBoard purges its events after S likewise.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping, Optional

import jax
import numpy as np

from rlhf_jax.train import wandb_sink
from rlhf_jax.train.jsonl import read_jsonl  # noqa: F401  (metrics_lib.read_jsonl)

NONFINITE_KEYS = "nonfinite_keys"
SAMPLES = "samples"  # an evaluation's generated samples (train/samples.py), not a metric
SAMPLES_FILE = "samples.jsonl"


def measures_clock(key: str) -> bool:
  """Whether a logged key measures the wall clock (phase times, throughput, MFU), so two runs
  that compute the same values log different ones: `[prefix/]time/...`, `...per_sec`, `.../mfu`."""
  name = key.split("/", 1)[1] if "/" in key else key
  return name.startswith("time/") or name.endswith("per_sec") or name == "mfu"


def to_python(value):
  value = np.asarray(jax.device_get(value))
  return value.item() if value.ndim == 0 else value.tolist()


def _finite_or_none(value):
  """(JSON-safe value, whether something non-finite was replaced by None)."""
  if isinstance(value, float) and not math.isfinite(value):
    return None, True
  if isinstance(value, list):
    pairs = [_finite_or_none(v) for v in value]
    return [v for v, _ in pairs], any(bad for _, bad in pairs)
  return value, False


def strict_row(step: int, metrics: Mapping[str, object]) -> dict:
  """{"step": step, key: value, ...} with non-finite values as None, named in nonfinite_keys."""
  row, bad = {"step": int(step)}, []
  for k, v in metrics.items():
    row[k], replaced = _finite_or_none(to_python(v))
    if replaced:
      bad.append(k)
  if bad:
    row[NONFINITE_KEYS] = bad
  return row


def _replayed(row: dict, step: int, samples: bool = False) -> bool:
  """Whether a run resumed at `step` logs `row` again: a later step, or at step 0 (a fresh
  start) the initial evaluation (every sample row comes from an evaluation)."""
  return row["step"] > step or (step == 0 and (samples or any(k.startswith("eval/")
                                                               for k in row)))


def _drop_replayed(path: str, step: int, samples: bool = False) -> int:
  """Rewrites `path` without the rows a run resumed at `step` logs again; returns how many rows
  were dropped."""
  if not os.path.exists(path):
    return 0
  rows = read_jsonl(path, strict=False)
  keep = [r for r in rows if not _replayed(r, step, samples)]
  if len(keep) == len(rows):
    return 0
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for r in keep:
      f.write(json.dumps(r, allow_nan=False) + "\n")
  os.replace(tmp, path)
  return len(rows) - len(keep)


class MetricsWriter:
  """resume_step: the step this invocation starts from (the restored checkpoint's, 0 for a fresh
  start); rows after it are dropped first. None appends to what is there. config: the run's
  config, for the W&B sink when config.logging.wandb.enabled (None: no W&B)."""

  def __init__(self, workdir: str, *, tensorboard: bool = True,
               resume_step: Optional[int] = None, config=None):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    self._wandb = None
    self.dropped = 0
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      if resume_step is not None:
        self.dropped = _drop_replayed(self.path, resume_step)
        _drop_replayed(os.path.join(workdir, SAMPLES_FILE), resume_step, samples=True)
      if tensorboard:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        purge = None if resume_step is None else resume_step + (1 if resume_step > 0 else 0)
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge)
      w = None if config is None else wandb_sink.settings(config)
      if w is not None:
        self._wandb = wandb_sink.WandbSink(workdir, w, run_config=config.to_dict(),
                                           stage=config.stage)

  def logged(self, key: str) -> bool:
    """Whether a row with `key` is in the file already."""
    return os.path.exists(self.path) and any(key in r for r in read_jsonl(self.path))

  def write(self, step: int, metrics: Mapping[str, object]) -> dict:
    row = strict_row(step, metrics)
    if not self.active:
      return row
    with open(self.path, "a") as f:
      f.write(json.dumps(row, allow_nan=False) + "\n")
    if self._tb is not None:
      for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, int(step))
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.log(row)
    return row

  def write_samples(self, step: int, samples: list[dict]) -> None:
    """Appends an evaluation's samples (prompt, completion, rewards) to samples.jsonl, and to
    TensorBoard as a text table."""
    if not self.active or not samples:
      return
    rows = [strict_row(step, s) for s in samples]
    with open(os.path.join(os.path.dirname(self.path), SAMPLES_FILE), "a") as f:
      for row in rows:
        f.write(json.dumps(row, allow_nan=False) + "\n")
    if self._tb is not None:
      keys = [k for k in rows[0] if k != "step"]
      cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
      table = "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] +
                        ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows])
      self._tb.add_text(SAMPLES, table, int(step))
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()
    if self._wandb is not None:
      self._wandb.close()
