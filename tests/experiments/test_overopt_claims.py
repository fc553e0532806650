"""The claims table of the over-optimisation study (experiments/overopt/claims.py), re-run on the
committed results: its numbers are those of the result files, each verdict follows from its
numbers, and a changed number flips the verdict (no training, no JAX computation)."""

import copy
import json
import math
import os
import shutil

import pytest

from experiments.overopt import claims, driver
from rlhf_jax import configlib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMITTED = os.path.join(REPO, "experiments", "results", "overoptimization")


def _close(a, b) -> bool:
  """Nested results equal, floats to 1e-9 relative (pytest.approx does not nest)."""
  if isinstance(a, dict):
    return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
  if isinstance(a, list):
    return isinstance(b, list) and len(a) == len(b) and all(map(_close, a, b))
  if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
  return a == b


@pytest.fixture(scope="module")
def reanalysed(tmp_path_factory):
  """(the committed summary, the summary of the committed curves analysed again)."""
  out = str(tmp_path_factory.mktemp("claims") / "results")
  shutil.copytree(COMMITTED, out)
  with open(os.path.join(COMMITTED, "summary.json")) as f:
    committed = json.load(f)
  return committed, driver.reanalyze(configlib.get("configs/overoptimization.py"), out)


def test_the_committed_table_is_the_analysis_of_the_committed_curves(reanalysed):
  committed, summary = reanalysed
  assert [c["id"] for c in summary["claims"]] == ["rm_size_beta", "rm_size_alpha", "data_peak",
                                                  "kl_penalty_early_stopping",
                                                  "ensemble_bon_vs_ppo"]
  # numbers to float rounding: the fits' least squares may round differently on another CPU
  fresh = json.loads(json.dumps(summary["claims"]))
  assert [(c["id"], c["verdict"]) for c in committed["claims"]] == [(c["id"], c["verdict"])
                                                                     for c in fresh]
  for old, new in zip(committed["claims"], fresh):
    assert _close(old["numbers"], new["numbers"]), (old["id"], old["numbers"], new["numbers"])
  table = claims.table(summary["claims"])
  assert table.count("\n") == len(summary["claims"]) + 1
  for c in summary["claims"]:
    assert c["verdict"] in ("reproduced", "not reproduced") and c["figures"] in table


def test_each_verdict_follows_from_its_numbers(reanalysed):
  _, summary = reanalysed
  by_id = {c["id"]: c for c in summary["claims"]}
  fit_rows = driver.read_jsonl(os.path.join(COMMITTED, "fits.jsonl"))
  default_pairs = configlib.get("configs/overoptimization.py").proxy.default_pairs
  for key, falls in (("beta", True), ("alpha", False)):
    n = by_id[f"rm_size_{key}"]["numbers"]
    for method in ("bon", "ppo"):  # the numbers are the paper-form fits of the sized proxies
      fitted = {f["params"]: f[key] for f in fit_rows
                if f["method"] == method and f["paper_form"] and f["kind"] == "proxy"
                and f["pairs"] == default_pairs and f["run_beta"] in (None, 0.0)}
      assert n[method][key] == pytest.approx([fitted[p] for p in n[method]["params"]],
                                             rel=1e-9, abs=1e-12)
    want = all((v[key][-1] < v[key][0]) if falls else (v[key][-1] > v[key][0])
               for v in n.values())
    assert by_id[f"rm_size_{key}"]["verdict"] == ("reproduced" if want else "not reproduced")
  n = by_id["data_peak"]["numbers"]
  want = all(v["gold_peak"][-1] > v["gold_peak"][0] for v in n.values())
  assert by_id["data_peak"]["verdict"] == ("reproduced" if want else "not reproduced")
  n = by_id["kl_penalty_early_stopping"]["numbers"]
  assert n["penalised"], n
  want = all(v["max_excess_over_frontier"] <= n["tolerance"] for v in n["penalised"].values())
  assert by_id["kl_penalty_early_stopping"]["verdict"] == ("reproduced" if want else
                                                           "not reproduced")
  n = by_id["ensemble_bon_vs_ppo"]["numbers"]
  for method in ("bon", "ppo"):
    assert n["best_help"][method] == max(v["help"] for v in n[method].values())
  want = n["best_help"]["bon"] > n["best_help"]["ppo"]
  assert by_id["ensemble_bon_vs_ppo"]["verdict"] == ("reproduced" if want else "not reproduced")


def test_a_changed_number_flips_the_verdict(reanalysed):
  _, summary = reanalysed
  def with_betas(betas):  # the sized proxies' β replaced, smallest proxy first
    trends = copy.deepcopy(summary["trends"])
    for method in ("bon", "ppo"):
      for row, beta in zip(trends[method]["size"]["rows"], betas):
        row["beta"] = beta
    return trends
  n = len(summary["trends"]["bon"]["size"]["rows"])
  assert claims.rm_size(with_betas(range(n, 0, -1)), "beta")["verdict"] == "reproduced"
  assert claims.rm_size(with_betas(range(1, n + 1)), "beta")["verdict"] == "not reproduced"
  curves = driver.read_jsonl(os.path.join(COMMITTED, "curves.jsonl"))
  accept = summary["acceptance"]["acceptance_proxy"]
  def shifted(delta):  # every penalised PPO curve moved by `delta` gold past its start
    return [{**r, "gold": r["gold"] + delta}
            if r["run"].startswith(f"ppo/{accept}/beta=") and r["beta"] and r["d"] > 0 else r
            for r in curves]
  # far below the unpenalised frontier: early stopping; far above it: a new frontier
  assert claims.kl_penalty(shifted(-10.0), accept)["verdict"] == "reproduced"
  assert claims.kl_penalty(shifted(+10.0), accept)["verdict"] == "not reproduced"
