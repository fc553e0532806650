"""SFT end to end: sharded equivalence, one compilation, learning, exact resume."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from rlhf_jax import configlib, models
from rlhf_jax.parallel import mesh as mesh_lib, sharding as sharding_lib
from rlhf_jax.stages import common, sft as sft_stage
from rlhf_jax.train import export, loop, metrics as metrics_lib, optimizer, sft as sft_steps
from rlhf_jax.train import state as state_lib


def _one_step(mesh_shape, devices, batch, config, scan_layers=False):
  mesh = mesh_lib.make_mesh(mesh_shape, devices)
  cfg = models.get_model_config("tiny", vocab_size=64, scan_layers=scan_layers)
  tx = optimizer.make_optimizer(config.optimizer, 10)
  rules = tuple(tuple(r) for r in config.logical_axis_rules)
  graphdef, state, shardings = state_lib.init_state(
      lambda r: models.Transformer(cfg, rngs=r), tx, mesh, rules, seed=0)
  step = loop.jit_train_step(sft_steps.make_train_step(graphdef, tx), shardings, batch, mesh)
  state, metrics = step(state, loop.to_global(batch, mesh), jax.random.key(0))
  return jax.device_get(state.params), jax.device_get(metrics), state


def _sgd_config_and_batch():
  # SGD makes the update linear in the gradient, so parameter agreement tests the sharded
  # gradient itself (Adam's g/(|g|+eps) amplifies float noise where g ~ 0).
  config = configlib.get("configs/sft.py:test", [("optimizer.warmup_steps", "0"),
                                                 ("optimizer.name", "sgd"), ("optimizer.lr", "0.5")])
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 64, size=(16, 12)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[:, :3] = 0  # left padding
  tokens = tokens * mask
  completion_mask = np.zeros_like(tokens)
  completion_mask[:, 8:] = 1
  return config, {"tokens": tokens, "mask": mask, "completion_mask": completion_mask}


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
def test_shard_equivalence_8_devices_vs_1(scan_layers):
  """One unrolled 1-device step against the 8-device step (scanned: model.scan_layers stacks
  the sharded per-layer weights inside the step)."""
  assert jax.device_count() == 8
  config, batch = _sgd_config_and_batch()
  p1, m1, _ = _one_step({"data": 1}, jax.devices()[:1], batch, config)
  p8, m8, s8 = _one_step({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices(), batch, config,
                         scan_layers)
  # The 8-device state really is sharded over all three axes.
  wq = s8.params["layers"][0]["attn"]["wq"]
  assert wq.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert len({d for d in wq.sharding.device_set}) == 8
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  np.testing.assert_allclose(m1["grad_norm"], m8["grad_norm"], rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p8)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sft"))
  return sft_stage.run(_sft_config(), workdir), workdir


def _sft_config():
  return configlib.get("configs/sft.py:test", [("train.num_steps", "30"),
                                               ("train.eval_every", "30"),
                                               ("train.eval_samples", "3")])


def test_each_evaluation_writes_samples_with_their_gold_reward(sft_run):
  _, workdir = sft_run
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "samples.jsonl"))
  assert [r["step"] for r in rows] == [0, 0, 0, 30, 30, 30]
  assert [r["prompt"] for r in rows[:3]] == [r["prompt"] for r in rows[3:]]  # fixed prompts
  task = common.make_task(_sft_config())
  for r in rows:
    assert r["prompt"].endswith("=") and isinstance(r["completion"], str)  # "12+7=" -> "19"
    assert r["gold_reward"] == task.gold_reward(r["prompt"], r["completion"])


def test_train_step_compiles_once_over_steps(sft_run):
  result, _ = sft_run
  assert result.state.step == 30
  assert result.jitted_step._cache_size() == 1  # 30 steps, one compilation


def test_sft_eval_loss_falls(sft_run):
  result, workdir = sft_run
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = [r for r in rows if "eval/loss" in r]
  assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
  assert evals[-1]["eval/loss"] < 0.5 * evals[0]["eval/loss"], evals
  assert {"step", "train/loss", "train/tokens_per_sec", "train/learning_rate"} <= set(rows[1])
  schedule = optimizer.make_schedule(_sft_config().optimizer, 30)
  for row in rows:  # the rate of the last update: the schedule at the step before
    if "train/learning_rate" in row:
      assert row["train/learning_rate"] == pytest.approx(float(schedule(row["step"] - 1)))


def _cli(workdir, *overrides, stop_after=None):
  """Runs the SFT test config in a fresh process (40 steps). stop_after=k: once step k is logged,
  the process gets SIGTERM (SIGSTOP first, so it stops a few steps before the end at most)."""
  # A sentencepiece vocabulary trained on the task's text and cached in the workdir (the resumed
  # run must find the same one).
  cmd = [sys.executable, "-m", "rlhf_jax.main", "--config=configs/sft.py:test",
         f"--workdir={workdir}", "--config.train.log_every=1", "--config.train.num_steps=40",
         "--config.tokenizer.kind=sentencepiece", *overrides]
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  if stop_after is not None:
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while not (os.path.exists(metrics) and _losses(workdir).get(stop_after)):
      assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
      time.sleep(0.01)
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
  _, err = proc.communicate(timeout=600)
  return proc.returncode, err


def _losses(workdir):
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _rows(workdir):
  """metrics.jsonl without the wall-clock figures."""
  return [{k: v for k, v in r.items() if not metrics_lib.measures_clock(k)}
          for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def test_sigterm_checkpoints_and_the_resumed_run_is_bit_identical(tmp_path):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  code, err = _cli(straight)
  assert code == 0, err[-3000:]
  code, err = _cli(resumed, stop_after=3)  # a preemption notice after step 3
  assert code == 143, err[-3000:]  # 128 + SIGTERM
  last = err.strip().splitlines()[-1]
  assert "Traceback" not in err and last.startswith("rlhf-jax: preempted: sft: stopped by SIGTERM "
                                                    "after step "), last
  stopped = int(last.split("after step ")[1].split(";")[0])
  assert 3 <= stopped < 40 and f"checkpoints/{stopped} (step {stopped})" in last
  assert not os.path.exists(resumed / "export")
  code, err = _cli(resumed)  # the same command resumes from that checkpoint
  assert code == 0, err[-3000:]
  assert _rows(resumed) == _rows(straight)  # every logged value, every step once
  mesh, rules = mesh_lib.make_mesh({"data": -1}), sharding_lib.DEFAULT_RULES
  want, got = (jax.device_get(export.load(str(d), mesh, rules).params) for d in (straight, resumed))
  jax.tree.map(np.testing.assert_array_equal, got, want)
