"""Generation throughput: rlhf_jax's jitted KV-cache loop vs Hugging Face transformers `generate`.

Both sides run the same Llama architecture with the SAME weights (ours are copied into a
transformers LlamaForCausalLM, and logits are checked to match before timing), greedy, with the
same prompts, prompt length and number of new tokens. Every row generates exactly `--new-tokens`
tokens on both sides (min_new_tokens = max_new_tokens suppresses EOS identically in both), so
tokens/s = batch * new_tokens / median wall time. The greedy completions are compared as well.

Timing is interleaved: after one warm-up call per side and batch (ours includes compilation),
each of `--runs` rounds times one call of ours and then one call of transformers per thread
count, so a slow spell of a shared machine hits both sides alike. Reported: the median tokens/s
of each side and the median over rounds of the per-round time ratio (transformers / ours).

transformers runs in a child process that does only that (commands over a pipe): torch's OpenMP
worker threads keep spinning for a while after each call and would steal a core from XLA in the
same process; for the same reason every timed call starts after a 50 ms pause.

Threads: XLA's CPU client uses all cores (os.cpu_count()); torch gets `--threads` intra-op threads
(default the same count) and 1 inter-op thread. transformers is also timed with 1 thread
(`--no-hf-single-thread` skips it); "vs best" compares with the faster of the two.
`--cpu-devices N` runs ours on a data-parallel mesh of N XLA CPU devices (the batch split over
them, as `make_generate_fn(mesh=...)` does on accelerators) instead of one device.

GFLOP/s counts the model's work per call, the same for both sides: every row runs its P + T - 1
fed tokens through the layers (q/k/v/o projections, MLP and causal attention over the tokens
before it) and the vocabulary projection for the T sampled tokens (multiply-add = 2 FLOPs).
The line after the table gives the machine's float32 matmul rate (numpy, 1024^3) for reference.

Needs the benchmark-only deps: `pip install -r requirements-bench.txt`.

  python experiments/bench_generation.py                       # tiny + small, batch 1/16/64
  python experiments/bench_generation.py --presets small --batches 16,64 --runs 9
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from rlhf_jax.models import get_model_config  # noqa: E402  (no JAX computation at import)

PAUSE_S = 0.05  # between timed calls: the thread pools of the side that just ran spin down


def timed(fn):
  """(wall seconds of one call, its output)."""
  start = time.perf_counter()
  out = fn()
  return time.perf_counter() - start, out


def generation_flops(cfg, batch: int, prompt_len: int, new_tokens: int) -> float:
  """Model FLOPs of one generate call (module docstring): 2 per multiply-add."""
  d, n, k, h, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
  per_token_layer = d * (n + 2 * k) * h + n * h * d + (3 if cfg.mlp_gated else 2) * d * f
  fed = prompt_len + new_tokens - 1                    # tokens through the layers, per row
  attended = fed * (fed + 1) // 2                      # sum over fed tokens of (1 + position)
  macs = cfg.n_layers * (fed * per_token_layer + 2 * n * h * attended)
  macs += new_tokens * d * cfg.vocab_size              # logits of the sampled positions
  return 2.0 * batch * macs


def matmul_gflops(size: int = 1024, runs: int = 5) -> float:
  """float32 GFLOP/s of numpy's size^3 matmul (median of `runs`), the machine's reference rate."""
  a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
  a @ a
  return 2 * size ** 3 / statistics.median(timed(lambda: a @ a)[0] for _ in range(runs)) / 1e9


# ---------------------------------------------------------------- transformers (child process)

def flat_weights(params, prefix: str) -> dict[str, np.ndarray]:
  """{prefix + 'layers/0/attn/wq': array, ...}: the weights as the torch side reads them
  (build_hf)."""
  import jax  # pylint: disable=g-import-not-at-top

  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = "/".join(str(getattr(e, "key", getattr(e, "idx", e))) for e in path)
    out[prefix + name] = np.asarray(x)
  return out


def build_hf(cfg, flat):
  """A transformers LlamaForCausalLM with our shapes and our weights (float32, eval mode).

  Our layouts: wq/wk/wv [D, N, H], wo [N, H, D], w_gate/w_up [D, F], w_down [F, D], embed [V, D],
  lm_head [D, V]; torch Linear weights are [out, in]. RoPE is half-split in both.
  """
  import torch
  import transformers

  hf_cfg = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
      rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
      tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
      max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0)
  hf = transformers.LlamaForCausalLM(hf_cfg).eval().to(torch.float32)
  d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  t = lambda x: torch.from_numpy(np.array(x, np.float32, copy=True))
  sd = {"model.embed_tokens.weight": t(flat["embed"]),
        "model.norm.weight": t(flat["final_norm/scale"]),
        "lm_head.weight": t(flat["lm_head"].T)}
  for i in range(cfg.n_layers):
    w = lambda name: flat[f"layers/{i}/{name}"]
    pre = f"model.layers.{i}."
    sd[pre + "self_attn.q_proj.weight"] = t(w("attn/wq").reshape(d, n * h).T)
    sd[pre + "self_attn.k_proj.weight"] = t(w("attn/wk").reshape(d, k * h).T)
    sd[pre + "self_attn.v_proj.weight"] = t(w("attn/wv").reshape(d, k * h).T)
    sd[pre + "self_attn.o_proj.weight"] = t(w("attn/wo").reshape(n * h, d).T)
    sd[pre + "mlp.gate_proj.weight"] = t(w("mlp/w_gate").T)
    sd[pre + "mlp.up_proj.weight"] = t(w("mlp/w_up").T)
    sd[pre + "mlp.down_proj.weight"] = t(w("mlp/w_down").T)
    sd[pre + "input_layernorm.weight"] = t(w("attn_norm/scale"))
    sd[pre + "post_attention_layernorm.weight"] = t(w("mlp_norm/scale"))
  missing, unexpected = hf.load_state_dict(sd, strict=False)
  missing = [m for m in missing if "rotary" not in m]
  if missing or unexpected:
    raise RuntimeError(f"weight copy mismatch: missing={missing} unexpected={unexpected}")
  return hf


def hf_worker(args):
  """Child process: loads weights + prompts from args.hf_worker (npz); writes the check logits,
  greedy completions and versions to args.hf_out (npz) after one warm-up call per batch, prints
  "ready", then times one call per stdin line '{"batch": b, "threads": k}' and prints its seconds;
  stops at end of input."""
  import torch
  import transformers

  torch.set_num_interop_threads(1)
  transformers.logging.set_verbosity_error()
  data = dict(np.load(args.hf_worker))
  cfg = get_model_config(args.presets, vocab_size=args.vocab)
  hf = build_hf(cfg, {k[2:]: v for k, v in data.items() if k.startswith("w:")})
  out = {"torch_version": np.array(torch.__version__),
         "transformers_version": np.array(transformers.__version__)}
  tokens, mask = data["check_tokens"], data["check_mask"]
  with torch.inference_mode():
    out["check_logits"] = hf(input_ids=torch.from_numpy(tokens).long(),
                             attention_mask=torch.from_numpy(mask).long(),
                             position_ids=torch.from_numpy(np.maximum(np.cumsum(mask, 1) - 1, 0)
                                                           ).long()).logits.numpy()
  t = args.new_tokens
  ids = {b: torch.from_numpy(data[f"prompts_{b}"]).long() for b in args.batches}

  def run(batch):
    with torch.inference_mode():
      return hf.generate(input_ids=ids[batch], attention_mask=torch.ones_like(ids[batch]),
                         max_new_tokens=t, min_new_tokens=t, do_sample=False, eos_token_id=2,
                         pad_token_id=0)

  for batch in args.batches:
    for threads in args.hf_threads:
      torch.set_num_threads(threads)
      generated = run(batch)
    out[f"tokens_{batch}"] = generated[:, ids[batch].shape[1]:].numpy()
  np.savez(args.hf_out, **out)
  print("ready", flush=True)
  for line in sys.stdin:
    cmd = json.loads(line)
    torch.set_num_threads(cmd["threads"])
    print(timed(lambda: run(cmd["batch"]))[0], flush=True)


# ---------------------------------------------------------------- ours (parent process)

def ours_generate_fn(graphdef, params, args):
  """generate(prompts, mask, key) with `params` bound: on one device, or on a data-parallel mesh
  of args.cpu_devices devices (params replicated, the batch split)."""
  import jax

  from rlhf_jax.generation import SamplingConfig, make_generate_fn
  from rlhf_jax.parallel import mesh as mesh_lib, sharding as sharding_lib

  t = args.new_tokens
  config = SamplingConfig(max_new_tokens=t, min_new_tokens=t, greedy=True)
  if args.cpu_devices <= 1:
    gen = make_generate_fn(graphdef, config, validate=False)
    return lambda *a: gen(params, *a)
  mesh = mesh_lib.make_mesh({"data": args.cpu_devices, "fsdp": 1, "tensor": 1})
  shardings = jax.tree.map(lambda _: sharding_lib.replicated(mesh), params)
  gen = make_generate_fn(graphdef, config, mesh=mesh, param_shardings=shardings, validate=False)
  placed = jax.device_put(params, shardings)
  return lambda *a: gen(placed, *a)


def bench_preset(preset, args):
  """Rows of results for one preset: every batch size, ours vs transformers, interleaved."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rlhf_jax.models import Transformer

  cfg = get_model_config(preset, vocab_size=args.vocab)
  graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(args.seed)), nnx.Param)
  params = nnx.to_pure_dict(state)
  rng = np.random.default_rng(args.seed)
  p, t = args.prompt_len, args.new_tokens
  data = flat_weights(params, "w:")
  data["check_tokens"] = rng.integers(3, cfg.vocab_size, (4, p)).astype(np.int32)
  data["check_mask"] = np.ones((4, p), np.int32)
  data["check_mask"][1, : p // 2] = 0  # a left-padded row too
  for batch in args.batches:
    data[f"prompts_{batch}"] = rng.integers(3, cfg.vocab_size, (batch, p)).astype(np.int32)

  gen = ours_generate_fn(graphdef, params, args)
  key = jax.random.key(0)
  inputs = {b: (jnp.asarray(data[f"prompts_{b}"]), jnp.ones((b, p), jnp.int32))
            for b in args.batches}
  ours_call = {b: (lambda b=b: jax.block_until_ready(gen(*inputs[b], key))) for b in args.batches}
  ours_tokens = {b: np.asarray(ours_call[b]().tokens_BxT) for b in args.batches}  # warm-up
  ours_logits = np.asarray(nnx.merge(graphdef, params)(
      jnp.asarray(data["check_tokens"]), mask_BxS=jnp.asarray(data["check_mask"])))

  with tempfile.TemporaryDirectory() as tmp:
    np.savez(os.path.join(tmp, "in.npz"), **data)
    cmd = [sys.executable, os.path.abspath(__file__), "--hf-worker", os.path.join(tmp, "in.npz"),
           "--hf-out", os.path.join(tmp, "out.npz"), "--presets", preset,
           "--batches", ",".join(map(str, args.batches)), "--prompt-len", str(p),
           "--new-tokens", str(t), "--vocab", str(args.vocab), "--threads", str(args.threads)
           ] + ([] if args.hf_single_thread else ["--no-hf-single-thread"])
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as hf:
      if hf.stdout.readline().strip() != "ready":
        raise RuntimeError("the transformers worker did not start (see its error above)")
      theirs = dict(np.load(os.path.join(tmp, "out.npz")))
      ours_s = {b: [] for b in args.batches}
      hf_s = {(b, k): [] for b in args.batches for k in args.hf_threads}
      for _ in range(args.runs):
        for b in args.batches:
          ours_s[b].append(timed(ours_call[b])[0])
          for k in args.hf_threads:
            time.sleep(PAUSE_S)
            hf.stdin.write(json.dumps({"batch": b, "threads": k}) + "\n")
            hf.stdin.flush()
            hf_s[b, k].append(float(hf.stdout.readline()))
          time.sleep(PAUSE_S)
      hf.stdin.close()
  real = data["check_mask"].astype(bool)
  err = float(np.max(np.abs(ours_logits[real] - theirs["check_logits"][real])))
  if err > args.logit_tol:
    raise RuntimeError(f"{preset}: logits differ from transformers by {err:.2e} > {args.logit_tol}")
  rows = []
  for b in args.batches:
    n, flops = b * t, generation_flops(cfg, b, p, t)
    ours_med = statistics.median(ours_s[b])
    best = [min(hf_s[b, k][r] for k in args.hf_threads) for r in range(args.runs)]
    paired = lambda hf_times: statistics.median(h / o for h, o in zip(hf_times, ours_s[b]))
    rows.append(dict(preset=preset, batch=b, ours=n / ours_med, gflops=flops / ours_med / 1e9,
                     hf={k: n / statistics.median(hf_s[b, k]) for k in args.hf_threads},
                     ratio_same=paired(hf_s[b, args.threads]), ratio=paired(best),
                     logit_err=err, same=float(np.mean(ours_tokens[b] == theirs[f"tokens_{b}"])),
                     call_gflop=flops / 1e9,
                     versions=(str(theirs["torch_version"]), str(theirs["transformers_version"]))))
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--presets", default="tiny,small")
  ap.add_argument("--batches", default="1,16,64")
  ap.add_argument("--prompt-len", type=int, default=32)
  ap.add_argument("--new-tokens", type=int, default=64)
  ap.add_argument("--vocab", type=int, default=512, help="vocab size (the presets' default)")
  ap.add_argument("--runs", type=int, default=7, help="timed rounds (medians reported)")
  ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
  ap.add_argument("--no-hf-single-thread", dest="hf_single_thread", action="store_false",
                  help="skip the extra transformers timing with 1 torch thread")
  ap.add_argument("--cpu-devices", type=int, default=1,
                  help="ours on a data-parallel mesh of this many XLA CPU devices")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--logit-tol", type=float, default=1e-3)
  ap.add_argument("--hf-worker", help=argparse.SUPPRESS)
  ap.add_argument("--hf-out", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  args.batches = [int(b) for b in args.batches.split(",")]
  args.hf_threads = [args.threads] + ([1] if args.hf_single_thread and args.threads != 1 else [])
  if args.hf_worker:
    return hf_worker(args)
  bad = [b for b in args.batches if b % args.cpu_devices]
  if bad:
    raise ValueError(f"--batches {bad} are not divisible by --cpu-devices {args.cpu_devices}")

  import jax
  jax.config.update("jax_num_cpu_devices", args.cpu_devices)
  print(f"greedy, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, vocab "
        f"{args.vocab}, {args.runs} interleaved rounds after warm-up; jax {jax.__version__} "
        f"(XLA CPU client on {os.cpu_count()} cores, {args.cpu_devices} device(s)); "
        f"load average {os.getloadavg()[0]:.1f}")
  hf_cols = args.hf_threads
  header = (f"{'preset':<7}{'batch':>6}{'ours tok/s':>12}"
            + "".join(f"{f'HF {k}thr tok/s':>16}" for k in hf_cols)
            + f"{f'vs {args.threads}thr':>9}{'vs best':>9}{'ours GFLOP/s':>14}"
            + f"{'max|dlogit|':>13}{'same tok':>10}")
  call_gflop = []
  for i, preset in enumerate(args.presets.split(",")):
    rows = bench_preset(preset, args)
    if i == 0:
      print(f"transformers {rows[0]['versions'][1]}, torch {rows[0]['versions'][0]} "
            f"({args.threads} intra-op threads; 1 inter-op)")
      print(header)
      print("-" * len(header))
    for r in rows:
      call_gflop.append(f"{r['preset']}/{r['batch']} {r['call_gflop']:.3g}")
      print(f"{r['preset']:<7}{r['batch']:>6}{r['ours']:>12.0f}"
            + "".join(f"{r['hf'][k]:>16.0f}" for k in hf_cols)
            + f"{r['ratio_same']:>8.1f}x{r['ratio']:>8.1f}x{r['gflops']:>14.1f}"
            + f"{r['logit_err']:>13.1e}{r['same']:>10.1%}", flush=True)
  print(f"vs {args.threads}thr = median over rounds of transformers time ({args.threads} torch "
        f"threads) / ours; vs best = the same with the faster transformers setting. Model GFLOP "
        f"per call: {', '.join(call_gflop)}. numpy float32 1024^3 matmul: "
        f"{matmul_gflops():.0f} GFLOP/s. Load average at the end {os.getloadavg()[0]:.1f}.")


if __name__ == "__main__":
  main()
