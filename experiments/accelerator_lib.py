"""The device-side helpers of experiments/bench_accelerator.py: the spec table of accelerator
kinds, the run's shared state (Bench: mesh, time budget, results written after every row), the
device's measured matmul and copy rates, XLA's memory need of a compiled step, and the table
lines. Imported after bench_accelerator.py has set the XLA environment."""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp

from rlhf_jax.parallel import mesh as mesh_lib, sharding as sharding_lib
from rlhf_jax.train import mfu as mfu_lib

FALLBACK_REMAT = "dots_with_no_batch_dims_saveable"  # when a step would not fit
REMAT_SHORT = {"dots_saveable": "dots", FALLBACK_REMAT: "dots_nbd"}  # table column names
# device_kind substring (lower case, first match) -> HBM bytes/s, from the spec sheets; the peak
# FLOP/s come from rlhf_jax/train/mfu.py's table (the one the training metrics use).
HBM_BYTES_PER_S = (("gh200", 4.0e12), ("h200", 4.8e12), ("h100 pcie", 2.0e12),
                   ("h100 nvl", 3.9e12), ("h100", 3.35e12), ("a100-sxm4-80gb", 2.039e12),
                   ("a100", 1.555e12), ("v6 lite", 1.64e12), ("v6e", 1.64e12),
                   ("v5 lite", 0.819e12), ("v5e", 0.819e12), ("v5", 2.765e12), ("v4", 1.2e12))


def median_time(fn, calls: int) -> tuple[float, list[float]]:
  """(median seconds, all seconds) of `calls` calls of fn, each waited for."""
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def one_line(err: BaseException) -> str:
  text = " ".join(str(err).split())
  return f"{type(err).__name__}: {text[:300]}"


def finite(x):
  """JSON-safe: non-finite floats become None (strict JSON, as metrics.jsonl)."""
  return json.loads(json.dumps(x), parse_constant=lambda _: None)


class Bench:
  """Shared state of a run: device figures, mesh, time budget and the results so far."""

  def __init__(self, args, start: float):
    self.args, self.start = args, start
    self.device = jax.devices()[0]
    self.mesh = mesh_lib.make_mesh({"data": -1}, devices=[self.device])
    self.rules = sharding_lib.DEFAULT_RULES
    self.results = {"config": vars(args), "device": {}, "models": {}, "train": [],
                    "generation": [], "skipped": []}

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def over_budget(self, label: str) -> bool:
    if self.elapsed() < self.args.budget_s:
      return False
    print(f"  {label}: skipped (time budget {self.args.budget_s:.0f} s spent)")
    self.results["skipped"].append(label)
    return True

  def flush(self) -> None:
    if self.args.out:
      with open(self.args.out, "w") as f:
        json.dump(finite({**self.results, "total_s": self.elapsed()}), f, indent=1)

  def memory_limit(self):
    if self.args.memory_limit_gb:
      return self.args.memory_limit_gb * 1e9
    try:
      return (self.device.memory_stats() or {}).get("bytes_limit")
    except Exception:  # pylint: disable=broad-except
      return None


# ------------------------------------------------------------------ device peak and bandwidth


