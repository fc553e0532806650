"""What an online-RL run works with, built by the stage (stages/online.py `setup`): the task, the
tokenizer and layout, the prompts of each split (arrays for generation, records and their other
columns for the rewards), the SFT export (the policy's start and the frozen reference), the
sampler's settings and the reward (a learned model, reward functions, the task's gold reward)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rlhf_jax.data import pipeline
from rlhf_jax.generation import SamplingConfig
from rlhf_jax.rewards import functions as reward_fns
from rlhf_jax.train import export


@dataclasses.dataclass
class Setup:
  mesh: Any
  rules: Any
  task: Any
  tok: Any
  tok_spec: dict
  layout: pipeline.Layout
  sft: export.Exported
  prompts: dict            # split -> list of prompts (texts, or message lists)
  prompt_arrays: dict      # split -> prompt_tokens / prompt_mask / prompt_index
  sampling: SamplingConfig
  rm: Any                  # rl/rollout.RewardModel or None
  rm_graphdef: Any
  columns: dict = dataclasses.field(default_factory=dict)  # split -> {column: [per prompt]}
  functions: Any = None    # rewards/registry.RewardFunctions or None
  rm_config: Any = None    # the learned reward model's ModelConfig (its FLOPs), or None

  def rewards(self, config, split: str, index, completions: list[str], rm_scores=None):
    """(reward_B, gold_B or None, {function name: raw score_B}) of decoded completions of the
    prompts `index` of `split` (reward.source: gold | learned (+ functions) | functions)."""
    prompts = [self.prompts[split][i] for i in index]
    columns = {k: [v[i] for i in index] for k, v in self.columns[split].items()}
    gold, total, parts = reward_fns.host_rewards(config.reward.source, self.task, self.functions,
                                                 prompts, completions, columns)
    source = config.reward.source
    if source == "gold":
      reward = gold
    elif source == "functions":
      reward = total
    else:
      reward = np.asarray(rm_scores, np.float32) + (0.0 if total is None else total)
    return reward, gold, parts

  def needs_text(self) -> bool:
    """Whether rewards need the completions decoded (gold or reward functions)."""
    return hasattr(self.task, "gold_reward") or self.functions is not None
