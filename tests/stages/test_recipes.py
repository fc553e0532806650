"""Recipes run their stages in order from each other's exports, and resume by skipping (the R1
and Tülu 3 recipes learn in tests/stages/test_arithmetic_rl.py)."""

import os

import pytest

from rlhf_jax import configlib, stages
from rlhf_jax.stages import recipe
from rlhf_jax.train import metrics as metrics_lib, report


SAMPLES = ("ppo.train.eval_samples", "2")


def test_instructgpt_recipe_learns_and_resumes(tmp_path, caplog, capsys):
  caplog.set_level("INFO")
  # Stopped (checkpointed) after PPO's step 2, as a preemption would stop it.
  stages.run(configlib.get("configs/instructgpt.py:test", [("ppo.train.stop_at_step", "2"),
                                                          SAMPLES]), str(tmp_path))
  assert not os.path.exists(tmp_path / "ppo" / "export")
  # The same command resumes the recipe at the stage it was in, from that stage's checkpoint.
  capsys.readouterr()
  stages.run(configlib.get("configs/instructgpt.py:test", [SAMPLES]), str(tmp_path))
  console = capsys.readouterr().out
  assert caplog.text.count("already done") == 2 and "resumed from" in caplog.text
  for step in ("sft", "reward_model", "ppo"):
    assert os.path.exists(tmp_path / step / "export" / "export.json"), step
  rows = metrics_lib.read_jsonl(str(tmp_path / "ppo" / "metrics.jsonl"))
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]  # each step once
  evals = [r for r in rows if "eval/gold_reward" in r]
  # PPO against the learned reward raises the exact gold reward of the policy.
  assert evals[-1]["eval/gold_reward"] > evals[0]["eval/gold_reward"] + 0.3, evals
  # The console: one line per evaluation of this invocation, PPO's summary and the recipe's
  # table carry metrics.jsonl's figures.
  first, last = (report.fmt(e["eval/gold_reward"]) for e in (evals[0], evals[-1]))
  resumed_evals = [e for e in evals if e["step"] > 2]
  assert console.count("ppo step ") == len(resumed_evals) > 0
  assert f"ppo step {evals[-1]['step']} eval: gold_reward {last}" in console
  (summary,) = [line for line in console.splitlines() if line.startswith("ppo done in")]
  assert f"gold_reward {first} → {last}" in summary
  assert f"export: {tmp_path / 'ppo' / 'export'}" in summary
  table = console[console.index("recipe "):].splitlines()
  assert table[1].split() == ["step", "stage", "headline", "(first", "eval", "→", "last)",
                              "wall", "export"]
  rows_by_step = {line.split()[0]: line for line in table[3:6]}
  assert set(rows_by_step) == {"sft", "reward_model", "ppo"}
  assert "done before" in rows_by_step["sft"] and "done before" in rows_by_step["reward_model"]
  assert f"gold_reward {first} → {last}" in rows_by_step["ppo"]
  # PPO's samples: the gold reward and the learned reward model's (the proxy) of each answer.
  samples = metrics_lib.read_jsonl(str(tmp_path / "ppo" / "samples.jsonl"))
  assert sorted({r["step"] for r in samples}) == [e["step"] for e in evals], samples
  assert all({"gold_reward", "reward"} <= set(r) for r in samples), samples
  assert len({r["reward"] for r in samples}) > 1  # scored per completion, not a constant
  caplog.clear()
  stages.run(configlib.get("configs/instructgpt.py:test", [SAMPLES]), str(tmp_path))
  assert caplog.text.count("already done") == 3


def test_recipe_links_must_point_backwards():
  config = configlib.get("configs/instructgpt.py:test")
  with config.unlocked():
    config.recipe.links = (("sft", "init.from_workdir", "ppo"),)
  with pytest.raises(ValueError, match="'ppo' must come before 'sft'"):
    recipe.check(config)
