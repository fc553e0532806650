"""Wiring of the online-RL stages (`ppo`, `policy_gradient`) to the RL engine (rl/): reading the
prompts and their columns, loading the SFT export (policy start and reference), the reward (a
learned model, reward functions, the task's gold reward), the policy (with LoRA when
config.lora.rank > 0) and the prompt stream; then the loop runs the engine's iteration
(rl/engine.py) and the policy is exported (the plain LM, adapters merged).

config.model.remat applies to the trained models; train.microbatches must be 1 (the update's
minibatches play its part, rl/learn.py).
"""

from __future__ import annotations

import jax
import numpy as np

from rlhf_jax.data import pipeline, tokenizer as tokenizer_lib
from rlhf_jax.generation import SamplingConfig
from rlhf_jax.rewards import functions as reward_fns, registry
from rlhf_jax.rl import engine, rollout as rollout_lib
from rlhf_jax.rl.setup import Setup
from rlhf_jax.stages import common
from rlhf_jax.train import export, lora, loop, precision


def prompt_stream(s: Setup, config):
  """The train prompts, batch after batch, per process; its position is checkpointed."""
  return iter(pipeline.train_dataset(
      s.prompt_arrays["train"], global_batch=config.rl.prompts_per_step, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count()))


def prompt_arrays(layout, prompts, where=None) -> dict:
  """prompt_tokens / prompt_mask / prompt_index of prompts (texts or message lists, rendered
  with the chat template and its generation prompt). Over-long prompts follow data.overlong:
  an error, truncated from the left, or dropped (counted; their index is then absent)."""
  stats = pipeline.LayoutStats()
  rows = []
  for i, prompt in enumerate(prompts):
    at = pipeline._record_where("prompt", i, where)  # pylint: disable=protected-access
    ids = layout.prompt_ids(prompt, at, stats)
    if ids is None:
      continue
    rows.append({**layout.prompt_row(ids), "prompt_index": np.int32(i)})
    stats.kept += 1
  return pipeline._stack(rows, "prompt", stats)  # pylint: disable=protected-access


def setup(config, workdir: str) -> Setup:
  if not config.init.from_workdir:
    raise ValueError(f"{config.stage}: set config.init.from_workdir to an SFT run (policy and "
                     "reference start from its export)")
  mesh, rules = common.mesh_and_rules(config)
  task = common.make_task(config)
  tok_spec = common.tokenizer_spec(config, workdir, task)
  tok = tokenizer_lib.from_spec(tok_spec)
  layout = common.layout(config, tok, tok_spec)
  sft = export.load(config.init.from_workdir, mesh, rules, kind="lm")
  prompts, arrays, columns = {}, {}, {}
  for split in ("train", "test"):
    read = common.record_set(config, workdir, "prompt", split)
    prompts[split] = [r["prompt"] for r in read.records]
    names = sorted({k for r in read.records for k in r.get("columns", {})})
    columns[split] = {k: [r.get("columns", {}).get(k) for r in read.records] for k in names}
    arrays[split] = prompt_arrays(layout, prompts[split], read.where)
  rl = config.rl
  sampling = SamplingConfig(max_new_tokens=config.data.completion_len, temperature=rl.temperature,
                            top_k=rl.top_k, top_p=rl.top_p, eos_id=tok.eos_id, pad_id=tok.pad_id)
  rm, rm_graphdef, rm_config = None, None, None
  rc = config.reward
  if rc.source not in reward_fns.SOURCES:
    raise ValueError(f"unknown reward.source {rc.source!r}; valid: {list(reward_fns.SOURCES)}")
  if rc.source == "learned":
    if not rc.from_workdir:
      raise ValueError("reward.source='learned' needs reward.from_workdir (a reward_model run)")
    loaded = export.load(rc.from_workdir, mesh, rules, kind="scalar")
    norm = loaded.extra.get("normalization") if rc.normalize else None
    rm, rm_graphdef = rollout_lib.RewardModel(loaded.params, norm), loaded.graphdef
    rm_config = loaded.model_config
  functions = registry.check(rc) if "functions" in rc else None
  if rc.source == "gold" and not hasattr(task, "gold_reward"):
    raise ValueError(f"reward.source='gold': the data (data.source={config.data.source!r}) has "
                     "no gold reward; use reward.source='learned' or 'functions'")
  return Setup(mesh, rules, task, tok, tok_spec, layout, sft, prompts, arrays, sampling, rm,
               rm_graphdef, columns, functions, rm_config=rm_config)


def make_policy(config, s: Setup, tx) -> lora.Adapted:
  """The trained policy: the SFT model with the run's options (model.remat, not exported) and,
  when config.lora.rank > 0, LoRA adapters on its frozen weights (train/lora.py). `export` maps
  its parameters to the plain LM's (adapters merged); the reference stays `s.sft`."""
  run_cfg = precision.apply_model_options(s.sft.model_config, config)
  make_model = lambda rngs: export.make_model("lm", run_cfg, rngs)
  return lora.adapt(config.lora, make_model, tx, s.sft.params, s.mesh, s.rules, config.seed)


def check_no_microbatches(config, minibatches_field: str) -> None:
  """Online RL has no gradient accumulation: `train.microbatches` must stay 1 (see rl/learn.py)."""
  k = int(config.train.microbatches)
  if k != 1:
    raise ValueError(f"{config.stage}: train.microbatches={k} is not supported by online RL (no "
                     f"gradient accumulation); the update already takes one optimizer step per "
                     f"minibatch of the rollout: raise {minibatches_field} (or lower "
                     f"rl.prompts_per_step) to bound memory, and set train.microbatches=1")


def run(config, workdir: str, s: Setup, b: engine.Built) -> loop.LoopResult:
  """The loop over the engine's iterations. Throughput: each iteration's analytic FLOPs
  (rl/flops.py; the iteration knows them once it ran: rounds, completion lengths), this
  process's share given to the loop, over the iteration's wall time, against the peak of the
  policy's compute dtype."""
  result = loop.run(config=config, workdir=workdir, mesh=s.mesh, state=b.state,
                    state_shardings=b.shardings, train_step=b.iteration, train_iter=b.stream,
                    evaluate=b.evaluate, jit=False, learning_rate=b.learning_rate,
                    flops_per_step=(lambda _: b.iteration.last_flops / jax.process_count())
                    if hasattr(b.iteration, "last_flops") else None,
                    compute_dtype=s.sft.model_config.dtype)
  if result.finished:
    export.save(workdir, b.export_params(result.state.params), kind="lm",
                model_config=s.sft.model_config, tokenizer=s.tok_spec)
  return result
