"""Tokenize records into the fixed [prompt | completion] layout and serve sharded batches.

Layout (DESIGN.md): each row is `[prompt | completion]` with S = prompt_len + completion_len;
the prompt (BOS + prompt tokens) is left-padded to prompt_len, the completion (tokens + EOS)
right-padded to completion_len. Arrays per example:

  tokens_S      int32, pad = 0
  mask_S        int32, 1 on real tokens (prompt and completion)
  completion_mask_S  int32, 1 on completion tokens (the tokens a loss is taken on)

Splits are tokenized once, validated, and counted (kept / truncated / dropped, by reason);
over-long prompts are an error, truncated from the left, or dropped, by config — never silent.
Batches come from a grain pipeline: a seeded shuffle that changes every epoch, sharded per
process by global index (process p of k takes indices p, p+k, ...), so across processes each
example is seen exactly once per epoch. The iterator state is a small dict, checkpointable.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Iterable, Iterator, Sequence

import grain
import numpy as np

OVERLONG_POLICIES = ("error", "truncate", "drop")


@dataclasses.dataclass
class LayoutStats:
  """What happened to each record while laying it out."""
  kept: int = 0
  truncated: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def as_dict(self, prefix: str = "") -> dict[str, int]:
    out = {f"{prefix}kept": self.kept}
    out.update({f"{prefix}truncated/{k}": v for k, v in sorted(self.truncated.items())})
    out.update({f"{prefix}dropped/{k}": v for k, v in sorted(self.dropped.items())})
    return out


def _fit(ids: list[int], length: int, *, field: str, where: str, overlong: str,
         keep: str, stats: LayoutStats) -> list[int] | None:
  """Returns ids fitted to `length` (cut from the `keep` side's opposite) or None to drop."""
  if len(ids) <= length:
    return ids
  if overlong == "error":
    raise ValueError(f"{where}: {field} has {len(ids)} tokens, more than the configured "
                     f"{field}_len={length} (set data.overlong to 'truncate' or 'drop')")
  if overlong == "drop":
    stats.dropped[f"overlong_{field}"] += 1
    return None
  stats.truncated[field] += 1
  return ids[-length:] if keep == "right" else ids[:length]


def layout_prompt(tokenizer, prompt: str, *, prompt_len: int, overlong: str, where: str,
                  stats: LayoutStats) -> list[int] | None:
  """BOS + prompt ids fitted to prompt_len (left-truncation keeps the end of the prompt)."""
  ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
  return _fit(ids, prompt_len, field="prompt", where=where, overlong=overlong, keep="right",
              stats=stats)


def layout_completion(tokenizer, completion: str, *, completion_len: int, overlong: str,
                      where: str, stats: LayoutStats) -> list[int] | None:
  """Completion ids + EOS fitted to completion_len (truncation cuts the end, EOS included)."""
  if not completion:
    raise ValueError(f"{where}: empty completion")
  ids = tokenizer.encode(completion) + [tokenizer.eos_id]
  return _fit(ids, completion_len, field="completion", where=where, overlong=overlong,
              keep="left", stats=stats)


def pack_row(prompt_ids: Sequence[int], completion_ids: Sequence[int], prompt_len: int,
             completion_len: int, pad_id: int) -> dict[str, np.ndarray]:
  s = prompt_len + completion_len
  tokens = np.full((s,), pad_id, np.int32)
  mask = np.zeros((s,), np.int32)
  completion_mask = np.zeros((s,), np.int32)
  p0 = prompt_len - len(prompt_ids)
  tokens[p0:prompt_len] = prompt_ids
  mask[p0:prompt_len] = 1
  c1 = prompt_len + len(completion_ids)
  tokens[prompt_len:c1] = completion_ids
  mask[prompt_len:c1] = 1
  completion_mask[prompt_len:c1] = 1
  return {"tokens": tokens, "mask": mask, "completion_mask": completion_mask}


def prepare_sft(records: Iterable[dict], tokenizer, *, prompt_len: int, completion_len: int,
                overlong: str = "error", name: str = "sft") -> tuple[dict[str, np.ndarray], LayoutStats]:
  """Tokenizes SFT records into stacked arrays [N, S] and counts what happened."""
  if overlong not in OVERLONG_POLICIES:
    raise ValueError(f"unknown overlong policy {overlong!r}; valid: {list(OVERLONG_POLICIES)}")
  stats = LayoutStats()
  rows = []
  for i, record in enumerate(records):
    where = f"{name} record {i}"
    for field in ("prompt", "completion"):
      if not isinstance(record.get(field), str):
        raise ValueError(f"{where}: field {field!r} missing or not text: {record!r:.200}")
    p = layout_prompt(tokenizer, record["prompt"], prompt_len=prompt_len, overlong=overlong,
                      where=where, stats=stats)
    c = None if p is None else layout_completion(
        tokenizer, record["completion"], completion_len=completion_len, overlong=overlong,
        where=where, stats=stats)
    if p is None or c is None:
      continue
    rows.append(pack_row(p, c, prompt_len, completion_len, tokenizer.pad_id))
    stats.kept += 1
  if not rows:
    raise ValueError(f"{name}: no records left after layout ({stats.as_dict()})")
  arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  logging.info("%s layout: %s", name, stats.as_dict())
  return arrays, stats


def _check_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
  return global_batch // process_count


def _as_rows(arrays: dict[str, np.ndarray]) -> grain.MapDataset:
  n = len(next(iter(arrays.values())))
  return grain.MapDataset.range(n).map(lambda i: {k: v[i] for k, v in arrays.items()})


def train_dataset(arrays: dict[str, np.ndarray], *, global_batch: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Endless shuffled batches of this process's shard; reshuffled every epoch."""
  local = _check_batch(global_batch, process_count)
  ds = _as_rows(arrays).shuffle(seed=seed).repeat(None)[process_index::process_count]
  return ds.batch(local, drop_remainder=True).to_iter_dataset()


def eval_batches(arrays: dict[str, np.ndarray], *, global_batch: int, process_index: int = 0,
                 process_count: int = 1, max_examples: int | None = None) -> Iterator[dict]:
  """One ordered pass over (the first max_examples of) a split, this process's shard.

  The last batch is padded with all-zero rows (mask 0), so shapes stay static and padded rows
  weigh nothing in masked means.
  """
  local = _check_batch(global_batch, process_count)
  n = len(next(iter(arrays.values())))
  n = n if max_examples is None else min(n, max_examples)
  # Pad the pass to a whole number of global batches so every process yields the same count.
  total = -(-n // global_batch) * global_batch
  for start in range(process_index, total, global_batch):
    idx = np.arange(start, start + global_batch, process_count)[:local]
    valid = idx < n
    batch = {k: v[np.where(valid, idx, 0)] * _row_mask(valid, v.ndim).astype(v.dtype)
             for k, v in arrays.items()}
    yield batch


def _row_mask(valid: np.ndarray, ndim: int) -> np.ndarray:
  return valid.reshape((-1,) + (1,) * (ndim - 1))
