"""SFT stage: wire a config to the loop — task data, tokenizer, model, mesh, optimizer, steps."""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax import models
from rlhf_jax.data import builders, pipeline, tokenizer as tokenizer_lib
from rlhf_jax.parallel import distributed, mesh as mesh_lib
from rlhf_jax.train import loop, optimizer as optimizer_lib, sft as sft_steps, state as state_lib


def setup_tokenizer(config, workdir: str, task) -> tokenizer_lib.Tokenizer:
  """The configured tokenizer: a char alphabet, a given sentencepiece file, or one trained from
  the task's text and cached at `<workdir>/tokenizer.model`."""
  tc = config.tokenizer
  if tc.kind == "char":
    return tokenizer_lib.CharTokenizer(task.alphabet)
  if tc.kind != "sentencepiece":
    raise ValueError(f"unknown tokenizer.kind {tc.kind!r}; valid: ['char', 'sentencepiece']")
  path = tc.path or os.path.join(workdir, "tokenizer.model")
  return distributed.on_process_zero_first(
      "tokenizer", lambda: tokenizer_lib.load_or_train(path, task.texts, vocab_size=tc.vocab_size))


def make_model_fn(config, vocab_size: int):
  mc = config.model
  overrides = {"vocab_size": vocab_size, "dtype": mc.dtype}
  cfg = models.get_model_config(mc.preset, **overrides)
  return cfg, (lambda rngs: models.Transformer(cfg, rngs=rngs))


def task_params(config) -> dict[str, Any]:
  return dict(config.task.params.to_dict()) if "params" in config.task else {}


def load_sft_arrays(config, workdir: str, tok, split: str):
  data_dir = config.data.data_dir or os.path.join(workdir, "data")
  source = distributed.on_process_zero_first(
      f"data/{split}", lambda: builders.load_split(config.task.name, "sft", split,
                                                   data_dir=data_dir,
                                                   task_params=task_params(config)))
  records = (builders.decode_record(source[i]) for i in range(len(source)))
  return pipeline.prepare_sft(records, tok, prompt_len=config.data.prompt_len,
                              completion_len=config.data.completion_len,
                              overlong=config.data.overlong, name=f"{config.task.name}/{split}")


def make_evaluator(graphdef, eval_arrays, mesh, config):
  """Exact token-mean NLL and next-token accuracy on the held-out split."""
  eval_step = jax.jit(sft_steps.make_eval_step(graphdef))

  def evaluate(state) -> dict:
    totals = {"nll_sum": 0.0, "correct": 0.0, "num_tokens": 0.0}
    for local in pipeline.eval_batches(eval_arrays, global_batch=config.data.batch_size,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count(),
                                       max_examples=config.train.eval_examples):
      out = eval_step(state.params, loop.to_global(local, mesh))
      for k in totals:
        totals[k] += float(out[k])
    n = max(totals["num_tokens"], 1.0)
    return {"loss": totals["nll_sum"] / n, "token_accuracy": totals["correct"] / n}

  return evaluate


def run(config, workdir: str) -> loop.LoopResult:
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  task = builders.make_task(config.task.name, **task_params(config))
  tok = setup_tokenizer(config, workdir, task)
  train_arrays, _ = load_sft_arrays(config, workdir, tok, "train")
  eval_arrays, _ = load_sft_arrays(config, workdir, tok, "test")

  model_cfg, make_model = make_model_fn(config, tok.vocab_size)
  tx = optimizer_lib.make_optimizer(config.optimizer, config.train.num_steps)
  rules = tuple(tuple(r) for r in config.logical_axis_rules)
  graphdef, state, shardings = state_lib.init_state(make_model, tx, mesh, rules, config.seed)
  logging.info("model %s: %s parameters on mesh %s", config.model.preset,
               f"{state_lib.param_count(state.params):,}", dict(mesh.shape))

  train_iter = iter(pipeline.train_dataset(
      train_arrays, global_batch=config.data.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count()))
  return loop.run(config=config, workdir=workdir, mesh=mesh, state=state,
                  state_shardings=shardings,
                  train_step=sft_steps.make_train_step(graphdef, tx), train_iter=train_iter,
                  evaluate=make_evaluator(graphdef, eval_arrays, mesh, config),
                  tokens_per_step=lambda b: int(np.sum(b["mask"])))
