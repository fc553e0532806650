"""Stages: thin wiring of a config to the training loop, selected by `config.stage`."""

from __future__ import annotations

import importlib
import os
import time

# Name -> module with `run(config, workdir)`; imported lazily so a stage's dependencies load
# only when it runs.
STAGES = {
    "sft": "rlhf_jax.stages.sft",
    "reward_model": "rlhf_jax.stages.reward_model",
    "dpo": "rlhf_jax.stages.dpo",
    "policy_gradient": "rlhf_jax.stages.policy_gradient",
    "ppo": "rlhf_jax.stages.ppo",
    "best_of_n": "rlhf_jax.stages.best_of_n",
    "recipe": "rlhf_jax.stages.recipe",
}

# Stages that can start from a Hugging Face checkpoint (config.model.hf_path, stages/common.py);
# the others start from an SFT run's export (init.from_workdir).
HF_PATH_STAGES = ("sft", "reward_model")


def get_stage(name: str):
  if name not in STAGES:
    raise ValueError(f"unknown stage {name!r}; valid stages: {sorted(STAGES)}")
  return importlib.import_module(STAGES[name])


def run(config, workdir: str, *, name: str = "", override_prefix: str = ""):
  """Runs `config.stage` in `workdir` as its only run: holds the workdir's lock, and (a single
  stage) checks the config against the one recorded there before any work, then records it
  (train/workdir.py). A recipe checks each of its steps' workdirs the same way, up front.

  name / override_prefix: how errors name the stage and its override keys (a recipe step)."""
  from rlhf_jax.train import preemption, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if preemption.requested_signal() is not None:  # e.g. a recipe's next stage after a SIGTERM
    raise preemption.preempted(name or config.stage, 0, None)
  if config.stage == "recipe":
    with workdir_lib.lock(workdir):
      return get_stage("recipe").run(config, workdir)
  with workdir_lib.claim(config, workdir, name=name or config.stage,
                         override_prefix=override_prefix):
    start = time.perf_counter()
    result = get_stage(config.stage).run(config, workdir)
  summarise(config.stage, workdir, time.perf_counter() - start)
  return result


def summarise(stage: str, workdir: str, seconds) -> None:
  """Prints the stage's summary line (train/report.py) from its metrics.jsonl."""
  from rlhf_jax.train import metrics, report  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "metrics.jsonl")
  rows = metrics.read_jsonl(path) if os.path.exists(path) else []
  report.show(report.summary_line(stage, rows, seconds=seconds,
                                  export_dir=report.export_dir(workdir)))
