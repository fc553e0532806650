"""The online-RL engine: one iteration is

  1. generate  group_size completions for each of rl.prompts_per_step prompts (sharded sampler)
  2. score     old-policy, reference, critic and reward-model passes over them (one jitted pass)
  3. rewards   gold function / verifier / reward functions on the host (decoded text), plus the
               learned RM's scores  ->  a `Rollout` (rl/rollout.py)
     dynamic sampling (rl.dynamic_sampling, DAPO): groups whose rewards are all equal carry no
     signal; they are dropped and more prompts are sampled until the batch is full again
     (at most rl.max_sampling_rounds generation rounds; counted)
  4. learn     advantages -> K epochs of minibatch updates -> KL control, one jitted function
               (rl/learn.py) with the algorithm of rl/algorithms.py
The loop (train/loop.py) calls it as its step; β lives in the train state (`RLState.control`), so
a checkpoint holds everything a resume needs besides the prompt iterator's position. Each
iteration logs its analytic FLOPs per part (flops/generation, flops/scoring, flops/update:
rl/flops.py) and keeps their sum as `iteration.last_flops` for the loop's tflops_per_sec and mfu.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.parallel import sharding as sharding_lib
from rlhf_jax.rewards import functions as reward_fns
from rlhf_jax.rl import flops as flops_lib, learn as learn_lib, rollout as rollout_lib
from rlhf_jax.rl.learn import RLState
from rlhf_jax.rl.rollout import Rollout
from rlhf_jax.rl.setup import Setup
from rlhf_jax.train import loop, nonfinite


def rl_state(state, shardings, kl_coef: float, mesh) -> tuple[RLState, RLState]:
  """(RLState, its shardings) from a step-0 TrainState: β = kl_coef, replicated."""
  repl = sharding_lib.replicated(mesh)
  control = {"kl_coef": jax.device_put(jnp.float32(kl_coef), repl)}
  return (RLState(step=state.step, params=state.params, opt_state=state.opt_state,
                  control=control),
          RLState(step=shardings.step, params=shardings.params, opt_state=shardings.opt_state,
                  control={"kl_coef": repl}))


def rescore_policy(config, s: Setup) -> bool:
  """Whether rollouts get an old-policy forward pass: unless `config.rl.rescore_policy` is False
  and generation sampled the float32 policy itself (rollout.sampler_is_policy), in which case
  its log-probs serve (one forward pass fewer per iteration)."""
  reuse = rollout_lib.sampler_is_policy(s.sampling, s.sft.model_config.dtype)
  return bool(config.rl.rescore_policy) or not reuse


def jit_learn(learn: Callable, config, shardings: RLState, mesh, *, check_inputs) -> Callable:
  """`learn` jitted with explicit shardings (state as laid out, rollout rows over the data axes)
  and the non-finite guard (train/nonfinite.py), which also checks the rollout fields
  `check_inputs` (a NaN reward surfaces in the advantages)."""
  guarded = nonfinite.guard_step(learn, mode=config.train.nonfinite, check_inputs=check_inputs)
  repl = sharding_lib.replicated(mesh)
  compiled = {}

  def fn(state, rollout: Rollout, rng):
    if "jit" not in compiled:
      rows = jax.tree.map(lambda x: sharding_lib.batch_sharding(mesh, x.ndim), rollout)
      compiled["jit"] = jax.jit(guarded, in_shardings=(shardings, rows, repl),
                                out_shardings=(shardings, repl), donate_argnums=0)
    return compiled["jit"](state, rollout, rng)

  fn.checked_names = guarded.checked_names
  fn._cache_size = lambda: compiled["jit"]._cache_size() if compiled else 0  # compile counts
  return fn


def iteration_flag(metrics: dict, update_names) -> str:
  """'' when the iteration is finite, else the name of its first non-finite value: the
  update's flag (removed from `metrics`), then the host-side metrics."""
  flag = int(metrics.pop(nonfinite.FLAG))
  if flag >= 0:
    return update_names[flag]
  index, names = nonfinite.host_flag(jax.device_get(metrics))
  return names[index] if index >= 0 else ""


@dataclasses.dataclass
class Collected:
  """One generation round: its rollout and the host-side values logged per row."""
  rollout: Rollout
  scores: np.ndarray
  gold: np.ndarray | None
  parts: dict
  lengths: np.ndarray
  seconds: dict
  flops: dict           # analytic FLOPs of the round's generation and scoring (rl/flops.py)


def informative(scores: list[np.ndarray], group_size: int) -> np.ndarray:
  """Per group of the rounds' scores (concatenated): whether its rewards are not all equal (it
  carries a learning signal)."""
  flat = np.concatenate(scores).reshape(-1, group_size)
  return flat.max(axis=1) > flat.min(axis=1)


