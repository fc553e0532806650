"""Metrics sinks: `<workdir>/metrics.jsonl` (one JSON object per logged step, with `step`) and
TensorBoard event files with the same keys. Only process 0 writes."""

from __future__ import annotations

import json
import os
from typing import Mapping

import jax
import numpy as np


def to_python(value):
  value = np.asarray(jax.device_get(value))
  return value.item() if value.ndim == 0 else value.tolist()


class MetricsWriter:
  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, object]) -> dict:
    row = {"step": int(step), **{k: to_python(v) for k, v in metrics.items()}}
    if not self.active:
      return row
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, int(step))
      self._tb.flush()
    return row

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
