"""Accelerator benchmark: the project's real SFT and DPO train steps and its generation loop on one
device, as step time, tokens/s, MFU and generation tokens/s against the HBM-bandwidth roofline.

What runs (synthetic data, nothing downloaded; one device, a 1-device mesh from
`parallel.mesh.make_mesh`, steps jitted with explicit shardings and state donation as
train/loop.py's `jit_train_step` does):
  SFT   `train/sft.py:make_train_step` on [B, S] rows (AdamW from train/optimizer.py)
  DPO   `train/dpo.py:make_train_step`, loss "dpo", on B pairs of [P | C] rows; the reference
        log-probs are batch inputs, as the DPO stage precomputes them once (synthetic values here:
        they enter only the loss arithmetic, not the cost of the step)
  gen   `generation.make_generate_fn` (prefill + KV-cache decode in one while loop), B prompts of
        P tokens, T new tokens sampled at temperature 1 with stop tokens suppressed
        (min_new_tokens = T), so every row generates exactly T tokens
for a ~350M Llama shape (defined here) and the '1b' preset (Llama-3.2-1B shapes), compute dtype
bfloat16 with float32 master weights (the library's mixed precision, train/precision.py). When
ModelConfig has an `attention` field, SFT runs once per implementation (xla, cudnn); DPO then
uses the fastest one that worked for that shape; generation keeps the config's default.

Timing: the step is compiled ahead of time (lower + compile: the reported compile time), then
`--warmup` calls, then `--steps` calls each waited for with jax.block_until_ready; the median is
the step time. tokens/s = tokens / step time (SFT: B S; DPO: 2 B (P + C), chosen and rejected).

FLOPs (models/flops.py: a multiply-add is 2 FLOPs, matmuls only, causal attention halved, a train
step is 3x its forward):
  SFT  train_flops(cfg, B, S) = 3 B S (2 N_mm + n_layers 4 n_heads head_dim (S + 1) / 2)
  DPO  3 [forward_flops(cfg, 2B, P + C, lm_head=False) + 2B C 2 d_model V]   (scoring.py runs
       the LM head on the completion positions only)
  gen  decode_flops(cfg, B, P, T)
MFU = FLOPs / step time / peak, peak = the dense bf16 spec of the device kind from
rlhf_jax/train/mfu.py (H100 SXM / H200: 989e12 FLOP/s); an unknown kind uses the measured bf16
matmul rate instead (and says so). The measured rate of a bf16 `jnp.dot` of size^3 (median of
10) is printed as a sanity line either way. With remat (`--remat`, or the automatic fallback when
XLA's memory analysis says a step does not fit) the recomputed forward is not counted: MFU stays
model FLOPs utilisation.

Roofline of generation: every decode step reads every matmul weight (models/flops.py
matmul_params: q/k/v/o, MLP, LM head = the tied embedding for '1b'; the embedding lookup is a
gather of B rows) and the whole preallocated KV cache (decode_step.py attends over all
L = P + T - 1 slots, masked), so per step
  bytes = w N_mm + 2 n_layers B L n_kv_heads head_dim c,   c = 2 (bfloat16 cache)
  roofline tokens/s = B / (bytes / HBM bandwidth)
The weights are float32 master weights cast to bfloat16 at use inside the step (the cast sits in
the decode loop unless XLA hoists it), so the f32 roofline counts w = 4 bytes, the bf16 roofline
w = 2 (a bf16 copy of the weights). HBM bandwidth: the spec of the kind (H200 4.8e12 B/s, H100
SXM 3.35e12), else the measured copy rate (x + 1 over `--copy-mib`, read + write); the measured
rate is printed either way. Achieved tokens/s = B T / the wall time of a whole call (prefill
included).

Output: a plain-text table per section, then one JSON line with every figure (`--out PATH` also
writes it, and rewrites it after every row, so a killed run keeps what it measured). A failing
row (e.g. cuDNN attention on a CPU) prints one line and the run goes on. `--budget-s` stops
starting new rows once that many seconds have passed.

Defaults (GPU_DEFAULTS): SFT 8 (350m) / 4 (1b) rows of S = 1024; DPO 4 / 2 pairs of P + C =
256 + 768; generation 64 prompts of 128 tokens + 256 new; 2 warm-up + 10 timed steps; ~5-6 min.

  bash experiments/bench_accelerator.sh                    # the GPU run
  bash experiments/bench_accelerator.sh --out /tmp/bench.json --attention xla
  python experiments/bench_accelerator.py --smoke          # tiny shapes on CPU, every code path
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import types
import warnings

START = time.perf_counter()  # the time budget counts JAX's start-up too
# Let the step use most of the device's memory (XLA's GPU default preallocates 75%).
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
if "--smoke" in sys.argv and "optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  # Smoke runs are compilation of tiny models: XLA's CPU backend at -O0 compiles them in half.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_backend_optimization_level=0").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rlhf_jax.generation import SamplingConfig, make_generate_fn  # noqa: E402
from rlhf_jax.models import ModelConfig, Transformer, flops, get_model_config  # noqa: E402
from rlhf_jax.parallel import sharding as sharding_lib  # noqa: E402
from rlhf_jax.train import dpo as dpo_steps, loop, optimizer as optimizer_lib  # noqa: E402
from rlhf_jax.train import sft as sft_steps, state as state_lib  # noqa: E402
from experiments.accelerator_lib import (  # noqa: E402
    FALLBACK_REMAT, GEN_HEADER, TRAIN_HEADER, Bench, finite, gen_line, measure_device,
    median_time, memory_need, one_line, train_line)

HAS_ATTENTION = "attention" in {f.name for f in dataclasses.fields(ModelConfig)}
# The ~350M Llama shape (348.7M parameters, untied 32k vocabulary) and the smoke shapes.
SHAPES = {
    "350m": dict(vocab_size=32_000, d_model=1024, n_layers=24, n_heads=16, n_kv_heads=8,
                 head_dim=64, d_ff=2816),
    "1b": "1b",  # the preset: Llama-3.2-1B shapes, tied 128k vocabulary
    "tiny": "tiny",
    "tiny-tied": dict(vocab_size=512, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2,
                      head_dim=16, d_ff=192, tie_embeddings=True),
}
GPU_DEFAULTS = dict(shapes="350m,1b", sft_batch="350m:8,1b:4", seq=1024, dpo_batch="350m:4,1b:2",
                    dpo_prompt_len=256, dpo_completion_len=768, gen_batch=64, gen_prompt_len=128,
                    gen_new_tokens=256, warmup=2, steps=10, gen_calls=3, matmul_size=8192,
                    copy_mib=2048)
SMOKE_DEFAULTS = dict(shapes="tiny,tiny-tied", sft_batch="4", seq=64, dpo_batch="2",
                      dpo_prompt_len=16, dpo_completion_len=48, gen_batch=4, gen_prompt_len=8,
                      gen_new_tokens=8, warmup=1, steps=2, gen_calls=2, matmul_size=512,
                      copy_mib=16)


def model_config(shape: str, args) -> ModelConfig:
  spec = SHAPES[shape]
  fields = dict(dtype=args.dtype, param_dtype="float32", remat=args.remat)
  if isinstance(spec, str):
    return get_model_config(spec, **fields)
  return get_model_config("tiny", **{**spec, **fields})


def per_shape(value: str, shape: str) -> int:
  """'16' (every shape) or '350m:16,1b:8' -> this shape's int."""
  if ":" not in value:
    return int(value)
  table = dict(item.split(":") for item in value.split(","))
  if shape not in table:
    raise ValueError(f"no value for shape {shape!r} in {value!r}")
  return int(table[shape])


