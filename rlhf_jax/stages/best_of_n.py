"""Best-of-n sampling and rejection-sampling fine-tuning.

  best_of_n (inference): for each held-out prompt draw n completions from the policy, keep the
    one with the highest reward (gold / verifier or a learned RM). Reports the reward and gold of
    the kept samples against the policy's own, and on the enumerable world the EXACT KL of the
    best-of-n policy to the sampling policy beside the analytic bound log n − (n−1)/n
    (Stiennon et al. 2020; Beirami et al. 2024; tasks/exact.py).
  rejection_sampling: the same selection on train prompts — the best per prompt, or the top-K
    overall — written to `<workdir>/rejection_samples.jsonl` (the SFT data; samples.jsonl holds
    the evaluations' samples, train/samples.py), then SFT on them from the policy
    (Touvron et al. 2023, Llama 2 §3.2.3; DeepSeek-AI 2025, R1 stage 3).
"""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from rlhf_jax.data import formats, pipeline
from rlhf_jax.rewards import functions as reward_fns
from rlhf_jax.stages import online, sft as sft_stage
from rlhf_jax.tasks import exact
from rlhf_jax.rl import rollout as rollout_lib
from rlhf_jax.train import loop, metrics as metrics_lib
from rlhf_jax.train.enumerable_eval import EnumerableEvaluator

MODES = ("best_of_n", "rejection_sampling")
KEEP = ("best_per_prompt", "top_k")  # config.bon.keep, see `select`


def sample_and_score(s: online.Setup, config, split: str, max_prompts: int):
  """n samples per prompt of `split`: (prompt texts [P], completions [P][n], rewards [P, n],
  gold [P, n] or None)."""
  n = config.bon.n
  sft_sh = rollout_lib.shardings_of(s.sft.params, s.mesh)
  gen = rollout_lib.make_generate_fn(s.sft.graphdef, s.sampling, mesh=s.mesh,
                                     param_shardings=sft_sh, group_size=n)
  score = None
  if s.rm is not None:
    params = {"policy": s.sft.params, "ref": s.sft.params, "rm": s.rm}
    score = rollout_lib.make_score_fn(s.sft.graphdef, mesh=s.mesh,
                                      shardings=rollout_lib.shardings_of(params, s.mesh),
                                      rm_graphdef=s.rm_graphdef,
                                      rm_combine=config.reward.ensemble_combine,
                                      rm_lambda=config.reward.ensemble_lambda,
                                      rescore_policy=False)  # only rm_scores are read
  prompts, completions, rewards, golds = [], [], [], []
  rng = jax.random.key(config.seed)
  has_gold = hasattr(s.task, "gold_reward")
  for i, local in enumerate(pipeline.eval_batches(s.prompt_arrays[split],
                                                  global_batch=config.rl.prompts_per_step,
                                                  max_examples=max_prompts)):
    g = loop.to_global(local, s.mesh)
    pt, pm, out = gen(s.sft.params, g["prompt_tokens"], g["prompt_mask"], jax.random.fold_in(rng, i))
    valid = np.repeat(local["prompt_mask"].sum(1) > 0, n)
    index = np.repeat(local["prompt_index"], n)
    texts_b = reward_fns.decode_completions(s.tok, rollout_lib.host_array(out.tokens_BxT),
                                            rollout_lib.host_array(out.mask_BxT))
    prompt_b = [s.prompts[split][j] for j in index]
    rm_b = None
    if s.rm is not None:
      scored = score(params, pt, pm, out.tokens_BxT, out.mask_BxT, out.logp_BxT)
      rm_b = rollout_lib.host_array(scored["rm_scores"])
    reward_b, gold_b, _ = s.rewards(config, split, index, texts_b, rm_b)
    for start in range(0, len(valid), n):
      if not valid[start]:
        continue
      prompts.append(prompt_b[start])
      completions.append(texts_b[start:start + n])
      rewards.append(reward_b[start:start + n])
      golds.append(None if gold_b is None else gold_b[start:start + n])
  golds = None if not has_gold else np.asarray(golds, np.float64)
  return prompts, completions, np.asarray(rewards, np.float64), golds


def exact_best_of_n(s: online.Setup, config) -> dict:
  """Exact best-of-n against the reward on the enumerable world (gold source only)."""
  evaluator = EnumerableEvaluator(s.task, s.layout, s.sft.graphdef, s.mesh,
                                  batch_size=config.eval.exact_batch_size,
                                  max_prompts=config.eval.exact_prompts)
  ref_PxN, _ = evaluator.distribution(s.sft.params)
  n = config.bon.n
  bon_PxN = exact.best_of_n_distribution(ref_PxN, evaluator.gold_PxN, n)
  return {"exact/kl": float(np.mean(exact.exact_kl(bon_PxN, ref_PxN))),
          "exact/kl_bound": exact.best_of_n_kl_bound(n),
          "exact/gold_reward": float(np.mean(exact.expectation(bon_PxN, evaluator.gold_PxN))),
          "exact/policy_gold_reward": float(np.mean(exact.expectation(ref_PxN,
                                                                       evaluator.gold_PxN)))}


def _text(completion) -> str:
  return completion if isinstance(completion, str) else completion[0]["content"]


