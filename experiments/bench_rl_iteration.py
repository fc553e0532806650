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
  grpo             16 prompts x 8 samples, 6 new tokens, one optimizer step
                   (configs/grpo.py:enumerable)
  ppo              64 prompts, 6 new tokens, critic, 4 epochs x 4 minibatches (configs/ppo.py)
  grpo_arithmetic  128 prompts x 8 samples, 5 new tokens, the verifier's reward on the host,
                   two optimizer steps (configs/grpo.py, from configs/sft.py)
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
# stage -> (its config, the SFT config it starts from)
STAGES = {
    "grpo": ("configs/grpo.py:enumerable", "configs/sft.py:enumerable"),
    "ppo": ("configs/ppo.py", "configs/sft.py:enumerable"),
    "grpo_arithmetic": ("configs/grpo.py", "configs/sft.py"),
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


def phase_times(workdir: str, warmup: int) -> dict[str, float]:
  """Median seconds per logged phase (`train/time/<phase>`), the warm-up iterations left out."""
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  rows = [r for r in rows if "train/time/iteration" in r][warmup:]
  keys = sorted({k for r in rows for k in r if k.startswith("train/time/")})
  return {k.removeprefix("train/time/"): statistics.median(r[k] for r in rows if k in r)
          for k in keys}


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
  sft_dirs = {}
  for sft_config in sorted({STAGES[s][1] for s in args.stages}):
    sft_dirs[sft_config] = os.path.join(root, f"sft{len(sft_dirs)}")
    _run(args.checkouts[0], sft_config, sft_dirs[sft_config],
         [f"--config.train.num_steps={args.sft_steps}", "--config.train.tensorboard=False",
          "--config.train.eval_every=0", f"--config.data.data_dir={root}/data"])
  common = [f"--config.train.num_steps={args.iterations}", "--config.train.log_every=1",
            f"--config.data.data_dir={root}/data", "--config.eval.pass_n=0",
            "--config.train.eval_every=0",
            f"--config.train.checkpoint_every={10 * args.iterations}",
            "--config.train.tensorboard=False"]
  medians = {(s, c): [] for s in args.stages for c in args.checkouts}
  phases = {(s, c): [] for s in args.stages for c in args.checkouts}
  for r in range(args.rounds):
    for stage in args.stages:
      for c in args.checkouts:
        workdir = os.path.join(root, f"{stage}-{r}-{args.checkouts.index(c)}")
        config, sft_config = STAGES[stage]
        _run(c, config, workdir,
             common + [f"--config.init.from_workdir={sft_dirs[sft_config]}"])
        times = phase_times(workdir, args.warmup)
        medians[(stage, c)].append(times["iteration"])
        phases[(stage, c)].append(times)
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
      per_phase = {k: statistics.median(p[k] for p in phases[(stage, c)] if k in p)
                   for k in sorted({k for p in phases[(stage, c)] for k in p})}
      print("        phases (ms): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in per_phase.items()
                                               if k != "iteration"))
  shutil.rmtree(root)


if __name__ == "__main__":
  main()
