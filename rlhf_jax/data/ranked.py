"""Ranked records (K completions of one prompt, ranked) -> [N, K, S] arrays, best first.

Record format (the canonical form; tasks/enumerable.py `ranked_records` writes it):

  {"prompt": str, "completions": [str, ...], "ranks": [int, ...], "golds": [float, ...]}

The prompt is text (or a message list, laid out by the layout's chat template as
pipeline.Layout.prompt_ids does); completions are text. `ranks[j]` is completion j's place in the
ranking, **rank 0 = best**; only the order of the ranks counts (0..K-1 is the canonical
spelling; 1..K or any other distinct integers give the same ranking). Ties are not allowed (a
Plackett-Luce ranking is a strict order): two equal ranks are an error naming the record.
`golds` (optional) are the completions' gold rewards, carried along for analysis. A record
needs at least 2 completions (one completion ranks nothing); two identical completion texts in
one record cannot hold different ranks, so such a record is dropped and counted
(`dropped/duplicate_completion`), as prepare_preference drops identical pairs.

K may vary per record: every record is padded to K = `max_completions` (default: the largest
count among the records) with empty slots, `completion_valid` = 0 there, so losses mask them out
(losses/reward.py plackett_luce_loss removes masked entries from the ranking: padding changes
nothing). Arrays, each completion laid out by pipeline.Layout as a [prompt | completion] row and
sorted best first (by rank):

  tokens, mask, completion_mask   int32 [N, K, S]    (all 0 in padded slots)
  completion_valid                int32 [N, K]       1 on real completions
  gold                            float32 [N, K]     the `golds`, NaN when absent or padded

Over-long text follows `layout.overlong` (data/pipeline.py): 'error' raises naming the record
and completion, 'truncate' cuts (counted), 'drop' drops the whole record (a ranking with a
completion missing would be a different ranking), counted as `dropped/overlong_<field>`.
"""

from __future__ import annotations

import numbers
from typing import Iterable, Sequence

import numpy as np

from rlhf_jax.data import pipeline


def _check_record(record: dict, where: str, max_completions: int | None) -> tuple[list, list]:
  """(completions, ranks) of a well-formed record; raises ValueError naming `where`."""
  if not isinstance(record.get("prompt"), (str, list, tuple)):  # text, or chat messages
    raise ValueError(f"{where}: field 'prompt' missing or not text: {record!r:.200}")
  completions, ranks = record.get("completions"), record.get("ranks")
  if (not isinstance(completions, (list, tuple))
      or not all(isinstance(c, str) for c in completions)):
    raise ValueError(f"{where}: field 'completions' missing or not a list of texts: "
                     f"{record!r:.200}")
  if len(completions) < 2:
    raise ValueError(f"{where}: {len(completions)} completion(s); a ranking needs at least 2")
  if max_completions is not None and len(completions) > max_completions:
    raise ValueError(f"{where}: {len(completions)} completions, more than the configured "
                     f"maximum K={max_completions}")
  if (not isinstance(ranks, (list, tuple)) or len(ranks) != len(completions)
      or not all(isinstance(r, numbers.Integral) and not isinstance(r, bool) for r in ranks)):
    raise ValueError(f"{where}: field 'ranks' must be a list of {len(completions)} integers "
                     f"(one per completion, 0 = best); got {ranks!r:.200}")
  first = {}
  for j, r in enumerate(ranks):
    if int(r) in first:
      raise ValueError(f"{where}: completions {first[int(r)]} and {j} are tied at rank {int(r)} "
                       f"(ranks {list(ranks)}); ties are not allowed: give every completion its "
                       "own rank, 0 = best")
    first[int(r)] = j
  golds = record.get("golds")
  if golds is not None and (not isinstance(golds, (list, tuple)) or len(golds) != len(ranks)
                            or not all(isinstance(g, numbers.Real) for g in golds)):
    raise ValueError(f"{where}: field 'golds' must be a list of {len(ranks)} numbers; got "
                     f"{golds!r:.200}")
  return list(completions), [int(r) for r in ranks]


def _pad(row: dict[str, np.ndarray], k: int, pad_id: int) -> dict[str, np.ndarray]:
  """A record's [k_i, ...] fields padded to [k, ...] with empty slots."""
  out = {}
  for key, v in row.items():
    fill = {"tokens": pad_id, "gold": np.nan}.get(key, 0)
    pad = np.full((k - len(v),) + v.shape[1:], fill, v.dtype)
    out[key] = np.concatenate([v, pad])
  return out


def prepare_ranked(records: Iterable[dict], layout: pipeline.Layout, *, name: str = "ranked",
                   where: Sequence[str] | None = None, max_completions: int | None = None
                   ) -> tuple[dict[str, np.ndarray], pipeline.LayoutStats]:
  """Ranked records -> tokens/mask/completion_mask [N, K, S] best first, completion_valid and
  gold [N, K], with counts of what happened (see the module docstring).

  max_completions: K to pad to (a record with more is an error); None: the most any record has.
  `where`: each record's location (e.g. "path:line"), for error messages."""
  if max_completions is not None and max_completions < 2:
    raise ValueError(f"{name}: max_completions={max_completions}; a ranking needs at least 2")
  stats, rows = pipeline.LayoutStats(), []
  for i, record in enumerate(records):
    where_i = pipeline._record_where(name, i, where)  # pylint: disable=protected-access
    completions, ranks = _check_record(record, where_i, max_completions)
    if len(set(completions)) < len(completions):
      stats.dropped["duplicate_completion"] += 1
      continue
    order = sorted(range(len(ranks)), key=ranks.__getitem__)  # best (lowest rank) first
    p = layout.prompt_ids(record["prompt"], where_i, stats)
    laid = []
    for j in order if p is not None else ():
      c = layout.completion_ids(completions[j], f"{where_i} (completion {j}, rank {ranks[j]})",
                                stats)
      if c is None:  # dropped (counted by the layout): the ranking goes with it
        break
      laid.append(layout.row(p, c))
    if p is None or len(laid) < len(order):
      continue
    golds = record.get("golds")
    rows.append({k: np.stack([r[k] for r in laid]) for k in laid[0]}
                | {"completion_valid": np.ones((len(order),), np.int32),
                   "gold": np.array([np.nan if golds is None else golds[j] for j in order],
                                    np.float32)})
    stats.kept += 1
  k = max_completions or max((len(r["completion_valid"]) for r in rows), default=2)
  rows = [_pad(r, k, layout.tokenizer.pad_id) for r in rows]
  return pipeline._stack(rows, name, stats), stats  # pylint: disable=protected-access
