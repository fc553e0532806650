"""Dataset sources: where a stage's records come from (config `data.source`).

  task    the built-in toy task `task.name` (its TFDS `toy_task` builder; data/builders.py)
  files   local JSONL, JSON or Parquet files at `data.path`:
            a file or a glob      the train split
            a directory           its splits by file name: `<split>.<ext>`, `<split>-*.<ext>`,
                                  `<split>_*.<ext>` or `<split>/*.<ext>` (ext jsonl, json, parquet)
  tfds    a registered TFDS builder `data.path` ("name" or "name/config", e.g.
          "hh_rlhf/harmless-base-skip-malformed"), prepared under data.data_dir with
          `data.manual_dir` as its manual directory
The training split is `data.train_split` ("train"), the held-out split `data.eval_split`
("test"); when the source has no eval split (or it is the train split), it is a seeded fraction
`data.heldout_fraction` of the train split (`data.split_seed`): the same rows on every run and
process, disjoint from the train rows that remain (both are logged with their sizes).

Readers: JSONL line by line with `json` (errors name file:line), JSON (a list of objects, or an
object holding one such list) with `json`, Parquet with pyarrow; TFDS through its data source.
Every record is returned with where it came from ("file:line", "file row i", "tfds name/split
record i"), for the error messages of the formats and the layout.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from typing import Callable

import numpy as np

SOURCES = ("task", "files", "tfds")
EXTENSIONS = (".jsonl", ".json", ".parquet")


@dataclasses.dataclass
class Records:
  """Records of one split and where each came from."""
  records: list[dict]
  where: list[str]

  def __len__(self) -> int:
    return len(self.records)

  def take(self, index) -> "Records":
    return Records([self.records[i] for i in index], [self.where[i] for i in index])


def _read_jsonl(path: str) -> Records:
  records, where = [], []
  offset = 0  # bytes before the current line
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, 1):
      at = f"{path}:{line_no}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{at}: invalid UTF-8 ({e.reason}) at byte {e.start} of the line (byte "
                         f"offset {offset + e.start} of the file)") from None
      offset += len(raw)
      line = line.removeprefix("\ufeff") if line_no == 1 else line  # a BOM is allowed
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{at}: not valid JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(record, dict):
        raise ValueError(f"{at}: expected a JSON object per line, got {type(record).__name__}")
      records.append(record)
      where.append(at)
  return Records(records, where)


def _read_json(path: str) -> Records:
  with open(path, encoding="utf-8-sig") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                       "a .json file holds a list of objects (JSON Lines go in .jsonl)") from None
  if isinstance(data, dict):
    lists = [k for k, v in data.items() if isinstance(v, list)]
    if len(lists) != 1:
      raise ValueError(f"{path}: a JSON object must hold exactly one list of records; it has "
                       f"{len(lists)} list fields {lists}")
    data = data[lists[0]]
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a list of objects, got {type(data).__name__}")
  for i, record in enumerate(data):
    if not isinstance(record, dict):
      raise ValueError(f"{path} record {i}: expected an object, got {type(record).__name__}")
  return Records(list(data), [f"{path} record {i}" for i in range(len(data))])


def _read_parquet(path: str) -> Records:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  records = pq.read_table(path).to_pylist()
  return Records(records, [f"{path} row {i}" for i in range(len(records))])


def read_file(path: str) -> Records:
  ext = os.path.splitext(path)[1].lower()
  readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}
  if ext not in readers:
    raise ValueError(f"{path}: unsupported file type {ext!r}; valid: {list(EXTENSIONS)}")
  out = readers[ext](path)
  if not out.records:
    raise ValueError(f"{path}: no records (the file is empty or blank)")
  return out


def _data_files(paths) -> list[str]:
  return sorted(p for p in paths if os.path.isfile(p) and p.lower().endswith(EXTENSIONS))


def split_files(path: str, split: str) -> list[str]:
  """The files of `split` under data.path (module docstring); [] when the source has none."""
  if os.path.isdir(path):
    found = []
    for pattern in (f"{split}.*", f"{split}-*", f"{split}_*", os.path.join(split, "*")):
      found += _data_files(glob.glob(os.path.join(path, pattern)))
    return sorted(set(found))
  if split != "train":
    return []
  files = _data_files(glob.glob(path)) if glob.has_magic(path) else _data_files([path])
  if not files:
    raise FileNotFoundError(f"data.path={path!r}: no {'/'.join(EXTENSIONS)} file matches")
  return files


def read_files(path: str, split: str) -> Records | None:
  files = split_files(path, split)
  if not files:
    if split == "train" or not os.path.isdir(path):
      raise FileNotFoundError(f"data.path={path!r}: no train split (looked for train.jsonl, "
                              "train-*.parquet, train/*.json, ...)")
    return None
  parts = [read_file(f) for f in files]
  return Records([r for p in parts for r in p.records], [w for p in parts for w in p.where])


def _decode(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return [_decode(v) for v in value.tolist()]
  if isinstance(value, (list, tuple)):
    return [_decode(v) for v in value]
  if isinstance(value, dict):
    return {k: _decode(v) for k, v in value.items()}
  return value.item() if hasattr(value, "item") else value


def _tfds_builder(name: str, data_dir: str, manual_dir: str):
  """The registered TFDS builder `name`, prepared once under data_dir."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from rlhf_jax.data import hh_rlhf  # pylint: disable=g-import-not-at-top,unused-import  (registers)
  tfds.disable_progress_bar()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"data.path={name!r}: not a registered TFDS builder ({e})") from None
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir or None))
  return builder


