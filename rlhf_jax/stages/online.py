"""The online-RL runner shared by the `ppo` and `policy_gradient` stages.

One loop step is one RL iteration:
  1. generate:  sample `group_size` completions for each of `rl.prompts_per_step` prompts
  2. score:     old-policy, reference (and critic / reward-model) passes over the rollout
  3. reward:    gold function or verifier on the host (decoded text), reward functions named in
                config (rewards/registry.py) with the prompt records' other columns, and/or the
                learned RM's scores
  4. update:    algorithm-specific advantages, then K epochs of minibatch steps (train/rl_update.py)
  5. KL control: β follows train/kl_control.py (fixed or adaptive)
The prompt stream's position and β are checkpointed together, so resume is exact. Metrics
include the time of each phase and generated tokens/s; evaluation is exact on the enumerable
world and greedy verifier accuracy on arithmetic.

config.lora.rank > 0 trains LoRA adapters on the policy (`make_policy`); config.model.remat
applies to the trained models; train.microbatches must be 1 (the update's minibatches play its
part, train/rl_update.py). Exports are the plain LM (adapters merged).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import losses
from rlhf_jax.data import pipeline, tokenizer as tokenizer_lib
from rlhf_jax.generation import SamplingConfig
from rlhf_jax.rewards import functions as reward_fns, registry
from rlhf_jax.stages import common
from rlhf_jax.train import export, kl_control, lora, loop, nonfinite, passk, precision
from rlhf_jax.train import rollout as rollout_lib
from rlhf_jax.train.enumerable_eval import EnumerableEvaluator


class PromptStream:
  """Prompt batches and the KL coefficient β, checkpointed together (see loop.py)."""

  def __init__(self, arrays, config, kl_coef: float):
    self._it = iter(pipeline.train_dataset(
        arrays, global_batch=config.rl.prompts_per_step, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count()))
    self.kl_coef = float(kl_coef)

  def __next__(self):
    return next(self._it)

  def get_state(self) -> dict:
    return {"prompts": self._it.get_state(), "kl_coef": self.kl_coef}

  def set_state(self, state: dict) -> None:
    self._it.set_state(state["prompts"])
    self.kl_coef = float(state["kl_coef"])


@dataclasses.dataclass
class Setup:
  mesh: Any
  rules: Any
  task: Any
  tok: Any
  tok_spec: dict
  layout: pipeline.Layout
  sft: export.Exported
  prompts: dict            # split -> list of prompts (texts, or message lists)
  prompt_arrays: dict      # split -> prompt_tokens / prompt_mask / prompt_index
  sampling: SamplingConfig
  rm: Any                  # rollout.RewardModel or None
  rm_graphdef: Any
  columns: dict = dataclasses.field(default_factory=dict)  # split -> {column: [per prompt]}
  functions: Any = None    # rewards/registry.RewardFunctions or None

  def rewards(self, config, split: str, index, completions: list[str], rm_scores=None):
    """(reward_B, gold_B or None, {function name: raw score_B}) of decoded completions of the
    prompts `index` of `split` (reward.source: gold | learned (+ functions) | functions)."""
    prompts = [self.prompts[split][i] for i in index]
    columns = {k: [v[i] for i in index] for k, v in self.columns[split].items()}
    gold, total, parts = reward_fns.host_rewards(config.reward.source, self.task, self.functions,
                                                 prompts, completions, columns)
    source = config.reward.source
    if source == "gold":
      reward = gold
    elif source == "functions":
      reward = total
    else:
      reward = np.asarray(rm_scores, np.float32) + (0.0 if total is None else total)
    return reward, gold, parts

  def needs_text(self) -> bool:
    """Whether rewards need the completions decoded (gold or reward functions)."""
    return hasattr(self.task, "gold_reward") or self.functions is not None


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
  rm, rm_graphdef = None, None
  rc = config.reward
  if rc.source not in reward_fns.SOURCES:
    raise ValueError(f"unknown reward.source {rc.source!r}; valid: {list(reward_fns.SOURCES)}")
  if rc.source == "learned":
    if not rc.from_workdir:
      raise ValueError("reward.source='learned' needs reward.from_workdir (a reward_model run)")
    loaded = export.load(rc.from_workdir, mesh, rules, kind="scalar")
    norm = loaded.extra.get("normalization") if rc.normalize else None
    rm, rm_graphdef = rollout_lib.RewardModel(loaded.params, norm), loaded.graphdef
  functions = registry.check(rc) if "functions" in rc else None
  if rc.source == "gold" and not hasattr(task, "gold_reward"):
    raise ValueError(f"reward.source='gold': the data (data.source={config.data.source!r}) has "
                     "no gold reward; use reward.source='learned' or 'functions'")
  return Setup(mesh, rules, task, tok, tok_spec, layout, sft, prompts, arrays, sampling, rm,
               rm_graphdef, columns, functions)


def make_policy(config, s: Setup, tx) -> lora.Adapted:
  """The trained policy: the SFT model with the run's options (model.remat, not exported) and,
  when config.lora.rank > 0, LoRA adapters on its frozen weights (train/lora.py). `export` maps
  its parameters to the plain LM's (adapters merged); the reference stays `s.sft`."""
  run_cfg = precision.apply_model_options(s.sft.model_config, config)
  make_model = lambda rngs: export.make_model("lm", run_cfg, rngs)
  return lora.adapt(config.lora, make_model, tx, s.sft.params, s.mesh, s.rules, config.seed)


