"""Reading the project's JSON-lines files (metrics.jsonl, samples.jsonl, experiment results).

Free of JAX (numpy-only notebooks read results with it). The files are written as standard JSON
(non-finite values as null, train/metrics.py), so reading is strict by default: a NaN or Infinity
literal is an error naming the file, not a float that a later plot or fit silently carries.
"""

from __future__ import annotations

import json


def read_jsonl(path: str, *, strict: bool = True) -> list[dict]:
  """The rows of a JSON-lines file (blank lines skipped); strict (the default) rejects
  NaN/Infinity literals."""
  def reject(name):
    raise ValueError(f"{path}: non-standard JSON constant {name}")

  kwargs = {"parse_constant": reject} if strict else {}
  with open(path) as f:
    return [json.loads(line, **kwargs) for line in f if line.strip()]
