"""Stages: thin wiring of a config to the training loop, selected by `config.stage`."""

from __future__ import annotations

import importlib

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