def check_no_microbatches(config, minibatches_field: str) -> None:
  """Online RL has no gradient accumulation: `train.microbatches` must stay 1 (see rl_update.py)."""
  k = int(config.train.microbatches)
  if k != 1:
    raise ValueError(f"{config.stage}: train.microbatches={k} is not supported by online RL (no "
                     f"gradient accumulation); the update already takes one optimizer step per "
                     f"minibatch of the rollout: raise {minibatches_field} (or lower "
                     f"rl.prompts_per_step) to bound memory, and set train.microbatches=1")


def make_evaluator(s: Setup, config, plain_of: Callable, stream: PromptStream):
  """eval/* metrics of the plain policy `plain_of(state.params)` (what the stage exports: LoRA
  adapters merged), with the SFT export's graphdef: exact on the enumerable world; otherwise
  greedy verifier accuracy (where the data has a gold reward; with eval.pass_n > 0 also
  eval/pass@k and eval/maj@k of pass_n samples per prompt, k in eval.pass_k), the reward of the sampled
  completions (eval/reward: the configured source, e.g. the learned RM's score) and a sampled KL
  on the held-out prompts,

    eval/kl = mean over prompts x of  sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)],
              y ~ pi (untempered, one sample per prompt, a fixed rng per evaluation)

  an unbiased Monte-Carlo estimate of KL(pi || pi_ref) per sequence (k1 summed over tokens)."""
  if common.uses_task(config) and config.task.name == "enumerable":
    exact = EnumerableEvaluator(s.task, s.layout, s.sft.graphdef, s.mesh,
                                batch_size=config.eval.exact_batch_size,
                                max_prompts=config.eval.exact_prompts)
    exact.set_reference(s.sft.params)
    return lambda state: exact.metrics(plain_of(state.params), beta=stream.kl_coef)

  greedy = rollout_lib.make_generate_fn(
      s.sft.graphdef, dataclasses.replace(s.sampling, greedy=True), group_size=1)
  untempered = SamplingConfig(max_new_tokens=s.sampling.max_new_tokens, eos_id=s.sampling.eos_id,
                              pad_id=s.sampling.pad_id)
  sample = rollout_lib.make_generate_fn(s.sft.graphdef, untempered, group_size=1)
  # policy and reference log-probs, and the learned RM's scores when there is one
  score = rollout_lib.make_score_fn(s.sft.graphdef, rm_graphdef=s.rm_graphdef,
                                    rm_combine=config.reward.ensemble_combine,
                                    rm_lambda=config.reward.ensemble_lambda)
  has_gold = hasattr(s.task, "gold_reward")
  pass_n = int(config.eval.get("pass_n", 0)) if has_gold else 0
  multi = (rollout_lib.make_generate_fn(s.sft.graphdef, untempered, group_size=pass_n)
           if pass_n else None)

  def evaluate(state) -> dict:
    correct, kl, reward, n = 0.0, 0.0, 0.0, 0
    sampled = {}   # pass@k / maj@k sums over prompts
    policy = plain_of(state.params)
    batches = pipeline.eval_batches(s.prompt_arrays["test"],
                                    global_batch=config.rl.prompts_per_step,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count(),
                                    max_examples=config.train.eval_examples)
    for batch_index, local in enumerate(batches):
      g = loop.to_global(local, s.mesh)
      _, _, out = greedy(policy, g["prompt_tokens"], g["prompt_mask"],
                         jax.random.key(0))
      valid = rollout_lib.host_array(g["prompt_mask"]).sum(1) > 0
      index = rollout_lib.host_array(g["prompt_index"])
      if has_gold:
        completions = reward_fns.decode_completions(
            s.tok, rollout_lib.host_array(out.tokens_BxT), rollout_lib.host_array(out.mask_BxT))
        scores = reward_fns.gold_scores(s.task, [s.prompts["test"][i] for i in index],
                                        completions)
        correct += float(np.sum(scores * valid))
      pt, pm, drawn = sample(policy, g["prompt_tokens"], g["prompt_mask"],
                             jax.random.fold_in(jax.random.key(config.seed), batch_index))
      logps = score(policy, s.sft.params, None, s.rm, pt, pm, drawn.tokens_BxT, drawn.mask_BxT,
                    drawn.logp_BxT)
      kl_B = rollout_lib.host_array(losses.sequence_kl(logps["old_logp"], logps["ref_logp"],
                                                       drawn.mask_BxT))
      kl += float(np.sum(kl_B * valid))
      if pass_n:
        _, _, many = multi(policy, g["prompt_tokens"], g["prompt_mask"],
                           jax.random.fold_in(jax.random.key(config.seed + 1), batch_index))
        for k, v in sampled_metrics(s, config, many, index, valid, pass_n).items():
          sampled[k] = sampled.get(k, 0.0) + v
      if config.reward.source != "gold":
        texts = (reward_fns.decode_completions(s.tok, rollout_lib.host_array(drawn.tokens_BxT),
                                               rollout_lib.host_array(drawn.mask_BxT))
                 if s.functions is not None else None)
        r_B, _, _ = s.rewards(config, "test", np.where(valid, index, 0), texts,
                              rollout_lib.host_array(logps.get("rm_scores")) if s.rm else None)
        reward += float(np.sum(r_B * valid))
      n += int(valid.sum())
    n = max(n, 1)
    out = {"kl": kl / n}
    if has_gold:
      out.update(accuracy=correct / n, gold_reward=correct / n)
    out.update({k: v / n for k, v in sampled.items()})
    if config.reward.source != "gold":
      out["reward"] = reward / n
    return out

  return evaluate