# ------------------------------------------------------------------------- train steps


def put(bench: Bench, batch: dict) -> dict:
  return {k: jax.device_put(v, sharding_lib.batch_sharding(bench.mesh, v.ndim))
          for k, v in batch.items()}


def sft_batch(cfg, b: int, s: int, rng: np.random.Generator) -> dict:
  """[B, S] rows, all real; the first quarter is the prompt (no loss), the rest the completion."""
  completion = np.ones((b, s), np.int32)
  completion[:, : s // 4] = 0
  return {"tokens": rng.integers(3, cfg.vocab_size, (b, s), dtype=np.int32),
          "mask": np.ones((b, s), np.int32), "completion_mask": completion}


def dpo_batch(cfg, b: int, p: int, c: int, rng: np.random.Generator) -> dict:
  """B pairs of [prompt P | completion C] rows (shared prompt) and synthetic reference log-probs."""
  prompt = rng.integers(3, cfg.vocab_size, (b, p), dtype=np.int32)
  completion_mask = np.concatenate([np.zeros((b, p), np.int32), np.ones((b, c), np.int32)], 1)
  out = {}
  for side in ("chosen", "rejected"):
    tokens = rng.integers(3, cfg.vocab_size, (b, c), dtype=np.int32)
    out[f"{side}_tokens"] = np.concatenate([prompt, tokens], 1)
    out[f"{side}_mask"] = np.ones((b, p + c), np.int32)
    out[f"{side}_completion_mask"] = completion_mask
    out[f"ref_{side}_logps"] = (-c * math.log(cfg.vocab_size)
                                + rng.normal(0, 1, b)).astype(np.float32)
  return out


def dpo_flops(cfg, pairs: int, p: int, c: int) -> float:
  """3 x (the layers over 2B rows of P + C tokens + the LM head over the 2B C completion slots)."""
  rows = 2 * pairs
  body = flops.forward_flops(cfg, rows, p + c, lm_head=False)
  return 3 * (body + rows * c * 2 * cfg.d_model * cfg.vocab_size)


class ShapeState:
  """The train state of one shape, shared by its rows (params and AdamW moments, float32)."""

  def __init__(self, bench: Bench, cfg):
    c = types.SimpleNamespace(name="adamw", lr=1e-5, schedule="cosine", warmup_steps=10,
                              end_lr_fraction=0.1, weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8,
                              grad_clip=1.0)  # rlhf_jax/defaults.py's optimizer, smaller lr
    self.bench, self.cfg = bench, cfg
    self.tx = optimizer_lib.make_optimizer(c, 1000)
    self.state = None
    self.init_s = 0.0

  def get(self):
    """The state, (re)initialised if absent or donated by a step that failed."""
    if self.state is None or any(x.is_deleted() for x in jax.tree.leaves(self.state)):
      start = time.perf_counter()
      make = lambda rngs: Transformer(self.cfg, rngs=rngs)
      _, self.state, self.shardings = state_lib.init_state(make, self.tx, self.bench.mesh,
                                                           self.bench.rules, seed=0)
      jax.block_until_ready(self.state)
      self.init_s = time.perf_counter() - start
    return self.state


def compile_train_step(bench: Bench, step, shardings, state, batch):
  """(compiled step, compile seconds, bytes needed): `step` jitted by train/loop.py's
  jit_train_step (explicit shardings, state donated), compiled ahead of time."""
  jitted = loop.jit_train_step(step, shardings, batch, bench.mesh)
  start = time.perf_counter()
  compiled = jitted.lower(state, batch, jax.random.key(0)).compile()
  return compiled, time.perf_counter() - start, memory_need(compiled)


def compile_step(bench: Bench, holder: ShapeState, make_step, cfg, batch):
  """compile_train_step of make_step(graphdef) for a Transformer of `cfg` on holder's state."""
  graphdef, _ = state_lib.abstract_model(lambda rngs: Transformer(cfg, rngs=rngs))
  state = holder.get()  # (re)initialises the state and its shardings
  return compile_train_step(bench, make_step(graphdef), holder.shardings, state, batch)


def run_train_row(bench: Bench, holder: ShapeState, row: dict, make_step, batch,
                  flops_per_step: float, tokens: int) -> dict:
  """Compiles (with the remat fallback when it would not fit), times and records one row."""
  a = bench.args
  cfg = holder.cfg
  if row["attention"] is not None:
    cfg = dataclasses.replace(cfg, attention=row["attention"])
  limit = bench.memory_limit()
  compiled, compile_s, need = compile_step(bench, holder, make_step, cfg, batch)
  if limit and need and need > 0.95 * limit and cfg.remat == "none" and not a.no_remat_fallback:
    print(f"    ({row['stage']} {row['shape']}: needs {need / 1e9:.1f} GB of {limit / 1e9:.1f} GB;"
          f" recompiling with remat={FALLBACK_REMAT})")
    cfg = dataclasses.replace(cfg, remat=FALLBACK_REMAT)
    compiled, more_s, need = compile_step(bench, holder, make_step, cfg, batch)
    compile_s += more_s
  if limit and need and need > limit:
    raise MemoryError(f"needs {need / 1e9:.1f} GB, the device has {limit / 1e9:.1f} GB")
  rng = jax.random.key(0)
  state, metrics = holder.get(), None

  def call():
    nonlocal state, metrics
    state, metrics = compiled(state, batch, rng)
    return state, metrics

  for _ in range(a.warmup):
    jax.block_until_ready(call())
  step_s, times = median_time(call, a.steps)
  holder.state = state
  peak = bench.results["device"]["peak_flops"]
  row.update(remat=cfg.remat, tokens=tokens, compile_s=compile_s, step_s=step_s,
             step_times_s=times, tokens_per_s=tokens / step_s, flops=flops_per_step,
             tflops_per_s=flops_per_step / step_s / 1e12, mfu=flops_per_step / step_s / peak,
             memory_gb=need / 1e9 if need else None, loss=float(metrics["loss"]))
  return row


def train_row(bench: Bench, holder: ShapeState, row: dict, *args) -> None:
  label = f"{row['stage']} {row['shape']} attention={row['attention']}"
  if bench.over_budget(label):
    return
  try:
    run_train_row(bench, holder, row, *args)
  except Exception as err:  # pylint: disable=broad-except
    row["error"] = one_line(err)
  bench.results["train"].append(row)
  print(train_line(row))
  bench.flush()


def bench_shape_train(bench: Bench, shape: str, holder: ShapeState) -> None:
  """SFT per attention implementation, then DPO with the fastest that worked."""
  a, cfg = bench.args, holder.cfg
  rng = np.random.default_rng(0)
  if "sft" in a.sections:
    b, s = per_shape(a.sft_batch, shape), a.seq
    batch = put(bench, sft_batch(cfg, b, s, rng))
    make = lambda g: sft_steps.make_train_step(g, holder.tx)
    for attention in a.attention_list:
      row = dict(stage="SFT", shape=shape, attention=attention, B=b, S=s)
      train_row(bench, holder, row, make, batch, flops.train_flops(cfg, b, s), b * s)
    del batch
  if "dpo" in a.sections:
    done = [r for r in bench.results["train"]
            if r["shape"] == shape and r["stage"] == "SFT" and "error" not in r]
    attention = (min(done, key=lambda r: r["step_s"])["attention"] if done
                 else a.attention_list[0] if len(a.attention_list) == 1 else None)
    b, p, c = per_shape(a.dpo_batch, shape), a.dpo_prompt_len, a.dpo_completion_len
    batch = put(bench, dpo_batch(cfg, b, p, c, rng))
    loss = types.SimpleNamespace(name="dpo", beta=0.1, label_smoothing=0.0, sft_coef=0.0,
                                 simpo_gamma=0.0)
    make = lambda g: dpo_steps.make_train_step(g, holder.tx, loss, p)
    row = dict(stage="DPO", shape=shape, attention=attention, B=b, S=p + c)
    train_row(bench, holder, row, make, batch, dpo_flops(cfg, b, p, c), 2 * b * (p + c))


# --------------------------------------------------------------------------- generation


def bench_generation(bench: Bench, shape: str, holder: ShapeState) -> None:
  a = bench.args
  cfg = holder.cfg
  if len(a.attention_list) == 1 and a.attention_list[0] is not None:
    cfg = dataclasses.replace(cfg, attention=a.attention_list[0])
  b, p, t = a.gen_batch, a.gen_prompt_len, a.gen_new_tokens
  row = dict(shape=shape, B=b, P=p, T=t)
  if bench.over_budget(f"generation {shape}"):
    return
  try:
    graphdef, _ = state_lib.abstract_model(lambda rngs: Transformer(cfg, rngs=rngs))
    params = holder.get().params
    gen = make_generate_fn(graphdef, SamplingConfig(max_new_tokens=t, min_new_tokens=t),
                           mesh=bench.mesh, param_shardings=holder.shardings.params,
                           validate=False)
    rng = np.random.default_rng(1)
    prompts = put(bench, {"tokens": rng.integers(3, cfg.vocab_size, (b, p), dtype=np.int32),
                          "mask": np.ones((b, p), np.int32)})
    key = jax.random.key(0)
    start = time.perf_counter()
    compiled = gen.jitted.lower(params, prompts["tokens"], prompts["mask"], key).compile()
    compile_s = time.perf_counter() - start
    call = lambda: compiled(params, prompts["tokens"], prompts["mask"], key)
    out = jax.block_until_ready(call())
    generated = int(np.asarray(out.mask_BxT).sum())
    if generated != b * t:
      raise RuntimeError(f"generated {generated} tokens, expected B T = {b * t}")
    call_s, times = median_time(call, a.gen_calls)
    dev = bench.results["device"]
    n_mm = flops.matmul_params(cfg)
    kv = 2 * cfg.n_layers * b * (p + t - 1) * cfg.n_kv_heads * cfg.head_dim * 2
    roof = {w: b * dev["hbm_bytes_per_s"] / (w * n_mm + kv) for w in (4, 2)}
    achieved = b * t / call_s
    fl = flops.decode_flops(cfg, b, p, t)
    row.update(compile_s=compile_s, call_s=call_s, call_times_s=times, tokens_per_s=achieved,
               flops=fl, tflops_per_s=fl / call_s / 1e12, weight_bytes_f32=4 * n_mm,
               kv_bytes_per_step=kv, roofline_f32_tokens_per_s=roof[4],
               roofline_bf16_tokens_per_s=roof[2], of_roofline_f32=achieved / roof[4],
               of_roofline_bf16=achieved / roof[2])
  except Exception as err:  # pylint: disable=broad-except
    row["error"] = one_line(err)
  bench.results["generation"].append(row)
  print(gen_line(row))
  bench.flush()


# --------------------------------------------------------------------------------- main


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
  parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 steps (CPU, ~1 min)")
  for name, kind, text in (
      ("shapes", str, "comma list of " + ", ".join(SHAPES)),
      ("sft-batch", str, "rows per SFT step: 16, or per shape 350m:16,1b:8"),
      ("seq", int, "SFT row length S"), ("dpo-batch", str, "pairs per DPO step, as --sft-batch"),
      ("dpo-prompt-len", int, "P"), ("dpo-completion-len", int, "C"),
      ("gen-batch", int, "prompts"), ("gen-prompt-len", int, "P"), ("gen-new-tokens", int, "T"),
      ("warmup", int, "untimed steps after compilation"),
      ("steps", int, "timed steps (median reported)"),
      ("gen-calls", int, "timed generate calls (median reported)"),
      ("matmul-size", int, "n of the bf16 n^3 matmul"), ("copy-mib", int, "copied buffer")):
    key = name.replace("-", "_")
    parser.add_argument("--" + name, type=kind, help=f"{text} (default {GPU_DEFAULTS[key]}, "
                                                      f"smoke {SMOKE_DEFAULTS[key]})")
  parser.add_argument("--attention", default="",
                      help="comma list of ModelConfig.attention values for SFT (default xla,cudnn "
                           "when the field exists); one value is used by every row")
  parser.add_argument("--sections", default="sft,dpo,gen")
  parser.add_argument("--dtype", default="bfloat16", help="compute dtype (params stay float32)")
  parser.add_argument("--remat", default="none", help="ModelConfig.remat of the train steps")
  parser.add_argument("--no-remat-fallback", action="store_true",
                      help=f"do not recompile with remat={FALLBACK_REMAT} when a step won't fit")
  parser.add_argument("--memory-limit-gb", type=float, default=0.0,
                      help="device memory to plan for (0: the device's bytes_limit)")
  parser.add_argument("--budget-s", type=float, default=390.0,
                      help="start no new row after this many seconds")
  parser.add_argument("--out", default="", help="also write the JSON here")
  args = parser.parse_args(argv)
  for k, v in (SMOKE_DEFAULTS if args.smoke else GPU_DEFAULTS).items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
  wanted = [x.strip() for x in args.attention.split(",") if x.strip()]
  if wanted and not HAS_ATTENTION:
    parser.error("--attention: this ModelConfig has no `attention` field")
  args.attention_list = wanted or (["xla", "cudnn"] if HAS_ATTENTION else [None])
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  warnings.filterwarnings("ignore", message=".*donated buffers.*")
  bench = Bench(args, START)
  measure_device(bench, has_attention=HAS_ATTENTION)
  shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
  print("\nmodels (compute " + args.dtype + ", params float32):")
  cfgs = {}
  for shape in shapes:
    cfg = cfgs[shape] = model_config(shape, args)
    info = dict(num_params=cfg.num_params(), matmul_params=flops.matmul_params(cfg),
                n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
                n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, d_ff=cfg.d_ff,
                vocab_size=cfg.vocab_size, tied=cfg.tie_embeddings)
    bench.results["models"][shape] = info
    print(f"  {shape:9} {info['num_params']:>14,} params ({info['matmul_params']:,} in matmuls): "
          f"{cfg.n_layers} layers, d_model {cfg.d_model}, heads {cfg.n_heads}/{cfg.n_kv_heads} x "
          f"{cfg.head_dim}, d_ff {cfg.d_ff}, vocab {cfg.vocab_size}"
          f"{', tied' if cfg.tie_embeddings else ''}")
  for shape in shapes:
    holder = ShapeState(bench, cfgs[shape])
    if {"sft", "dpo"} & set(args.sections):
      print(f"\n[{shape}] train steps (AdamW; median of {args.steps} after {args.warmup} warm-up)")
      print(TRAIN_HEADER)
      bench_shape_train(bench, shape, holder)
    if "gen" in args.sections:
      print(f"\n[{shape}] generation (median of {args.gen_calls} calls)")
      print(GEN_HEADER)
      bench_generation(bench, shape, holder)
    bench.results["models"][shape]["state_init_s"] = holder.init_s
    holder.state = None  # free this shape's state before the next
  dev = bench.results["device"]
  print(f"\n== train steps: MFU of {dev['peak_flops'] / 1e12:.4g} TFLOP/s ({dev['peak_source']}); "
        "tokens = B S (SFT), 2 B S (DPO)")
  print(TRAIN_HEADER)
  for r in bench.results["train"]:
    print(train_line(r))
  print(f"\n== generation: tokens/s = B T / call (prefill included); roofline = B HBM / (w N_mm "
        f"+ KV cache) per decode step, w = 4 (f32) or 2 (bf16) bytes, "
        f"HBM {dev['hbm_bytes_per_s'] / 1e12:.3g} TB/s ({dev['peak_source']})")
  print(GEN_HEADER)
  for r in bench.results["generation"]:
    print(gen_line(r))
  bench.results["total_s"] = bench.elapsed()
  print(f"total {bench.elapsed():.1f} s")
  bench.flush()
  print(json.dumps(finite(bench.results)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
