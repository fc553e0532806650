"""A workdir remembers its config (a changed one stops before any work, naming the fields) and
admits one run at a time; metrics.jsonl is strict JSON without duplicate rows after a resume."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from rlhf_jax import configlib, stages
from rlhf_jax.train import metrics as metrics_lib, workdir as workdir_lib
from tests import toyloop


def _sft(*overrides):
  return configlib.get("configs/sft.py:test", list(overrides))


def test_changed_config_stops_before_any_work_and_lists_the_fields(tmp_path):
  workdir = str(tmp_path)
  with workdir_lib.claim(_sft(), workdir):
    pass  # the first run records its config
  assert workdir_lib.recorded_config(workdir)["optimizer"]["lr"] == _sft().optimizer.lr
  changed = _sft(("optimizer.lr", "0.1"), ("model.preset", "small"), ("train.stop_at_step", "3"))
  with pytest.raises(workdir_lib.ConfigChangedError) as e:
    stages.run(changed, workdir)  # refused before data preparation
  message = str(e.value)
  assert "optimizer.lr: 0.003 (recorded) -> 0.1 (now)" in message
  assert "model.preset: 'tiny' (recorded) -> 'small' (now)   [not safe to change]" in message
  assert "stop_at_step" not in message  # steers one invocation only
  assert "new --workdir" in message and "--config.train.allow_config_change=True" in message
  assert sorted(os.listdir(workdir)) == [".lock", "config.json"]
  # allow_config_change accepts the safe fields only ...
  with pytest.raises(workdir_lib.ConfigChangedError, match="model.preset"):
    workdir_lib.check_config(_sft(("optimizer.lr", "0.1"), ("model.preset", "small"),
                                  ("train.allow_config_change", "True")), workdir)
  safe = _sft(("optimizer.lr", "0.1"), ("train.num_steps", "20"),
              ("train.allow_config_change", "True"))
  with workdir_lib.claim(safe, workdir):
    pass
  # ... and records the new config.
  assert workdir_lib.recorded_config(workdir)["train"]["num_steps"] == 20


def test_second_run_into_a_busy_workdir_is_refused_and_stale_locks_do_not_block(tmp_path):
  workdir = str(tmp_path)
  with workdir_lib.lock(workdir):
    with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {os.getpid()}"):
      stages.run(_sft(), workdir)
    proc = subprocess.run([sys.executable, "-m", "rlhf_jax.main", "--config=configs/sft.py:test",
                           f"--workdir={workdir}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert f"is in use by another run (pid {os.getpid()}" in proc.stderr
  # A lock file left by a process that died (no lock held) does not block.
  with open(os.path.join(workdir, ".lock"), "w") as f:
    f.write("pid 999999 on elsewhere since 2020-01-01T00:00:00\n")
  with workdir_lib.lock(workdir):
    pass


def test_recipe_refuses_a_changed_stage_before_running_any(tmp_path):
  workdir = str(tmp_path)
  config = configlib.get("configs/instructgpt.py:test")
  for step in config.recipe.steps:  # as a finished run leaves them (configs with links set)
    os.makedirs(tmp_path / step / "export")
    open(tmp_path / step / "export" / "export.json", "w").close()
  from rlhf_jax.stages import recipe  # pylint: disable=g-import-not-at-top
  recipe._linked(config, workdir)  # pylint: disable=protected-access
  for step in config.recipe.steps:
    workdir_lib.record_config(config[step], str(tmp_path / step))
  assert recipe.check_workdirs(config, workdir) == {s: True for s in config.recipe.steps}
  changed = configlib.get("configs/instructgpt.py:test", [("ppo.kl.coef", "0.1"),
                                                           ("sft.optimizer.lr", "1e-2")])
  with pytest.raises(workdir_lib.ConfigChangedError) as e:
    stages.run(changed, workdir)
  message = str(e.value)
  assert "recipe step 'sft'" in message and "sft.optimizer.lr: 0.003 (recorded) -> 0.01" in message
  assert "recipe step 'ppo'" in message and "ppo.kl.coef: 0.2 (recorded) -> 0.1 (now)" in message
  assert "--config.ppo.train.allow_config_change=True" in message
  assert "reward_model" not in message


def test_metrics_are_strict_json_without_replayed_rows(tmp_path):
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
  row = writer.write(3, {"a": float("nan"), "b": 1.0, "c": [1.0, float("inf")], "d": 2})
  writer.close()
  assert row == {"step": 3, "a": None, "b": 1.0, "c": [1.0, None], "d": 2,
                 "nonfinite_keys": ["a", "c"]}
  with open(tmp_path / "metrics.jsonl") as f:
    json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
  # A run killed after step 8 whose last checkpoint left is step 4 resumes there: steps 5-8 are
  # logged again, once.
  toyloop.run(tmp_path / "run", num_steps=8, checkpoint_every=4)
  shutil.rmtree(tmp_path / "run" / "checkpoints" / "8")
  result, _ = toyloop.run(tmp_path / "run", num_steps=8, checkpoint_every=4)
  assert result.start_step == 4
  steps = [r["step"] for r in metrics_lib.read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))]
  assert steps == list(range(1, 9)), steps