def read_tfds(name: str, split: str, *, data_dir: str, manual_dir: str = "") -> Records | None:
  """A registered TFDS builder's split (prepared once), or None when it has no such split."""
  builder = _tfds_builder(name, data_dir, manual_dir)
  if split not in builder.info.splits:
    return None
  source = builder.as_data_source(split=split)
  records = [_decode(dict(source[i])) for i in range(len(source))]
  return Records(records, [f"tfds {name}/{split} record {i}" for i in range(len(records))])


def heldout(train: Records, fraction: float, seed: int) -> tuple[Records, Records]:
  """(train, held-out): a seeded `fraction` of the rows held out, the rest kept, orders kept."""
  n = len(train)
  n_out = int(round(fraction * n))
  if not 0 < n_out < n:
    raise ValueError(f"data.heldout_fraction={fraction} of {n} records leaves {n_out} held out: "
                     "both parts must be non-empty")
  perm = np.random.default_rng(seed).permutation(n)
  out, keep = np.sort(perm[:n_out]), np.sort(perm[n_out:])
  return train.take(keep), train.take(out)


def read(data_config, split: str, *, data_dir: str,
         task_reader: Callable[[str], Records]) -> Records:
  """The records of `split` ("train" or "eval") from the configured source: the eval split is
  data.eval_split, or held out of the train split (and then removed from it) when the source
  has no such split and data.heldout_fraction > 0."""
  kind, path = data_config.source, data_config.get("path", "")
  if kind not in SOURCES:
    raise ValueError(f"unknown data.source {kind!r}; valid: {list(SOURCES)}")
  if split not in ("train", "eval"):
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
  manual_dir = data_config.get("manual_dir", "")
  train_name, eval_name = data_config.get("train_split", "train"), data_config.eval_split
  name = train_name if split == "train" else eval_name

  def raw(split_name: str) -> Records | None:
    if kind == "task":
      return task_reader(split_name)
    if kind == "files":  # a single file or glob is the train split, whatever its name
      single = not os.path.isdir(path)
      return read_files(path, "train" if single and split_name == train_name else split_name)
    return read_tfds(path, split_name, data_dir=data_dir, manual_dir=manual_dir)

  def train_raw() -> Records:
    out = raw(train_name)
    if out is None:
      raise ValueError(f"data.source={kind!r} ({path}) has no {train_name!r} split "
                       "(data.train_split)")
    return out

  if kind == "task":
    return raw(name)
  has_eval = eval_name != train_name and (
      bool(split_files(path, eval_name)) if kind == "files" else
      eval_name in _tfds_builder(path, data_dir, manual_dir).info.splits)
  if has_eval:
    return raw(name) if split == "eval" else train_raw()
  fraction = data_config.heldout_fraction
  if not fraction:
    if split == "train":
      return train_raw()
    raise ValueError(f"data.source={kind!r} ({path}) has no {name!r} split; set "
                     "data.heldout_fraction to hold out part of the train split")
  train, held = heldout(train_raw(), fraction, data_config.split_seed)
  logging.info("data: %s has no %r split: %d of %d train records held out (fraction %g, seed "
               "%d)", path, eval_name, len(held), len(held) + len(train), fraction,
               data_config.split_seed)
  return train if split == "train" else held
