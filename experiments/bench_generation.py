"""Generation throughput: rlhf_jax's jitted KV-cache loop vs Hugging Face transformers `generate`.

Both sides run the same Llama architecture with the SAME weights (ours are copied into a
transformers LlamaForCausalLM, and logits are checked to match before timing), on the same CPU
threads, greedy, with the same prompt length and number of new tokens. Every row generates exactly
`--new-tokens` tokens on both sides (min_new_tokens = max_new_tokens suppresses EOS identically in
both), so tokens/s = batch * new_tokens / median wall time of `--runs` timed runs after a warm-up
run (which includes our compilation). The greedy completions of the two are compared as well.

Thread counts: torch gets `--threads` intra-op threads (default: the cores JAX's CPU client uses,
os.cpu_count()) and 1 inter-op thread; XLA's CPU client uses all cores of the machine.

Needs the benchmark-only deps: `pip install -r requirements-bench.txt`.

  python experiments/bench_generation.py                       # tiny + small, batch 1/16/64
  python experiments/bench_generation.py --presets tiny --batches 16 --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from rlhf_jax.generation import SamplingConfig, make_generate_fn  # noqa: E402
from rlhf_jax.models import Transformer, get_model_config  # noqa: E402


def build_ours(preset: str, vocab: int, seed: int):
  cfg = get_model_config(preset, vocab_size=vocab)
  model = Transformer(cfg, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model, nnx.Param)
  return cfg, graphdef, nnx.to_pure_dict(state)


def build_hf(cfg, params):
  """A transformers LlamaForCausalLM with our shapes and our weights (float32, eval mode)."""
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
  t = lambda x: torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32)))
  sd = {"model.embed_tokens.weight": t(params["embed"]), "model.norm.weight": t(params["final_norm"]["scale"]),
        "lm_head.weight": t(np.asarray(params["lm_head"]).T)}
  for i in range(cfg.n_layers):
    lp, pre = params["layers"][i], f"model.layers.{i}."
    attn, mlp = lp["attn"], lp["mlp"]
    sd[pre + "self_attn.q_proj.weight"] = t(np.asarray(attn["wq"]).reshape(d, n * h).T)
    sd[pre + "self_attn.k_proj.weight"] = t(np.asarray(attn["wk"]).reshape(d, k * h).T)
    sd[pre + "self_attn.v_proj.weight"] = t(np.asarray(attn["wv"]).reshape(d, k * h).T)
    sd[pre + "self_attn.o_proj.weight"] = t(np.asarray(attn["wo"]).reshape(n * h, d).T)
    sd[pre + "mlp.gate_proj.weight"] = t(np.asarray(mlp["w_gate"]).T)
    sd[pre + "mlp.up_proj.weight"] = t(np.asarray(mlp["w_up"]).T)
    sd[pre + "mlp.down_proj.weight"] = t(np.asarray(mlp["w_down"]).T)
    sd[pre + "input_layernorm.weight"] = t(lp["attn_norm"]["scale"])
    sd[pre + "post_attention_layernorm.weight"] = t(lp["mlp_norm"]["scale"])
  missing, unexpected = hf.load_state_dict(sd, strict=False)
  missing = [m for m in missing if "rotary" not in m]
  if missing or unexpected:
    raise RuntimeError(f"weight copy mismatch: missing={missing} unexpected={unexpected}")
  return hf


def check_logits(graphdef, params, hf, tokens_BxS, mask_BxS) -> float:
  """Max |logit difference| between our forward and transformers' on a left-padded batch."""
  import torch
  ours = np.asarray(nnx.merge(graphdef, params)(jnp.asarray(tokens_BxS), mask_BxS=jnp.asarray(mask_BxS)))
  pos = np.maximum(np.cumsum(mask_BxS, axis=1) - 1, 0)
  with torch.inference_mode():
    theirs = hf(input_ids=torch.from_numpy(tokens_BxS).long(),
                attention_mask=torch.from_numpy(mask_BxS).long(),
                position_ids=torch.from_numpy(pos).long()).logits.numpy()
  real = mask_BxS.astype(bool)
  return float(np.max(np.abs(ours[real] - theirs[real])))


