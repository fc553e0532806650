"""Tests of the enumerable preference world and the exact distribution functions."""

import itertools
import math

import numpy as np
import pytest

from rlhf_jax.tasks import enumerable
from rlhf_jax.tasks import exact
from rlhf_jax.tasks.enumerable import EnumerableTask

TINY = EnumerableTask(alphabet="ab", max_len=3, prompt_len=1, num_test_prompts=1, budget=1,
                      num_sft=(64, 16), num_pairs=(64, 16))


# ------------------------------------------------------------------ brute-force references
def _brute_ref_probs(task, prompt):
  """π_ref as an explicit dict, written from the module docstring's formula, loop by loop."""
  k, L, tau = len(task.alphabet), task.max_len, task.alphabet.index(prompt[0])

  def m(a, b):
    logits = [task.successor_logit * (j == (a + 1) % k) + task.target_logit * (j == tau)
              for j in range(k)]
    return math.exp(logits[b]) / sum(math.exp(v) for v in logits)

  probs = {}
  for n in range(L + 1):
    for y in itertools.product(range(k), repeat=n):
      p, prev = 1.0, task.alphabet.index(prompt[-1])
      for i, b in enumerate(y):
        p *= (1 - (task.first_stop if i == 0 else task.stop)) * m(prev, b)
        prev = b
      if n < L:
        p *= task.first_stop if n == 0 else task.stop
      probs["".join(task.alphabet[i] for i in y)] = p
  return probs


def _ancestral_samples(task, prompt, n, rng):
  """Step-by-step Markov-chain sampling (independent of the enumeration code)."""
  k, L = len(task.alphabet), task.max_len
  log_m = task.transition_logp(prompt)
  out = []
  for _ in range(n):
    prev, y = task.alphabet.index(prompt[-1]), ""
    for i in range(L):
      if rng.random() < (task.first_stop if i == 0 else task.stop):
        break
      prev = rng.choice(k, p=np.exp(log_m[prev]))
      y += task.alphabet[prev]
    out.append(y)
  return out


def _dict_kl(p, q):
  return sum(pv * (math.log(pv) - math.log(q[y])) for y, pv in p.items() if pv > 0)


# ------------------------------------------------------------------ enumeration and reference
def test_enumeration_length_convention():
  task = enumerable.DEFAULT_TASK
  e = enumerable.enumerate_completions()
  k, L = len(task.alphabet), task.max_len
  assert len(e.completions) == (k ** (L + 1) - 1) // (k - 1) == 5461
  assert e.tokens_NxT.shape == e.mask_NxT.shape == (5461, L)
  tok = task.tokenizer
  for i in (0, 1, 100, 5460):
    y, n = e.completions[i], e.lengths_N[i]
    want = tok.encode(y) + ([tok.eos_id] if n < L else [])
    assert list(e.tokens_NxT[i, :len(want)]) == want
    assert (e.tokens_NxT[i, len(want):] == tok.pad_id).all()
    assert e.mask_NxT[i].sum() == len(want)
    assert tok.decode(e.tokens_NxT[i]) == y
  assert e.completions[0] == "" and list(e.tokens_NxT[0]) == [tok.eos_id] + [0] * (L - 1)
  assert task.index("abcd") == e.completions.index("abcd")


def test_reference_matches_explicit_formula_and_ancestral_sampling():
  for prompt in ("a", "b"):
    brute = _brute_ref_probs(TINY, prompt)
    got = np.exp(TINY.reference_logp_N(prompt))
    np.testing.assert_allclose(got, [brute[y] for y in TINY.enumeration.completions], rtol=1e-12)
    assert abs(got.sum() - 1) < 1e-12
  # The default world, against step-by-step sampling: every frequency within 5 standard errors.
  task, prompt, n = enumerable.DEFAULT_TASK, "abd", 20000
  p_N = np.exp(task.reference_logp_N(prompt))
  samples = _ancestral_samples(task, prompt, n, np.random.default_rng(0))
  freq_N = np.bincount([task.index(y) for y in samples], minlength=len(p_N)) / n
  assert np.all(np.abs(freq_N - p_N) <= 5 * np.sqrt(p_N * (1 - p_N) / n) + 1e-3)
  assert task.reference_logp(prompt, "bcda") == pytest.approx(np.log(p_N[task.index("bcda")]))


