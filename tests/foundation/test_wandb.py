"""The optional Weights & Biases sink (train/wandb_sink.py), offline: it logs the same keys as
metrics.jsonl, resumes the same W&B run on a rerun, and a config that enables it without the
package (or with a bad mode) fails validation."""

import glob
import json
import os
import struct
import time

import pytest

from rlhf_jax import configlib, validate
from rlhf_jax.train import metrics as metrics_lib, wandb_sink
from tests import toyloop

wandb = pytest.importorskip("wandb", reason="the W&B sink's optional package (requirements-test)")
BLOCK = 32768


@pytest.fixture
def offline(monkeypatch, tmp_path):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
  monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))


def run_logged(workdir, num_steps):
  """The toy loop with W&B on (offline), for num_steps."""
  config = toyloop.config(num_steps=num_steps)
  with config.unlocked():
    config.logging.wandb.enabled = True
    config.logging.wandb.mode = "offline"
    config.logging.wandb.project = "test"
  mesh, state, shardings = toyloop.initial_state()
  from rlhf_jax.train import loop  # pylint: disable=g-import-not-at-top
  return loop.run(config=config, workdir=str(workdir), mesh=mesh, state=state,
                  state_shardings=shardings, train_step=toyloop.step,
                  train_iter=toyloop.Batches())


def history(workdir, expected: int):
  """The rows the offline W&B runs of `workdir` logged, read back from their transaction logs
  (run-<id>.wandb: a 7-byte W&B header, then LevelDB log records in 32 KiB blocks, each a
  protobuf Record). W&B's service process may still be writing them when finish() returns:
  waits up to 30 s for `expected` rows."""
  deadline = time.monotonic() + 30
  while True:
    rows = _history(workdir)
    if len(rows) >= expected or time.monotonic() > deadline:
      return rows
    time.sleep(0.2)


def _history(workdir):
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  rows = []
  for path in sorted(glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))):
    with open(path, "rb") as f:
      data = f.read()
    records, pos, part = [], 7, b""
    while pos + 7 <= len(data):
      if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
        pos += BLOCK - pos % BLOCK
        continue
      _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
      if length == 0 and kind == 0:
        break
      chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
      part = chunk if kind in (1, 2) else part + chunk  # full/first, or middle/last
      if kind in (1, 4):
        records.append(part)
    for raw in records:
      record = wandb_internal_pb2.Record()
      record.ParseFromString(raw)
      if record.WhichOneof("record_type") == "history":
        row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
               for i in record.history.item}
        rows.append({k: v for k, v in row.items() if not k.startswith("_")})  # W&B's own
  return rows


def test_offline_run_logs_the_metrics_jsonl_keys(tmp_path, offline):
  run_logged(tmp_path, num_steps=4)
  rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
  logged = history(tmp_path, len(rows))
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert len(logged) == len(rows)
  for got, want in zip(logged, rows):
    assert set(got) == set(want)
    assert got == pytest.approx(want)
  with open(tmp_path / wandb_sink.RUN_ID_FILE) as f:
    run_id = f.read().strip()
  assert glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{run_id}"))


def test_a_rerun_resumes_the_same_wandb_run(tmp_path, offline):
  run_logged(tmp_path, num_steps=2)
  with open(tmp_path / wandb_sink.RUN_ID_FILE) as f:
    first = f.read()
  run_logged(tmp_path, num_steps=4)  # resumes from the step-2 checkpoint
  with open(tmp_path / wandb_sink.RUN_ID_FILE) as f:
    assert f.read() == first
  runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
  # offline-run-<time>-<id>, "-1" appended when both start within the same second
  assert len(runs) == 2 and all(f"-{first.strip()}" in os.path.basename(r) for r in runs)
  assert sorted(r["step"] for r in history(tmp_path, 4)) == [1, 2, 3, 4]  # resumed after step 2


def test_validation_names_a_bad_mode_and_a_missing_package(monkeypatch):
  config = configlib.get("configs/sft.py:test", [("logging.wandb.enabled", "true"),
                                                  ("logging.wandb.mode", "cloud")])
  with pytest.raises(ValueError, match=r"logging.wandb.mode.*valid choices: \['online', 'offline'\]"):
    validate.validate(config)
  config = configlib.get("configs/sft.py:test", [("logging.wandb.enabled", "true")])
  monkeypatch.setattr(wandb_sink.importlib.util, "find_spec",
                      lambda name: None if name == "wandb" else object())
  with pytest.raises(ValueError, match="wandb package is not installed"):
    wandb_sink.check(config)
