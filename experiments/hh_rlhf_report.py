"""Figures of a `configs/hh_rlhf.py` run against baselines on the same held-out split.

  python -m rlhf_jax.main --config=configs/hh_rlhf.py:sample --workdir=runs/hh \\
      --config.data.manual_dir=../shared/data/hh-rlhf
  python experiments/hh_rlhf_report.py --workdir=runs/hh

Prints the reward model's held-out pairwise accuracy beside chance (0.5) and "the longer response
wins" (characters; a tie counts one half) on exactly the pairs the reward model was evaluated on
(the run's recorded data config, read back through the same source), DPO's held-out implicit-
reward accuracy, and PPO's reward-model score and sampled KL from the first to the last
evaluation.
"""

from __future__ import annotations

import argparse
import json
import os

import ml_collections

from rlhf_jax.stages import common
from rlhf_jax.train import workdir as workdir_lib


def _rows(path: str) -> list[dict]:
  with open(os.path.join(path, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _first_last(rows: list[dict], key: str) -> tuple[float, float]:
  values = [r[key] for r in rows if key in r]
  return values[0], values[-1]


def longer_wins(records: list[dict]) -> float:
  score = 0.0
  for r in records:
    lc, lr = len(r["chosen"]), len(r["rejected"])
    score += 1.0 if lc > lr else 0.5 if lc == lr else 0.0
  return score / len(records)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", required=True)
  args = parser.parse_args()
  rm_dir = os.path.join(args.workdir, "reward_model")
  config = ml_collections.ConfigDict(workdir_lib.recorded_config(rm_dir))
  held = common.record_set(config, rm_dir, "preference", "test").records
  n_eval = min(len(held), config.train.eval_examples)
  held = held[:n_eval]   # the pairs the reward model's evaluation covers
  rm_start, rm_end = _first_last(_rows(rm_dir), "eval/accuracy")
  dpo_start, dpo_end = _first_last(_rows(os.path.join(args.workdir, "dpo")), "eval/accuracy")
  ppo = _rows(os.path.join(args.workdir, "ppo"))
  r_start, r_end = _first_last(ppo, "eval/reward")
  kl_start, kl_end = _first_last(ppo, "eval/kl")
  print(f"held-out pairs evaluated: {n_eval}")
  print("| figure | value |\n|---|---|")
  print("| chance | 0.500 |")
  print(f"| longer response wins | {longer_wins(held):.3f} |")
  print(f"| reward model accuracy (step 0 -> end) | {rm_start:.3f} -> {rm_end:.3f} |")
  print(f"| DPO implicit-reward accuracy (step 0 -> end) | {dpo_start:.3f} -> {dpo_end:.3f} |")
  print(f"| PPO reward-model score (normalised, first -> last eval) | {r_start:.3f} -> "
        f"{r_end:.3f} |")
  print(f"| PPO sampled KL to the SFT policy (first -> last eval) | {kl_start:.3f} -> "
        f"{kl_end:.3f} |")


if __name__ == "__main__":
  main()