def select_groups(scores: list[np.ndarray], group_size: int, prompts: int
                  ) -> tuple[np.ndarray, dict]:
  """DAPO's dynamic sampling over generation rounds: (row indices into the rounds' rows
  concatenated, metrics). Keeps the first `prompts` groups whose rewards are not all equal; when
  fewer exist, tops the batch up with the first degenerate ones (the batch shape is static),
  counted as dynamic_sampling/filled_groups. Groups keep their order."""
  signal = informative(scores, group_size)
  kept = np.flatnonzero(signal)[:prompts]
  filled = prompts - len(kept)
  groups = np.sort(np.concatenate([kept, np.flatnonzero(~signal)[:filled]]))
  if len(groups) < prompts:
    raise ValueError(f"dynamic sampling: {len(groups)} groups generated, {prompts} needed")
  rows = (groups[:, None] * group_size + np.arange(group_size)[None, :]).reshape(-1)
  return rows, {"dynamic_sampling/rounds": float(len(scores)),
                "dynamic_sampling/informative_frac": float(signal.mean()),
                "dynamic_sampling/filled_groups": float(filled)}


def make_iteration(s: Setup, config, *, model: learn_lib.Model, learn_fn: Callable,
                   shardings: RLState, stream, group_size: int,
                   extra_fn: Callable[[], dict] | None = None) -> Callable:
  """The python step the loop calls: `iteration(state, prompt batch, rng) -> (state, metrics)`.

  The policy generates and is scored as trained (`model.policy_graphdef`, LoRA adapters
  included), so the update's first ratio is 1 (exactly when re-scored, to float rounding when
  generation's log-probs serve, see `rescore_policy`); the reference is the SFT export.
  stream: the prompt iterator (dynamic sampling draws further batches from it).
  extra_fn: per-row arrays added to every rollout's `extra` (PPO-ptx's SFT batch)."""
  policy_sh = model.policy_of(shardings.params)
  generate_fn = rollout_lib.make_generate_fn(model.policy_graphdef, s.sampling, mesh=s.mesh,
                                             param_shardings=policy_sh, group_size=group_size)
  fixed = {"ref": s.sft.params, **({"rm": s.rm} if s.rm is not None else {})}
  score_sh = {"policy": policy_sh, **rollout_lib.shardings_of(fixed, s.mesh)}
  if model.value_fn is not None:
    score_sh["critic"] = model.critic_of(shardings.params)
  score_fn = rollout_lib.make_score_fn(
      model.policy_graphdef, mesh=s.mesh, shardings=score_sh, ref_graphdef=s.sft.graphdef,
      value_fn=model.value_fn, rm_graphdef=s.rm_graphdef,
      rm_combine=config.reward.ensemble_combine, rm_lambda=config.reward.ensemble_lambda,
      rescore_policy=rescore_policy(config, s))
  counter = flops_lib.for_run(s, config, critic=model.value_fn is not None,
                             rescore_policy=rescore_policy(config, s))
  dynamic = bool(config.rl.get("dynamic_sampling", False))
  max_rounds = int(config.rl.get("max_sampling_rounds", 1)) if dynamic else 1
  prompts = int(config.rl.prompts_per_step)
  groups_by_rows = {}

  def group_ids(rows: int) -> jax.Array:
    """[rows] group index of each row (row // group_size), on device; one upload per size."""
    if rows not in groups_by_rows:
      groups_by_rows[rows] = rollout_lib.to_device(
          np.repeat(np.arange(rows // group_size, dtype=np.int32), group_size), s.mesh)
    return groups_by_rows[rows]

  def collect(state, batch, rng) -> Collected:
    t0 = time.perf_counter()
    policy = model.policy_of(state.params)
    pt, pm, gen = generate_fn(policy, batch["prompt_tokens"], batch["prompt_mask"], rng)
    tokens, mask = rollout_lib.host_array(gen.tokens_BxT), rollout_lib.host_array(gen.mask_BxT)
    t1 = time.perf_counter()
    params = {"policy": policy, **fixed}
    if model.value_fn is not None:
      params["critic"] = model.critic_of(state.params)
    scored = score_fn(params, pt, pm, gen.tokens_BxT, gen.mask_BxT, gen.logp_BxT)
    jax.block_until_ready(scored)
    t2 = time.perf_counter()
    index = np.repeat(rollout_lib.host_array(batch["prompt_index"]), group_size)
    completions = reward_fns.decode_completions(s.tok, tokens, mask) if s.needs_text() else None
    rm = rollout_lib.host_array(scored["rm_scores"]) if s.rm is not None else None
    scores_B = None
    if config.reward.source == "learned" and s.functions is None:
      scores, parts = rm, {}
      scores_B = scored["rm_scores"]  # already on device, laid out as the rollout
      gold = (reward_fns.gold_scores(s.task, [s.prompts["train"][i] for i in index], completions)
              if hasattr(s.task, "gold_reward") else None)
    else:
      scores, gold, parts = s.rewards(config, "train", index, completions, rm)
    scores = np.asarray(scores, np.float32)
    rows = len(index)
    rollout = Rollout(
        prompt_tokens_BxP=pt, prompt_mask_BxP=pm, tokens_BxT=gen.tokens_BxT,
        mask_BxT=gen.mask_BxT, stopped_B=gen.stopped_B, sampler_logp_BxT=gen.logp_BxT,
        old_logp_BxT=scored["old_logp"], ref_logp_BxT=scored["ref_logp"],
        values_BxT=scored["values"],
        scores_B=rollout_lib.to_device(scores, s.mesh) if scores_B is None else scores_B,
        group_B=group_ids(rows),
        rewards={k: rollout_lib.to_device(np.asarray(v, np.float32), s.mesh)
                 for k, v in parts.items()})
    p, t = pt.shape[1], tokens.shape[1]  # the decode loop ran as many steps as the longest row
    work = {"generation": counter.generation(rows, p, int(mask.sum(1).max(initial=0))),
            "scoring": counter.scoring(rows, p, t)}
    return Collected(rollout, scores, gold, parts, mask.sum(1),
                     {"generation": t1 - t0, "scoring": t2 - t1,
                      "rewards": time.perf_counter() - t2}, work)

  def gather(state, batch, rng) -> tuple[Collected, dict]:
    """One round, or (dynamic sampling) rounds until `prompts` groups carry signal."""
    rounds = [collect(state, batch, jax.random.fold_in(rng, 0))]
    if not dynamic:
      return rounds[0], {}
    while (len(rounds) < max_rounds
           and informative([r.scores for r in rounds], group_size).sum() < prompts):
      more = loop.to_global(next(stream), s.mesh)
      rounds.append(collect(state, more, jax.random.fold_in(rng, len(rounds))))
    rows, stats = select_groups([r.scores for r in rounds], group_size, prompts)
    cat = lambda xs: np.concatenate(xs)[rows]
    picked = rollout_lib.select_rows([r.rollout for r in rounds], rows, s.mesh).replace(
        group_B=group_ids(len(rows)))
    first = rounds[0]
    gold = None if first.gold is None else cat([r.gold for r in rounds])
    parts = {k: cat([r.parts[k] for r in rounds]) for k in first.parts}
    seconds = {k: sum(r.seconds[k] for r in rounds) for k in first.seconds}
    work = {k: sum(r.flops[k] for r in rounds) for k in first.flops}
    return Collected(picked, cat([r.scores for r in rounds]), gold, parts,
                     cat([r.lengths for r in rounds]), seconds, work), stats

  def iteration(state, batch, rng):
    k_gen, k_upd = jax.random.split(rng)
    t0 = time.perf_counter()
    c, stats = gather(state, batch, k_gen)
    rollout = c.rollout
    if extra_fn is not None:
      rollout = rollout.replace(extra=extra_fn())
    t3 = time.perf_counter()
    state, metrics = learn_fn(state, rollout, k_upd)
    jax.block_until_ready(state)
    t4 = time.perf_counter()
    generated = float(c.lengths.sum())
    rows, p = rollout.prompt_tokens_BxP.shape
    ptx = rollout.extra.get("ptx_tokens")
    ptx_shape = (None if ptx is None else
                 (ptx.shape[0], rollout.extra["ptx_prompt_tokens"].shape[1], ptx.shape[1]))
    work = {**c.flops, "update": counter.update(rows, p, rollout.tokens_BxT.shape[1], ptx_shape)}
    iteration.last_flops = float(sum(work.values()))
    metrics = {**metrics, **stats,
               "completion_length": generated / len(c.lengths),
               **{f"time/{k}": v for k, v in c.seconds.items()},
               "time/update": t4 - t3, "time/iteration": t4 - t0,
               "generation_tokens_per_sec": generated / max(c.seconds["generation"], 1e-9),
               **{f"flops/{k}": v for k, v in work.items()}}
    if c.gold is not None:
      metrics["gold_reward"] = float(np.mean(c.gold))
    metrics.update({f"reward/{k}": float(np.mean(v)) for k, v in c.parts.items()})
    metrics[nonfinite.FLAG] = iteration_flag(metrics, learn_fn.checked_names)
    return state, metrics

  iteration.jitted = {"generate": generate_fn.jitted, "score": score_fn, "learn": learn_fn}
  iteration.last_flops = 0.0  # the analytic FLOPs of the latest call (all processes)
  iteration.score_fn = score_fn
  return iteration


@dataclasses.dataclass
class Built:
  """An algorithm wired to a Setup: its state, the loop step, evaluation and prompt stream."""
  state: Any
  shardings: Any
  iteration: Callable
  evaluate: Callable
  stream: Any
  export_params: Callable   # train-state params -> the policy's params
  learning_rate: Callable | None = None  # the optimizer's schedule (logged)
