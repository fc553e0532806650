"""Reward-model over-optimisation at toy scale: Gao, Schulman & Hilton 2022 on the enumerable world.

  python experiments/overoptimization.py --config=configs/overoptimization.py \\
      --workdir=runs/overopt --results=experiments/results/overoptimization
  python experiments/overoptimization.py --config=configs/overoptimization.py:test \\
      --workdir=/tmp/overopt --results=/tmp/overopt/results --config.ppo.steps=8

Gold reward: the world's closed form (tasks/enumerable.py), designed so that a proxy fitted on
reference samples extrapolates "more target letters is better" past the budget where gold falls.
Steps (every training run is a real rlhf_jax stage; experiments/overopt/runs.py):
  1. SFT policy = π_ref; its exact distribution over every completion of the held-out prompts.
  2. Proxy reward models of several shapes and training-set sizes (gold-labelled reference pairs,
     deterministic labels, accuracy on held-out pairs), and an ensemble; every completion scored.
  3. Best-of-n against each proxy (and the gold itself), EXACTLY for n = 1 .. n_max: gold, proxy and
     KL (beside the log n − (n−1)/n bound); the unbiased estimator from N ≥ n samples as a check.
  4. The exact optimum of E[proxy] − β·KL for a β grid (the KL penalty's ideal).
  5. PPO at β = 0 against each proxy and the gold, a β sweep, ensemble combinations; exact gold,
     KL and proxy every few iterations.
  6. DPO and IPO at several β: gold vs √KL along training.
  7. Fits R_bon(d) = d(α − βd) and R_RL(d) = d(α − β log d) of the gold gain, R², trends.
Results (JSONL, one row per point with the settings that made it): proxies.jsonl, curves.jsonl,
estimator.jsonl, fits.jsonl, summary.json (acceptance figures, runtimes), config.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.overopt import driver  # noqa: E402
from rlhf_jax import configlib  # noqa: E402


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  rest, overrides = configlib.split_overrides(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/overoptimization.py")
  parser.add_argument("--workdir", required=True, help="stage runs (checkpoints, exports) go here")
  parser.add_argument("--results", required=True, help="result files go here")
  parser.add_argument("--compilation_cache", default="",
                      help="persistent XLA cache dir (default <workdir>/jax_cache; 'none' = off)")
  parser.add_argument("--analyze_only", action="store_true",
                      help="only recompute fits and summary from the result files")
  parser.add_argument("--log_level", default="INFO")
  args = parser.parse_args(rest)
  logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s",
                      force=True)
  for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  config = configlib.get(args.config, overrides)
  if args.analyze_only:
    summary = driver.reanalyze(config, args.results)
    logging.info("re-analysed %s: %s", args.results, summary["acceptance"])
    return 0
  if args.compilation_cache != "none":
    driver.enable_compilation_cache(args.compilation_cache or os.path.join(args.workdir, "jax_cache"))
  t0 = time.perf_counter()
  summary = driver.run(config, args.workdir, args.results, config_spec=args.config,
                       overrides=overrides)
  logging.info("over-optimisation experiment done in %.0f s; summary: %s",
               time.perf_counter() - t0, summary["acceptance"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
