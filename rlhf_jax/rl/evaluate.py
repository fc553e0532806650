"""Evaluation of an online-RL policy on the held-out prompts (rl/setup.py `Setup`)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import numpy as np

from rlhf_jax import losses
from rlhf_jax.data import pipeline
from rlhf_jax.generation import SamplingConfig
from rlhf_jax.rewards import functions as reward_fns
from rlhf_jax.rl import rollout as rollout_lib
from rlhf_jax.rl.setup import Setup
from rlhf_jax.train import loop, metrics, passk, samples
from rlhf_jax.train.enumerable_eval import EnumerableEvaluator


def uses_enumerable_task(config) -> bool:
  return config.data.get("source", "task") == "task" and config.task.name == "enumerable"


def make_evaluator(s: Setup, config, plain_of: Callable):
  """eval/* metrics of the plain policy `plain_of(state.params)` (what the stage exports: LoRA
  adapters merged), with the SFT export's graphdef: exact on the enumerable world; otherwise
  greedy verifier accuracy (where the data has a gold reward; with eval.pass_n > 0 also
  eval/pass@k and eval/maj@k of pass_n samples per prompt, k in eval.pass_k), the reward of the sampled
  completions (eval/reward: the configured source, e.g. the learned RM's score) and a sampled KL
  on the held-out prompts,

    eval/kl = mean over prompts x of  sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)],
              y ~ pi (untempered, one sample per prompt, a fixed rng per evaluation)

  an unbiased Monte-Carlo estimate of KL(pi || pi_ref) per sequence (k1 summed over tokens)."""
  plain_sh = rollout_lib.shardings_of(s.sft.params, s.mesh)
  sampler = make_sampler(s, config, plain_sh)
  with_samples = lambda out, policy: (out if sampler is None
                                      else {**out, metrics.SAMPLES: sampler(policy)})
  if uses_enumerable_task(config):
    exact = EnumerableEvaluator(s.task, s.layout, s.sft.graphdef, s.mesh,
                                batch_size=config.eval.exact_batch_size,
                                max_prompts=config.eval.exact_prompts)
    exact.set_reference(s.sft.params)

    def evaluate_exact(state):
      policy = plain_of(state.params)
      return with_samples(exact.metrics(policy, beta=float(state.control["kl_coef"])), policy)
    return evaluate_exact

  gen = lambda sampling, n: rollout_lib.make_generate_fn(s.sft.graphdef, sampling, mesh=s.mesh,
                                                         param_shardings=plain_sh, group_size=n)
  greedy = gen(dataclasses.replace(s.sampling, greedy=True), 1)
  untempered = SamplingConfig(max_new_tokens=s.sampling.max_new_tokens, eos_id=s.sampling.eos_id,
                              pad_id=s.sampling.pad_id)
  sample = gen(untempered, 1)
  # policy and reference log-probs, and the learned RM's scores when there is one
  fixed = {"ref": s.sft.params, **({"rm": s.rm} if s.rm is not None else {})}
  score_sh = {"policy": plain_sh, **rollout_lib.shardings_of(fixed, s.mesh)}
  score = rollout_lib.make_score_fn(s.sft.graphdef, mesh=s.mesh, shardings=score_sh,
                                    rm_graphdef=s.rm_graphdef,
                                    rm_combine=config.reward.ensemble_combine,
                                    rm_lambda=config.reward.ensemble_lambda)
  has_gold = hasattr(s.task, "gold_reward")
  pass_n = int(config.eval.get("pass_n", 0)) if has_gold else 0
  multi = gen(untempered, pass_n) if pass_n else None

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
      logps = score({"policy": policy, **fixed}, pt, pm, drawn.tokens_BxT, drawn.mask_BxT,
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
    return with_samples(out, policy)

  return evaluate


def make_sampler(s: Setup, config, plain_sh) -> Optional[samples.Sampler]:
  """Greedy answers of the plain policy to the first train.eval_samples held-out prompts, with
  the task's gold reward where it has one and the reward the policy trains on (`reward`: the
  learned reward model's normalised score, plus the reward functions, as in training)."""
  arrays = s.prompt_arrays["test"]
  n = min(samples.count(config), len(arrays["prompt_tokens"]))
  if n <= 0:
    return None
  index = np.asarray(arrays["prompt_index"][:n])
  scores_fn = None
  if s.rm is not None:  # the learned reward model's scores of the completions, on device
    rm_score = rollout_lib.make_rm_score_fn(
        s.rm_graphdef, mesh=s.mesh, rm_sharding=rollout_lib.shardings_of(s.rm, s.mesh),
        combine=config.reward.ensemble_combine, lam=config.reward.ensemble_lambda)
    scores_fn = lambda policy, pt, pm, out: rm_score(s.rm, pt, pm, out.tokens_BxT,
                                                     out.mask_BxT)

  def rewards(prompts, completions, rm_scores) -> dict:
    del prompts  # the Setup knows them by index
    if rm_scores is None and config.reward.source == "learned":
      return {}
    reward, gold, _ = s.rewards(config, "test", index, completions, rm_scores=rm_scores)
    return {**({"gold_reward": gold} if gold is not None else {}),
            **({"reward": reward} if config.reward.source != "gold" else {})}

  return samples.Sampler(s.sft.graphdef, mesh=s.mesh, param_shardings=plain_sh, tokenizer=s.tok,
                         prompt_tokens_NxP=arrays["prompt_tokens"][:n],
                         prompt_mask_NxP=arrays["prompt_mask"][:n],
                         prompts=[str(s.prompts["test"][i]) for i in index],
                         max_new_tokens=s.sampling.max_new_tokens, rewards_fn=rewards,
                         scores_fn=scores_fn)


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
