"""Two local processes x 4 CPU devices joined by jax.distributed reproduce the 8-device run."""

import os
import socket
import subprocess
import sys

import numpy as np

from rlhf_jax.train import metrics as metrics_lib

ARGS = ["--config=configs/sft.py:test", "--config.train.log_every=1",
        "--config.train.num_steps=6", "--config.mesh.data=2", "--config.mesh.fsdp=2",
        "--config.mesh.tensor=2"]


def _env(devices, **extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_JAX_")}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
             **extra)
  return env


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _losses(workdir):
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return ([r["train/loss"] for r in rows if "train/loss" in r],
          [r["eval/loss"] for r in rows if "eval/loss" in r])


def test_multihost_sft_matches_single_process(tmp_path):
  single = tmp_path / "single"
  proc = subprocess.run([sys.executable, "-m", "rlhf_jax.main", f"--workdir={single}", *ARGS],
                        env=_env(8), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]

  multi = tmp_path / "multi"
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-m", "rlhf_jax.main", f"--workdir={multi}", *ARGS],
                            env=_env(4, RLHF_JAX_COORDINATOR=f"localhost:{port}",
                                     RLHF_JAX_NUM_PROCESSES="2", RLHF_JAX_PROCESS_ID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "process 1 of 2" in outs[1][1]

  train_1, eval_1 = _losses(single)
  train_2, eval_2 = _losses(multi)
  assert len(train_1) == 6 and len(train_2) == 6  # only process 0 wrote metrics
  np.testing.assert_allclose(train_2, train_1, rtol=2e-5)
  np.testing.assert_allclose(eval_2, eval_1, rtol=2e-5)
