"""Reward functions for online RL, chosen by `config.reward.source`:

  gold      the task's closed-form reward (`task.gold_reward(prompt, completion)`): the enumerable
            world's gold, the arithmetic verifier (1 if the completion is the right sum, else 0)
  learned   a reward model (or ensemble) exported by the reward_model stage, scored on device,
            normalised by its reference statistics and combined across members
            (rewards/learned.py: mean | worst_case | mean_minus_var)

Host-side rewards decode completions to text once per rollout; the gold reward is also
reported beside a learned one (`gold_reward` metric) wherever the task defines it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

SOURCES = ("gold", "learned")


def decode_completions(tok, tokens_BxT: np.ndarray, mask_BxT: np.ndarray) -> list[str]:
  return [tok.decode([int(t) for t, m in zip(row, mrow) if m]) for row, mrow in
          zip(np.asarray(tokens_BxT), np.asarray(mask_BxT))]


def gold_scores(task, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
  if not hasattr(task, "gold_reward"):
    raise ValueError(f"task {type(task).__name__} defines no gold_reward; use reward.source="
                     "'learned'")
  return np.asarray([task.gold_reward(p, c) for p, c in zip(prompts, completions)], np.float32)


def make_host_reward(task) -> Callable[[Sequence[str], Sequence[str]], np.ndarray]:
  return lambda prompts, completions: gold_scores(task, prompts, completions)
