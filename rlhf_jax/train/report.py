"""What the console shows of a run: one line per evaluation, a summary when a stage ends, a table
when a recipe ends. Everything comes from the rows written to metrics.jsonl (train/metrics.py),
so the console and the file cannot disagree.

Headline metrics: the evaluation keys that say how a stage did, most telling first. A stage's
summary gives each headline key it logged, first evaluation -> last:
  gold_reward   exact expected gold reward of the policy (enumerable world)
  accuracy      held-out verifier accuracy (policies), pair accuracy (reward models, DPO)
  top1_accuracy best-of-K accuracy of a Plackett-Luce reward model
  kl            KL(pi || pi_ref) of the policy (exact or sampled)
  loss          held-out loss (SFT: next-token NLL)
  reward        reward of sampled completions under the configured source (a learned RM: proxy)
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import jax
import tqdm

HEADLINE = ("gold_reward", "accuracy", "top1_accuracy", "kl", "loss", "reward")
MAX_EVAL_KEYS = 8  # an evaluation line shows at most this many figures (headline keys first)


def fmt(value) -> str:
  """4 significant digits; None (a non-finite value in metrics.jsonl) as nan."""
  if value is None:
    return "nan"
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if isinstance(value, int):
    return str(value)
  return f"{value:.4g}" if math.isfinite(value) else str(value)


def duration(seconds: float) -> str:
  seconds = max(0.0, float(seconds))
  if seconds < 60:
    return f"{seconds:.1f} s"
  minutes, secs = divmod(int(round(seconds)), 60)
  if minutes < 60:
    return f"{minutes} min {secs} s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours} h {minutes} min"


def _eval_scalars(row: dict) -> dict:
  """{name: value} of a row's eval/* scalars (lists such as per-k curves left out)."""
  return {k[len("eval/"):]: v for k, v in row.items()
          if k.startswith("eval/") and (v is None or isinstance(v, (int, float)))}


def _ordered(names) -> list[str]:
  head = [k for k in HEADLINE if k in names]
  return head + sorted(k for k in names if k not in head)


def eval_line(stage: str, row: dict) -> str:
  """`<stage> step N eval: gold_reward 2.49 · kl 2.03 · ...` of one evaluation row."""
  values = _eval_scalars(row)
  names = _ordered(values)
  shown = " · ".join(f"{k} {fmt(values[k])}" for k in names[:MAX_EVAL_KEYS])
  more = f" (+{len(names) - MAX_EVAL_KEYS} in metrics.jsonl)" if len(names) > MAX_EVAL_KEYS else ""
  return f"{stage} step {row['step']} eval: {shown}{more}"


def headline_changes(rows: Sequence[dict]) -> dict[str, tuple]:
  """{key: (first, last)} of the headline keys over the evaluation rows (first != last row)."""
  evals = [_eval_scalars(r) for r in rows]
  evals = [e for e in evals if e]
  if not evals:
    return {}
  return {k: (evals[0].get(k), evals[-1].get(k)) for k in HEADLINE
          if k in evals[0] or k in evals[-1]}


def summary_line(stage: str, rows: Sequence[dict], *, seconds: Optional[float],
                 export_dir: Optional[str]) -> str:
  """`<stage> done in 1 min 2 s: loss 2.22 -> 1.37, ...; export: DIR`."""
  steps = max((r["step"] for r in rows), default=0)
  changes = headline_changes(rows)
  figures = ", ".join(f"{k} {fmt(a)} → {fmt(b)}" for k, (a, b) in changes.items()) or \
      "no evaluation"
  took = "" if seconds is None else f" in {duration(seconds)}"
  export = f"; export: {export_dir}" if export_dir else "; no export"
  return f"{stage} done{took} ({steps} steps): {figures}{export}"


def recipe_table(entries: Sequence[dict]) -> str:
  """A table of a recipe's steps: each entry has step, stage, rows, seconds (None when the step
  was skipped as done before) and export_dir."""
  header = ("step", "stage", "headline (first eval → last)", "wall", "export")
  lines = []
  for e in entries:
    changes = headline_changes(e["rows"])
    figures = ", ".join(f"{k} {fmt(a)} → {fmt(b)}" for k, (a, b) in list(changes.items())[:3])
    wall = "done before" if e["seconds"] is None else duration(e["seconds"])
    lines.append((e["step"], e["stage"], figures or "-", wall, e["export_dir"] or "-"))
  widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
  out = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
  out.append("  ".join("-" * w for w in widths))
  out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines]
  return "\n".join(out)


def show(line: str) -> None:
  """Prints a line on process 0 without breaking a progress bar that is being drawn."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(line)


def export_dir(workdir: str) -> Optional[str]:
  """<workdir>/export when the stage wrote one (its export.json exists)."""
  directory = os.path.abspath(os.path.join(workdir, "export"))
  return directory if os.path.exists(os.path.join(directory, "export.json")) else None
