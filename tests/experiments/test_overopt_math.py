"""Best-of-n estimator, n grid and the functional-form fits of experiments/overopt (no training)."""

import math

import numpy as np
import pytest

from experiments.overopt import bon, fits
from rlhf_jax.tasks import exact


def test_n_grid_is_increasing_and_ends_at_n_max():
  ns = bon.n_grid(1024, 2)
  assert ns[0] == 1 and ns[-1] == 1024
  assert all(a < b for a, b in zip(ns, ns[1:]))
  assert len(ns) == 20  # 2 points per octave over 10 octaves (1 and √2 both round to 1)


def test_estimator_weights_sum_to_one_and_pick_the_max_when_n_is_N():
  for n, big_n in ((1, 10), (4, 10), (16, 100)):
    w = bon.estimator_weights(n, big_n)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(w[:n - 1] == 0)
  np.testing.assert_allclose(bon.estimator_weights(1, 5), np.full(5, 0.2))
  np.testing.assert_allclose(bon.estimator_weights(5, 5), [0, 0, 0, 0, 1], atol=1e-12)
  # n = 2 of N = 3: the best of a random pair is rank 2 w.p. 1/3 and rank 3 w.p. 2/3.
  np.testing.assert_allclose(bon.estimator_weights(2, 3), [0, 1 / 3, 2 / 3])
  with pytest.raises(ValueError, match="n <= N"):
    bon.estimator_weights(6, 5)


def test_estimator_is_unbiased_against_the_exact_best_of_n():
  rng = np.random.default_rng(0)
  ref_PxN = exact.log_normalize(rng.normal(size=(3, 40)))
  target_PxN = rng.integers(0, 8, size=(3, 40)).astype(float)  # ties on purpose
  value_PxN = rng.normal(size=(3, 40))
  tables = {"v": value_PxN}
  exact_rows = {r["n"]: r for r in bon.exact_curve(ref_PxN, target_PxN, tables, [1, 4, 16])}
  est = [bon.sample_estimate(ref_PxN, target_PxN, tables, [1, 4, 16], 200,
                             np.random.default_rng(s)) for s in range(40)]
  for i, n in enumerate([1, 4, 16]):
    values = np.array([e[i]["v"] for e in est])
    se = values.std() / math.sqrt(len(values))
    assert abs(values.mean() - exact_rows[n]["v"]) < 4 * se + 1e-3, (n, values.mean(), exact_rows[n])
  for r in exact_rows.values():
    assert r["kl"] <= r["kl_bound"] + 1e-9


@pytest.mark.parametrize("form", fits.FORMS)
def test_fits_recover_the_generating_coefficients(form):
  d = np.linspace(0.0, 3.0, 25)
  gain = fits.predict(form, d, 1.3, 0.4)
  out = fits.fit(form, d, gain)
  assert out["alpha"] == pytest.approx(1.3) and out["beta"] == pytest.approx(0.4)
  assert out["r2"] == pytest.approx(1.0)
  peak = 1.3 / 0.8 if form == "bon" else math.exp(1.3 / 0.4 - 1)
  assert out["fit_peak_d"] == pytest.approx(peak)
  noisy = fits.fit(form, d, gain + np.random.default_rng(0).normal(0, 0.05, d.shape))
  assert 0.9 < noisy["r2"] < 1.0


def test_peak_summary_reports_the_fall():
  out = fits.peak_summary([0, 1, 2, 3], [1.0, 2.0, 3.0, 1.5])
  assert out["peak_gain"] == 2.0 and out["final_gain"] == 0.5 and out["final_over_peak"] == 0.25
  assert out["d_peak"] == 2.0


def test_config_variants_and_proxy_grid():
  from experiments.overopt import driver  # pylint: disable=g-import-not-at-top
  from rlhf_jax import configlib  # pylint: disable=g-import-not-at-top
  full = configlib.get("configs/overoptimization.py")
  assert [s["name"] for s in driver.proxy_specs(full)] == [
      "xs_p4096", "s_p4096", "m_p4096", "s_p256", "s_p1024", "ens4_xs_p4096"]
  assert driver.acceptance_proxy(full) == "xs_p4096"
  grid = configlib.get("configs/overoptimization.py", [("proxy.grid", "full")])
  assert len(driver.proxy_specs(grid)) == 3 * 3 + 1
  test = configlib.get("configs/overoptimization.py:test")
  assert [s["name"] for s in driver.proxy_specs(test)] == [
      "xs_p1024", "s_p1024", "s_p256", "ens2_xs_p1024"]
  with pytest.raises(ValueError, match="valid variants"):
    configlib.get("configs/overoptimization.py:nope")
  bad = configlib.get("configs/overoptimization.py", [("proxy.grid", "diagonal")])
  with pytest.raises(ValueError, match="proxy.grid"):
    driver.proxy_specs(bad)