def test_sample_reference_matches_reference():
  task, prompt, n = enumerable.DEFAULT_TASK, "cab", 20000
  samples = task.sample_reference(prompt, np.random.default_rng(1), n)
  lengths = np.bincount([len(y) for y in samples], minlength=task.max_len + 1) / n
  p_N = np.exp(task.reference_logp_N(prompt))
  want = np.bincount(task.enumeration.lengths_N, weights=p_N)
  np.testing.assert_allclose(lengths, want, atol=0.015)


# ------------------------------------------------------------------ exact functions
def test_exact_kl_matches_dict_and_monte_carlo():
  p, q = _brute_ref_probs(TINY, "a"), _brute_ref_probs(TINY, "b")
  order = TINY.enumeration.completions
  logp = np.log([p[y] for y in order])
  logq = np.log([q[y] for y in order])
  kl = float(exact.exact_kl(logp, logq))
  assert kl == pytest.approx(_dict_kl(p, q), rel=1e-12)
  idx = np.random.default_rng(0).choice(len(order), size=200000, p=np.exp(logp))
  mc = np.mean(logp[idx] - logq[idx])
  se = np.std(logp[idx] - logq[idx]) / np.sqrt(len(idx))
  assert abs(mc - kl) < 5 * se
  assert float(exact.exact_kl(logp, logp)) == 0.0
  # Zero mass in p contributes nothing; mass of p where q has none gives +inf.
  one_hot = np.full(len(order), -np.inf)
  one_hot[3] = 0.0
  assert float(exact.exact_kl(one_hot, logq)) == pytest.approx(-logq[3])
  assert float(exact.exact_kl(logq, one_hot)) == np.inf
  with pytest.raises(ValueError, match="sum to"):
    exact.exact_kl(logp + 0.1, logq)


def test_optimal_policy_matches_direct_formula_and_maximises_objective():
  ref = _brute_ref_probs(TINY, "a")
  order = TINY.enumeration.completions
  ref_logp = np.log([ref[y] for y in order])
  gold = {y: TINY.gold_reward("a", y) for y in order}
  for beta in (0.1, 1.0, 10.0):
    z = sum(ref[y] * math.exp(gold[y] / beta) for y in order)
    brute = {y: ref[y] * math.exp(gold[y] / beta) / z for y in order}
    got = exact.optimal_policy(ref_logp, [gold[y] for y in order], beta)
    np.testing.assert_allclose(np.exp(got), [brute[y] for y in order], rtol=1e-10)
    # E[r] − β KL at the optimum is β log Z, and random other policies do worse.
    objective = lambda lp: (exact.expectation(lp, [gold[y] for y in order])
                            - beta * exact.exact_kl(lp, ref_logp))
    assert objective(got) == pytest.approx(beta * math.log(z), rel=1e-10)
    rng = np.random.default_rng(0)
    for _ in range(20):
      other = exact.log_normalize(got + 0.3 * rng.normal(size=len(order)))
      assert objective(other) < objective(got)
  with pytest.raises(ValueError, match="beta"):
    exact.optimal_policy(ref_logp, np.zeros(len(order)), 0.0)


def _simulate_best_of_n(p_N, r_N, n, trials, rng):
  """n draws per trial, keep the highest reward, ties broken by a uniform random key."""
  draws = rng.choice(len(p_N), size=(trials, n), p=p_N)
  rank = np.unique(r_N, return_inverse=True)[1]
  key = rank[draws] + rng.random((trials, n))  # the integer part orders rewards, the rest ties
  return draws[np.arange(trials), np.argmax(key, 1)]


