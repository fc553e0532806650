"""experiments/bench_accelerator.py: its FLOPs bookkeeping, and a `--smoke` run end to end on the
CPU (every section: device rates, SFT per attention implementation, DPO, generation)."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest

from experiments import bench_accelerator as bench
from rlhf_jax.models import ModelConfig, flops
from rlhf_jax.rl import flops as rl_flops
from tests import xla

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAS_ATTENTION = "attention" in {f.name for f in dataclasses.fields(ModelConfig)}


def test_shapes_and_dpo_flops():
  args = bench.parse_args(["--smoke"])
  cfg = bench.model_config("350m", args)
  assert 340e6 < cfg.num_params() < 360e6 and cfg.dtype == "bfloat16"
  assert cfg.param_dtype == "float32"
  one_b = bench.model_config("1b", args)
  assert one_b.tie_embeddings and 1.2e9 < one_b.num_params() < 1.3e9
  # DPO runs the LM head on the completion slots only: the full-row train FLOPs of the 2B rows
  # less 3 x (2 FLOPs x d_model x vocab) per prompt slot.
  b, p, c = 3, 5, 7
  full = flops.train_flops(cfg, 2 * b, p + c)
  assert bench.dpo_flops(cfg, b, p, c) == pytest.approx(
      full - 3 * 2 * b * p * 2 * cfg.d_model * cfg.vocab_size, rel=1e-12)
  assert bench.per_shape("16", "1b") == 16 and bench.per_shape("350m:16,1b:8", "1b") == 8
  with pytest.raises(ValueError, match="no value for shape"):
    bench.per_shape("350m:16", "1b")


def _positive(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_smoke_run_reports_every_section(tmp_path):
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, "experiments/bench_accelerator.py", "--smoke", "--out", str(out)],
      cwd=REPO, env=xla.subprocess_env(1), capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  result = json.loads(lines[-1])
  assert json.loads(out.read_text())["train"] == result["train"]
  assert "== train steps" in proc.stdout and "== generation" in proc.stdout

  dev = result["device"]
  assert _positive(dev["peak_flops"]) and _positive(dev["hbm_bytes_per_s"])
  assert _positive(dev["matmul_flops"]) and _positive(dev["copy_bytes_per_s"])
  assert dev["peak_source"] in ("spec", "measured")
  assert set(result["models"]) == {"tiny", "tiny-tied"} and not result["skipped"]

  for shape, info in result["models"].items():
    cfg = bench.model_config(shape, bench.parse_args(["--smoke"]))
    assert info["num_params"] == cfg.num_params()
    rows = [r for r in result["train"] if r["shape"] == shape]
    sft = [r for r in rows if r["stage"] == "SFT"]
    dpo = [r for r in rows if r["stage"] == "DPO"]
    assert [r["attention"] for r in sft] == (["xla", "cudnn"] if HAS_ATTENTION else [None])
    assert len(dpo) == 1
    ok = [r for r in rows if "error" not in r]
    assert sft[0] in ok and dpo[0] in ok, rows  # XLA attention must work everywhere
    for r in rows:
      if "error" in r:  # e.g. cuDNN on a CPU: one line in the table, the run went on
        assert r["attention"] == "cudnn" and r["error"] and f"FAILED: {r['error']}" in proc.stdout
    for r in ok:
      assert _positive(r["step_s"]) and _positive(r["compile_s"]) and len(r["step_times_s"]) == 2
      assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["step_s"])
      assert math.isfinite(r["loss"]) and r["loss"] > 0
      assert _positive(r["mfu"])
      if dev["peak_source"] == "spec":
        assert r["mfu"] <= 1.0
    assert sft[0]["tokens"] == sft[0]["B"] * sft[0]["S"]
    assert sft[0]["flops"] == pytest.approx(flops.train_flops(cfg, sft[0]["B"], sft[0]["S"]))
    assert dpo[0]["tokens"] == 2 * dpo[0]["B"] * dpo[0]["S"]

    gen = [r for r in result["generation"] if r["shape"] == shape]
    assert len(gen) == 1 and "error" not in gen[0], gen
    g = gen[0]
    assert g["tokens_per_s"] == pytest.approx(g["B"] * g["T"] / g["call_s"])
    for key in ("compile_s", "roofline_f32_tokens_per_s", "of_roofline_f32", "tflops_per_s"):
      assert _positive(g[key]), key
    assert g["roofline_bf16_tokens_per_s"] > g["roofline_f32_tokens_per_s"]
    assert g["weight_bytes_f32"] == 4 * flops.matmul_params(cfg)


def test_bench_stages_ours_only_runs_every_stage(tmp_path):
  """experiments/bench_stages.py --ours-only (the path that needs no TRL): each offline stage's
  real step compiles, runs, and reports its tokens, FLOPs and a finite first loss."""
  out = tmp_path / "stages.json"
  proc = subprocess.run(
      [sys.executable, "experiments/bench_stages.py", "--ours-only", "--presets", "tiny",
       "--rounds", "1", "--steps", "1", "--warmup", "1", "--batch", "2", "--seq", "16",
       "--prompt-len", "4", "--grpo-prompts-per-step", "2", "--grpo-group", "2",
       "--grpo-new-tokens", "3", "--grpo-prompts", "8", "--out", str(out)],
      cwd=REPO, env=xla.subprocess_env(1), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = json.loads(out.read_text())["stages"]
  assert [r["stage"] for r in rows] == ["sft", "rm", "dpo", "grpo"]
  cfg = dataclasses.replace(
      bench.model_config("tiny", bench.parse_args(["--smoke", "--dtype", "float32"])),
      vocab_size=512)
  for r in rows[:3]:
    assert _positive(r["ours_step_s"]) and _positive(r["loss_ours"]), r
    assert r["tokens"] == (2 * 16 if r["stage"] == "sft" else 2 * 2 * 16), r
  assert rows[0]["flops"] == pytest.approx(flops.train_flops(cfg, 2, 16), rel=1e-9)
  # GRPO: the stage's iteration, 2 prompts x 2 samples of 4 prompt + 3 completion tokens (every
  # completion that long); its loss at the first step (ratio 1, KL 0) is about 0, either sign.
  grpo = rows[3]
  assert _positive(grpo["ours_step_s"]) and math.isfinite(grpo["loss_ours"]), grpo
  assert (grpo["B"], grpo["S"], grpo["tokens"]) == (4, 7, 4 * 7), grpo
  # the old policy re-scored: suppressing stop tokens makes the sampler's log-probs differ
  counter = rl_flops.IterationFlops(policy=cfg, rescore_policy=True)
  assert grpo["flops"] == pytest.approx(
      counter.generation(4, 4, 3) + counter.scoring(4, 4, 3) + counter.update(4, 4, 3),
      rel=1e-9)
