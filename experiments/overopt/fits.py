"""The functional forms of Gao, Schulman & Hilton 2022 (eqs. 1-2) for the gold-reward gain
R(d) = gold(d) − gold(0) against d = √KL(π‖π_ref):

  best-of-n   R_bon(d) = d (α − β d)             peak at d* = α / (2β),       R* = α² / (4β)
  RL          R_RL(d)  = d (α − β log d)         peak at d* = exp(α/β − 1),   R* = β d*

Both are linear in (α, β), so the fits are ordinary least squares without intercept (R(0) = 0 by
construction); R² = 1 − SS_res / SS_tot is reported on the fitted points. A negative β means
the curve is still convex over the range (no fitted peak).
"""

from __future__ import annotations

import math

import numpy as np

FORMS = ("bon", "rl")


def design(form: str, d) -> np.ndarray:
  d = np.asarray(d, dtype=np.float64)
  if form == "bon":
    return np.stack([d, -d * d], axis=-1)
  if form == "rl":
    safe = np.where(d > 0, d, 1.0)
    return np.stack([d, -np.where(d > 0, d * np.log(safe), 0.0)], axis=-1)
  raise ValueError(f"unknown functional form {form!r}; valid: {list(FORMS)}")


def predict(form: str, d, alpha: float, beta: float) -> np.ndarray:
  return design(form, d) @ np.array([alpha, beta])


def fit(form: str, d, gain) -> dict:
  """Least-squares (α, β) of `form` to the gains at d, with R² and the fitted peak."""
  d, gain = np.asarray(d, np.float64), np.asarray(gain, np.float64)
  if len(d) < 3:
    raise ValueError(f"fit({form}): need >= 3 points, got {len(d)}")
  x = design(form, d)
  (alpha, beta), *_ = np.linalg.lstsq(x, gain, rcond=None)
  resid = gain - x @ np.array([alpha, beta])
  ss_tot = float(np.sum((gain - gain.mean()) ** 2))
  r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 else float("nan")
  peak_d = peak_gain = None
  if beta > 0:
    peak_d = alpha / (2 * beta) if form == "bon" else math.exp(min(alpha / beta - 1, 50.0))
    peak_gain = float(predict(form, peak_d, alpha, beta))
  return {"form": form, "alpha": float(alpha), "beta": float(beta), "r2": r2,
          "fit_peak_d": peak_d, "fit_peak_gain": peak_gain, "points": int(len(d)),
          "d_max": float(d.max())}


def peak_summary(d, gold) -> dict:
  """Observed start, peak and final gold along a curve ordered by optimisation effort."""
  d, gold = np.asarray(d, np.float64), np.asarray(gold, np.float64)
  i = int(np.argmax(gold))
  peak_gain, final_gain = float(gold[i] - gold[0]), float(gold[-1] - gold[0])
  return {"gold_start": float(gold[0]), "gold_peak": float(gold[i]), "gold_final": float(gold[-1]),
          "d_peak": float(d[i]), "d_final": float(d[-1]), "peak_gain": peak_gain,
          "final_gain": final_gain,
          "final_over_peak": final_gain / peak_gain if peak_gain > 0 else float("nan")}
