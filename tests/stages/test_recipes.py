"""Recipes run their stages in order from each other's exports, and resume by skipping (the R1
and Tülu 3 recipes learn in tests/stages/test_arithmetic_rl.py)."""

import os

import pytest

from rlhf_jax import configlib, stages
from rlhf_jax.stages import recipe
from rlhf_jax.train import metrics as metrics_lib


def test_instructgpt_recipe_learns_and_resumes(tmp_path, caplog):
  caplog.set_level("INFO")
  # Stopped (checkpointed) after PPO's step 2, as a preemption would stop it.
  stages.run(configlib.get("configs/instructgpt.py:test", [("ppo.train.stop_at_step", "2")]),
             str(tmp_path))
  assert not os.path.exists(tmp_path / "ppo" / "export")
  # The same command resumes the recipe at the stage it was in, from that stage's checkpoint.
  stages.run(configlib.get("configs/instructgpt.py:test"), str(tmp_path))
  assert caplog.text.count("already done") == 2 and "resumed from" in caplog.text
  for step in ("sft", "reward_model", "ppo"):
    assert os.path.exists(tmp_path / step / "export" / "export.json"), step
  rows = metrics_lib.read_jsonl(str(tmp_path / "ppo" / "metrics.jsonl"))
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]  # each step once
  evals = [r for r in rows if "eval/gold_reward" in r]
  # PPO against the learned reward raises the exact gold reward of the policy.
  assert evals[-1]["eval/gold_reward"] > evals[0]["eval/gold_reward"] + 0.3, evals
  caplog.clear()
  stages.run(configlib.get("configs/instructgpt.py:test"), str(tmp_path))
  assert caplog.text.count("already done") == 3


def test_recipe_links_must_point_backwards():
  config = configlib.get("configs/instructgpt.py:test")
  with config.unlocked():
    config.recipe.links = (("sft", "init.from_workdir", "ppo"),)
  with pytest.raises(ValueError, match="'ppo' must come before 'sft'"):
    recipe.check(config)
