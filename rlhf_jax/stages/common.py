"""Pieces every stage shares: mesh and rules, task records, tokenizer, layout, model init
(from scratch, from an earlier stage's export, or from a Hugging Face checkpoint)."""

from __future__ import annotations

import os
from typing import Any

import jax

from rlhf_jax import models, validate
from rlhf_jax.data import builders, pipeline, tokenizer as tokenizer_lib
from rlhf_jax.models import hf as hf_lib
from rlhf_jax.parallel import distributed, mesh as mesh_lib
from rlhf_jax.train import export, loop, nonfinite


def mesh_and_rules(config):
  return (mesh_lib.make_mesh(config.mesh.to_dict()),
          tuple(tuple(r) for r in config.logical_axis_rules))


def task_params(config) -> dict[str, Any]:
  return dict(config.task.params.to_dict()) if "params" in config.task else {}


def make_task(config):
  return builders.make_task(config.task.name, **task_params(config))


def records(config, workdir: str, kind: str, split: str):
  """Decoded records of the task's `kind` ('sft' | 'preference' | 'prompt') split, prepared once
  (by process 0) under data.data_dir or <workdir>/data."""
  data_dir = config.data.data_dir or os.path.join(workdir, "data")
  source = distributed.on_process_zero_first(
      f"data/{kind}/{split}", lambda: builders.load_split(
          config.task.name, kind, split, data_dir=data_dir, task_params=task_params(config)))
  return [builders.decode_record(source[i]) for i in range(len(source))]


def hf_path(config) -> str:
  """config.model.hf_path as an absolute path ("" when unset), after validate.check_hf_path (the
  stage reads it, init.from_workdir is not also set, the directory holds a checkpoint)."""
  validate.check_hf_path(config)
  path = config.model.get("hf_path", "") if "model" in config else ""
  return os.path.abspath(path) if path else ""


def tokenizer_spec(config, workdir: str, task) -> dict:
  """The tokenizer of this run: the init checkpoint's, the one beside model.hf_path's weights
  (kind "hf", see data/tokenizer.from_spec for its special ids), a char alphabet, a given
  sentencepiece file, or one trained from the task's text and cached at
  <workdir>/tokenizer.model."""
  path = hf_path(config)  # raises if init.from_workdir is set too
  if config.init.from_workdir:
    return export.load_meta(config.init.from_workdir)["tokenizer"]
  if path:
    return {"kind": "hf", "path": path}
  tc = config.tokenizer
  if tc.kind == "char":
    return {"kind": "char", "alphabet": task.alphabet}
  if tc.kind != "sentencepiece":
    raise ValueError(f"unknown tokenizer.kind {tc.kind!r}; "
                     f"valid: {list(tokenizer_lib.CONFIG_KINDS)}")
  path = tc.path or os.path.join(workdir, "tokenizer.model")
  distributed.on_process_zero_first(
      "tokenizer", lambda: tokenizer_lib.load_or_train(path, task.texts, vocab_size=tc.vocab_size))
  return {"kind": "sentencepiece", "path": os.path.abspath(path)}


def layout(config, tok) -> pipeline.Layout:
  return pipeline.Layout.from_config(tok, config.data)


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
