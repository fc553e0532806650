"""Time of one online-RL iteration (GRPO and PPO), comparing checkouts of the project side by side.

Each checkout (a directory holding `rlhf_jax/` and `configs/`; the first is the one this file
belongs to unless given) runs the same stage from the same SFT export, in its own process
(`python -m rlhf_jax.main` with that checkout first on the path), for `--iterations` iterations.
The figure is the median of the per-iteration wall time the stage logs (`train/time/iteration`:
generate + score + rewards + update, device work waited for), the first `--warmup` iterations
(compilation) left out. Rounds alternate the checkouts, so a slow spell of a shared machine hits
all alike; reported per stage: each checkout's median over rounds, and the median over rounds of
the per-round ratio other / first (> 1: the first checkout is faster) with its min-max.

  git worktree add /tmp/before <commit>
  python experiments/bench_rl_iteration.py --checkouts . /tmp/before --rounds 5

Work per iteration (enumerable world, char tokenizer, the `tiny` SFT model of configs/sft.py):
  grpo  16 prompts x 8 samples, 6 new tokens, one optimizer step       (configs/grpo.py:enumerable)
  ppo   64 prompts, 6 new tokens, critic, 4 epochs x 4 minibatches      (configs/ppo.py)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = {
    "grpo": "configs/grpo.py:enumerable",
    "ppo": "configs/ppo.py",
}


def _run(checkout: str, config: str, workdir: str, overrides: list[str]) -> float:
  """Wall time of the process; raises with its output when it fails."""
  env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
  cmd = [sys.executable, "-m", "rlhf_jax.main", f"--config={config}", f"--workdir={workdir}",
         *overrides]
  t0 = time.perf_counter()
  done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f"{' '.join(cmd)} (in {checkout}) failed:\n{done.stdout[-3000:]}\n"
                       f"{done.stderr[-3000:]}")
  return time.perf_counter() - t0


def iteration_times(workdir: str, warmup: int) -> list[float]:
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  times = [r["train/time/iteration"] for r in rows if "train/time/iteration" in r]
  return times[warmup:]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkouts", nargs="+", default=[HERE])
  parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--iterations", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--sft_steps", type=int, default=200)
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="bench_rl_")
  sft_dir = os.path.join(root, "sft")
  _run(args.checkouts[0], "configs/sft.py:enumerable", sft_dir,
       [f"--config.train.num_steps={args.sft_steps}", "--config.train.tensorboard=False"])
  common = [f"--config.init.from_workdir={sft_dir}",
            f"--config.train.num_steps={args.iterations}", "--config.train.log_every=1",
            f"--config.train.eval_every={10 * args.iterations}",
            f"--config.train.checkpoint_every={10 * args.iterations}",
            "--config.train.tensorboard=False", "--config.eval.exact_prompts=1"]
  medians = {(s, c): [] for s in args.stages for c in args.checkouts}
  for r in range(args.rounds):
    for stage in args.stages:
      for c in args.checkouts:
        workdir = os.path.join(root, f"{stage}-{r}-{args.checkouts.index(c)}")
        _run(c, STAGES[stage], workdir, common)
        medians[(stage, c)].append(statistics.median(iteration_times(workdir, args.warmup)))
        shutil.rmtree(workdir)
    print(f"round {r + 1}/{args.rounds}: " + ", ".join(
        f"{s}[{i}] {medians[(s, c)][-1] * 1e3:.1f} ms" for s in args.stages
        for i, c in enumerate(args.checkouts)), flush=True)
  print(f"\nmedian iteration time over {args.rounds} rounds (each the median of "
        f"{args.iterations - args.warmup} iterations):")
  for stage in args.stages:
    first = medians[(stage, args.checkouts[0])]
    for i, c in enumerate(args.checkouts):
      line = f"  {stage:5s} [{i}] {c}: {statistics.median(medians[(stage, c)]) * 1e3:8.1f} ms"
      if i:
        ratios = [o / f for o, f in zip(medians[(stage, c)], first)]
        line += (f"   ratio [{i}]/[0] {statistics.median(ratios):.2f} "
                 f"(min {min(ratios):.2f}, max {max(ratios):.2f})")
      print(line)
  shutil.rmtree(root)


if __name__ == "__main__":
  main()
