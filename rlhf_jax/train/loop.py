"""The generic training loop: sharded jitted steps, metrics, evaluation, checkpoints, resume,
the non-finite guard and graceful preemption.

`run` drives any stage given
  train_step(state, batch, rng) -> (state, metrics)   a pure function (jitted here with explicit
                                                       in/out shardings and state donation)
  train_iter                                           a grain iterator of per-process batches
  evaluate(state) -> metrics                           optional, called every eval_every steps
It resumes from the newest checkpoint in `<workdir>/checkpoints` that restores and verifies
(train/checkpoint.py sets damaged ones aside): state, iterator position and step, so a resumed
run reproduces the uninterrupted one exactly.

Every step is checked for non-finite values inside the jitted step (train/nonfinite.py; the
flags are fetched at the points where the loop waits anyway: logging, evaluation, checkpoints).
After each step the loop asks train/preemption.py whether a SIGTERM/SIGINT arrived; if so it
checkpoints that step and raises `preemption.Preempted`.

Checkpoints: every train.checkpoint_every steps (0 = auto: a tenth of the run, so no stop loses
more than ~10% of the steps), at the end, and on preemption.

Throughput, per logging window (the steps since the last train row; evaluation and checkpoint
time left out; the device work of the window waited for): train/tokens_per_sec (the stage's
tokens_per_step), train/tflops_per_sec (its analytic flops_per_step, models/flops.py) and
train/mfu = FLOP/s over the job's peak in the compute dtype (train/mfu.py; absent when the
peak is unknown).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import tqdm

from rlhf_jax.parallel import sharding as sharding_lib
from rlhf_jax.train import checkpoint as ckpt_lib, mfu as mfu_lib, nonfinite, preemption, report
from rlhf_jax.train.metrics import SAMPLES, MetricsWriter


def to_global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Per-process numpy batch -> global jax.Arrays sharded over the data axes."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  for k, v in batch.items():
    if (v.shape[0] * jax.process_count()) % shards:
      raise ValueError(f"batch field {k!r}: global batch {v.shape[0] * jax.process_count()} is "
                       f"not divisible by the {shards} data-parallel shards (mesh data x fsdp)")
  return {k: jax.make_array_from_process_local_data(sharding_lib.batch_sharding(mesh, v.ndim), v)
          for k, v in batch.items()}


def jit_train_step(train_step, state_shardings, example_batch, mesh):
  batch_sh = {k: sharding_lib.batch_sharding(mesh, np.ndim(v)) for k, v in example_batch.items()}
  repl = sharding_lib.replicated(mesh)
  jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_sh, repl),
                   out_shardings=(state_shardings, repl), donate_argnums=0)
  if hasattr(train_step, "checked_names"):
    jitted.checked_names = train_step.checked_names
  return jitted


def with_names(fn, guarded):
  """`fn` (e.g. an ahead-of-time compiled `guarded`) carrying `guarded`'s checked_names."""
  def step(state, batch, rng):
    return fn(state, batch, rng)
  step.checked_names = guarded.checked_names
  return step


def checkpoint_every(train_config) -> int:
  """train.checkpoint_every, or (0) a tenth of train.num_steps, rounded up."""
  every = int(train_config.checkpoint_every)
  return every if every > 0 else max(1, math.ceil(int(train_config.num_steps) / 10))


def _bar_keys(config) -> tuple[tuple[str, str], ...]:
  """(metrics key, progress-bar name): the loss, the gold reward where the task has one, the
  reward the policy is trained on (named `proxy_reward` when a learned reward model gives it),
  and throughput (trained tokens/s; generated tokens/s in online RL)."""
  source = config.reward.get("source", "") if "reward" in config else ""
  return (("train/loss", "loss"), ("train/gold_reward", "gold_reward"),
          ("train/reward", "proxy_reward" if source == "learned" else "reward"),
          ("train/tokens_per_sec", "tok/s"),
          ("train/generation_tokens_per_sec", "gen tok/s"))  # online RL


def _show(bar, row: dict, keys) -> None:
  post = {name: "nan" if row[k] is None else f"{row[k]:.4g}" for k, name in keys if k in row}
  if row.get("train/mfu") is not None:
    post["mfu"] = f"{100 * row['train/mfu']:.2f}%"
  bar.set_postfix(post)


def _restart_clock(bar, done: int) -> None:
  """Restarts the bar's clock, and so the rate its ETA comes from, at `done` steps: the first
  step's time is mostly compilation, which would inflate the ETA of the whole run."""
  bar.reset(total=bar.total)
  bar.initial = bar.n = bar.last_print_n = done


def _evaluate(writer, step: int, evaluate, state) -> dict:
  """Runs the evaluation; writes its metrics (as eval/*) and its samples, if it returns any
  under metrics.SAMPLES (train/samples.py); returns the metrics row."""
  out = dict(evaluate(state))
  writer.write_samples(step, out.pop(SAMPLES, None))
  return writer.write(step, {f"eval/{k}": v for k, v in out.items()})


@dataclasses.dataclass
class LoopResult:
  state: Any
  history: list[dict]          # every logged row (train and eval), as written to metrics.jsonl
  start_step: int              # where this invocation began (> 0 after a resume)
  jitted_step: Any             # the compiled step, for compilation-count checks
  finished: bool = False       # the run reached train.num_steps (not stopped early)