def measure_device(bench: Bench, *, has_attention: bool) -> None:
  """Spec peak / bandwidth of the device kind, and measured matmul and copy rates."""
  a = bench.args
  kind = bench.device.device_kind
  spec_peak, _ = mfu_lib.device_peak(bench.device.platform, kind, "bfloat16")
  spec_bw = next((bw for name, bw in HBM_BYTES_PER_S if name in kind.lower()), None)
  n = a.matmul_size
  x = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  y = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(x, y))
  mm_s, _ = median_time(lambda: dot(x, y), 10)
  matmul = 2 * n ** 3 / mm_s
  buf = jnp.zeros((a.copy_mib * 2 ** 20 // 4,), jnp.float32)
  add = jax.jit(lambda v: v + 1.0)
  jax.block_until_ready(add(buf))
  cp_s, _ = median_time(lambda: add(buf), 10)
  copy = 2 * buf.nbytes / cp_s
  spec = spec_peak is not None and spec_bw is not None
  peak, bw = (spec_peak, spec_bw) if spec else (matmul, copy)
  source = "spec" if spec else "measured"
  bench.results["device"] = dict(kind=kind, platform=bench.device.platform, jax=jax.__version__,
                                 peak_flops=peak, hbm_bytes_per_s=bw, peak_source=source,
                                 matmul_size=n, matmul_flops=matmul, copy_bytes_per_s=copy,
                                 attention_field=has_attention)
  print(f"device {kind} ({bench.device.platform}), jax {jax.__version__}; peak bf16 "
        f"{peak / 1e12:.4g} TFLOP/s, HBM {bw / 1e12:.3g} TB/s ({source})")
  print(f"  bf16 matmul {n}^3 (jnp.dot, median of 10): {mm_s * 1e3:.3f} ms = "
        f"{matmul / 1e12:.4g} TFLOP/s ({matmul / peak:.0%} of peak)")
  print(f"  copy x + 1 over {a.copy_mib} MiB (read + write): {copy / 1e12:.3g} TB/s "
        f"({copy / bw:.0%} of the bandwidth used)")
  if not has_attention:
    print("  ModelConfig has no `attention` field: one SFT row per shape, the model's attention")


def memory_need(compiled):
  """Bytes the executable needs per device: arguments + outputs - donated + temporaries."""
  try:
    m = compiled.memory_analysis()
    get = lambda k: int(getattr(m, k, 0) or 0)
    need = (get("argument_size_in_bytes") + get("output_size_in_bytes")
            - get("alias_size_in_bytes") + get("temp_size_in_bytes"))
    return need or None
  except Exception:  # pylint: disable=broad-except
    return None


TRAIN_HEADER = (f"{'stage':5} {'shape':9} {'attention':9} {'remat':8} {'B':>4} {'S':>5} "
                f"{'tokens':>7} {'compile s':>9} {'step ms':>9} {'tokens/s':>11} "
                f"{'TFLOP/s':>8} {'MFU':>6} {'mem GB':>7}")


def train_line(r: dict) -> str:
  head = (f"{r['stage']:5} {r['shape']:9} {r['attention'] or '-':9} ")
  if "error" in r:
    return head + f"FAILED: {r['error']}"
  mem = f"{r['memory_gb']:7.1f}" if r.get("memory_gb") else f"{'?':>7}"
  remat = REMAT_SHORT.get(r["remat"], r["remat"])
  return head + (f"{remat:8} {r['B']:>4} {r['S']:>5} {r['tokens']:>7} "
                 f"{r['compile_s']:9.1f} {r['step_s'] * 1e3:9.2f} {r['tokens_per_s']:11,.0f} "
                 f"{r['tflops_per_s']:8.2f} {r['mfu']:6.1%} {mem}")


GEN_HEADER = (f"{'shape':9} {'B':>4} {'P':>5} {'T':>5} {'compile s':>9} {'call ms':>9} "
              f"{'tokens/s':>10} {'TFLOP/s':>8} {'w f32 GB':>8} {'KV GB':>6} "
              f"{'roof f32':>10} {'%':>5} {'roof bf16':>10} {'%':>5}")


def gen_line(r: dict) -> str:
  head = f"{r['shape']:9} {r['B']:>4} {r['P']:>5} {r['T']:>5} "
  if "error" in r:
    return head + f"FAILED: {r['error']}"
  return head + (f"{r['compile_s']:9.1f} {r['call_s'] * 1e3:9.1f} {r['tokens_per_s']:10,.0f} "
                 f"{r['tflops_per_s']:8.2f} {r['weight_bytes_f32'] / 1e9:8.2f} "
                 f"{r['kv_bytes_per_step'] / 1e9:6.2f} {r['roofline_f32_tokens_per_s']:10,.0f} "
                 f"{r['of_roofline_f32']:5.0%} {r['roofline_bf16_tokens_per_s']:10,.0f} "
                 f"{r['of_roofline_bf16']:5.0%}")
