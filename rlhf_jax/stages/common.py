"""Pieces every stage shares: mesh and rules, task records, tokenizer, layout, model init
(from scratch, from an earlier stage's export, or from a Hugging Face checkpoint)."""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections

from rlhf_jax import models, validate
from rlhf_jax.data import builders, chat, formats, pipeline, sources
from rlhf_jax.data import tokenizer as tokenizer_lib
from rlhf_jax.models import hf as hf_lib
from rlhf_jax.parallel import distributed, mesh as mesh_lib
from rlhf_jax.train import export, loop, nonfinite


def mesh_and_rules(config):
  return (mesh_lib.make_mesh(config.mesh.to_dict()),
          tuple(tuple(r) for r in config.logical_axis_rules))


def task_params(config) -> dict[str, Any]:
  return dict(config.task.params.to_dict()) if "params" in config.task else {}


def uses_task(config) -> bool:
  """Whether the stage's data is the built-in toy task (data.source = 'task')."""
  return config.data.get("source", "task") == "task"


def make_task(config):
  """The toy task (gold reward, exact evaluation), or None when the data is the user's."""
  return builders.make_task(config.task.name, **task_params(config)) if uses_task(config) else None


def _data_dir(config, workdir: str) -> str:
  return config.data.data_dir or os.path.join(workdir, "data")


def record_set(config, workdir: str, kind: str, split: str) -> sources.Records:
  """Canonical `kind` records ('sft' | 'preference' | 'ranked' | 'prompt', data/formats.py) of
  `split` ('train' | 'test', the held-out split) from config.data.source (data/sources.py),
  each with where it came from. Prepared once (by process 0) under data.data_dir or
  <workdir>/data."""
  dc, data_dir = config.data, _data_dir(config, workdir)
  split = "train" if split == "train" else "eval"

  def task_reader(name: str) -> sources.Records:
    source = builders.load_split(config.task.name, kind, name, data_dir=data_dir,
                                 task_params=task_params(config))
    records = [builders.decode_record(source[i]) for i in range(len(source))]
    return sources.Records(records, [f"{config.task.name}/{name} record {i}"
                                     for i in range(len(records))])

  samples = kind == "sft" and dc.sft_records_path  # rejection sampling's output
  if samples and uses_task(config):
    if split == "train":  # all of it; the task's own held-out split evaluates
      raw = sources.read_file(dc.sft_records_path)
    else:
      return distributed.on_process_zero_first(
          f"data/{kind}/{split}",
          lambda: sources.read(dc, split, data_dir=data_dir, task_reader=task_reader))
  else:
    if samples:  # the user's data: the samples file, data.heldout_fraction of it held out
      dc = ml_collections.ConfigDict({**dc.to_dict(), "source": "files",
                                      "path": dc.sft_records_path, "train_split": "train",
                                      "eval_split": "test"})
    raw = distributed.on_process_zero_first(
        f"data/{kind}/{split}",
        lambda: sources.read(dc, split, data_dir=data_dir, task_reader=task_reader))
    if uses_task(config):
      return raw  # the toy tasks write canonical records
  fields = {} if samples else dict(dc.fields)  # samples are written with canonical names
  out, drops = formats.canonical(raw, kind, fields, name=f"{kind}/{split}")
  if drops:
    logging.info("%s/%s: %d records, dropped %s", kind, split, len(out), drops)
  return out


def records(config, workdir: str, kind: str, split: str) -> list[dict]:
  """The records of `record_set`, without their locations."""
  return record_set(config, workdir, kind, split).records


def hf_path(config) -> str:
  """config.model.hf_path as an absolute path ("" when unset), after validate.check_hf_path (the
  stage reads it, init.from_workdir is not also set, the directory holds a checkpoint)."""
  validate.check_hf_path(config)
  path = config.model.get("hf_path", "") if "model" in config else ""
  return os.path.abspath(path) if path else ""


