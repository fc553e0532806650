"""Samples: what the policy says at step N. At each evaluation of a stage that trains a policy,
a few fixed held-out prompts are answered greedily by the current (plain) policy and written
with their rewards to `<workdir>/samples.jsonl` (one JSON object per sample: step, prompt,
completion, and each reward the stage can compute) and to TensorBoard as text.

The prompts are the first `train.eval_samples` (default 4; 0 = off) of the held-out split, the
same at every evaluation, so a reader follows one prompt through training. Greedy decoding
makes the text a function of the weights alone. Rewards: the task's gold reward where the task
defines one (the enumerable world, the arithmetic verifier), and whatever the stage adds
(`rewards_fn`: online RL adds the reward it trains on).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import numpy as np

from rlhf_jax.generation import sampling as sampling_lib, sharded
from rlhf_jax.parallel import sharding as sharding_lib
from rlhf_jax.rewards import functions as reward_fns


def count(config) -> int:
  """How many held-out prompts each evaluation answers (train.eval_samples; 0 = none)."""
  return int(config.train.get("eval_samples", 0))


class Sampler:
  """Greedy answers of the policy to fixed prompts, as rows for samples.jsonl.

  prompt_tokens_NxP / prompt_mask_NxP: left-padded prompts (N = eval_samples); they are padded
  with copies of the first prompt to a multiple of the mesh's data-parallel size and the copies
  dropped from the output. rewards_fn(prompts, completions, scores) -> {name: [N]} adds
  rewards; scores_fn(params, prompt_tokens_BxP, prompt_mask_BxP, generation) -> [B] (on device,
  e.g. a learned reward model's score of the completions) is fetched for it as `scores`."""

  def __init__(self, graphdef, *, mesh, param_shardings, tokenizer, prompt_tokens_NxP,
               prompt_mask_NxP, prompts: Sequence[str], max_new_tokens: int,
               rewards_fn: Optional[Callable] = None, scores_fn: Optional[Callable] = None):
    self.n = len(prompts)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    pad = (-self.n) % shards
    take = np.concatenate([np.arange(self.n), np.zeros(pad, np.int64)])
    self.tokens = np.asarray(prompt_tokens_NxP)[take]
    self.mask = np.asarray(prompt_mask_NxP)[take]
    self.prompts, self.tok = list(prompts), tokenizer
    self.rewards_fn, self.scores_fn = rewards_fn, scores_fn
    config = sampling_lib.SamplingConfig(max_new_tokens=max_new_tokens, greedy=True,
                                         eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    self.generate = sharded.make_generate_fn(graphdef, config, mesh=mesh,
                                             param_shardings=param_shardings, validate=False)
    self.mesh = mesh

  def __call__(self, params) -> list[dict]:
    to_device = lambda x: sharding_lib.to_device(x, self.mesh)  # same prompts on every host
    prompt_tokens, prompt_mask = to_device(self.tokens), to_device(self.mask)
    out = self.generate(params, prompt_tokens, prompt_mask, jax.random.key(0))
    tokens, mask = (sharding_lib.host_array(x)[:self.n] for x in (out.tokens_BxT, out.mask_BxT))
    completions = reward_fns.decode_completions(self.tok, tokens, mask)
    scores = (None if self.scores_fn is None else
              sharding_lib.host_array(self.scores_fn(params, prompt_tokens, prompt_mask,
                                                     out))[:self.n])
    rewards = ({} if self.rewards_fn is None
               else self.rewards_fn(self.prompts, completions, scores))
    return [{"prompt": p, "completion": c,
             **{k: float(np.asarray(v)[i]) for k, v in rewards.items()}}
            for i, (p, c) in enumerate(zip(self.prompts, completions))]


def from_rows(graphdef, tokens_NxS, mask_NxS, *, prompt_len: int, n: int, mesh,
              param_shardings, tokenizer, max_new_tokens: int, task=None) -> Optional[Sampler]:
  """A Sampler of the first `n` held-out rows' prompts ([prompt | completion] rows, prompts
  left-padded to prompt_len); their text is the decoded prompt tokens. With a task that has a
  gold reward, each sample carries its gold_reward. None when n = 0 or there are no rows."""
  n = min(n, len(tokens_NxS))
  if n <= 0:
    return None
  tokens = np.asarray(tokens_NxS)[:n, :prompt_len]
  mask = np.asarray(mask_NxS)[:n, :prompt_len]
  prompts = reward_fns.decode_completions(tokenizer, tokens, mask)
  gold = None
  if task is not None and hasattr(task, "gold_reward"):
    gold = lambda p, c, _: {"gold_reward": reward_fns.gold_scores(task, p, c)}
  return Sampler(graphdef, mesh=mesh, param_shardings=param_shardings, tokenizer=tokenizer,
                 prompt_tokens_NxP=tokens, prompt_mask_NxP=mask, prompts=prompts,
                 max_new_tokens=max_new_tokens, rewards_fn=gold)