def run(*, config, workdir: str, mesh, state, state_shardings, train_step: Callable,
        train_iter, evaluate: Optional[Callable[[Any], dict]] = None,
        tokens_per_step: Optional[Callable[[dict], int]] = None, jit: bool = True,
        learning_rate: Optional[Callable[[int], float]] = None,
        flops_per_step: Optional[Callable[[dict], float]] = None,
        compute_dtype: str = "float32") -> LoopResult:
  """Runs the stage's steps. With jit=False, `train_step` is called as given (online RL: an
  iteration made of several jitted pieces and host work, which adds the non-finite flag itself)
  and `jitted_step` is that callable.

  tokens_per_step / flops_per_step: this process's tokens / model FLOPs of a step, from its
  local batch, called after the step ran (so a python step may report what it did); times
  jax.process_count() for the job's. compute_dtype: the model's (ModelConfig.dtype), whose peak
  train/mfu is taken against.

  learning_rate: the optimizer's schedule of its step count; logged as train/learning_rate at
  the state's step (the rate of the last update)."""
  tc = config.train
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tc.keep_checkpoints)
  start = 0
  restored = ckpt.restore_latest(ckpt_lib.abstract_like(state, state_shardings))
  if restored is not None:
    start, state, data_state, _ = restored
    train_iter.set_state(data_state)
    logging.info("resumed from %s at step %d", ckpt.directory, start)

  writer = MetricsWriter(workdir, tensorboard=tc.tensorboard, resume_step=start, config=config)
  if writer.dropped:
    logging.info("metrics.jsonl: %d rows after step %d dropped (they are logged again)",
                 writer.dropped, start)
  if jit and not hasattr(train_step, "checked_names"):  # not guarded by the stage already
    train_step = nonfinite.guard_step(train_step, mode=tc.nonfinite)
  monitor = nonfinite.Monitor(
      stage=config.stage, mode=tc.nonfinite, max_skips=tc.nonfinite_max_skips,
      names_of=lambda: getattr(jitted, "checked_names", None) or ())
  history: list[dict] = []
  rng = jax.random.key(config.seed)
  jitted = None
  every = checkpoint_every(tc)
  # smoothing=0: the ETA uses the average rate since the first step (compilation excluded)
  bar = tqdm.tqdm(total=tc.num_steps, initial=start, disable=jax.process_index() != 0,
                  dynamic_ncols=True, mininterval=2.0, desc=config.stage, smoothing=0)
  bar_keys = _bar_keys(config)
  if tc.eval_every <= 0:
    evaluate = None  # eval_every = 0 turns evaluation off
  last = tc.num_steps if tc.stop_at_step <= 0 else min(tc.stop_at_step, tc.num_steps)
  peak = mfu_lib.peak_flops_per_sec(compute_dtype) if flops_per_step is not None else None
  window_tokens, window_flops, window_start = 0, 0.0, time.perf_counter()
  try:
    if preemption.should_stop(start):  # a signal arrived while the stage was being set up
      raise preemption.preempted(config.stage, start, None if restored is None
                                 else ckpt.describe_latest())
    if evaluate is not None and start == 0:
      history.append(_evaluate(writer, 0, evaluate, state))
      report.show(report.eval_line(config.stage, history[-1]))
    for step in range(start, last):
      local_batch = next(train_iter)
      batch = to_global(local_batch, mesh)
      if jitted is None:
        jitted = (jit_train_step(train_step, state_shardings, local_batch, mesh) if jit
                  else train_step)
      state, metrics = jitted(state, batch, jax.random.fold_in(rng, step))
      done = step + 1
      metrics = monitor.record(done, metrics)
      window_tokens += tokens_per_step(local_batch) * jax.process_count() if tokens_per_step else 0
      window_flops += (float(flops_per_step(local_batch)) * jax.process_count()
                       if flops_per_step else 0.0)
      stop = preemption.should_stop(done)
      is_eval = evaluate is not None and (done % tc.eval_every == 0 or done == last)
      is_ckpt = done % every == 0 or done == last or stop
      is_log = done % tc.log_every == 0 or done == last
      if is_log or is_eval or is_ckpt:
        try:  # the flags of the steps since the last check; raises on a non-finite step
          monitor.check(last_good=ckpt.describe_latest())
        except nonfinite.NonFiniteError:
          is_log = True  # this step's row is written before stopping
          raise
        finally:
          if is_log:
            row = {f"train/{k}": v for k, v in metrics.items()}
            # the device work of the window is done: the check above waited for it
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            if tokens_per_step is not None:
              row["train/tokens_per_sec"] = window_tokens / elapsed
            if flops_per_step is not None:
              row["train/tflops_per_sec"] = window_flops / elapsed / 1e12
              if peak is not None:
                row["train/mfu"] = mfu_lib.mfu(window_flops, elapsed, peak)
            if learning_rate is not None:
              row["train/learning_rate"] = learning_rate(max(int(state.step) - 1, 0))
            row.update({f"train/{k}": v for k, v in monitor.metrics().items()})
            history.append(writer.write(done, row))
            _show(bar, history[-1], bar_keys)
            window_tokens, window_flops, window_start = 0, 0.0, time.perf_counter()
      paused = time.perf_counter()  # eval and checkpoint time is kept out of tokens/s
      if is_eval:
        history.append(_evaluate(writer, done, evaluate, state))
        report.show(report.eval_line(config.stage, history[-1]))
      if is_ckpt:
        ckpt.save(done, state, train_iter.get_state(), config.to_dict(), force=True)
      window_start += time.perf_counter() - paused
      if step == start:  # the first step of this invocation compiled the step
        _restart_clock(bar, start)
      bar.update(1)
      if stop and done < last:
        ckpt.wait()
        raise preemption.preempted(config.stage, done, ckpt.describe_latest())
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  return LoopResult(state=state, history=history, start_step=start, jitted_step=jitted,
                    finished=last == tc.num_steps)