def tokenizer_spec(config, workdir: str, task) -> dict:
  """The tokenizer of this run: the init checkpoint's, the one beside model.hf_path's weights
  (kind "hf", see data/tokenizer.from_spec for its special ids), a char alphabet, a given
  sentencepiece file, or one trained on the train split's text (the task's, or the data
  source's, with the chat template's role markers as single pieces) and cached at
  <workdir>/tokenizer.model. The chat template in use (data/chat.py) travels in the spec
  ("chat_template"), so later stages starting from this run's export render conversations
  alike."""
  path = hf_path(config)  # raises if init.from_workdir is set too
  if config.init.from_workdir:
    return export.load_meta(config.init.from_workdir)["tokenizer"]
  template = _template_source(config, path)
  if path:
    return _with_template({"kind": "hf", "path": path}, template)
  tc = config.tokenizer
  if tc.kind == "char":
    if task is None:
      raise ValueError("tokenizer.kind='char' is the toy tasks' alphabet; with data.source="
                       f"{config.data.source!r} use tokenizer.kind='sentencepiece' (trained on "
                       "the data) or model.hf_path")
    return {"kind": "char", "alphabet": task.alphabet}
  if tc.kind != "sentencepiece":
    raise ValueError(f"unknown tokenizer.kind {tc.kind!r}; "
                     f"valid: {list(tokenizer_lib.CONFIG_KINDS)}")
  path = tc.path or os.path.join(workdir, "tokenizer.model")
  if task is not None:
    texts_fn = task.texts
  else:
    texts_fn = lambda: formats.texts(record_set(config, workdir, _text_kind(config), "train"))
  symbols = chat.DEFAULT_MARKERS if template == chat.DEFAULT_TEMPLATE else ()
  distributed.on_process_zero_first(
      "tokenizer", lambda: tokenizer_lib.load_or_train(path, texts_fn, vocab_size=tc.vocab_size,
                                                       symbols=symbols))
  return _with_template({"kind": "sentencepiece", "path": os.path.abspath(path)}, template)


def _text_kind(config) -> str:
  """The record kind whose text trains this stage's tokenizer."""
  if config.stage == "reward_model":
    from rlhf_jax.train import reward_model as rm_steps  # pylint: disable=g-import-not-at-top
    return "ranked" if config.loss.name in rm_steps.RANKED_LOSSES else "preference"
  return {"sft": "sft", "dpo": "preference"}.get(config.stage, "prompt")


def _template_source(config, hf_dir: str) -> str | None:
  choice = config.data.get("chat_template", "auto")
  if config.tokenizer.kind == "char" and not hf_dir and choice in ("auto", "none"):
    return None  # the toy tasks' alphabet has no room for a template's markers
  return chat.resolve_source(choice, hf_dir)


def _with_template(spec: dict, template: str | None) -> dict:
  return {**spec, "chat_template": template} if template is not None else spec


def chat_template(tok, tok_spec: dict):
  """The run's ChatTemplate (bound to the tokenizer's special tokens), or None."""
  source = tok_spec.get("chat_template")
  return None if source is None else chat.ChatTemplate(source, chat.special_tokens(tok))


def layout(config, tok, tok_spec: dict | None = None) -> pipeline.Layout:
  template = chat_template(tok, tok_spec) if tok_spec else None
  return pipeline.Layout.from_config(tok, config.data, template)


def model_config(config, vocab_size: int) -> models.ModelConfig:
  """The run's model shape: the init checkpoint's; model.hf_path's config.json (computing in
  config.model.dtype over float32 parameters); or the preset with the tokenizer's vocab."""
  path = hf_path(config)  # raises if init.from_workdir is set too
  if config.init.from_workdir:
    return export.load_meta_model(config.init.from_workdir)
  if path:
    cfg = hf_lib.config_from_hf(hf_lib.read_hf_config(path), dtype=config.model.dtype,
                                param_dtype="float32")
    if vocab_size > cfg.vocab_size:
      raise ValueError(f"model.hf_path={path!r}: the tokenizer has {vocab_size} tokens but "
                       f"config.json's vocab_size is {cfg.vocab_size}")
    return cfg
  return models.get_model_config(config.model.preset, family=config.model.family,
                                 vocab_size=vocab_size, dtype=config.model.dtype)


def init_lm_params(config, mesh, rules):
  """Starting LM parameters on `mesh` under `rules`: config.init.from_workdir's export, the
  model.hf_path checkpoint (loaded tensor by tensor straight into its shardings, float32), or
  None for a fresh initialisation. Laid out like `Transformer(model_config(config, ...))`."""
  path = hf_path(config)  # raises if init.from_workdir is set too
  if config.init.from_workdir:
    return export.load(config.init.from_workdir, mesh, rules, kind="lm").params
  if path:
    params = hf_lib.load_hf(path, mesh=mesh, rules=rules,
                            overrides={"dtype": config.model.dtype}).params
    nonfinite.check_finite(params, f"model.hf_path={path!r}")
    return params
  return None


def summed_eval(eval_step, params, arrays, mesh, config) -> dict[str, float]:
  """Sums each output of `eval_step(params, batch)` over this process's share of the held-out
  arrays (the first train.eval_examples; padded rows must contribute 0)."""
  totals: dict[str, float] = {}
  for local in pipeline.eval_batches(arrays, global_batch=config.data.batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(),
                                     max_examples=config.train.eval_examples):
    for k, v in eval_step(params, loop.to_global(local, mesh)).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return totals