def sampled_metrics(s: Setup, config, out, index, valid, n: int) -> dict[str, float]:
  """Sums over the valid prompts of pass@k and maj@k (train/passk.py) for k in eval.pass_k,
  from n samples per prompt judged by the task's verifier (gold reward > 0.5 is correct)."""
  texts = reward_fns.decode_completions(s.tok, rollout_lib.host_array(out.tokens_BxT),
                                        rollout_lib.host_array(out.mask_BxT))
  prompts = [s.prompts["test"][i] for i in np.repeat(index, n)]
  ok = reward_fns.gold_scores(s.task, prompts, texts) > 0.5
  sums: dict[str, float] = {}
  for p in np.flatnonzero(valid):
    answers, right = texts[p * n:(p + 1) * n], ok[p * n:(p + 1) * n]
    for k in config.eval.pass_k:
      sums[f"pass@{k}"] = sums.get(f"pass@{k}", 0.0) + passk.pass_at_k(n, int(right.sum()), k)
      sums[f"maj@{k}"] = sums.get(f"maj@{k}", 0.0) + passk.maj_at_k(answers, right, k)
  return sums


def rescore_policy(config, s: Setup) -> bool:
  """Whether rollouts get an old-policy forward pass: unless `config.rl.rescore_policy` is False
  and generation sampled the float32 policy itself (rollout.sampler_is_policy), in which case
  its log-probs serve (one forward pass fewer per iteration)."""
  reuse = rollout_lib.sampler_is_policy(s.sampling, s.sft.model_config.dtype)
  return bool(config.rl.rescore_policy) or not reuse


