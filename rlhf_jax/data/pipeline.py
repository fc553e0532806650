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

Length buckets (config `data.length_buckets`, SFT training batches): a transform of batches,
not a different sampler. Each step's batch is cut to the smallest bucket >= its used width W =
1 + the last column holding a real token in any row (of the whole global batch, so every
process cuts to the same width), i.e. trailing all-padding columns are dropped; S itself is the
implicit last bucket. Under causal attention columns after a row's last real token change
nothing before it, so the loss equals the full-width one. A train step compiles at most once
per width in {b in buckets, b < S} + {S}: len(buckets) + 1 shapes at most (buckets must be in
[1, S]). The right-padded side is what gets cut: the completion part of [prompt | completion]
rows, the tail of packed rows (which start at column 0). Evaluation keeps the full width.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Iterable, Iterator, Sequence

import grain
import numpy as np

from rlhf_jax.data import chat

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


@dataclasses.dataclass(frozen=True)
class Layout:
  """How text becomes a [prompt | completion] row.

  allow_empty: an empty completion (EOS alone) is valid data (e.g. the enumerable world) rather
    than an error.
  end_by_length: a completion of exactly completion_len tokens without room for EOS "ended by
    length" and is kept without EOS, as generation with max_new_tokens = completion_len produces
    it; otherwise it is over-long and follows `overlong`.
  """
  tokenizer: object
  prompt_len: int
  completion_len: int
  overlong: str = "error"
  allow_empty: bool = False
  end_by_length: bool = False
  chat: object = None              # data/chat.ChatTemplate for message-list records, or None
  last_turn_only: bool = False     # conversational SFT: loss on the last assistant turn only

  def __post_init__(self):
    if self.overlong not in OVERLONG_POLICIES:
      raise ValueError(f"unknown overlong policy {self.overlong!r}; valid: {list(OVERLONG_POLICIES)}")

  @classmethod
  def from_config(cls, tokenizer, data_config, chat_template=None) -> "Layout":
    return cls(tokenizer, data_config.prompt_len, data_config.completion_len,
               data_config.overlong, data_config.allow_empty_completion,
               data_config.end_by_length, chat_template,
               bool(data_config.get("last_turn_only", False)))

  def _template(self, where: str):
    if self.chat is None:
      raise ValueError(f"{where}: a message-list record needs a chat template, but "
                       "data.chat_template is 'none'")
    return self.chat

  def _fit_prompt(self, ids, where, stats):
    return _fit(ids, self.prompt_len, field="prompt", where=where, overlong=self.overlong,
                keep="right", stats=stats)

  def prompt_ids(self, prompt, where: str, stats: LayoutStats) -> list[int] | None:
    """Prompt ids fitted to prompt_len (left-truncation keeps the end of the prompt): BOS +
    the text's ids, or a message list rendered by the chat template with the assistant's turn
    header appended (add_generation_prompt; the template writes BOS if the model has one)."""
    if isinstance(prompt, str):
      ids = [self.tokenizer.bos_id] + self.tokenizer.encode(prompt)
    else:
      ids, _ = chat.encode_chat(self.tokenizer, self._template(where), prompt,
                                add_generation_prompt=True)
    return self._fit_prompt(ids, where, stats)

  def split_ids(self, prompt, completion, where: str, stats: LayoutStats
                ) -> tuple[list[int], list[int], list[int]] | None:
    """(prompt ids, completion ids, completion loss mask), fitted, or None when dropped.
    Text: as prompt_ids / completion_ids, loss on every completion token. Message lists: the
    whole conversation through the chat template (data/chat.encode_split), loss on the
    completion's assistant turns only, nothing appended (the template ends each turn)."""
    if isinstance(prompt, str):
      p = self.prompt_ids(prompt, where, stats)
      c = None if p is None else self.completion_ids(completion, where, stats)
      return None if c is None else (p, c, [1] * len(c))
    p, c, loss = chat.encode_split(self.tokenizer, self._template(where), prompt, completion)
    if not any(loss):
      raise ValueError(f"{where}: the completion has no assistant turn to train on")
    p = self._fit_prompt(p, where, stats)
    c = None if p is None else _fit(c, self.completion_len, field="completion", where=where,
                                    overlong=self.overlong, keep="left", stats=stats)
    return None if c is None else (p, c, loss[:len(c)])

  def sft_ids(self, record: dict, where: str, stats: LayoutStats):
    """split_ids of a canonical SFT record (data/formats.py): {prompt, completion}, or
    {messages} split before its first assistant turn (last_turn_only: its last run of
    assistant turns), so that earlier assistant turns are trained on too."""
    if "messages" not in record:
      return self.split_ids(record["prompt"], record["completion"], where, stats)
    messages = record["messages"]
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
      raise ValueError(f"{where}: the conversation has no assistant turn to train on")
    k = roles.index("assistant")
    if self.last_turn_only:
      k = len(roles) - roles[::-1].index("assistant")
      while k > 0 and roles[k - 1] == "assistant":
        k -= 1
    if k == 0:
      raise ValueError(f"{where}: the conversation starts with an assistant turn; it needs a "
                       "prompt before it")
    return self.split_ids(messages[:k], messages[k:], where, stats)

  def completion_ids(self, completion: str, where: str, stats: LayoutStats) -> list[int] | None:
    """Completion ids + EOS fitted to completion_len (truncation cuts the end, EOS included)."""
    if not completion and not self.allow_empty:
      raise ValueError(f"{where}: empty completion")
    ids = self.tokenizer.encode(completion)
    if not (self.end_by_length and len(ids) == self.completion_len):
      ids = ids + [self.tokenizer.eos_id]
    return _fit(ids, self.completion_len, field="completion", where=where,
                overlong=self.overlong, keep="left", stats=stats)

  def row(self, prompt_ids: Sequence[int], completion_ids: Sequence[int],
          loss_mask: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """The [prompt | completion] row; completion_mask = `loss_mask` over the completion (all
    of it by default)."""
    p, c = self.prompt_len, self.completion_len
    tokens = np.full((p + c,), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((p + c,), np.int32)
    completion_mask = np.zeros((p + c,), np.int32)
    tokens[p - len(prompt_ids):p] = prompt_ids
    mask[p - len(prompt_ids):p] = 1
    tokens[p:p + len(completion_ids)] = completion_ids
    mask[p:p + len(completion_ids)] = 1
    completion_mask[p:p + len(completion_ids)] = 1 if loss_mask is None else loss_mask
    return {"tokens": tokens, "mask": mask, "completion_mask": completion_mask}

  def prompt_row(self, prompt_ids: Sequence[int]) -> dict[str, np.ndarray]:
    """A prompt alone, left-padded to prompt_len (the input of generation)."""
    tokens = np.full((self.prompt_len,), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((self.prompt_len,), np.int32)
    tokens[self.prompt_len - len(prompt_ids):] = prompt_ids
    mask[self.prompt_len - len(prompt_ids):] = 1
    return {"prompt_tokens": tokens, "prompt_mask": mask}


def _text_fields(record: dict, fields: Sequence[str], where: str) -> None:
  for field in fields:
    if not isinstance(record.get(field), str):
      raise ValueError(f"{where}: field {field!r} missing or not text: {record!r:.200}")


def _fields(record: dict, fields: Sequence[str], where: str) -> None:
  """Each field is text, or (with a chat template) a list of messages."""
  for field in fields:
    value = record.get(field)
    if not isinstance(value, (str, list, tuple)):
      raise ValueError(f"{where}: field {field!r} missing or not text: {record!r:.200}")


def _stack(rows: list[dict], name: str, stats: LayoutStats) -> dict[str, np.ndarray]:
  if not rows:
    raise ValueError(f"{name}: no records left after layout ({stats.as_dict()})")
  logging.info("%s layout: %s", name, stats.as_dict())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _record_where(name: str, i: int, where: Sequence[str] | None) -> str:
  """How error messages name record i: `where[i]` (e.g. "file.jsonl:12") when given."""
  return f"{name} record {i}" if where is None else f"{where[i]} ({name} record {i})"


def prepare_sft(records: Iterable[dict], layout: Layout, *, name: str = "sft",
                where: Sequence[str] | None = None
                ) -> tuple[dict[str, np.ndarray], LayoutStats]:
  """Canonical SFT records (data/formats.py: {prompt, completion} text or message lists, or
  {messages}) -> arrays tokens/mask/completion_mask [N, S], with counts of what happened.
  `where`: each record's location (e.g. "path:line"), for error messages."""
  stats, rows = LayoutStats(), []
  for i, record in enumerate(records):
    where_i = _record_where(name, i, where)
    if "messages" not in record:
      _fields(record, ("prompt", "completion"), where_i)
    ids = layout.sft_ids(record, where_i, stats)
    if ids is None:
      continue
    rows.append(layout.row(*ids))
    stats.kept += 1
  return _stack(rows, name, stats), stats


def prepare_preference(records: Iterable[dict], layout: Layout, *, name: str = "preference",
                       where: Sequence[str] | None = None
                       ) -> tuple[dict[str, np.ndarray], LayoutStats]:
  """Pairs -> chosen_{tokens,mask,completion_mask}, rejected_{...} [N, S], and the gold rewards
  chosen_gold/rejected_gold [N] when the records carry them (NaN otherwise). A pair is dropped
  (counted) as a whole when either side is; identical chosen/rejected pairs are dropped and
  counted. `where`: each record's location (e.g. "path:line"), for error messages."""
  stats, rows = LayoutStats(), []
  for i, record in enumerate(records):
    where_i = _record_where(name, i, where)
    _fields(record, ("prompt", "chosen", "rejected"), where_i)
    if record["chosen"] == record["rejected"]:
      stats.dropped["identical_pair"] += 1
      continue
    w = layout.split_ids(record["prompt"], record["chosen"], where_i + " (chosen)", stats)
    l = None if w is None else layout.split_ids(record["prompt"], record["rejected"],
                                                where_i + " (rejected)", stats)
    if l is None:
      continue
    if w[0] != l[0]:  # a tokenizer merged across the prompt's end differently on the two sides
      stats.dropped["prompt_tokens_differ"] += 1
      continue
    row = {f"chosen_{k}": v for k, v in layout.row(*w).items()}
    row.update({f"rejected_{k}": v for k, v in layout.row(*l).items()})
    row["chosen_gold"] = np.float32(record.get("chosen_gold", np.nan))
    row["rejected_gold"] = np.float32(record.get("rejected_gold", np.nan))
    rows.append(row)
    stats.kept += 1
  return _stack(rows, name, stats), stats


def _check_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
  return global_batch // process_count


def _as_rows(arrays: dict[str, np.ndarray]) -> grain.MapDataset:
  n = len(next(iter(arrays.values())))
  return grain.MapDataset.range(n).map(lambda i: {k: v[i] for k, v in arrays.items()})


def check_length_buckets(buckets: Sequence[int], full: int) -> tuple[int, ...]:
  """Sorted bucket widths; each must be an int in [1, full] (full = the padded length S)."""
  for b in buckets:
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= full:
      raise ValueError(f"data.length_buckets: {b!r} is not an int in [1, {full}] (the padded "
                       f"length prompt_len + completion_len); got {tuple(buckets)}")
  return tuple(sorted(set(int(b) for b in buckets)))


def bucket_width(mask_BxS: np.ndarray, buckets: Sequence[int]) -> int:
  """Smallest bucket >= 1 + the last column with a real token in any row, else S."""
  full = mask_BxS.shape[-1]
  used_S = np.any(mask_BxS.reshape(-1, full) != 0, axis=0)
  width = int(np.flatnonzero(used_S)[-1]) + 1 if used_S.any() else 0
  return next((b for b in sorted(buckets) if width <= b < full), full)


def trim_to_bucket(batch: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
  """Cuts every [B, S] field to its first `width` columns (other fields pass unchanged)."""
  full = batch["mask"].shape[-1]
  return {k: v[:, :width] if v.ndim == 2 and v.shape[1] == full else v for k, v in batch.items()}


def _bucketed(group: dict[str, np.ndarray], buckets: tuple[int, ...], process_index: int
              ) -> dict[str, np.ndarray]:
  """One step's [processes, local, ...] group -> this process's batch cut to the group's width."""
  width = bucket_width(group["mask"], buckets)
  return trim_to_bucket({k: v[process_index] for k, v in group.items()}, width)


def train_dataset(arrays: dict[str, np.ndarray], *, global_batch: int, seed: int,
                  process_index: int = 0, process_count: int = 1,
                  length_buckets: Sequence[int] = ()) -> grain.IterDataset:
  """Endless shuffled batches of this process's shard; reshuffled every epoch.

  Process p takes the contiguous block of rows [p * local, (p + 1) * local) of each global
  batch, the layout loop.to_global assembles: stacked in process order, the processes' batches
  are exactly the single-process global batch. `length_buckets` (non-empty) cuts each step's
  batches to a bucket width, the same on every process (see the module docstring)."""
  local = _check_batch(global_batch, process_count)
  ds = _as_rows(arrays).shuffle(seed=seed).repeat(None).batch(local, drop_remainder=True)
  if not length_buckets:
    return ds[process_index::process_count].to_iter_dataset()
  buckets = check_length_buckets(length_buckets, arrays["mask"].shape[1])
  # The k processes' batches of step g are batches g k .. g k + k - 1, as in the slicing above.
  ds = ds.batch(process_count, drop_remainder=True)
  return ds.map(lambda group: _bucketed(group, buckets, process_index)).to_iter_dataset()


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
  for start in range(0, total, global_batch):
    idx = start + process_index * local + np.arange(local)   # contiguous, as train_dataset
    valid = idx < n
    batch = {k: v[np.where(valid, idx, 0)] * _row_mask(valid, v.ndim).astype(v.dtype)
             for k, v in arrays.items()}
    yield batch


def _row_mask(valid: np.ndarray, ndim: int) -> np.ndarray:
  return valid.reshape((-1,) + (1,) * (ndim - 1))
