"""Cost of the non-finite guard (train/nonfinite.py) on the SFT train step.

The same jitted SFT step (same weights, same batch, AdamW) is timed three ways: bare, guarded
in the default mode ("stop": the flag of every float metric is computed inside the step) and
guarded in "skip" mode (the new state is also selected against the old one). Rounds alternate
the three, so a slow spell of a shared machine hits all alike; each round times `--steps` steps
of each variant (device work waited for). Reported per variant: the median step time and the
median over rounds of the per-round ratio variant / bare (1.00 = no cost) with its min-max.

  python experiments/bench_guard.py                       # tiny and small presets
  python experiments/bench_guard.py --presets small --rounds 9 --steps 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rlhf_jax import configlib, models  # noqa: E402
from rlhf_jax.parallel import mesh as mesh_lib  # noqa: E402
from rlhf_jax.train import loop, nonfinite, optimizer, sft, state as state_lib  # noqa: E402

VARIANTS = ("bare", "stop", "skip")


def setup(preset: str, batch: int, length: int):
  """(jitted steps by variant, state, global batch) of the SFT step of `preset`."""
  config = configlib.get("configs/sft.py")
  mesh = mesh_lib.make_mesh({"data": -1})
  rules = tuple(tuple(r) for r in config.logical_axis_rules)
  cfg = models.get_model_config(preset, vocab_size=512)
  tx = optimizer.make_optimizer(config.optimizer, 1000)
  graphdef, state, shardings = state_lib.init_state(
      lambda r: models.Transformer(cfg, rngs=r), tx, mesh, rules, seed=0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 512, size=(batch, length)).astype(np.int32)
  local = {"tokens": tokens, "mask": np.ones_like(tokens),
           "completion_mask": np.concatenate([np.zeros((batch, length // 2), np.int32),
                                              np.ones((batch, length - length // 2), np.int32)],
                                             axis=1)}
  base = sft.make_train_step(graphdef, tx)
  fns = {"bare": base, "stop": nonfinite.guard_step(base, mode="stop"),
         "skip": nonfinite.guard_step(base, mode="skip")}
  steps = {k: loop.jit_train_step(f, shardings, local, mesh) for k, f in fns.items()}
  return steps, state, loop.to_global(local, mesh), state_lib.param_count(state.params)


def time_steps(step, state, batch, n: int):
  rng = jax.random.key(0)
  start = time.perf_counter()
  for _ in range(n):
    state, metrics = step(state, batch, rng)
  jax.block_until_ready((state, metrics))
  return (time.perf_counter() - start) / n, state


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default="tiny,small")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=10)
  args = parser.parse_args()
  print(f"devices: {jax.devices()[0].device_kind} x {jax.device_count()}, "
        f"batch {args.batch} x {args.length} tokens, {args.rounds} rounds x {args.steps} steps")
  print(f"{'preset':8} {'params':>10} {'variant':8} {'ms/step':>9} {'ratio to bare':>24}")
  for preset in args.presets.split(","):
    steps, state, batch, n_params = setup(preset, args.batch, args.length)
    states = {}
    for k, step in steps.items():  # compile, warm up; each variant keeps its own state
      _, states[k] = time_steps(step, jax.tree.map(lambda x: x.copy(), state), batch, 2)
    times = {k: [] for k in VARIANTS}
    for _ in range(args.rounds):
      for k in VARIANTS:
        t, states[k] = time_steps(steps[k], states[k], batch, args.steps)
        times[k].append(t)
    for k in VARIANTS:
      ratios = [t / b for t, b in zip(times[k], times["bare"])]
      print(f"{preset:8} {n_params:>10,} {k:8} {1e3 * statistics.median(times[k]):9.2f} "
            f"{statistics.median(ratios):8.3f} ({min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
  main()