def test_best_of_n_matches_simulation_with_ties():
  p_N = np.array([0.3, 0.2, 0.1, 0.15, 0.05, 0.2])
  r_N = np.array([1.0, 2.0, 2.0, 0.0, 3.0, 2.0])     # a three-way tie at 2.0
  trials = 200000
  for n in (1, 2, 3, 8):
    exact_N = np.exp(exact.best_of_n_distribution(np.log(p_N), r_N, n))
    assert exact_N.sum() == pytest.approx(1.0)
    picks = _simulate_best_of_n(p_N, r_N, n, trials, np.random.default_rng(n))
    freq_N = np.bincount(picks, minlength=len(p_N)) / trials
    # Tolerance: 5 binomial standard errors per completion (false-failure odds < 1e-5).
    tol_N = 5 * np.sqrt(exact_N * (1 - exact_N) / trials) + 1e-4
    assert np.all(np.abs(freq_N - exact_N) <= tol_N), (n, freq_N, exact_N)
  # Within a tie group the mass stays proportional to π_ref; hand value for n = 2:
  # P(best = 0) = (F≤² − F<²) = (0.45² − 0.15²) = 0.18.
  two = np.exp(exact.best_of_n_distribution(np.log(p_N), r_N, 2))
  assert two[0] == pytest.approx(0.18)
  np.testing.assert_allclose(two[[1, 2, 5]] / two[[1, 2, 5]].sum(), [0.4, 0.2, 0.4])


def test_best_of_n_kl_obeys_bound():
  task = enumerable.DEFAULT_TASK
  _, ref_PxN, gold_PxN = task.tables("test")
  for n in (1, 2, 4, 16, 64, 256, 1024, 2 ** 14):
    kl_P = exact.best_of_n_kl(ref_PxN, gold_PxN, n)
    bound = exact.best_of_n_kl_bound(n)
    assert np.all(kl_P <= bound + 1e-9), (n, kl_P.max(), bound)
  assert exact.best_of_n_kl_bound(1) == 0.0
  np.testing.assert_allclose(exact.best_of_n_distribution(ref_PxN, gold_PxN, 1), ref_PxN)
  # Distinct rewards on many equal small masses: the bound is nearly attained.
  ref = np.full(100000, -np.log(100000))
  rewards = np.arange(100000, dtype=float)
  for n in (2, 8, 32):
    assert float(exact.best_of_n_kl(ref, rewards, n)) == pytest.approx(
        exact.best_of_n_kl_bound(n), abs=2e-3)


# ------------------------------------------------------------------ gold reward
def test_gold_reward_hand_values():
  # prompt "abd": target 'a', chain starts at 'd' whose successor is 'a'.
  assert enumerable.gold_reward("abd", "") == 0.0
  assert enumerable.gold_reward("abd", "abcd") == 1 + 0.25 * 4             # c=1, 4 on-cycle steps
  assert enumerable.gold_reward("abd", "abcdab") == 2 + 0.25 * 6           # c=2 = B, all on-cycle
  assert enumerable.gold_reward("abd", "abcdaa") == 3 - 0.75 + 0.25 * 4    # c=3, 5 on, 1 off
  assert enumerable.gold_reward("abd", "aaaaaa") == 6 - 0.75 * 16 + 0.25 * (1 - 5)
  task = enumerable.DEFAULT_TASK
  np.testing.assert_array_equal(
      task.gold_rewards_N("abd")[[task.index(y) for y in ("", "abcd", "aaaaaa")]],
      [0.0, 2.0, -7.0])
  with pytest.raises(ValueError, match="'abz'"):
    enumerable.gold_reward("abd", "abz")
  with pytest.raises(ValueError, match="prompt 'ab'"):
    enumerable.gold_reward("ab", "a")


