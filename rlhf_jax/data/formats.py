"""Record formats: the shapes users' datasets already have (TRL's dataset conventions), read into
the canonical records each stage lays out (data/pipeline.py).

Field names are remapped first by config `data.fields` ({canonical name: column name}, e.g.
--config.data.fields.prompt=question; "" keeps the canonical name). Then, per kind of record a stage needs:

  sft         {prompt: str, completion: str}                       plain text
              {messages: [{role, content}, ...]}                   conversational: loss on the
                                                                   assistant turns (all of them;
                                                                   data.last_turn_only: the last)
              {prompt: [messages], completion: [messages]}         loss on the completion's turns
              a preference record                                  SFT on its chosen side
              a ranked record                                      SFT on its best completion
  preference  {prompt: str, chosen: str, rejected: str}            plain text
              {prompt: [msgs], chosen: [msgs], rejected: [msgs]}   explicit prompt
              {chosen: [msgs], rejected: [msgs]}                   implicit prompt: the shared
                                                                   message prefix
              {chosen: str, rejected: str}                         HH-RLHF dialogues, split at the
                                                                   last "\\n\\nAssistant:"
              optional chosen_gold / rejected_gold numbers are kept (toy tasks' gold rewards)
  ranked      {prompt: str, completions: [str], ranks: [int]}      (rank 0 = best)
  prompt      {prompt: str | [msgs]} or {messages: [msgs]}, or any sft/preference record's
              prompt; every other column is kept under "columns" for the reward functions
              (e.g. an `answer`). A conversation ending in assistant turns is cut before them.

Canonical records: sft {"prompt", "completion"} (both str, or both message lists); preference
{"prompt", "chosen", "rejected"} (all str, or all message lists) + golds; prompt {"prompt",
"columns"}; ranked as given. Records that cannot be read are an error naming where they came
from; pairs without a preference (identical sides, differing HH prompts) are dropped and counted.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping

from rlhf_jax.data import chat, hh_rlhf
from rlhf_jax.data.sources import Records

KINDS = ("sft", "preference", "ranked", "prompt")
CANONICAL_FIELDS = ("prompt", "completion", "messages", "chosen", "rejected", "completions",
                    "ranks", "chosen_gold", "rejected_gold")
_STRUCTURAL = set(CANONICAL_FIELDS)


def remap(record: dict, fields: Mapping[str, str], where: str) -> dict:
  """Renames the user's columns to the canonical names (`fields`: canonical -> column)."""
  if not fields:
    return record
  out = dict(record)
  for canonical, column in fields.items():
    if column not in record:
      raise ValueError(f"{where}: data.fields maps {canonical!r} to column {column!r}, which this "
                       f"record lacks (it has {sorted(record)})")
    out[canonical] = out.pop(column)
  return out


def _is_messages(value) -> bool:
  return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(m, dict)
                                                                   for m in value)


def _text_or_messages(record: dict, field: str, where: str):
  value = record.get(field)
  if isinstance(value, str):
    return value
  if _is_messages(value):
    return chat.check_messages(value, f"{where} ({field})")
  got = ("missing" if field not in record else "null" if value is None else
         f"a {type(value).__name__}")
  raise ValueError(f"{where}: field {field!r} is {got}; expected text or a list of "
                   f"{{role, content}} messages (this record has {sorted(record)})")


def _same_type(where: str, **values) -> None:
  kinds = {k: isinstance(v, str) for k, v in values.items()}
  if len(set(kinds.values())) > 1:
    raise ValueError(f"{where}: fields {sorted(values)} mix text and message lists "
                     f"({ {k: 'text' if t else 'messages' for k, t in kinds.items()} })")


def _split_last_assistant(messages: list[dict], where: str) -> tuple[list[dict], list[dict]]:
  """(prompt messages, the trailing assistant messages) of a conversation."""
  k = len(messages)
  while k and messages[k - 1]["role"] == "assistant":
    k -= 1
  if k == len(messages) or k == 0:
    raise ValueError(f"{where}: a conversation must have turns before a final assistant turn")
  return messages[:k], messages[k:]


def _shared_prefix(a: list[dict], b: list[dict]) -> int:
  k = 0
  while k < min(len(a), len(b)) and a[k] == b[k]:
    k += 1
  return k


