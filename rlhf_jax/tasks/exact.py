"""Exact quantities on distributions over an enumerated completion set.

A distribution over the N completions of one prompt is an array of natural-log probabilities
`logp_N` (−inf for zero mass). Every function also accepts leading batch axes (`logp_PxN`, one row
per prompt) and reduces over the last axis only. All work is float64 numpy.

  KL(p‖q)          = Σ_y p(y) (log p(y) − log q(y))          (0·log 0 = 0; p>0 where q=0 gives +inf)
  π*_β(y)          = π_ref(y) exp(r(y)/β) / Z_β              (maximiser of E_π[r] − β KL(π‖π_ref);
                                                             Rafailov et al. 2023, eq. 4)
  best-of-n(y)     = π_ref(y)/F₌(y) · (F≤(y)ⁿ − F<(y)ⁿ)      (exact, ties split uniformly)

where, for the reward r(y) of y, F<(y) = P_ref(r < r(y)), F≤(y) = P_ref(r ≤ r(y)) and
F₌(y) = F≤(y) − F<(y) is the reference mass of y's tie group. Derivation: draw n samples, keep
one of highest reward, break ties uniformly at random among the tied draws. The kept reward level
is ≤ r(y) with probability F≤ⁿ and < r(y) with F<ⁿ, so it equals r(y) with F≤ⁿ − F<ⁿ; given
that level every draw at it is y with probability π_ref(y)/F₌ and the uniform tie-break keeps
that ratio. Without ties F₌ = π_ref(y) and this is the familiar F≤ⁿ − F<ⁿ.

The KL of best-of-n obeys KL ≤ log n − (n−1)/n (Beirami et al. 2024, "Theoretical guarantees on
the best-of-n alignment policy"): uniform tie-breaking is best-of-n on (y, u) with u ~ U(0,1) as
a tie-breaker, whose rewards are a.s. distinct, where the KL is exactly log n − (n−1)/n
(the kept quantile has density n F^{n−1}); marginalising u out can only shrink the KL.
"""

from __future__ import annotations

import numpy as np

_NORM_TOL = 1e-4


def _as_logp(name: str, logp, *, check_normalized: bool) -> np.ndarray:
  logp = np.asarray(logp, dtype=np.float64)
  if logp.ndim == 0:
    raise ValueError(f"{name}: expected log-probs with a last axis of completions, got a scalar")
  if np.isnan(logp).any() or (logp == np.inf).any():
    raise ValueError(f"{name}: log-probs contain NaN or +inf")
  if check_normalized:
    total = np.exp(logsumexp(logp))
    bad = np.abs(total - 1.0) > _NORM_TOL
    if bad.any():
      row = np.unravel_index(np.argmax(np.abs(total - 1.0)), total.shape) if total.ndim else ()
      raise ValueError(
          f"{name}: probabilities sum to {float(total[row]):.6g} (row {row}), not 1; a distribution "
          "over the enumerated completions must put all its mass on them (check EOS/length "
          "conventions of the scored tokens)")
  return logp


