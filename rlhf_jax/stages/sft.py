"""SFT stage: wire a config to the loop — data (data.source), tokenizer, model, mesh, optimizer, steps.

Starts from scratch, from `init.from_workdir`'s export, or from the Hugging Face checkpoint at
`model.hf_path` (its shape, weights and tokenizer; stages/common.py). Produces `<workdir>/export`
(kind "lm"), which later stages start from. `data.packing` packs the training examples several
to a row of prompt_len + completion_len tokens (data/packing.py); `data.length_buckets` cuts each
training batch to a bucket width (data/pipeline.py). Evaluation always runs on the unpacked,
full-width held-out split.

train/tflops_per_sec and train/mfu count a training step of the policy over the padded [B, S]
batch as it runs (padding counts: it is computed; S is the bucket's width with length buckets):
models/flops.train_flops, about 2x the forward instead of 3x with LoRA (frozen weights)."""

from __future__ import annotations

import logging

import jax
import numpy as np

from rlhf_jax.data import packing, pipeline, tokenizer as tokenizer_lib
from rlhf_jax.models import flops
from rlhf_jax.parallel import sharding as sharding_lib
from rlhf_jax.stages import common
from rlhf_jax.train import aot, export, lora, loop, metrics, nonfinite, optimizer as optimizer_lib
from rlhf_jax.train import precision, samples
from rlhf_jax.train import sft as sft_steps, state as state_lib


def make_evaluator(graphdef, eval_arrays, mesh, config, sampler=None, plain=lambda p: p):
  """Exact token-mean NLL and next-token accuracy on the held-out split; with a `sampler`
  (train/samples.py), the greedy answers of the plain policy `plain(params)` to a few held-out
  prompts too."""
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
    out = {"loss": totals["nll_sum"] / n, "token_accuracy": totals["correct"] / n}
    if sampler is not None:
      out[metrics.SAMPLES] = sampler(plain(state.params))
    return out

  return evaluate


def make_sampler(config, make_model, arrays, layout, tok, task, mesh, rules):
  """The samples of each evaluation (train/samples.py): greedy answers of the plain model
  (`make_model`) to the first train.eval_samples held-out prompts."""
  graphdef, abstract = state_lib.abstract_model(make_model)
  return samples.from_rows(graphdef, arrays["tokens"], arrays["mask"],
                           prompt_len=layout.prompt_len, n=samples.count(config), mesh=mesh,
                           param_shardings=sharding_lib.param_shardings(abstract, mesh, rules),
                           tokenizer=tok, max_new_tokens=layout.completion_len, task=task)


def init_lm(config, mesh, rules, make_model):
  """Parameters from config.init.from_workdir's export or the config.model.hf_path checkpoint
  (sharded on `mesh`), or None for a fresh initialisation (common.init_lm_params)."""
  del make_model  # the layout is Transformer(common.model_config(...)) in every case
  return common.init_lm_params(config, mesh, rules)


def run(config, workdir: str) -> loop.LoopResult:
  mesh, rules = common.mesh_and_rules(config)
  task = common.make_task(config)
  tok_spec = common.tokenizer_spec(config, workdir, task)
  tok = tokenizer_lib.from_spec(tok_spec)
  layout = common.layout(config, tok, tok_spec)
  train = common.record_set(config, workdir, "sft", "train")
  train_arrays, _ = pipeline.prepare_sft(train.records, layout, name="sft/train",
                                         where=train.where)
  if config.data.packing:
    train_arrays, _ = packing.pack_sft(train_arrays, layout.prompt_len + layout.completion_len,
                                       name="sft/train")
  buckets = tuple(config.data.length_buckets)
  held = common.record_set(config, workdir, "sft", "test")
  eval_arrays, _ = pipeline.prepare_sft(held.records, layout, name="sft/test", where=held.where)

  model_cfg = common.model_config(config, tok.vocab_size)
  run_cfg = precision.apply_model_options(model_cfg, config)  # + remat (not exported)
  make_model = lambda rngs: export.make_model("lm", run_cfg, rngs)
  tx = optimizer_lib.make_optimizer(config.optimizer, config.train.num_steps)
  adapted = lora.adapt(config.lora, make_model, tx, init_lm(config, mesh, rules, make_model),
                       mesh, rules, config.seed)
  graphdef, state, shardings = state_lib.init_state(
      adapted.make_model, adapted.tx, mesh, rules, config.seed, params=adapted.params)
  logging.info("sft: %s parameters on mesh %s", f"{state_lib.param_count(state.params):,}",
               dict(mesh.shape))
  train_step = nonfinite.guard_step(
      sft_steps.make_train_step(graphdef, adapted.tx, microbatches=config.train.microbatches,
                                trainable=adapted.trainable), mode=config.train.nonfinite)
  jit_step = not config.train.aot_memory or bool(buckets)
  if config.train.aot_memory:  # the loop runs the executable compiled here (full width only)
    compiled, _, _ = aot.log_train_step_memory(train_step, state, shardings, train_arrays,
                                               config.data.batch_size, mesh)
    if not buckets:
      train_step = loop.with_names(compiled, train_step)

  train_iter = iter(pipeline.train_dataset(
      train_arrays, global_batch=config.data.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      length_buckets=buckets))
  result = loop.run(config=config, workdir=workdir, mesh=mesh, state=state,
                    state_shardings=shardings,
                    train_step=train_step, train_iter=train_iter,
                    evaluate=make_evaluator(graphdef, eval_arrays, mesh, config,
                                            make_sampler(config, make_model, eval_arrays, layout,
                                                         tok, task, mesh, rules),
                                            adapted.export),
                    tokens_per_step=lambda b: int(np.sum(b["mask"])), jit=jit_step,
                    learning_rate=optimizer_lib.make_schedule(config.optimizer,
                                                              config.train.num_steps),
                    flops_per_step=lambda b: flops.train_flops(
                        run_cfg, *b["tokens"].shape, frozen=lora.enabled(config.lora)),
                    compute_dtype=run_cfg.dtype)
  if result.finished:
    export.save(workdir, adapted.export(result.state.params), kind="lm",
                model_config=model_cfg, tokenizer=tok_spec)
  return result
