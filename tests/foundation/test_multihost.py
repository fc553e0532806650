"""Two local processes x 4 CPU devices joined by jax.distributed reproduce the 8-device run:
SFT (train and eval losses), then GRPO from that SFT export (rollouts, rewards, losses)."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from rlhf_jax.train import metrics as metrics_lib
from tests import xla

MESH = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
# 40 steps: enough for the GRPO run below to sample some correct answers (a learning signal).
SFT_ARGS = ["--config=configs/sft.py:test", "--config.train.log_every=1",
            "--config.train.num_steps=40", *MESH]
GRPO_ARGS = ["--config=configs/grpo.py:test", *MESH]
# Functions of the sampled tokens alone: equal iff the rollouts are.
ROLLOUT_METRICS = ("train/reward", "train/gold_reward", "train/completion_length")


def _env(devices, **extra):
  return {**xla.subprocess_env(devices), **extra}


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _command(args):
  return [sys.executable, "-m", "rlhf_jax.main", *args]


def _run_single(workdir, args):
  proc = subprocess.run(_command([f"--workdir={workdir}", *args]), env=_env(8),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]


def _run_two_processes(workdir, args, *, sigterm_after=None):
  """Runs `args` as two processes; sigterm_after=k sends SIGTERM to process 1 alone once step k
  is logged (process 0 writes the metrics). Returns the processes' stderr texts."""
  port = _free_port()
  procs = [subprocess.Popen(_command([f"--workdir={workdir}", *args]),
                            env=_env(4, RLHF_JAX_COORDINATOR=f"localhost:{port}",
                                     RLHF_JAX_NUM_PROCESSES="2", RLHF_JAX_PROCESS_ID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  if sigterm_after is not None:
    path, deadline = os.path.join(workdir, "metrics.jsonl"), time.time() + 600
    while not (os.path.exists(path) and sigterm_after in _losses(workdir)[2]):
      assert procs[0].poll() is None and time.time() < deadline
      time.sleep(0.01)
    procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == (0 if sigterm_after is None else 143), err[-3000:]
  assert "process 1 of 2" in outs[1][1]
  return [err for _, err in outs]


def _losses(workdir):
  """(train losses, eval losses, logged train steps)."""
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return ([r["train/loss"] for r in rows if "train/loss" in r],
          [r["eval/loss"] for r in rows if "eval/loss" in r],
          [r["step"] for r in rows if "train/loss" in r])


@pytest.fixture(scope="module")
def sft_single(tmp_path_factory):
  """The 8-device, 1-process SFT run (its export starts the GRPO runs)."""
  workdir = tmp_path_factory.mktemp("sft_single")
  _run_single(workdir, SFT_ARGS)
  return workdir


def test_multihost_sft_preempted_on_one_host_resumes_and_matches_single_process(sft_single,
                                                                               tmp_path):
  """SIGTERM to one of the two processes: both stop after the same step (JAX's preemption sync
  point), checkpointed; rerunning both resumes and ends as the one-process run."""
  multi = tmp_path / "multi"
  errs = _run_two_processes(multi, SFT_ARGS, sigterm_after=3)
  lines = [e.strip().splitlines()[-1] for e in errs]
  assert lines[0] == lines[1] and "sft: stopped by SIGTERM after step" in lines[0], lines
  stopped = int(lines[0].split("after step ")[1].split(";")[0])
  assert 3 <= stopped < 40 and os.path.isdir(multi / "checkpoints" / str(stopped))
  _run_two_processes(multi, SFT_ARGS)
  train_1, eval_1, _ = _losses(sft_single)
  train_2, eval_2, steps_2 = _losses(multi)
  assert len(train_1) == 40 and steps_2 == list(range(1, 41))  # only process 0 wrote metrics
  np.testing.assert_allclose(train_2, train_1, rtol=2e-5)
  np.testing.assert_allclose(eval_2, eval_1, rtol=2e-5)


def test_multihost_grpo_matches_single_process(sft_single, tmp_path):
  args = [*GRPO_ARGS, f"--config.init.from_workdir={sft_single}"]
  _run_single(tmp_path / "single", args)
  _run_two_processes(tmp_path / "multi", args)
  rows_1 = metrics_lib.read_jsonl(os.path.join(tmp_path / "single", "metrics.jsonl"))
  rows_2 = metrics_lib.read_jsonl(os.path.join(tmp_path / "multi", "metrics.jsonl"))
  assert [r["step"] for r in rows_2] == [r["step"] for r in rows_1] == [0, 1, 2, 3, 4, 4]
  assert any(r.get("train/reward", 0) > 0 and r["train/advantage_abs"] > 0 for r in rows_1)
  for r1, r2 in zip(rows_1, rows_2):
    assert set(r1) == set(r2)
    for key in r1:
      if metrics_lib.measures_clock(key):
        continue
      if key in ROLLOUT_METRICS or (key.startswith("eval/") and key != "eval/kl"):
        # Same keys, same prompts at the same positions: the same sampled and greedy tokens
        # (eval/kl sums log-probs of the updated policy: compared below, to float rounding).
        assert r2[key] == r1[key], (r1["step"], key, r1[key], r2[key])
      else:
        # Updates after the first iteration differ in the last float bits (the gradient's
        # cross-process reduction order), e.g. grad_norm at relative 1e-7, kl at 1e-6.
        np.testing.assert_allclose(r2[key], r1[key], rtol=1e-4, atol=1e-6,
                                   err_msg=f"step {r1['step']} {key}")
