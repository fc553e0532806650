"""TFDS builders for the built-in toy tasks (array_record files; TensorFlow is not needed).

One builder, `toy_task`, serves every task: its BuilderConfig names the task, the record kind
(`sft`, `preference`, `prompt`, `ranked`) and a digest of the task's parameters, so different
task settings are prepared into different directories and never mixed up. Tasks register a
factory in `TASKS` (name -> callable(**params) returning an object with `<kind>_records(split)`
methods and a `SCHEMAS`-compatible record layout). Field types: text, float, int, and lists of
them (`text_list`, ...: a variable-length tfds Sequence; the ranked kind's K completions and
ranks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
from typing import Any, Callable

import numpy as np
import tensorflow_datasets as tfds

from rlhf_jax.tasks.arithmetic import ArithmeticTask
from rlhf_jax.tasks.enumerable import EnumerableTask

# Field types of each record kind; tasks may add task-specific fields through `extra_fields`.
SCHEMAS: dict[str, dict[str, str]] = {
    "sft": {"prompt": "text", "completion": "text"},
    "preference": {"prompt": "text", "chosen": "text", "rejected": "text",
                   "chosen_gold": "float", "rejected_gold": "float"},
    "prompt": {"prompt": "text"},
    # K completions of one prompt, ranks[j] = completion j's place (0 = best; data/ranked.py).
    "ranked": {"prompt": "text", "completions": "text_list", "ranks": "int_list",
               "golds": "float_list"},
}

TASKS: dict[str, Callable[..., Any]] = {
    "arithmetic": ArithmeticTask,
    "enumerable": EnumerableTask,
}

_FEATURE = {"text": tfds.features.Text(), "float": np.float32, "int": np.int64}
_FEATURE.update({f"{k}_list": tfds.features.Sequence(v) for k, v in list(_FEATURE.items())})


def register_task(name: str, factory: Callable[..., Any]) -> None:
  TASKS[name] = factory


def make_task(name: str, **params) -> Any:
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
  return TASKS[name](**params)


def _task_fields(task) -> dict[str, str]:
  return dict(getattr(task, "extra_fields", {}))


class ToyTask(tfds.core.GeneratorBasedBuilder):
  """Procedurally generated toy-task records, one TFDS config per (task, kind, parameters)."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, task_name: str, kind: str, task_params: dict | None = None, **kwargs):
    if kind not in SCHEMAS:
      raise ValueError(f"unknown record kind {kind!r}; valid kinds: {sorted(SCHEMAS)}")
    task_params = dict(task_params or {})
    self._task = make_task(task_name, **task_params)
    if not callable(getattr(self._task, f"{kind}_records", None)):
      kinds = [k for k in SCHEMAS if callable(getattr(self._task, f"{k}_records", None))]
      raise ValueError(f"task {task_name!r} makes no {kind!r} records (it has no "
                       f"{kind}_records method); its record kinds: {kinds}")
    self._kind = kind
    params = dataclasses.asdict(self._task) if dataclasses.is_dataclass(self._task) else task_params
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]
    config = tfds.core.BuilderConfig(name=f"{task_name}-{kind}-{digest}",
                                     description=json.dumps(params, sort_keys=True, default=str))
    super().__init__(config=config, file_format="array_record", **kwargs)

  def _fields(self) -> dict[str, str]:
    fields = dict(SCHEMAS[self._kind])
    fields.update(_task_fields(self._task).get(self._kind, {}))
    return fields

  def _info(self) -> tfds.core.DatasetInfo:
    features = {k: _FEATURE[t] for k, t in self._fields().items()}
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split):
    fields = self._fields()
    records = getattr(self._task, f"{self._kind}_records")(split)
    for i, record in enumerate(records):
      missing = set(fields) - set(record)
      if missing:
        raise ValueError(f"{type(self._task).__name__}.{self._kind}_records({split!r}) record {i} "
                         f"lacks fields {sorted(missing)}")
      yield i, {k: record[k] for k in fields}


def load_split(task_name: str, kind: str, split: str, *, data_dir: str,
               task_params: dict | None = None):
  """Prepares (once) and returns the split as a random-access TFDS data source of dicts."""
  tfds.disable_progress_bar()
  with _quiet_tfds():
    builder = ToyTask(task_name=task_name, kind=kind, task_params=task_params, data_dir=data_dir)
    builder.download_and_prepare()
  logging.info("toy_task %s/%s: %s", builder.builder_config.name, split,
               builder.info.splits[split].num_examples)
  return builder.as_data_source(split=split)


@contextlib.contextmanager
def _quiet_tfds():
  """TFDS's banners for data generated here: the "Using custom data configuration" warning (its
  one-line JSON config) and the "Downloading and preparing dataset Unknown size" print, once per
  builder and split. Errors still show; the info line above says what was prepared."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    absl_logger.setLevel(level)


def _decode(value):
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim > 0):
    return [_decode(v) for v in value]
  return value.item() if hasattr(value, "item") else value


def decode_record(record: dict) -> dict:
  """TFDS returns text as bytes: decode to str, numbers to Python scalars, sequences (lists or
  arrays) to lists of those."""
  return {k: _decode(v) for k, v in record.items()}