def _preference(record: dict, where: str, drops: collections.Counter) -> dict | None:
  chosen = _text_or_messages(record, "chosen", where)
  rejected = _text_or_messages(record, "rejected", where)
  _same_type(where, chosen=chosen, rejected=rejected)
  if chosen == rejected:
    drops["identical_pair"] += 1
    return None
  if "prompt" in record:
    prompt = _text_or_messages(record, "prompt", where)
    _same_type(where, prompt=prompt, chosen=chosen)
  elif isinstance(chosen, str):  # an HH-RLHF dialogue pair
    try:
      (prompt, chosen), (prompt_r, rejected) = (hh_rlhf.split_dialogue(chosen, field="'chosen'"),
                                                hh_rlhf.split_dialogue(rejected,
                                                                       field="'rejected'"))
    except hh_rlhf._Malformed as e:  # pylint: disable=protected-access
      raise ValueError(f"{where}: no prompt field, and not an HH-RLHF dialogue pair: "
                       f"{e.detail}") from None
    if prompt != prompt_r:
      drops["prompt_mismatch"] += 1
      return None
  else:  # implicit prompt: the shared message prefix
    k = _shared_prefix(chosen, rejected)
    if k == 0 or k == min(len(chosen), len(rejected)):
      raise ValueError(f"{where}: chosen and rejected share no prompt messages (or one is a "
                       "prefix of the other); give an explicit 'prompt'")
    prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
  out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
  for gold in ("chosen_gold", "rejected_gold"):
    if record.get(gold) is not None:
      out[gold] = float(record[gold])
  return out


def _sft(record: dict, where: str, drops: collections.Counter) -> dict | None:
  if "messages" in record:
    return {"messages": chat.check_messages(record["messages"], f"{where} (messages)")}
  if "completion" in record:
    prompt = _text_or_messages(record, "prompt", where)
    completion = _text_or_messages(record, "completion", where)
    _same_type(where, prompt=prompt, completion=completion)
    return {"prompt": prompt, "completion": completion}
  if "chosen" in record:
    pair = _preference(record, where, drops)
    return None if pair is None else {"prompt": pair["prompt"], "completion": pair["chosen"]}
  if "completions" in record:
    ranked = _ranked(record, where, drops)
    best = min(range(len(ranked["ranks"])), key=lambda i: ranked["ranks"][i])
    return {"prompt": ranked["prompt"], "completion": ranked["completions"][best]}
  raise ValueError(f"{where}: not an SFT record: expected {{prompt, completion}}, {{messages}} or "
                   f"a preference pair (this record has {sorted(record)}; data.fields renames "
                   "columns)")


def _prompt(record: dict, where: str, drops: collections.Counter) -> dict | None:
  columns = {k: v for k, v in record.items() if k not in _STRUCTURAL}
  if "messages" in record:
    messages = chat.check_messages(record["messages"], f"{where} (messages)")
    prompt = (_split_last_assistant(messages, where)[0]
              if messages[-1]["role"] == "assistant" else messages)
  elif "chosen" in record and "prompt" not in record:
    pair = _preference(record, where, drops)
    if pair is None:
      return None
    prompt = pair["prompt"]
  else:
    prompt = _text_or_messages(record, "prompt", where)
  return {"prompt": prompt, "columns": columns}


def _ranked(record: dict, where: str, drops: collections.Counter) -> dict | None:
  del drops
  for field in ("prompt", "completions", "ranks"):
    if field not in record:
      raise ValueError(f"{where}: a ranked record has fields prompt, completions, ranks (this "
                       f"record has {sorted(record)})")
  return {k: record[k] for k in ("prompt", "completions", "ranks")}


_READERS = {"sft": _sft, "preference": _preference, "prompt": _prompt, "ranked": _ranked}


def canonical(raw: Records, kind: str, fields: Mapping[str, str] | None = None, *,
              name: str = "") -> tuple[Records, dict[str, int]]:
  """Canonical `kind` records of `raw` (module docstring) and the counts of dropped records."""
  if kind not in _READERS:
    raise ValueError(f"unknown record kind {kind!r}; valid: {list(KINDS)}")
  fields = {k: v for k, v in dict(fields or {}).items() if v}
  unknown = set(fields) - _STRUCTURAL
  if unknown:
    raise ValueError(f"data.fields: unknown canonical names {sorted(unknown)}; valid: "
                     f"{list(CANONICAL_FIELDS)}")
  drops: collections.Counter = collections.Counter()
  records, where = [], []
  for record, at in zip(raw.records, raw.where):
    out = _READERS[kind](remap(record, fields, at), at, drops)
    if out is not None:
      records.append(out)
      where.append(at)
  if not records:
    raise ValueError(f"{name or kind}: no {kind} records left (dropped: {dict(drops)})")
  return Records(records, where), dict(drops)


def reply(prompt, text: str):
  """A generated completion in its prompt's format: the text, or (for a message-list prompt)
  one assistant message, so sampled records read back as SFT / preference records."""
  return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def texts(records: Records) -> list[str]:
  """Every text of the records (prompts, completions, message contents): tokenizer training."""
  out: list[str] = []

  def add(value: Any) -> None:
    if isinstance(value, str):
      out.append(value)
    elif isinstance(value, (list, tuple)):
      for v in value:
        add(v["content"] if isinstance(v, dict) and "content" in v else v)

  for record in records.records:
    for field in ("prompt", "completion", "messages", "chosen", "rejected", "completions"):
      add(record.get(field))
  return out
