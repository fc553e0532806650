"""The enumerable preference world: a toy task small enough to enumerate every completion.

Tokens. A k-letter alphabet (default "abcd") tokenized by `CharTokenizer` (pad 0, bos 1, eos 2,
letters 3..k+2). A prompt x is a string of `prompt_len` letters (k^prompt_len prompts, 64 by
default), split into train/test prompts by a seeded permutation.

Completions (the length convention). A completion y is a string of 0..L letters (L = `max_len`).
Generation stops at EOS or after L letters, and a completion of exactly L letters counts as
ended without an EOS token. As tokens: |y| < L → the letters then EOS (|y|+1 tokens); |y| = L →
the L letters, no EOS. So every completion fits in T = L tokens, generation must use
`max_new_tokens = L`, and a model's log-prob of y is the sum of its log-probs of these tokens
(mask = 1 on them). There are N = Σ_{l=0}^{L} k^l completions per prompt (5461 by default).

Reference policy π_ref(y | x). An explicit Markov chain started at the prompt's last letter
y₋₁ = x[-1]. With target letter τ(x) = x[0], successor σ(a) = the next letter of the alphabet
(cyclic), and stop probabilities e₀ (`first_stop`) at step 0 and e (`stop`) afterwards:

  M_x(a → b) ∝ exp(s·[b = σ(a)] + t·[b = τ(x)])            (s = successor_logit, t = target_logit)
  π_ref(y | x) = Π_{i<|y|} (1 − e_i) M_x(y_{i−1} → y_i) · (e_{|y|} if |y| < L else 1)

so samples follow the alphabet cycle and under-use the target letter (t < 0).

Gold reward. With c(x, y) = number of τ(x) in y, n₊ / n₋ = number of transitions y_{i−1} → y_i
(i = 0..|y|−1, y₋₁ = x[-1]) that do / do not follow σ, budget B, penalty κ and fluency weight α:

  gold(x, y) = c − κ·max(c − B, 0)² + α·(n₊ − n₋)

The target term pays +1 per target letter up to the budget; the (B+m)-th one is worth
1 − κ(2m − 1): with κ = 0.75 that is +0.25 (diminishing) then −1.25, −2.75, … (negative returns).
The fluency term prefers what the reference prefers (its favoured successor transitions). Under
the natural cycle τ recurs only every k letters, so more than B = 2 targets in L = 6 letters needs
off-cycle transitions, which cost fluency too. Defaults give (see tests/tasks/test_enumerable.py):
P_ref(c > B) = 0.59% averaged over prompts (at most 1.2%), E_ref[c] = 0.51, best in-budget gold
3.0-3.5 per prompt, best gold of the all-target completion (c = L) −7.0. Reference pairs thus
only show the region c ≤ B where more targets is better. A Bradley-Terry proxy linear in
(c, n₊ − n₋, |y|) fitted on 4096 BT-labelled train pairs gets weights ≈ (0.99, 0.21, 0.004) and
extrapolates "more is better": on test prompts the gold of π*_β(proxy) goes 0.70 (β=10, KL 0.004)
→ 2.66 (β=0.3, KL 3.2) → −7.2 (β=0.02, KL 18), and best-of-n under the proxy peaks at gold 2.8
(n≈256) and falls to −0.6 at n = 2¹⁸, while the proxy keeps rising (over-optimisation).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
from typing import Iterator

import numpy as np

from rlhf_jax.tasks.exact import (best_of_n_distribution, best_of_n_kl, best_of_n_kl_bound,
                                  exact_kl, expectation, log_normalize, optimal_policy)

_log = logging.getLogger(__name__)

__all__ = [
    "EnumerableTask", "Enumeration", "DEFAULT_TASK", "gold_reward", "enumerate_completions",
    "exact_kl", "optimal_policy", "best_of_n_distribution", "best_of_n_kl", "best_of_n_kl_bound",
    "expectation", "log_normalize", "LABEL_MODES", "SPLITS",
]

SPLITS = ("train", "test")
LABEL_MODES = ("deterministic", "bradley_terry")
_SPLIT_IDS = {"train": 0, "test": 1}
_KIND_IDS = {"sft": 0, "preferences": 1, "ranked": 2}


@dataclasses.dataclass(frozen=True)
class Enumeration:
  """Every completion of one prompt, in a fixed order (by length, then alphabetically).

  completions: N strings. tokens_NxT: int32 ids (letters, then EOS if shorter than L, then pad 0).
  mask_NxT: float32, 1 on the completion's tokens (EOS included). lengths_N: letters per
  completion. letters_NxL: int32 letter indices 0..k−1, −1 past the end (for closed forms).
  """
  completions: tuple[str, ...]
  tokens_NxT: np.ndarray
  mask_NxT: np.ndarray
  lengths_N: np.ndarray
  letters_NxL: np.ndarray


@dataclasses.dataclass(frozen=True)
class EnumerableTask:
  """World parameters (alphabet … stop) and data sizes (num_* , seed, labels); see module doc."""
  alphabet: str = "abcd"
  max_len: int = 6
  prompt_len: int = 3
  budget: int = 2
  penalty: float = 0.75
  fluency: float = 0.25
  successor_logit: float = 1.5
  target_logit: float = -1.0
  first_stop: float = 0.02
  stop: float = 0.2
  num_test_prompts: int = 16
  num_sft: tuple[int, int] = (8192, 1024)            # (train, test) demonstrations
  num_pairs: tuple[int, int] = (4096, 1024)          # (train, test) kept preference pairs
  num_ranked: tuple[int, int] = (2048, 512)          # (train, test) kept rankings
  num_completions: int = 4                            # K completions per ranking
  labels: str = "deterministic"                       # or "bradley_terry"
  seed: int = 0

  def __post_init__(self):
    k = len(self.alphabet)
    checks = [
        (k >= 2 and len(set(self.alphabet)) == k, "alphabet must have >= 2 distinct letters"),
        (1 <= self.max_len <= 8, "max_len must be in 1..8 (enumeration size grows as k^L)"),
        (self.prompt_len >= 1, "prompt_len must be >= 1"),
        (0 <= self.budget <= self.max_len, "budget must be in 0..max_len"),
        (self.penalty > 0 and self.fluency >= 0, "penalty must be > 0 and fluency >= 0"),
        (0 < self.first_stop < 1 and 0 < self.stop < 1, "stop probabilities must be in (0, 1)"),
        (0 < self.num_test_prompts < k ** self.prompt_len,
         f"num_test_prompts must be in 1..{k ** self.prompt_len - 1}"),
        (self.labels in LABEL_MODES, f"labels must be one of {LABEL_MODES}"),
        (len(self.num_sft) == 2 and len(self.num_pairs) == 2 and len(self.num_ranked) == 2,
         "num_sft, num_pairs and num_ranked are (train, test) pairs"),
        (self.num_completions >= 2, "num_completions must be >= 2 (a ranking of K completions)"),
    ]
    for field in ("num_sft", "num_pairs", "num_ranked"):
      object.__setattr__(self, field, tuple(getattr(self, field)))
    for ok, msg in checks:
      if not ok:
        raise ValueError(f"EnumerableTask: {msg}; got {self}")

  # ---------------------------------------------------------------- prompts and tokens
  @property
  def tokenizer(self):
    """CharTokenizer(alphabet); imported here so tasks/ does not load data/ at import time."""
    from rlhf_jax.data.tokenizer import CharTokenizer  # pylint: disable=g-import-not-at-top
    return CharTokenizer(self.alphabet)

  @functools.cached_property
  def _prompt_splits(self) -> dict[str, tuple[str, ...]]:
    every = ["".join(p) for p in itertools.product(self.alphabet, repeat=self.prompt_len)]
    order = np.random.default_rng([self.seed, 7]).permutation(len(every))
    test = sorted(every[i] for i in order[:self.num_test_prompts])
    train = sorted(every[i] for i in order[self.num_test_prompts:])
    return {"train": tuple(train), "test": tuple(test)}

  def prompts(self, split: str) -> tuple[str, ...]:
    _check_split(split)
    return self._prompt_splits[split]

  def target(self, prompt: str) -> str:
    """τ(x): the letter whose count the gold reward pays for (the prompt's first letter)."""
    self._check_prompt(prompt)
    return prompt[0]

  def _check_prompt(self, prompt: str) -> None:
    if len(prompt) != self.prompt_len or any(ch not in self.alphabet for ch in prompt):
      raise ValueError(f"EnumerableTask: prompt {prompt!r} is not {self.prompt_len} letters of "
                       f"{self.alphabet!r}")

  def _letters(self, prompt: str, completion: str) -> np.ndarray:
    self._check_prompt(prompt)
    if len(completion) > self.max_len or any(ch not in self.alphabet for ch in completion):
      raise ValueError(f"EnumerableTask: completion {completion!r} (prompt {prompt!r}) is not 0.."
                       f"{self.max_len} letters of {self.alphabet!r}")
    letters = np.full((1, self.max_len), -1, np.int32)
    letters[0, :len(completion)] = [self.alphabet.index(ch) for ch in completion]
    return letters

  # ---------------------------------------------------------------- enumeration
  @functools.cached_property
  def enumeration(self) -> Enumeration:
    k, L = len(self.alphabet), self.max_len
    completions = ["".join(p) for n in range(L + 1)
                   for p in itertools.product(self.alphabet, repeat=n)]
    N = len(completions)
    lengths_N = np.array([len(c) for c in completions], np.int32)
    letters_NxL = np.full((N, L), -1, np.int32)
    for i, c in enumerate(completions):
      letters_NxL[i, :len(c)] = [self.alphabet.index(ch) for ch in c]
    tok = self.tokenizer
    tokens_NxT = np.where(letters_NxL >= 0, letters_NxL + tok.eos_id + 1, tok.pad_id)
    short = lengths_N < L
    tokens_NxT[np.flatnonzero(short), lengths_N[short]] = tok.eos_id
    mask_NxT = (np.arange(L)[None, :] < np.minimum(lengths_N + 1, L)[:, None]).astype(np.float32)
    tokens_NxT = tokens_NxT.astype(np.int32)
    for arr in (lengths_N, letters_NxL, tokens_NxT, mask_NxT):
      arr.setflags(write=False)
    assert (k ** (L + 1) - 1) // (k - 1) == N
    return Enumeration(tuple(completions), tokens_NxT, mask_NxT, lengths_N, letters_NxL)

  def index(self, completion: str) -> int:
    """Position of `completion` in the enumeration order."""
    try:
      return self._index[completion]
    except KeyError:
      raise ValueError(f"EnumerableTask: {completion!r} is not a completion of this world") from None

  @functools.cached_property
  def _index(self) -> dict[str, int]:
    return {c: i for i, c in enumerate(self.enumeration.completions)}

  # ---------------------------------------------------------------- reference policy
  def transition_logp(self, prompt: str) -> np.ndarray:
    """log M_x(a → b) as a [k, k] array (rows sum to 1 in probability)."""
    k = len(self.alphabet)
    tau = self.alphabet.index(self.target(prompt))
    logits_KxK = np.zeros((k, k))
    logits_KxK[np.arange(k), (np.arange(k) + 1) % k] += self.successor_logit
    logits_KxK[:, tau] += self.target_logit
    return log_normalize(logits_KxK)

  def _ref_logp(self, prompt: str, letters_NxL: np.ndarray) -> np.ndarray:
    L = self.max_len
    log_m = self.transition_logp(prompt)
    valid_NxL = letters_NxL >= 0
    lengths_N = valid_NxL.sum(-1)
    prev_NxL = np.concatenate(
        [np.full((len(letters_NxL), 1), self.alphabet.index(prompt[-1])), letters_NxL[:, :-1]], 1)
    stop_L1 = np.array([self.first_stop] + [self.stop] * L)
    cur = np.where(valid_NxL, letters_NxL, 0)
    prv = np.where(valid_NxL, prev_NxL, 0)
    step_NxL = np.log1p(-stop_L1[:L])[None, :] + log_m[prv, cur]
    end_N = np.where(lengths_N < L, np.log(stop_L1[np.minimum(lengths_N, L)]), 0.0)
    return np.sum(np.where(valid_NxL, step_NxL, 0.0), -1) + end_N

  def reference_logp(self, prompt: str, completion: str) -> float:
    """log π_ref(completion | prompt), closed form."""
    return float(self._ref_logp(prompt, self._letters(prompt, completion))[0])

  def reference_logp_N(self, prompt: str) -> np.ndarray:
    """log π_ref over the enumeration of `prompt` (sums to 1 in probability)."""
    self._check_prompt(prompt)
    return self._ref_logp(prompt, self.enumeration.letters_NxL)

  def sample_reference(self, prompt: str, rng: np.random.Generator, n: int) -> list[str]:
    """n i.i.d. samples of π_ref(· | prompt) (drawn from the exact enumerated distribution)."""
    cdf_N = self._ref_cdf(prompt)
    idx = np.minimum(np.searchsorted(cdf_N, rng.random(n) * cdf_N[-1], side="right"),
                     len(cdf_N) - 1)
    return [self.enumeration.completions[i] for i in idx]

  @functools.lru_cache(maxsize=None)
  def _ref_cdf(self, prompt: str) -> np.ndarray:
    return np.cumsum(np.exp(self.reference_logp_N(prompt)))

  # ---------------------------------------------------------------- gold reward
  def _features(self, prompt: str, letters_NxL: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(c_N, fluency_N): target count and n₊ − n₋ for each row of letters."""
    k = len(self.alphabet)
    valid_NxL = letters_NxL >= 0
    prev_NxL = np.concatenate(
        [np.full((len(letters_NxL), 1), self.alphabet.index(prompt[-1])), letters_NxL[:, :-1]], 1)
    follows_NxL = valid_NxL & (letters_NxL == (prev_NxL + 1) % k)
    c_N = np.sum(letters_NxL == self.alphabet.index(self.target(prompt)), -1)
    fluency_N = 2 * follows_NxL.sum(-1) - valid_NxL.sum(-1)
    return c_N, fluency_N

  def target_count_N(self, prompt: str) -> np.ndarray:
    """c(x, y) over the enumeration."""
    return self._features(prompt, self.enumeration.letters_NxL)[0]

  def fluency_N(self, prompt: str) -> np.ndarray:
    """n₊ − n₋ over the enumeration."""
    return self._features(prompt, self.enumeration.letters_NxL)[1]

  def _gold(self, prompt: str, letters_NxL: np.ndarray) -> np.ndarray:
    c_N, fluency_N = self._features(prompt, letters_NxL)
    over_N = np.maximum(c_N - self.budget, 0)
    return c_N - self.penalty * over_N ** 2 + self.fluency * fluency_N

  def gold_reward(self, prompt: str, completion: str) -> float:
    """gold(x, y) = c − κ·max(c − B, 0)² + α·(n₊ − n₋); see the module docstring."""
    return float(self._gold(prompt, self._letters(prompt, completion))[0])

  def gold_rewards_N(self, prompt: str) -> np.ndarray:
    """gold over the enumeration of `prompt`."""
    self._check_prompt(prompt)
    return self._gold(prompt, self.enumeration.letters_NxL)

  def tables(self, split: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(prompts_P, ref_logp_PxN, gold_PxN) for every prompt of `split`, for exact computations."""
    prompts = self.prompts(split)
    return (prompts, np.stack([self.reference_logp_N(x) for x in prompts]),
            np.stack([self.gold_rewards_N(x) for x in prompts]))

  # ---------------------------------------------------------------- records
  def _rng(self, split: str, kind: str) -> np.random.Generator:
    _check_split(split)
    return np.random.default_rng([self.seed, _SPLIT_IDS[split], _KIND_IDS[kind]])

  def prompt_records(self, split: str) -> Iterator[dict]:
    """{'prompt': x, 'target': τ(x)}, once per prompt of the split (sorted)."""
    for x in self.prompts(split):
      yield {"prompt": x, "target": self.target(x)}

  def sft_records(self, split: str) -> Iterator[dict]:
    """{'prompt', 'completion'}: uniform prompt of the split, completion ~ π_ref.

    A completion may be "" (EOS at once, probability e₀ = `first_stop`); it is a real completion
    of one token (EOS) in this world.
    """
    rng = self._rng(split, "sft")
    prompts = self.prompts(split)
    for _ in range(self.num_sft[_SPLIT_IDS[split]]):
      x = prompts[rng.integers(len(prompts))]
      yield {"prompt": x, "completion": self.sample_reference(x, rng, 1)[0]}

  def preference_records(self, split: str) -> Iterator[dict]:
    """Preference pairs of two π_ref samples labelled by gold; see `preference_records_with_counts`."""
    records, _ = self.preference_records_with_counts(split)
    yield from records

  def preference_records_with_counts(self, split: str) -> tuple[list[dict], dict[str, int]]:
    """(records, counts): `num_pairs[split]` kept pairs and what was skipped on the way.

    Each draw: a uniform prompt of the split, two independent π_ref samples a, b. Pairs with
    a == b are skipped (counted 'skipped_identical'). `labels`:
      'deterministic':  higher gold wins; equal gold (a ≠ b) is skipped, counted 'skipped_tie';
      'bradley_terry':  a wins with probability σ(gold(a) − gold(b)) (ties are coin flips).
    Records: {'prompt', 'chosen', 'rejected', 'chosen_gold', 'rejected_gold'}. Counts are
    logged at INFO. Raises if fewer than 1 in 20 draws is kept (a degenerate world).
    """
    _check_split(split)
    want = self.num_pairs[_SPLIT_IDS[split]]
    rng = self._rng(split, "preferences")
    prompts = self.prompts(split)
    counts = {"drawn": 0, "kept": 0, "skipped_identical": 0, "skipped_tie": 0}
    records = []
    while len(records) < want:
      if counts["drawn"] > 20 * want + 100:
        raise RuntimeError(f"EnumerableTask.preference_records({split!r}): only "
                           f"{len(records)} of {counts['drawn']} draws kept; counts {counts}")
      counts["drawn"] += 1
      x = prompts[rng.integers(len(prompts))]
      a, b = self.sample_reference(x, rng, 2)
      coin = rng.random()  # drawn every time so the stream does not depend on the label mode
      if a == b:
        counts["skipped_identical"] += 1
        continue
      ra, rb = self.gold_reward(x, a), self.gold_reward(x, b)
      if self.labels == "deterministic":
        if ra == rb:
          counts["skipped_tie"] += 1
          continue
        a_wins = ra > rb
      else:
        a_wins = coin < 1.0 / (1.0 + np.exp(-(ra - rb)))
      (w, rw), (l, rl) = ((a, ra), (b, rb)) if a_wins else ((b, rb), (a, ra))
      records.append({"prompt": x, "chosen": w, "rejected": l,
                      "chosen_gold": float(rw), "rejected_gold": float(rl)})
    counts["kept"] = len(records)
    _log.info("EnumerableTask.preference_records(%s, labels=%s): %s", split, self.labels, counts)
    return records, counts

  def ranked_records(self, split: str) -> Iterator[dict]:
    """Rankings of K π_ref samples by gold; see `ranked_records_with_counts`."""
    records, _ = self.ranked_records_with_counts(split)
    yield from records

  def ranked_records_with_counts(self, split: str) -> tuple[list[dict], dict[str, int]]:
    """(records, counts): `num_ranked[split]` kept rankings of K = `num_completions` completions.

    Each draw, as for preference pairs: a uniform prompt of the split, K independent π_ref
    samples. Draws with a repeated completion are skipped ('skipped_identical'). `labels`:
      'deterministic':  ranked by gold, best first; a draw with two equal golds is skipped
                        ('skipped_tie'), so every kept ranking is strict;
      'bradley_terry':  a Plackett-Luce sample with weights exp(gold): the order of gold + Gumbel
                        noise (for K = 2 the Bradley-Terry label of the pairs; never tied).
    Records: {'prompt', 'completions' (in draw order), 'ranks' (ranks[j] = place of completion
    j, 0 = best), 'golds'} (data/ranked.py). Counts are logged at INFO. Raises if fewer than 1 in
    20 draws is kept (K about 8 or more in the default world: π_ref repeats itself).
    """
    _check_split(split)
    want, k = self.num_ranked[_SPLIT_IDS[split]], self.num_completions
    rng = self._rng(split, "ranked")
    prompts = self.prompts(split)
    counts = {"drawn": 0, "kept": 0, "skipped_identical": 0, "skipped_tie": 0}
    records = []
    while len(records) < want:
      if counts["drawn"] > 20 * want + 100:
        raise RuntimeError(f"EnumerableTask.ranked_records({split!r}): only {len(records)} of "
                           f"{counts['drawn']} draws kept (K={k}); counts {counts}")
      counts["drawn"] += 1
      x = prompts[rng.integers(len(prompts))]
      ys = self.sample_reference(x, rng, k)
      noise_K = rng.gumbel(size=k)  # drawn every time: the stream does not depend on the labels
      if len(set(ys)) < k:
        counts["skipped_identical"] += 1
        continue
      gold_K = np.array([self.gold_reward(x, y) for y in ys])
      if self.labels == "deterministic":
        if len(set(gold_K.tolist())) < k:
          counts["skipped_tie"] += 1
          continue
        score_K = gold_K
      else:
        score_K = gold_K + noise_K
      ranks_K = np.argsort(np.argsort(-score_K, kind="stable"), kind="stable")
      records.append({"prompt": x, "completions": list(ys), "ranks": ranks_K.tolist(),
                      "golds": gold_K.tolist()})
    counts["kept"] = len(records)
    _log.info("EnumerableTask.ranked_records(%s, K=%d, labels=%s): %s", split, k, self.labels,
              counts)
    return records, counts

  def texts(self) -> Iterator[str]:
    """Every prompt and the alphabet (a CharTokenizer needs no training; for API parity)."""
    yield self.alphabet
    for split in SPLITS:
      yield from self.prompts(split)


def _check_split(split: str) -> None:
  if split not in _SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")


DEFAULT_TASK = EnumerableTask()


def gold_reward(prompt: str, completion: str, task: EnumerableTask = DEFAULT_TASK) -> float:
  """gold(x, y) of the default world (or `task`)."""
  return task.gold_reward(prompt, completion)


def enumerate_completions(task: EnumerableTask = DEFAULT_TASK) -> Enumeration:
  """All completions of the world with their token ids and masks (see `Enumeration`)."""
  return task.enumeration