def logsumexp(x, axis: int = -1) -> np.ndarray:
  """log Σ exp(x) over `axis`, −inf for an all −inf row."""
  x = np.asarray(x, dtype=np.float64)
  m = np.max(x, axis=axis, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  with np.errstate(divide="ignore"):
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
  return np.squeeze(out, axis=axis)


def log_normalize(logits_N) -> np.ndarray:
  """logits − logsumexp(logits) over the last axis."""
  logits_N = np.asarray(logits_N, dtype=np.float64)
  return logits_N - logsumexp(logits_N)[..., None]


def expectation(logp_N, values_N) -> np.ndarray:
  """E_p[v] = Σ_y p(y) v(y); values where p = 0 are ignored (they may be ±inf)."""
  p_N = np.exp(_as_logp("expectation", logp_N, check_normalized=True))
  values_N = np.broadcast_to(np.asarray(values_N, dtype=np.float64), p_N.shape)
  return np.sum(np.where(p_N > 0, p_N * np.where(p_N > 0, values_N, 0.0), 0.0), axis=-1)


def exact_kl(logp_p_N, logp_q_N, *, check_normalized: bool = True) -> np.ndarray:
  """KL(p‖q) = Σ_y p(y) (log p(y) − log q(y)) in nats, over the last axis.

  Terms with p(y) = 0 contribute 0; a completion with p(y) > 0 = q(y) makes the KL +inf.
  With `check_normalized` both inputs must sum to 1 (within 1e-4) or a ValueError says which.
  """
  logp_p_N = _as_logp("exact_kl(p)", logp_p_N, check_normalized=check_normalized)
  logp_q_N = _as_logp("exact_kl(q)", logp_q_N, check_normalized=check_normalized)
  if logp_p_N.shape[-1] != logp_q_N.shape[-1]:
    raise ValueError(f"exact_kl: p has {logp_p_N.shape[-1]} completions, q has {logp_q_N.shape[-1]}")
  p_N = np.exp(logp_p_N)
  support = p_N > 0
  with np.errstate(invalid="ignore"):
    diff_N = np.where(support, logp_p_N - logp_q_N, 0.0)  # +inf where q = 0 < p
  return np.sum(np.where(support, p_N * diff_N, 0.0), axis=-1)


def optimal_policy(ref_logp_N, rewards_N, beta: float) -> np.ndarray:
  """log π*_β = log π_ref + r/β − log Z_β, the optimum of E_π[r] − β·KL(π‖π_ref).

  `beta` must be > 0 (β → ∞ gives π_ref, β → 0 the reward argmax within the reference support).
  Rewards may be anything where π_ref = 0 (those completions stay at zero mass).
  """
  if not beta > 0:
    raise ValueError(f"optimal_policy: beta must be > 0, got {beta}")
  ref_logp_N = _as_logp("optimal_policy(ref)", ref_logp_N, check_normalized=True)
  rewards_N = np.broadcast_to(np.asarray(rewards_N, dtype=np.float64), ref_logp_N.shape)
  support = np.isfinite(ref_logp_N)
  if not np.isfinite(rewards_N[support]).all():
    raise ValueError("optimal_policy: rewards must be finite wherever π_ref > 0")
  logits_N = np.where(support, ref_logp_N + np.where(support, rewards_N, 0.0) / beta, -np.inf)
  return log_normalize(logits_N)


def _best_of_n_1d(ref_logp_N: np.ndarray, rewards_N: np.ndarray, n: int) -> np.ndarray:
  support = np.isfinite(ref_logp_N)
  idx = np.flatnonzero(support)
  r = rewards_N[idx]
  order = np.argsort(r, kind="stable")
  r_sorted, lp_sorted = r[order], ref_logp_N[idx][order]
  # log of the cumulative reference mass through each sorted position.
  log_cum = np.logaddexp.accumulate(lp_sorted)
  # Tie groups: the sorted positions [first, last] of each distinct reward level.
  first = np.searchsorted(r_sorted, r_sorted, side="left")
  last = np.searchsorted(r_sorted, r_sorted, side="right") - 1
  starts = np.flatnonzero(np.r_[True, r_sorted[1:] != r_sorted[:-1]])
  group_mass = np.add.reduceat(np.exp(lp_sorted), starts)       # F₌ per level, summed directly
  with np.errstate(divide="ignore"):
    log_eq = np.log(group_mass)[np.searchsorted(starts, first)]  # log F₌(y)
  log_le = np.minimum(log_cum[last], 0.0)                        # log F≤(y)
  ratio = np.minimum(np.exp(log_eq - log_le), 1.0)               # F₌/F≤ = 1 − F</F≤
  # log(F≤ⁿ − F<ⁿ) = n log F≤ + log(1 − (1 − F₌/F≤)ⁿ), stable for tiny groups and for ratio = 1.
  with np.errstate(divide="ignore"):
    log_top = n * log_le + np.log(-np.expm1(n * np.log1p(-ratio)))
  out = np.full(ref_logp_N.shape, -np.inf)
  out[idx[order]] = lp_sorted - log_eq + log_top
  return log_normalize(out)  # removes float round-off (the exact masses sum to 1)


def best_of_n_distribution(ref_logp_N, rewards_N, n: int) -> np.ndarray:
  """Exact log-probs of best-of-n sampling from π_ref under `rewards_N` (ties split uniformly).

  See the module docstring for the formula. n = 1 returns π_ref.
  """
  if int(n) != n or n < 1:
    raise ValueError(f"best_of_n_distribution: n must be a positive integer, got {n}")
  ref_logp_N = _as_logp("best_of_n_distribution(ref)", ref_logp_N, check_normalized=True)
  rewards_N = np.broadcast_to(np.asarray(rewards_N, dtype=np.float64), ref_logp_N.shape)
  if np.isnan(rewards_N).any():
    raise ValueError("best_of_n_distribution: rewards contain NaN")
  flat_lp = ref_logp_N.reshape(-1, ref_logp_N.shape[-1])
  flat_r = rewards_N.reshape(-1, ref_logp_N.shape[-1])
  out = np.stack([_best_of_n_1d(lp, r, int(n)) for lp, r in zip(flat_lp, flat_r)])
  return out.reshape(ref_logp_N.shape)


def best_of_n_kl(ref_logp_N, rewards_N, n: int) -> np.ndarray:
  """Exact KL(best-of-n ‖ π_ref); never above `best_of_n_kl_bound(n)`."""
  return exact_kl(best_of_n_distribution(ref_logp_N, rewards_N, n), ref_logp_N)


def best_of_n_kl_bound(n: int) -> float:
  """log n − (n−1)/n: the usual best-of-n KL formula, an upper bound (exact for distinct rewards
  on a continuous space)."""
  if n < 1:
    raise ValueError(f"best_of_n_kl_bound: n must be >= 1, got {n}")
  return float(np.log(n) - (n - 1) / n)
