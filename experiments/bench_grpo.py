"""Our side of experiments/bench_stages.py's GRPO row: one iteration of the policy-gradient stage
exactly as a user's run makes it (stages/online.setup, stages/policy_gradient.build), from given
weights, on synthetic prompts.

The run is built in a temporary directory from files, as a user would:
  export/      the weights as an SFT export (train/export.save), its tokenizer a word-level
               tokenizer.json whose words "t<id>" map to exactly the bench's ids (the TRL worker
               builds the same one, trl_stage_worker.make_tokenizer)
  prompts.jsonl  `--grpo-prompts` prompt records of P - 1 words; the stage adds BOS (P ids)
and configs/grpo.py with: the prompts as the data (data.source = files), reward functions
(`trl_stage_worker.token_reward`, the TRL worker's reward function too), `--grpo-prompts-per-step`
prompts x `--grpo-group` samples per iteration, one optimizer step, the KL term β·k3 in the loss
against the export (the reference), the bench's AdamW. Sampling is untempered, with stop tokens
suppressed for the first `--grpo-new-tokens` tokens (generation.SamplingConfig.min_new_tokens;
TRL: generation_kwargs min_new_tokens), so every completion has exactly that many tokens on both
sides: the same work, whatever is sampled.

One call = `iteration(state, batch, rng)`: generation, scoring, rewards on the host, the update,
waited for. Scoring runs the reference and the old policy: with stop tokens suppressed the
sampler's log-probs are not the policy's, so the stage re-scores (rl/engine.rescore_policy), a
forward pass TRL does not run (with one update per rollout it takes the old log-probs as the
detached new ones).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import types

import jax
import numpy as np

from rlhf_jax import configlib
from rlhf_jax.models import Transformer
from rlhf_jax.stages import online, policy_gradient
from rlhf_jax.train import export, loop, state as state_lib

from experiments.bench_generation import flat_weights
from experiments.trl_stage_worker import SPECIALS, word, word_level

REWARD = "experiments.trl_stage_worker:token_reward"
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "grpo.py")


def write_tokenizer(directory: str, vocab: int) -> None:
  """tokenizer.json (the TRL worker's word-level tokenizer) and the special tokens' names."""
  os.makedirs(directory, exist_ok=True)
  word_level(vocab).save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(dict(zip(("pad_token", "bos_token", "eos_token", "unk_token"), SPECIALS)), f)


def setup(bench, cfg, a, tmp: str, optimizer: dict) -> types.SimpleNamespace:
  """The stage's iteration on our random-init weights (seed 0), as bench_stages.setup_ours
  returns a step: call() runs one (`a.warmup` already run), loss is the first one's, data holds
  the weights and the prompt ids for the TRL worker, rows x seq the rollout's shape, setup_s the
  time to build and compile."""
  start = time.perf_counter()
  p, t, g, n = a.prompt_len, a.grpo_new_tokens, a.grpo_group, a.grpo_prompts_per_step
  _, params = state_lib.init_params(lambda rngs: Transformer(cfg, rngs=rngs), bench.mesh,
                                    bench.rules, seed=0)
  tok_dir = os.path.join(tmp, "tokenizer")
  write_tokenizer(tok_dir, cfg.vocab_size)
  export.save(os.path.join(tmp, "init"), params, kind="lm", model_config=cfg,
              tokenizer={"kind": "hf", "path": tok_dir})
  rng = np.random.default_rng(0)
  prompt_ids = rng.integers(len(SPECIALS), cfg.vocab_size, (a.grpo_prompts, p - 1))
  with open(os.path.join(tmp, "prompts.jsonl"), "w") as f:
    for row in prompt_ids:
      f.write(json.dumps({"prompt": " ".join(word(int(i)) for i in row)}) + "\n")
  overrides = [
      ("init.from_workdir", os.path.join(tmp, "init")), ("data.source", "files"),
      ("data.path", os.path.join(tmp, "prompts.jsonl")),
      ("data.data_dir", os.path.join(tmp, "data")),
      ("data.prompt_len", str(p)), ("data.completion_len", str(t)),
      ("reward.source", "functions"), ("reward.functions", REWARD),
      ("rl.prompts_per_step", str(n)), ("pg.group_size", str(g)), ("pg.minibatches", "1"),
      ("pg.epochs", "1"), ("kl.coef", str(a.grpo_beta)), ("kl.placement", "loss"),
      ("eval.pass_n", "0"), ("model.dtype", a.dtype),
      *((f"optimizer.{k}", str(v)) for k, v in optimizer.items())]
  config = configlib.get(CONFIG, overrides)
  workdir = os.path.join(tmp, "run")
  s = online.setup(config, workdir)
  s.sampling = dataclasses.replace(s.sampling, min_new_tokens=t)
  built = policy_gradient.build(config, s)
  batch = loop.to_global(next(built.stream), s.mesh)
  if batch["prompt_tokens"].shape != (n, p):
    raise RuntimeError(f"grpo: prompt batch {batch['prompt_tokens'].shape}, want {(n, p)}")
  box, calls = [built.state], [0]

  def call():
    calls[0] += 1
    box[0], metrics = built.iteration(box[0], batch, jax.random.key(calls[0]))
    if metrics["completion_length"] != t:
      raise RuntimeError(f"grpo: completions of {metrics['completion_length']} tokens, want {t}")
    return box[0], metrics

  _, metrics = call()  # compiles every piece
  setup_s = time.perf_counter() - start
  for _ in range(a.warmup - 1):
    call()
  data = flat_weights(params, "w:")
  data["b:prompt_tokens"] = np.asarray(jax.device_get(batch["prompt_tokens"]))
  return types.SimpleNamespace(call=call, loss=float(metrics["loss"]), data=data, batch=None,
                               rows=n * g, seq=p + t, tokens=n * g * (p + t),
                               flops=built.iteration.last_flops, setup_s=setup_s)
