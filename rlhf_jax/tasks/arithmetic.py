"""Arithmetic with a verifier: prompts "a+b=", completions the decimal sum.

A toy world for SFT and for RL with verifiable rewards (Lambert et al. 2024, Tülu 3 RLVR;
DeepSeek-AI 2025, R1). Operand pairs are split into disjoint train/test sets by a seeded
permutation, so test accuracy measures generalisation, not recall.

  verify(prompt, completion) = 1  if completion (stripped of surrounding spaces) is the decimal
                                  integer equal to a + b,
                               0  otherwise (malformed text included; never an error).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterator

import numpy as np

_PROMPT_RE = re.compile(r"^(\d+)\+(\d+)=$")
_ANSWER_RE = re.compile(r"^-?\d+$")


@dataclasses.dataclass(frozen=True)
class ArithmeticTask:
  """All pairs (a, b) with 0 <= a, b <= max_operand, split into train/test."""
  max_operand: int = 99
  test_fraction: float = 0.1
  seed: int = 0

  # Every character of prompts and answers, for `tokenizer.kind = "char"` (one token per digit:
  # the model sees the digits it adds, unlike a learned subword vocabulary of whole numbers).
  alphabet: str = dataclasses.field(default="0123456789+=-", init=False)

  def __post_init__(self):
    if self.max_operand < 1:
      raise ValueError(f"ArithmeticTask.max_operand must be >= 1, got {self.max_operand}")
    if not 0.0 < self.test_fraction < 1.0:
      raise ValueError(f"ArithmeticTask.test_fraction must be in (0, 1), got {self.test_fraction}")

  def _pairs(self, split: str) -> np.ndarray:
    n = self.max_operand + 1
    pairs = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
    order = np.random.default_rng(self.seed).permutation(len(pairs))
    n_test = max(1, int(round(self.test_fraction * len(pairs))))
    if split == "test":
      return pairs[order[:n_test]]
    if split == "train":
      return pairs[order[n_test:]]
    raise ValueError(f"unknown split {split!r}; valid splits: ['train', 'test']")

  def sft_records(self, split: str) -> Iterator[dict]:
    """{'prompt': 'a+b=', 'completion': str(a+b), 'answer': a+b}."""
    for a, b in self._pairs(split):
      yield {"prompt": f"{a}+{b}=", "completion": str(a + b), "answer": int(a + b)}

  def prompt_records(self, split: str) -> Iterator[dict]:
    """{'prompt': 'a+b=', 'answer': a+b}, for RL against the verifier."""
    for a, b in self._pairs(split):
      yield {"prompt": f"{a}+{b}=", "answer": int(a + b)}

  def gold_reward(self, prompt: str, completion: str) -> float:
    """The verifier is this world's gold reward."""
    return verify(prompt, completion)

  def preference_records(self, split: str) -> Iterator[dict]:
    """Correct sum (chosen) against a near miss (rejected), gold = verifier score."""
    rng = np.random.default_rng(self.seed + 1)
    for a, b in self._pairs(split):
      offset = int(rng.choice([-10, -2, -1, 1, 2, 10]))
      wrong = max(0, a + b + offset)
      wrong = wrong if wrong != a + b else a + b + 1
      yield {"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(wrong),
             "chosen_gold": 1.0, "rejected_gold": 0.0}

  def texts(self) -> Iterator[str]:
    """All text of the task, for training a tokenizer."""
    for split in ("train", "test"):
      for r in self.sft_records(split):
        yield r["prompt"] + r["completion"]


def verify(prompt: str, completion: str) -> float:
  """1.0 when `completion` is exactly the sum asked by `prompt` (spaces stripped), else 0.0."""
  match = _PROMPT_RE.match(prompt.strip())
  if match is None:
    raise ValueError(f"arithmetic.verify: prompt {prompt!r} is not of the form 'a+b='")
  text = completion.strip()
  if not _ANSWER_RE.match(text):
    return 0.0
  return float(int(text) == int(match.group(1)) + int(match.group(2)))