def select(prompts, completions, rewards, *, keep: str, top_k: int) -> list[dict]:
  """Best completion per prompt (`keep=best_per_prompt`) or the top_k (prompt, completion)
  pairs by reward overall (`keep=top_k`)."""
  if keep == "best_per_prompt":
    best = np.argmax(rewards, axis=1)
    return [{"prompt": p, "completion": formats.reply(p, c[j]), "reward": float(r[j])}
            for p, c, r, j in zip(prompts, completions, rewards, best)]
  if keep == "top_k":
    flat = [(float(r), p, c) for p, cs, rs in zip(prompts, completions, rewards)
            for c, r in zip(cs, rs)]
    flat.sort(key=lambda x: -x[0])
    return [{"prompt": p, "completion": formats.reply(p, c), "reward": r}
            for r, p, c in flat[:top_k]]
  raise ValueError(f"unknown bon.keep {keep!r}; valid: {list(KEEP)}")


def ranked_pairs(s: online.Setup, config, split: str, max_prompts: int) -> list[dict]:
  """On-policy preference pairs: bon.n samples per prompt, the best and the worst by reward
  (Tülu 3's on-policy DPO data, ranked by a reward model or a verifier). Prompts whose samples
  all tie are dropped and counted."""
  prompts, completions, rewards, golds = sample_and_score(s, config, split, max_prompts)
  records, ties, empty = [], 0, 0
  for i, (p, cs, rs) in enumerate(zip(prompts, completions, rewards)):
    hi, lo = int(np.argmax(rs)), int(np.argmin(rs))
    if rs[hi] == rs[lo] or cs[hi] == cs[lo]:
      ties += 1
      continue
    if not config.data.allow_empty_completion and not (cs[hi] and cs[lo]):
      empty += 1
      continue
    records.append({"prompt": p, "chosen": formats.reply(p, cs[hi]),
                    "rejected": formats.reply(p, cs[lo]),
                    "chosen_gold": float(golds[i][hi]) if golds is not None else float("nan"),
                    "rejected_gold": float(golds[i][lo]) if golds is not None else float("nan")})
  logging.info("on-policy pairs (%s): %d kept; prompts dropped: %d all samples tied, %d an empty "
               "completion (data.allow_empty_completion is off)", split, len(records), ties, empty)
  if not records:
    raise ValueError("on-policy pairs: every prompt's samples tied; raise bon.n or temperature")
  return records


def run(config, workdir: str):
  if config.bon.mode not in MODES:
    raise ValueError(f"unknown bon.mode {config.bon.mode!r}; valid: {list(MODES)}")
  s = online.setup(config, workdir)
  if config.bon.mode == "best_of_n":
    writer = metrics_lib.MetricsWriter(workdir, tensorboard=False, resume_step=0)  # a rerun
    # replaces the evaluation row
    prompts, _, rewards, golds = sample_and_score(s, config, "test", config.train.eval_examples)
    best = np.argmax(rewards, axis=1)
    row = {"eval/reward": float(np.mean(rewards[np.arange(len(best)), best])),
           "eval/policy_reward": float(np.mean(rewards)), "eval/prompts": len(prompts),
           "eval/n": config.bon.n, "eval/kl_bound": exact.best_of_n_kl_bound(config.bon.n)}
    if golds is not None:
      row["eval/gold_reward"] = float(np.mean(golds[np.arange(len(best)), best]))
      row["eval/policy_gold_reward"] = float(np.mean(golds))
    if s.task is not None and config.task.name == "enumerable" and config.reward.source == "gold":
      row.update({f"eval/{k}": v for k, v in exact_best_of_n(s, config).items()})
    writer.write(0, row)
    writer.close()
    logging.info("best-of-%d: %s", config.bon.n, row)
    return row

  prompts, completions, rewards, _ = sample_and_score(s, config, "train",
                                                      config.bon.max_train_prompts)
  selected = select(prompts, completions, rewards, keep=config.bon.keep, top_k=config.bon.top_k)
  chosen = [r for r in selected if r["reward"] >= config.bon.min_reward
            and (_text(r["completion"]) or config.data.allow_empty_completion)]
  logging.info("rejection sampling: kept %d of %d selected samples (min_reward %s, empty "
               "completions %s)", len(chosen), len(selected), config.bon.min_reward,
               "kept" if config.data.allow_empty_completion else "dropped")
  if not chosen:
    raise ValueError("rejection sampling kept no samples: lower bon.min_reward or raise bon.n")
  path = os.path.join(workdir, "rejection_samples.jsonl")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      for r in chosen:
        f.write(json.dumps(r) + "\n")
  # The selection's row (once: a rerun samples the same), then the SFT loop's rows.
  writer = metrics_lib.MetricsWriter(workdir, tensorboard=False)
  if not writer.logged("rs/samples"):
    writer.write(0, {"rs/samples": len(chosen), "rs/mean_reward": float(np.mean(
        [r["reward"] for r in chosen])), "rs/policy_reward": float(np.mean(rewards))})
  writer.close()
  config.data.sft_records_path = path
  return sft_stage.run(config, workdir)  # exports to <workdir>/export like every stage
