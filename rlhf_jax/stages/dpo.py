"""DPO stage: a policy and its frozen reference (both from an SFT export) on preference pairs.

The reference's sequence log-probs are computed once over the train and eval pairs and cached at
`<workdir>/reference_logps.npz`; only the policy is held in the train state. Any loss of the
preference family runs via `--config.loss.name=...` (dpo, ipo, cdpo, robust, hinge, sppo_hard,
nca_pair, bco_pair, apo_zero, apo_down, simpo, orpo). On the enumerable world, evaluation is exact
(train/enumerable_eval.py): eval/gold_reward, eval/kl and eval/kl_to_optimum.

config.lora.rank > 0: the policy trains LoRA adapters on the frozen SFT weights (train/lora.py);
the reference is the SFT export itself, and the export is the plain LM with the adapters merged.
config.train.microbatches: gradient accumulation (train/microbatch.py). config.model.remat:
per-block rematerialisation of the policy in training (not exported).

train/tflops_per_sec and train/mfu count, per step, a training step of the policy over the
padded chosen and rejected [B, P + T] rows, the LM head at the T completion positions only
(models/flops.score_flops; about 2x the forward instead of 3x with LoRA). The reference's
log-probs are computed once before training (`reference_logps`), not in the step: not counted.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np

from rlhf_jax.data import pipeline, tokenizer as tokenizer_lib
from rlhf_jax.models import flops
from rlhf_jax.parallel import distributed
from rlhf_jax.stages import common
from rlhf_jax.train import dpo as dpo_steps, export, lora, loop, metrics, optimizer as optimizer_lib
from rlhf_jax.train import precision, samples, state as state_lib
from rlhf_jax.train.enumerable_eval import EnumerableEvaluator

# config.data.pairs: the task's labelled pairs, or pairs sampled from the SFT policy and ranked.
PAIRS = ("task", "on_policy")


def reference_logps(graphdef, ref_params, arrays, mesh, config, cache_path: str, split: str):
  """Adds ref_chosen_logps / ref_rejected_logps [N] to `arrays`, from the cache when present."""
  key_c, key_r = f"{split}_chosen", f"{split}_rejected"
  cache = dict(np.load(cache_path)) if os.path.exists(cache_path) else {}
  n = len(arrays["chosen_tokens"])
  if key_c not in cache or len(cache[key_c]) != n:
    step = jax.jit(dpo_steps.make_reference_step(graphdef, config.data.prompt_len))
    chosen, rejected = [], []
    for local in pipeline.eval_batches(arrays, global_batch=config.data.batch_size):
      c, r = step(ref_params, loop.to_global(local, mesh))
      chosen.append(np.asarray(jax.device_get(c)))
      rejected.append(np.asarray(jax.device_get(r)))
    cache[key_c], cache[key_r] = np.concatenate(chosen)[:n], np.concatenate(rejected)[:n]
    if jax.process_index() == 0:
      np.savez(cache_path, **cache)
    logging.info("reference log-probs of %d %s pairs computed and cached", n, split)
  return {**arrays, "ref_chosen_logps": cache[key_c].astype(np.float32),
          "ref_rejected_logps": cache[key_r].astype(np.float32)}


def make_evaluator(graphdef, arrays, mesh, config, exact_eval, plain_of=lambda p: p,
                   sampler=None):
  """Pair accuracy and implicit margin on `arrays` (the train state's model), plus the exact
  metrics of `exact_eval` (a plain-model evaluator) on `plain_of(params)` when given, and the
  plain model's answers to a few held-out prompts with a `sampler` (train/samples.py)."""
  eval_step = jax.jit(dpo_steps.make_eval_step(graphdef, config.loss.beta, config.data.prompt_len))

  def evaluate(state) -> dict:
    totals = common.summed_eval(eval_step, state.params, arrays, mesh, config)
    n = max(totals["pairs"], 1.0)
    out = {"accuracy": totals["correct"] / n, "margin": totals["margin"] / n}
    if exact_eval is not None:
      out.update(exact_eval.metrics(plain_of(state.params), beta=config.loss.beta))
    if sampler is not None:
      out[metrics.SAMPLES] = sampler(plain_of(state.params))
    return out

  return evaluate


def pair_records(config, workdir: str, split: str) -> tuple[list[dict], list[str] | None]:
  """(pairs, where each came from): the data's labelled pairs (data.source), or (train split,
  data.pairs = on_policy) pairs sampled from the initial policy and ranked by the configured
  reward (stages/best_of_n.ranked_pairs)."""
  if config.data.pairs == "task" or split != "train":
    read = common.record_set(config, workdir, "preference", split)
    return read.records, read.where
  if config.data.pairs != "on_policy":
    raise ValueError(f"unknown data.pairs {config.data.pairs!r}; valid: {list(PAIRS)}")
  from rlhf_jax.stages import best_of_n, online  # pylint: disable=g-import-not-at-top
  s = online.setup(config, workdir)
  return best_of_n.ranked_pairs(s, config, "train", config.bon.max_train_prompts), None


@dataclasses.dataclass
class Setup:
  """Everything a DPO run needs before its loop: mesh, data with reference log-probs, state."""
  mesh: object
  arrays: dict            # split -> arrays incl. ref_chosen_logps / ref_rejected_logps
  graphdef: object
  state: object
  shardings: object
  tx: object
  sft: export.Exported
  tok_spec: dict
  exact_eval: object      # on the plain model: give it plain(state.params)
  trainable: object = None  # LoRA's trainable mask (None: all parameters train)
  to_plain: object = None  # train-state params -> the plain LM's (adapters merged); None: as is
  sampler: object = None   # the evaluations' samples (train/samples.py); None: none

  def plain(self, params):
    return params if self.to_plain is None else self.to_plain(params)


def prepare(config, workdir: str) -> Setup:
  if not config.init.from_workdir:
    raise ValueError("dpo: set config.init.from_workdir to an SFT run (policy and reference "
                     "start from its export)")
  mesh, rules = common.mesh_and_rules(config)
  task = common.make_task(config)
  tok_spec = common.tokenizer_spec(config, workdir, task)
  tok = tokenizer_lib.from_spec(tok_spec)
  layout = common.layout(config, tok, tok_spec)
  sft = export.load(config.init.from_workdir, mesh, rules, kind="lm")
  os.makedirs(workdir, exist_ok=True)
  cache = os.path.join(workdir, "reference_logps.npz")
  arrays = {}
  for split in ("train", "test"):
    records, where = pair_records(config, workdir, split)
    pairs, _ = pipeline.prepare_preference(records, layout, name=f"preference/{split}",
                                           where=where)
    arrays[split] = distributed.on_process_zero_first(
        f"ref/{split}", lambda p=pairs, s=split: reference_logps(sft.graphdef, sft.params, p, mesh,
                                                                 config, cache, s))

  tx = optimizer_lib.make_optimizer(config.optimizer, config.train.num_steps)
  run_cfg = precision.apply_model_options(sft.model_config, config)  # + remat (not exported)
  make_model = lambda rngs: export.make_model("lm", run_cfg, rngs)
  adapted = lora.adapt(config.lora, make_model, tx, sft.params, mesh, rules, config.seed)
  graphdef, state, shardings = state_lib.init_state(
      adapted.make_model, adapted.tx, mesh, rules, config.seed, params=adapted.params)
  exact_eval = None
  if task is not None and config.task.name == "enumerable" and config.eval.exact_prompts > 0:
    exact_eval = EnumerableEvaluator(task, layout, sft.graphdef, mesh,
                                     batch_size=config.eval.exact_batch_size,
                                     max_prompts=config.eval.exact_prompts)
    exact_eval.set_reference(sft.params)
  sampler = samples.from_rows(
      sft.graphdef, arrays["test"]["chosen_tokens"], arrays["test"]["chosen_mask"],
      prompt_len=layout.prompt_len, n=samples.count(config), mesh=mesh,
      param_shardings=jax.tree.map(lambda x: x.sharding, sft.params), tokenizer=tok,
      max_new_tokens=layout.completion_len, task=task)
  return Setup(mesh, arrays, graphdef, state, shardings, adapted.tx, sft, tok_spec, exact_eval,
               trainable=adapted.trainable, to_plain=adapted.export, sampler=sampler)


def train_iterator(config, arrays):
  return iter(pipeline.train_dataset(
      arrays, global_batch=config.data.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count()))


def step_flops(model_cfg, batch: dict, prompt_len: int, *, frozen: bool) -> float:
  """Model FLOPs of a train step on `batch`: chosen and rejected scored and differentiated."""
  total = 0.0
  for side in ("chosen", "rejected"):
    rows, width = batch[f"{side}_tokens"].shape
    total += flops.backward_factor(frozen) * flops.score_flops(model_cfg, rows, prompt_len,
                                                               width - prompt_len)
  return total


def run(config, workdir: str) -> loop.LoopResult:
  s = prepare(config, workdir)
  run_cfg = precision.apply_model_options(s.sft.model_config, config)
  result = loop.run(config=config, workdir=workdir, mesh=s.mesh, state=s.state,
                    state_shardings=s.shardings,
                    train_step=dpo_steps.make_train_step(
                        s.graphdef, s.tx, config.loss, config.data.prompt_len,
                        microbatches=config.train.microbatches, trainable=s.trainable),
                    train_iter=train_iterator(config, s.arrays["train"]),
                    evaluate=make_evaluator(s.graphdef, s.arrays["test"], s.mesh, config,
                                            s.exact_eval, s.plain, s.sampler),
                    tokens_per_step=lambda b: int(b["chosen_mask"].sum() + b["rejected_mask"].sum()),
                    learning_rate=optimizer_lib.make_schedule(config.optimizer,
                                                              config.train.num_steps),
                    flops_per_step=lambda b: step_flops(run_cfg, b, config.data.prompt_len,
                                                        frozen=lora.enabled(config.lora)),
                    compute_dtype=run_cfg.dtype)
  if result.finished:
    export.save(workdir, s.plain(result.state.params), kind="lm",
                model_config=s.sft.model_config, tokenizer=s.tok_spec)
  return result
