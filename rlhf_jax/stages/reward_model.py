"""Reward-model stage: an ensemble of E scalar models (E = 1 by default) on preference pairs,
or, with loss.name = plackett_luce, on rankings of K completions per prompt (the task's "ranked"
records, data/ranked.py; train/reward_model.py's ranked steps; evaluation on the ranked test
split: top-1 and pairwise accuracy, Kendall tau). Either way the result is the same kind of
scalar model, normalised and exported the same way, so later stages (PPO) read it alike.

Backbones start from `config.init.from_workdir` (an SFT export) when given; heads start from
per-member seeds. Produces `<workdir>/export` (kind "scalar", extra: ensemble_size and the
optional normalisation so that reference-policy samples score mean 0, std 1).

config.lora.rank > 0: each member trains LoRA adapters on its (frozen) backbone plus its whole
scalar head (train/lora.py); the export has the adapters merged in, i.e. the plain scalar model.
config.train.microbatches: gradient accumulation (train/microbatch.py). config.model.remat:
per-block rematerialisation in training, also when the backbone comes from an export (not
exported).

train/tflops_per_sec and train/mfu count, per step, E members x a training step of the scalar
model (no LM head; its d_model x 1 head left out) over every padded row it scores: chosen and
rejected [B, S] each, or the B x K ranked completions; with LoRA about 2x the forward instead of
3x (models/flops.py). Rows a member's data_fraction leaves out are computed all the same.
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from rlhf_jax.data import pipeline, ranked as ranked_lib, tokenizer as tokenizer_lib
from rlhf_jax.models import flops
from rlhf_jax.rewards import learned
from rlhf_jax.stages import common
from rlhf_jax.train import export, lora, loop, optimizer as optimizer_lib, precision
from rlhf_jax.train import reward_model as rm_steps, state as state_lib


def with_index(arrays: dict) -> dict:
  n = len(next(iter(arrays.values())))
  return {**arrays, "index": np.arange(n, dtype=np.int32)}


def make_evaluator(graphdef, arrays, mesh, config):
  eval_step = jax.jit(rm_steps.make_eval_step(graphdef))

  def evaluate(state) -> dict:
    totals = common.summed_eval(eval_step, state.params, arrays, mesh, config)
    n = max(totals["pairs"], 1.0)
    return {"accuracy": totals["correct_ensemble"] / n,
            "member_accuracy": totals["correct_members"] / n, "loss": totals["bt_loss"] / n}

  return evaluate


def make_ranked_evaluator(graphdef, arrays, mesh, config):
  eval_step = jax.jit(rm_steps.make_ranked_eval_step(graphdef, config.loss.name))

  def evaluate(state) -> dict:
    totals = common.summed_eval(eval_step, state.params, arrays, mesh, config)
    n, pairs = max(totals["examples"], 1.0), max(totals["pairs"], 1.0)
    return {"top1_accuracy": totals["top1_ensemble"] / n,
            "member_top1_accuracy": totals["top1_members"] / n,
            "pairwise_accuracy": totals["correct_ensemble"] / pairs,
            "member_pairwise_accuracy": totals["correct_members"] / pairs,
            "kendall_tau": totals["tau"] / n, "loss": totals["loss"] / n}

  return evaluate


def check_ranked_options(config) -> None:
  """The pairwise-only loss options must stay at their defaults with a ranking loss."""
  for field in ("margin", "centering_coef"):
    if config.loss[field]:
      raise ValueError(f"loss.{field}={config.loss[field]!r} applies to the pairwise losses "
                       f"{list(rm_steps.PAIRWISE_LOSSES)}, not to loss.name="
                       f"{config.loss.name!r}; set it to 0")


def reference_normalization(graphdef, params, sft_arrays, mesh, config) -> dict:
  """Mean and std of the (mean-combined) reward over reference-policy samples."""
  score = jax.jit(lambda p, b: learned.combine(
      learned.ensemble_scores(graphdef, p, b["tokens"], b["mask"])))
  values = []
  for local in pipeline.eval_batches(sft_arrays, global_batch=config.data.batch_size,
                                     max_examples=config.reward.normalization_examples):
    r_B = np.asarray(jax.device_get(score(params, loop.to_global(local, mesh))))
    values.append(r_B[local["mask"].sum(1) > 0])
  values = np.concatenate(values)
  return {"mean": float(values.mean()), "std": float(values.std() + 1e-6),
          "examples": int(values.size)}


def run(config, workdir: str) -> loop.LoopResult:
  ranked = config.loss.name in rm_steps.RANKED_LOSSES
  if ranked:
    check_ranked_options(config)
  mesh, rules = common.mesh_and_rules(config)
  task = common.make_task(config)
  tok_spec = common.tokenizer_spec(config, workdir, task)
  tok = tokenizer_lib.from_spec(tok_spec)
  layout = common.layout(config, tok, tok_spec)
  kind = "ranked" if ranked else "preference"
  prepare = ranked_lib.prepare_ranked if ranked else pipeline.prepare_preference
  arrays = {}
  for split in ("train", "test"):
    read = common.record_set(config, workdir, kind, split)
    arrays[split], _ = prepare(read.records, layout, name=f"{kind}/{split}", where=read.where)
  train_arrays, eval_arrays = arrays["train"], arrays["test"]

  model_cfg = common.model_config(config, tok.vocab_size)
  run_cfg = precision.apply_model_options(model_cfg, config)  # + remat (not exported)
  make_model = lambda rngs: export.make_model("scalar", run_cfg, rngs)
  shared = None
  lm = common.init_lm_params(config, mesh, rules)  # an SFT export, model.hf_path, or None
  if lm is not None:
    shared = {"backbone": {k: v for k, v in lm.items() if k != "lm_head"}}
  rc = config.reward
  tx = optimizer_lib.make_optimizer(config.optimizer, config.train.num_steps)
  # LoRA: adapters on the backbone, the fresh head trained in full; members stacked as usual.
  make_adapted, tx, trainable = lora.pieces(config.lora, make_model, tx, also_train=("head",))
  to_plain = lora.make_merge(config.lora, make_model, mesh, rules, stacked=True)
  seeds = [config.seed * 1000 + e for e in range(rc.ensemble_size)]
  graphdef, state, shardings = state_lib.init_ensemble_state(make_adapted, tx, mesh, rules, seeds,
                                                             shared=shared)
  logging.info("reward model: %d member(s), %s parameters", rc.ensemble_size,
               f"{state_lib.param_count(state.params):,}")

  common_kwargs = dict(loss_name=config.loss.name, ensemble_size=rc.ensemble_size,
                       data_fraction=rc.data_fraction, seed=config.seed,
                       microbatches=config.train.microbatches, trainable=trainable)
  if ranked:
    train_step = rm_steps.make_ranked_train_step(graphdef, tx, **common_kwargs)
    evaluate = make_ranked_evaluator(graphdef, eval_arrays, mesh, config)
    tokens_per_step = lambda b: int(b["mask"].sum())
    blocks = lambda b: [(b["tokens"].shape[0] * b["tokens"].shape[1], b["tokens"].shape[2])]
  else:
    train_step = rm_steps.make_train_step(
        graphdef, tx, **common_kwargs,
        loss_kwargs={"margin": config.loss.margin, "centering_coef": config.loss.centering_coef})
    evaluate = make_evaluator(graphdef, eval_arrays, mesh, config)
    tokens_per_step = lambda b: int(b["chosen_mask"].sum() + b["rejected_mask"].sum())
    blocks = lambda b: [b["chosen_tokens"].shape, b["rejected_tokens"].shape]
  frozen = lora.enabled(config.lora)
  flops_per_step = lambda b: rc.ensemble_size * sum(  # each [rows, S] block the members score
      flops.train_flops(run_cfg, *shape, lm_head=False, frozen=frozen) for shape in blocks(b))
  train_iter = iter(pipeline.train_dataset(
      with_index(train_arrays), global_batch=config.data.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count()))
  result = loop.run(config=config, workdir=workdir, mesh=mesh, state=state,
                    state_shardings=shardings, train_step=train_step, train_iter=train_iter,
                    evaluate=evaluate, tokens_per_step=tokens_per_step,
                    learning_rate=optimizer_lib.make_schedule(config.optimizer,
                                                              config.train.num_steps),
                    flops_per_step=flops_per_step, compute_dtype=run_cfg.dtype)
  if result.finished:
    params = to_plain(result.state.params)  # adapters merged: the plain scalar model
    plain_graphdef, _ = state_lib.abstract_model(make_model)
    extra = {"ensemble_size": rc.ensemble_size}
    if rc.normalize:
      sft_arrays, _ = pipeline.prepare_sft(common.records(config, workdir, "sft", "test"), layout,
                                           name="normalization")
      extra["normalization"] = reference_normalization(plain_graphdef, params, sft_arrays, mesh,
                                                       config)
      logging.info("reward normalization: %s", extra["normalization"])
    export.save(workdir, params, kind="scalar", model_config=model_cfg, tokenizer=tok_spec,
                extra=extra)
  return result