def test_proxy_exploitability():
  """The reference rarely exceeds the budget, and saturating the target is far worse than the
  best in-budget completion; a proxy fitted on reference pairs therefore over-optimises."""
  task = enumerable.DEFAULT_TASK
  e = task.enumeration
  over, best_in, best_saturated = [], [], []
  for x in task.prompts("train") + task.prompts("test"):
    p_N, c_N, g_N = np.exp(task.reference_logp_N(x)), task.target_count_N(x), task.gold_rewards_N(x)
    over.append(p_N[c_N > task.budget].sum())
    best_in.append(g_N[c_N <= task.budget].max())
    best_saturated.append(g_N[c_N == task.max_len].max())
  assert np.mean(over) < 0.01 and np.max(over) < 0.02, (np.mean(over), np.max(over))
  assert np.min(best_in) >= 3.0 and np.max(best_saturated) <= -7.0
  assert np.min(np.array(best_in) - np.array(best_saturated)) >= 10.0

  # A Bradley–Terry proxy linear in (c, n₊ − n₋, |y|), fitted by Newton's method on BT pairs.
  data = EnumerableTask(labels="bradley_terry", num_pairs=(2048, 16))
  records, _ = data.preference_records_with_counts("train")

  table = {x: np.stack([task.target_count_N(x), task.fluency_N(x), e.lengths_N], -1).astype(float)
           for x in task.prompts("train") + task.prompts("test")}

  def features(x, ys):
    return table[x][[task.index(y) for y in ys]]

  diff = np.concatenate([features(r["prompt"], [r["chosen"]]) - features(r["prompt"], [r["rejected"]])
                         for r in records])
  w = np.zeros(3)
  for _ in range(30):
    p = 1 / (1 + np.exp(-diff @ w))
    w += np.linalg.solve((diff * (p * (1 - p))[:, None]).T @ diff + 1e-6 * np.eye(3),
                         diff.T @ (1 - p))
  assert w[0] > 0.5, w   # "more targets is better", learnt where c ≤ B
  prompts, ref_PxN, gold_PxN = task.tables("test")
  proxy_PxN = np.stack([features(x, e.completions) for x in prompts]) @ w
  betas = (10.0, 3.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02)
  gold, proxy, kl = [], [], []
  for beta in betas:
    pi = exact.optimal_policy(ref_PxN, proxy_PxN, beta)
    gold.append(exact.expectation(pi, gold_PxN).mean())
    proxy.append(exact.expectation(pi, proxy_PxN).mean())
    kl.append(exact.exact_kl(pi, ref_PxN).mean())
  peak = int(np.argmax(gold))
  assert 0 < peak < len(betas) - 1, gold                       # gold rises, then turns over
  assert gold[peak] - gold[0] > 1.0 and gold[peak] - gold[-1] > 5.0, gold
  assert np.all(np.diff(proxy) > 0) and np.all(np.diff(kl) > 0), (proxy, kl)


# ------------------------------------------------------------------ records
def test_records_schema_determinism_and_counts():
  task = EnumerableTask(num_sft=(256, 64), num_pairs=(300, 50))
  assert not set(task.prompts("train")) & set(task.prompts("test"))
  assert len(task.prompts("train")) + len(task.prompts("test")) == 64
  sft = list(task.sft_records("train"))
  assert sft == list(task.sft_records("train")) and len(sft) == 256
  assert sft != list(EnumerableTask(num_sft=(256, 64), seed=1).sft_records("train"))
  assert all(set(r) == {"prompt", "completion"} and r["prompt"] in task.prompts("train")
             for r in sft)
  assert {r["prompt"] for r in task.sft_records("test")} <= set(task.prompts("test"))
  prompts = list(task.prompt_records("test"))
  assert [r["prompt"] for r in prompts] == list(task.prompts("test"))
  assert all(r["target"] == r["prompt"][0] for r in prompts)

  records, counts = task.preference_records_with_counts("train")
  assert records == list(task.preference_records("train")) and len(records) == 300
  assert counts["kept"] == 300
  assert counts["drawn"] == counts["kept"] + counts["skipped_identical"] + counts["skipped_tie"]
  assert counts["skipped_identical"] > 0 and counts["skipped_tie"] > 0
  for r in records:
    assert set(r) == {"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold"}
    assert r["chosen"] != r["rejected"] and r["chosen_gold"] > r["rejected_gold"]
    assert r["chosen_gold"] == task.gold_reward(r["prompt"], r["chosen"])

  bt = EnumerableTask(num_pairs=(2000, 50), labels="bradley_terry")
  records, counts = bt.preference_records_with_counts("train")
  assert counts["skipped_tie"] == 0 and counts["skipped_identical"] > 0
  margin = np.array([r["chosen_gold"] - r["rejected_gold"] for r in records])
  assert 0.05 < np.mean(margin < 0) < 0.4  # some upsets, as the BT model says
  # Agreement with the BT probability: E[σ(|Δ|)] vs the observed rate of the higher-gold winning.
  decided = margin != 0
  want = np.mean(1 / (1 + np.exp(-np.abs(margin[decided]))))
  assert abs(np.mean(margin[decided] > 0) - want) < 0.05


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    list(enumerable.DEFAULT_TASK.sft_records("dev"))
  with pytest.raises(ValueError, match="labels"):
    EnumerableTask(labels="majority")
  with pytest.raises(ValueError, match="is not a completion"):
    enumerable.DEFAULT_TASK.index("abcdabc")
