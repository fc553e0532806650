"""Reward sources for online RL and best-of-n, chosen by `config.reward.source`:

  gold       the task's closed-form reward (`task.gold_reward(prompt, completion)`): the
             enumerable world's gold, the arithmetic verifier (1 if the completion is the right
             sum, else 0)
  learned    a reward model (or ensemble) exported by the reward_model stage, scored on device,
             normalised by its reference statistics and combined across members
             (rewards/learned.py: mean | worst_case | mean_minus_var); plus the weighted
             reward.functions when any are named
  functions  the weighted sum of reward.functions (rewards/registry.py): built-in verifiers
             (math answers, formats, length) and users' `module:function`s

Host-side rewards decode completions to text once per rollout; the gold reward is also
reported beside a learned one (`gold_reward` metric) wherever the task defines it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SOURCES = ("gold", "learned", "functions")


def decode_completions(tok, tokens_BxT: np.ndarray, mask_BxT: np.ndarray) -> list[str]:
  return [tok.decode([int(t) for t, m in zip(row, mrow) if m]) for row, mrow in
          zip(np.asarray(tokens_BxT), np.asarray(mask_BxT))]


def gold_scores(task, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
  if not hasattr(task, "gold_reward"):
    raise ValueError(f"task {type(task).__name__} defines no gold_reward; use reward.source="
                     "'learned'")
  return np.asarray([task.gold_reward(p, c) for p, c in zip(prompts, completions)], np.float32)


def host_rewards(source: str, task, functions, prompts, completions, columns
                 ) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, np.ndarray]]:
  """(gold_B or None, function total_B or None, per-function raw scores) of decoded completions:
  the task's gold reward where it has one, and the configured reward functions."""
  gold = gold_scores(task, prompts, completions) if hasattr(task, "gold_reward") else None
  if source == "gold" and gold is None:
    gold_scores(task, prompts, completions)  # raises: the data has no gold reward
  total, parts = (None, {}) if functions is None else functions(prompts, completions, columns)
  return gold, total, parts
