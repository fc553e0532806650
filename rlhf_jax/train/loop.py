"""The generic training loop: sharded jitted steps, metrics, evaluation, checkpoints, resume.

`run` drives any stage given
  train_step(state, batch, rng) -> (state, metrics)   a pure function (jitted here with explicit
                                                       in/out shardings and state donation)
  train_iter                                           a grain iterator of per-process batches
  evaluate(state) -> metrics                           optional, called every eval_every steps
It resumes from the latest checkpoint in `<workdir>/checkpoints` when there is one: state,
iterator position and step, so a resumed run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import tqdm

from rlhf_jax.parallel import sharding as sharding_lib
from rlhf_jax.train import checkpoint as ckpt_lib
from rlhf_jax.train.metrics import MetricsWriter


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
  return jax.jit(train_step, in_shardings=(state_shardings, batch_sh, repl),
                 out_shardings=(state_shardings, repl), donate_argnums=0)


@dataclasses.dataclass
class LoopResult:
  state: Any
  history: list[dict]          # every logged row (train and eval), as written to metrics.jsonl
  start_step: int              # where this invocation began (> 0 after a resume)
  jitted_step: Any             # the compiled step, for compilation-count checks
  finished: bool = False       # the run reached train.num_steps (not stopped early)


def run(*, config, workdir: str, mesh, state, state_shardings, train_step: Callable,
        train_iter, evaluate: Optional[Callable[[Any], dict]] = None,
        tokens_per_step: Optional[Callable[[dict], int]] = None, jit: bool = True) -> LoopResult:
  """Runs the stage's steps. With jit=False, `train_step` is called as given (online RL: an
  iteration made of several jitted pieces and host work) and `jitted_step` is that callable."""
  tc = config.train
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tc.keep_checkpoints)
  start = 0
  latest = ckpt.latest_step()
  if latest is not None:
    abstract = ckpt_lib.abstract_like(state, state_shardings)
    state, data_state, _ = ckpt.restore(latest, abstract)
    train_iter.set_state(data_state)
    start = latest
    logging.info("resumed from %s at step %d", ckpt.directory, latest)

  writer = MetricsWriter(workdir, tensorboard=tc.tensorboard)
  history: list[dict] = []
  rng = jax.random.key(config.seed)
  jitted = None
  bar = tqdm.tqdm(total=tc.num_steps, initial=start, disable=jax.process_index() != 0,
                  dynamic_ncols=True, mininterval=2.0, desc=config.stage)
  if tc.eval_every <= 0:
    evaluate = None  # eval_every = 0 turns evaluation off
  if evaluate is not None and start == 0:
    history.append(writer.write(0, {f"eval/{k}": v for k, v in evaluate(state).items()}))
  window_tokens, window_start = 0, time.perf_counter()
  try:
    last = tc.num_steps if tc.stop_at_step <= 0 else min(tc.stop_at_step, tc.num_steps)
    for step in range(start, last):
      local_batch = next(train_iter)
      batch = to_global(local_batch, mesh)
      if jitted is None:
        jitted = (jit_train_step(train_step, state_shardings, local_batch, mesh) if jit
                  else train_step)
      state, metrics = jitted(state, batch, jax.random.fold_in(rng, step))
      window_tokens += tokens_per_step(local_batch) * jax.process_count() if tokens_per_step else 0
      done = step + 1
      if done % tc.log_every == 0 or done == last:
        elapsed = time.perf_counter() - window_start
        row = {f"train/{k}": v for k, v in metrics.items()}
        if tokens_per_step is not None:
          row["train/tokens_per_sec"] = window_tokens / max(elapsed, 1e-9)
        row = writer.write(done, row)
        history.append(row)
        shown = {k.split("/", 1)[1]: row[k] for k in ("train/loss", "train/reward",
                                                       "train/tokens_per_sec") if k in row}
        bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
        window_tokens, window_start = 0, time.perf_counter()
      paused = time.perf_counter()  # eval and checkpoint time is kept out of tokens/s
      if evaluate is not None and (done % tc.eval_every == 0 or done == last):
        history.append(writer.write(done, {f"eval/{k}": v for k, v in evaluate(state).items()}))
      if done % tc.checkpoint_every == 0 or done == last:
        ckpt.save(done, state, train_iter.get_state(), config.to_dict(), force=True)
      window_start += time.perf_counter() - paused
      bar.update(1)
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  return LoopResult(state=state, history=history, start_step=start, jitted_step=jitted,
                    finished=last == tc.num_steps)
