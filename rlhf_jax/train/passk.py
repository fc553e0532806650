"""pass@k and maj@k of n sampled completions per prompt, for verifiable tasks.

pass@k (Chen et al. 2021, "Evaluating large language models trained on code"): the probability
that at least one of k completions drawn without replacement from the n samples is correct,
with c of the n correct,

    pass@k = 1 - C(n - c, k) / C(n, k),

an unbiased estimate of the k-sample success rate (n >= k).

maj@k (self-consistency, Wang et al. 2023): the probability that the most common answer among k
completions drawn from the n samples is correct, averaged exactly over all C(n, k) subsets (the
same unbiased construction); a tie between answers counts the fraction of tied answers that are
correct. Answers are compared as given (normalise them before, e.g. strip whitespace).
"""

from __future__ import annotations

import collections
import itertools
import math
from typing import Sequence

# maj@k enumerates subsets; beyond this many it is an error rather than a slow evaluation.
MAX_SUBSETS = 20_000


def pass_at_k(n: int, c: int, k: int) -> float:
  """1 - C(n - c, k) / C(n, k): with c of n samples correct (module docstring)."""
  if not 1 <= k <= n or not 0 <= c <= n:
    raise ValueError(f"pass_at_k: need 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def maj_at_k(answers: Sequence[str], correct: Sequence[bool], k: int) -> float:
  """Expected correctness of the majority answer of k of the n samples (module docstring).
  `correct[i]`: whether answers[i] is right (equal answers must agree)."""
  n = len(answers)
  if len(correct) != n or not 1 <= k <= n:
    raise ValueError(f"maj_at_k: need len(correct) == len(answers) = n and 1 <= k <= n, got "
                     f"n={n}, len(correct)={len(correct)}, k={k}")
  if math.comb(n, k) > MAX_SUBSETS:
    raise ValueError(f"maj_at_k: C({n}, {k}) subsets exceed {MAX_SUBSETS}; lower n or k")
  right = {}
  for a, ok in zip(answers, correct):
    if right.setdefault(a, bool(ok)) != bool(ok):
      raise ValueError(f"maj_at_k: answer {a!r} is marked both correct and wrong")
  total = 0.0
  for subset in itertools.combinations(range(n), k):
    counts = collections.Counter(answers[i] for i in subset)
    top = max(counts.values())
    tied = [a for a, m in counts.items() if m == top]
    total += sum(right[a] for a in tied) / len(tied)
  return total / math.comb(n, k)