def median_time(fn, runs: int) -> tuple[float, object]:
  out = fn()  # warm-up (includes compilation for ours)
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), out


def bench_one(preset, batch, args, hf_threads):
  import torch

  cfg, graphdef, params = build_ours(preset, args.vocab, args.seed)
  hf = build_hf(cfg, params)
  rng = np.random.default_rng(args.seed)
  p, t = args.prompt_len, args.new_tokens
  prompts_BxP = rng.integers(3, cfg.vocab_size, (batch, p)).astype(np.int32)
  mask_BxP = np.ones((batch, p), np.int32)

  check_tokens = rng.integers(3, cfg.vocab_size, (4, p)).astype(np.int32)
  check_mask = np.ones((4, p), np.int32)
  check_mask[1, : p // 2] = 0
  err = check_logits(graphdef, params, hf, check_tokens, check_mask)
  if err > args.logit_tol:
    raise RuntimeError(f"{preset}: logits differ from transformers by {err:.2e} > {args.logit_tol}")

  sc = SamplingConfig(max_new_tokens=t, min_new_tokens=t, greedy=True)
  gen = make_generate_fn(graphdef, sc, validate=False)
  key = jax.random.key(0)
  toks_j, mask_j = jnp.asarray(prompts_BxP), jnp.asarray(mask_BxP)
  ours_s, ours_out = median_time(
      lambda: jax.block_until_ready(gen(params, toks_j, mask_j, key)), args.runs)

  ids, am = torch.from_numpy(prompts_BxP).long(), torch.from_numpy(mask_BxP).long()

  def hf_generate():
    with torch.inference_mode():
      return hf.generate(input_ids=ids, attention_mask=am, max_new_tokens=t, min_new_tokens=t,
                         do_sample=False, eos_token_id=2, pad_token_id=0)

  hf_s, hf_out = median_time(hf_generate, args.runs)
  same = float(np.mean(np.asarray(ours_out.tokens_BxT) == hf_out[:, p:].numpy()))
  n = batch * t
  return dict(preset=preset, batch=batch, ours=n / ours_s, hf=n / hf_s, ratio=hf_s / ours_s,
              logit_err=err, same=same)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--presets", default="tiny,small")
  ap.add_argument("--batches", default="1,16,64")
  ap.add_argument("--prompt-len", type=int, default=32)
  ap.add_argument("--new-tokens", type=int, default=64)
  ap.add_argument("--vocab", type=int, default=512, help="vocab size (the presets' default)")
  ap.add_argument("--runs", type=int, default=5, help="timed runs per setting (median reported)")
  ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--logit-tol", type=float, default=1e-3)
  args = ap.parse_args(argv)

  import torch
  import transformers
  torch.set_num_threads(args.threads)
  torch.set_num_interop_threads(1)
  transformers.logging.set_verbosity_error()
  print(f"jax {jax.__version__} ({jax.devices()[0].platform}, {os.cpu_count()} cores) | torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads) | transformers {transformers.__version__}")
  print(f"greedy, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, vocab {args.vocab}, "
        f"median of {args.runs} runs after warm-up")
  header = f"{'preset':<7}{'batch':>6}{'ours tok/s':>12}{'HF tok/s':>11}{'ratio':>8}{'max|dlogit|':>13}{'same tok':>10}"
  print(header)
  print("-" * len(header))
  for preset in args.presets.split(","):
    for batch in (int(b) for b in args.batches.split(",")):
      r = bench_one(preset, batch, args, args.threads)
      print(f"{r['preset']:<7}{r['batch']:>6}{r['ours']:>12.0f}{r['hf']:>11.0f}{r['ratio']:>7.1f}x"
            f"{r['logit_err']:>13.1e}{r['same']:>10.1%}", flush=True)


if __name__ == "__main__":
  main()
