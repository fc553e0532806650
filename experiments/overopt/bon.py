"""Best-of-n against a proxy, exactly and by the unbiased sample estimator.

Exact (tasks/exact.py): with π_ref the SFT model's exact distribution over the enumeration and r
the proxy's score of every completion, best-of-n has the closed form
  π_bon(y) = π_ref(y)/F₌(y) · (F≤(y)ⁿ − F<(y)ⁿ)            (ties split uniformly)
so E_bon[gold], E_bon[proxy] and KL(π_bon‖π_ref) are exact sums for any n (10⁶ costs the same as
10); the analytic log n − (n−1)/n is an upper bound on the KL, reached only without ties.

Estimator (Nakano et al. 2021, App. I; Gao et al. 2022, §2.2): from N ≥ n i.i.d. samples of
π_ref with proxy scores sorted ascending (ties broken at random), the best of a uniformly random
n-subset is the i-th smallest with probability C(i−1, n−1)/C(N, n), so
  Ê[v(best of n)] = Σ_{i=n}^{N} C(i−1, n−1)/C(N, n) · v_(i)
is unbiased for E_bon[v]; its KL is taken as the analytic log n − (n−1)/n, as those papers do.
"""

from __future__ import annotations

import math

import numpy as np

from rlhf_jax.tasks import exact


def n_grid(n_max: int, points_per_octave: int = 1) -> list[int]:
  """1, then ~2^(i/points_per_octave) up to n_max (integers, no repeats)."""
  steps = int(round(math.log2(n_max) * points_per_octave))
  ns = sorted({int(round(2 ** (i / points_per_octave))) for i in range(steps + 1)} | {n_max})
  return [n for n in ns if n <= n_max]


def exact_curve(ref_logp_PxN: np.ndarray, target_PxN: np.ndarray, tables: dict,
                ns: list[int]) -> list[dict]:
  """One row per n: exact kl, its bound, d = √kl and E_bon[table] (mean over prompts) for each
  named table, best-of-n taken under `target_PxN`."""
  rows = []
  for n in ns:
    logp_PxN = exact.best_of_n_distribution(ref_logp_PxN, target_PxN, n)
    kl = float(np.mean(exact.exact_kl(logp_PxN, ref_logp_PxN)))
    row = {"n": int(n), "kl": kl, "kl_bound": exact.best_of_n_kl_bound(n), "d": math.sqrt(max(kl, 0))}
    for name, table in tables.items():
      row[name] = float(np.mean(exact.expectation(logp_PxN, table)))
    rows.append(row)
  return rows


def estimator_weights(n: int, num_samples: int) -> np.ndarray:
  """w_i = C(i−1, n−1)/C(N, n) for ranks i = 1..N (ascending); they sum to 1."""
  if not 1 <= n <= num_samples:
    raise ValueError(f"the best-of-n estimator needs 1 <= n <= N, got n={n}, N={num_samples}")
  i = np.arange(1, num_samples + 1)
  lg = np.vectorize(math.lgamma)
  log_w = np.full(num_samples, -np.inf)
  ok = i >= n
  log_w[ok] = (lg(i[ok]) - lg(n) - lg(i[ok] - n + 1)) - (
      lg(num_samples + 1) - lg(n + 1) - lg(num_samples - n + 1))
  return np.exp(log_w)


def sample_estimate(ref_logp_PxN: np.ndarray, target_PxN: np.ndarray, tables: dict,
                    ns: list[int], num_samples: int, rng: np.random.Generator) -> list[dict]:
  """The unbiased estimator from `num_samples` π_ref samples per prompt (one draw), per n."""
  p_PxN = np.exp(ref_logp_PxN)
  p_PxN = p_PxN / p_PxN.sum(-1, keepdims=True)
  sorted_values = {name: [] for name in tables}
  for i in range(len(p_PxN)):
    idx = rng.choice(p_PxN.shape[1], size=num_samples, p=p_PxN[i])
    order = np.lexsort((rng.random(num_samples), target_PxN[i, idx]))  # by target, random ties
    for name, table in tables.items():
      sorted_values[name].append(table[i, idx[order]])
  rows = []
  for n in ns:
    w = estimator_weights(n, num_samples)
    row = {"n": int(n), "num_samples": int(num_samples), "kl_bound": exact.best_of_n_kl_bound(n)}
    for name, values in sorted_values.items():
      row[name] = float(np.mean([v @ w for v in values]))
    rows.append(row)
  return rows