def make_iteration(s: Setup, config, *, policy_graphdef, policy_of, critic_of, value_fn,
                   prepare_fn, update_fn, stream: PromptStream, group_size: int):
  """The python step the loop calls: generate, score, reward, update, control β.

  The policy generates and is scored as trained (`policy_graphdef`, with LoRA adapters when
  attached: generation applies them too), so the update's first ratio is 1 (exactly when
  re-scored, to float rounding when generation's log-probs serve, see `rescore_policy`); the
  reference is the SFT export (its own graphdef and parameters)."""
  generate_fn = rollout_lib.make_generate_fn(policy_graphdef, s.sampling, group_size=group_size)
  score_fn = rollout_lib.make_score_fn(policy_graphdef, ref_graphdef=s.sft.graphdef,
                                       value_fn=value_fn,
                                       rm_graphdef=s.rm_graphdef,
                                       rm_combine=config.reward.ensemble_combine,
                                       rm_lambda=config.reward.ensemble_lambda,
                                       rescore_policy=rescore_policy(config, s))
  kc = config.kl

  def iteration(state, batch, rng):
    k_gen, k_upd = jax.random.split(rng)
    t0 = time.perf_counter()
    policy = policy_of(state.params)
    pt, pm, gen = generate_fn(policy, batch["prompt_tokens"], batch["prompt_mask"], k_gen)
    tokens, mask = rollout_lib.host_array(gen.tokens_BxT), rollout_lib.host_array(gen.mask_BxT)
    t1 = time.perf_counter()
    scored = score_fn(policy, s.sft.params, critic_of(state.params), s.rm, pt, pm,
                      gen.tokens_BxT, gen.mask_BxT, gen.logp_BxT)
    jax.block_until_ready(scored)
    t2 = time.perf_counter()
    index = np.repeat(rollout_lib.host_array(batch["prompt_index"]), group_size)
    completions = reward_fns.decode_completions(s.tok, tokens, mask) if s.needs_text() else None
    if config.reward.source == "learned" and s.functions is None:
      scores, gold, parts = scored["rm_scores"], None, {}
      if hasattr(s.task, "gold_reward"):
        gold = reward_fns.gold_scores(s.task, [s.prompts["train"][i] for i in index], completions)
    else:
      rm = rollout_lib.host_array(scored["rm_scores"]) if "rm_scores" in scored else None
      host, gold, parts = s.rewards(config, "train", index, completions, rm)
      scores = rollout_lib.to_device_like(host, gen.stopped_B)
    fields = {"prompt_tokens": pt, "prompt_mask": pm, "tokens": gen.tokens_BxT,
              "mask": gen.mask_BxT, "stopped": gen.stopped_B, **scored}
    update_batch, prep_metrics = prepare_fn(fields, scores, jnp.float32(stream.kl_coef))
    t3 = time.perf_counter()
    state, metrics = update_fn(state, update_batch, k_upd)
    jax.block_until_ready(state)
    t4 = time.perf_counter()

    beta = stream.kl_coef
    generated = float(mask.sum())
    metrics = {**metrics, **prep_metrics, "kl_coef": beta,
               "reward": float(np.mean(rollout_lib.host_array(scores))),
               "completion_length": generated / len(index),
               "time/generation": t1 - t0, "time/scoring": t2 - t1, "time/update": t4 - t3,
               "time/iteration": t4 - t0,
               "generation_tokens_per_sec": generated / max(t1 - t0, 1e-9)}
    if gold is not None:
      metrics["gold_reward"] = float(np.mean(gold))
    metrics.update({f"reward/{k}": float(np.mean(v)) for k, v in parts.items()})
    metrics[nonfinite.FLAG] = bad = iteration_flag(metrics, update_fn.checked_names)
    if not bad:  # a skipped (non-finite) iteration leaves beta as it was
      stream.kl_coef = float(kl_control.update(beta, float(prep_metrics["kl"]),
                                               kind=kc.controller, target=kc.target,
                                               horizon=kc.horizon, batch_size=len(index)))
    return state, metrics

  iteration.jitted = {"generate": generate_fn, "score": score_fn, "update": update_fn,
                      "prepare": prepare_fn}
  return iteration


def jit_update(update, config, shardings, *, check_inputs):
  """The update jitted with the non-finite guard (train/nonfinite.py), which also checks the
  rollout-derived inputs `check_inputs` (a NaN reward surfaces in the advantages)."""
  guarded = nonfinite.guard_step(update, mode=config.train.nonfinite, check_inputs=check_inputs)
  jitted = jax.jit(guarded, out_shardings=(shardings, None), donate_argnums=0)
  jitted.checked_names = guarded.checked_names
  return jitted


def iteration_flag(metrics: dict, update_names) -> str:
  """'' when the iteration is finite, else the name of its first non-finite value: the
  update's flag (removed from `metrics`), then the host-side metrics."""
  flag = int(metrics.pop(nonfinite.FLAG))
  if flag >= 0:
    return update_names[flag]
  index, names = nonfinite.host_flag(jax.device_get(metrics))
  return names[index] if index >= 0 else ""


@dataclasses.dataclass
class Built:
  """An algorithm wired to a Setup: its state, the loop step, evaluation and prompt stream."""
  state: Any
  shardings: Any
  iteration: Callable
  evaluate: Callable
  stream: PromptStream
  export_params: Callable   # train-state params -> the policy's params
  learning_rate: Callable | None = None  # the optimizer's schedule (logged)


def run(config, workdir: str, s: Setup, b: Built) -> loop.LoopResult:
  result = loop.run(config=config, workdir=workdir, mesh=s.mesh, state=b.state,
                    state_shardings=b.shardings, train_step=b.iteration, train_iter=b.stream,
                    evaluate=b.evaluate, jit=False, learning_rate=b.learning_rate)
  if result.finished:
    export.save(workdir, b.export_params(result.state.params), kind="lm",
                model_config=s.sft.model_config, tokenizer=s.tok_spec)
  return result
