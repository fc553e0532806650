"""Generation throughput: rlhf_jax's jitted KV-cache loop vs Hugging Face transformers `generate`.

Both sides run the same Llama architecture with the SAME weights (ours are copied into a
transformers LlamaForCausalLM, and logits are checked to match before timing), greedy, with the
same prompts, prompt length and number of new tokens. Every row generates exactly `--new-tokens`
tokens on both sides (min_new_tokens = max_new_tokens suppresses EOS identically in both), so
tokens/s = batch * new_tokens / median wall time of `--runs` timed runs after one warm-up run
(which includes our compilation). The greedy completions of the two are compared as well.

transformers runs in a child process that does only that: torch's OpenMP worker threads keep
spinning for a while after each call and would steal a core from XLA in the same process.

Threads: XLA's CPU client uses all cores (os.cpu_count()); torch gets `--threads` intra-op threads
(default the same count) and 1 inter-op thread. On a machine shared with other busy processes
torch's OpenMP threads can stall one another badly, so transformers is also timed with 1 thread
(`--no-hf-single-thread` skips it); "vs best" compares with the faster of the two.

Needs the benchmark-only deps: `pip install -r requirements-bench.txt`.

  python experiments/bench_generation.py                       # tiny + small, batch 1/16/64
  python experiments/bench_generation.py --presets tiny --batches 16 --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from rlhf_jax.models import get_model_config  # noqa: E402  (no JAX computation at import)


def median_time(fn, runs: int):
  """(median wall seconds over `runs` calls after one warm-up call, last output)."""
  out = fn()
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), out


# ---------------------------------------------------------------- transformers (child process)

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
  """Child process: loads weights + prompts from args.hf_worker (npz), writes logits, greedy
  completions and median times to args.hf_out (npz)."""
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
  for batch in args.batches:
    ids = torch.from_numpy(data[f"prompts_{batch}"]).long()

    def run():
      with torch.inference_mode():
        return hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=t,
                           min_new_tokens=t, do_sample=False, eos_token_id=2, pad_token_id=0)

    for threads in args.hf_threads:
      torch.set_num_threads(threads)
      secs, generated = median_time(run, args.runs)
      out[f"secs_{batch}_{threads}"] = np.array(secs)
    out[f"tokens_{batch}"] = generated[:, ids.shape[1]:].numpy()
  np.savez(args.hf_out, **out)


# ---------------------------------------------------------------- ours (parent process)

def bench_preset(preset, args):
  """Rows of results for one preset: every batch size, ours vs transformers."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from rlhf_jax.generation import SamplingConfig, make_generate_fn
  from rlhf_jax.models import Transformer

  cfg = get_model_config(preset, vocab_size=args.vocab)
  graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(args.seed)), nnx.Param)
  params = nnx.to_pure_dict(state)
  rng = np.random.default_rng(args.seed)
  p, t = args.prompt_len, args.new_tokens
  data = {}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:  # "w:layers/0/attn/wq" ...
    name = "/".join(str(getattr(e, "key", getattr(e, "idx", e))) for e in path)
    data["w:" + name] = np.asarray(x)
  data["check_tokens"] = rng.integers(3, cfg.vocab_size, (4, p)).astype(np.int32)
  data["check_mask"] = np.ones((4, p), np.int32)
  data["check_mask"][1, : p // 2] = 0  # a left-padded row too
  for batch in args.batches:
    data[f"prompts_{batch}"] = rng.integers(3, cfg.vocab_size, (batch, p)).astype(np.int32)

  gen = make_generate_fn(graphdef, SamplingConfig(max_new_tokens=t, min_new_tokens=t, greedy=True),
                         validate=False)
  ours, key = {}, jax.random.key(0)
  for batch in args.batches:
    prompts = jnp.asarray(data[f"prompts_{batch}"])
    mask = jnp.ones_like(prompts)
    ours[batch] = median_time(lambda: jax.block_until_ready(gen(params, prompts, mask, key)),
                              args.runs)
  ours_logits = np.asarray(nnx.merge(graphdef, params)(
      jnp.asarray(data["check_tokens"]), mask_BxS=jnp.asarray(data["check_mask"])))

  with tempfile.TemporaryDirectory() as tmp:
    np.savez(os.path.join(tmp, "in.npz"), **data)
    cmd = [sys.executable, os.path.abspath(__file__), "--hf-worker", os.path.join(tmp, "in.npz"),
           "--hf-out", os.path.join(tmp, "out.npz"), "--presets", preset,
           "--batches", ",".join(map(str, args.batches)), "--prompt-len", str(p),
           "--new-tokens", str(t), "--vocab", str(args.vocab), "--runs", str(args.runs),
           "--threads", str(args.threads)] + ([] if args.hf_single_thread else
                                              ["--no-hf-single-thread"])
    subprocess.run(cmd, check=True)
    theirs = dict(np.load(os.path.join(tmp, "out.npz")))
  real = data["check_mask"].astype(bool)
  err = float(np.max(np.abs(ours_logits[real] - theirs["check_logits"][real])))
  if err > args.logit_tol:
    raise RuntimeError(f"{preset}: logits differ from transformers by {err:.2e} > {args.logit_tol}")
  rows = []
  for batch in args.batches:
    n = batch * t
    secs, out = ours[batch]
    hf_s = {k: float(theirs[f"secs_{batch}_{k}"]) for k in args.hf_threads}
    same = float(np.mean(np.asarray(out.tokens_BxT) == theirs[f"tokens_{batch}"]))
    rows.append(dict(preset=preset, batch=batch, ours=n / secs,
                     hf={k: n / v for k, v in hf_s.items()},
                     ratio_same=hf_s[args.threads] / secs, ratio=min(hf_s.values()) / secs,
                     logit_err=err, same=same,
                     versions=(str(theirs["torch_version"]), str(theirs["transformers_version"]))))
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--presets", default="tiny,small")
  ap.add_argument("--batches", default="1,16,64")
  ap.add_argument("--prompt-len", type=int, default=32)
  ap.add_argument("--new-tokens", type=int, default=64)
  ap.add_argument("--vocab", type=int, default=512, help="vocab size (the presets' default)")
  ap.add_argument("--runs", type=int, default=5, help="timed runs per setting (median reported)")
  ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
  ap.add_argument("--no-hf-single-thread", dest="hf_single_thread", action="store_false",
                  help="skip the extra transformers timing with 1 torch thread")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--logit-tol", type=float, default=1e-3)
  ap.add_argument("--hf-worker", help=argparse.SUPPRESS)
  ap.add_argument("--hf-out", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  args.batches = [int(b) for b in args.batches.split(",")]
  args.hf_threads = [args.threads] + ([1] if args.hf_single_thread and args.threads != 1 else [])
  if args.hf_worker:
    return hf_worker(args)

  import jax
  print(f"greedy, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, vocab "
        f"{args.vocab}, median of {args.runs} runs after warm-up; jax {jax.__version__} "
        f"(XLA CPU client on {os.cpu_count()} cores); load average {os.getloadavg()[0]:.1f}")
  hf_cols = args.hf_threads
  header = (f"{'preset':<7}{'batch':>6}{'ours tok/s':>12}"
            + "".join(f"{f'HF {k}thr tok/s':>16}" for k in hf_cols)
            + f"{f'vs {args.threads}thr':>9}{'vs best':>9}{'max|dlogit|':>13}{'same tok':>10}")
  for i, preset in enumerate(args.presets.split(",")):
    rows = bench_preset(preset, args)
    if i == 0:
      print(f"transformers {rows[0]['versions'][1]}, torch {rows[0]['versions'][0]} "
            f"({args.threads} intra-op threads; 1 inter-op)")
      print(header)
      print("-" * len(header))
    for r in rows:
      print(f"{r['preset']:<7}{r['batch']:>6}{r['ours']:>12.0f}"
            + "".join(f"{r['hf'][k]:>16.0f}" for k in hf_cols)
            + f"{r['ratio_same']:>8.1f}x{r['ratio']:>8.1f}x{r['logit_err']:>13.1e}"
            + f"{r['same']:>10.1%}", flush=True)
  print(f"vs {args.threads}thr = transformers time with {args.threads} torch threads / ours; "
        f"vs best = fastest transformers time / ours. Load average at the end "
        f"{os.getloadavg()[0]:.1f}.")


if __name__ == "__main__":
  main()
