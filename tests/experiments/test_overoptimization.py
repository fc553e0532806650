"""The over-optimisation experiment end to end on its `:test` config, and its notebooks headless.

One module-scoped run of experiments/overoptimization.py (configs/overoptimization.py:test: SFT,
proxies of two shapes and two data sizes, an ensemble, exact best-of-n, the KL optimum, PPO and
DPO/IPO) writes a small results set that the assertions and both notebooks read; a copy with one
more direct-alignment loss checks that the analysis and notebooks take any.
"""

import json
import math
import os
import shutil

import nbclient
import nbformat
import numpy as np
import pytest

from experiments.overopt import driver, plots, runs, world as world_lib
from rlhf_jax import configlib
from rlhf_jax.train import export
from rlhf_jax.train.enumerable_eval import EnumerableEvaluator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """The `:test` experiment, with a persistent XLA cache while it runs (its PPO and DPO runs
  share most compiled computations), switched off again afterwards."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache
  root = tmp_path_factory.mktemp("overopt")
  config = configlib.get("configs/overoptimization.py:test")
  previous = jax.config.jax_compilation_cache_dir
  driver.enable_compilation_cache(str(root / "jax_cache"))
  try:
    summary = driver.run(config, str(root / "runs"), str(root / "results"),
                         config_spec="configs/overoptimization.py:test")
  finally:
    jax.config.update("jax_compilation_cache_dir", previous)
    compilation_cache.reset_cache()
  return root, summary


def _read(root, name):
  return driver.read_jsonl(str(root / "results" / name))


def test_result_files_have_every_method_and_proxy(results):
  root, summary = results
  proxies = _read(root, "proxies.jsonl")
  assert [p["name"] for p in proxies] == ["xs_p1024", "s_p1024", "s_p256", "ens2_xs_p1024"]
  assert all(0.0 <= p["test_accuracy"] <= 1.0 and p["params"] > 0 for p in proxies)
  assert proxies[0]["params"] < proxies[1]["params"]
  curves = _read(root, "curves.jsonl")
  methods = {(r["method"], r["target"]) for r in curves}
  for want in [("bon", "gold"), ("bon", "xs_p1024"), ("bon", "ens2_xs_p1024:worst_case"),
               ("kl_opt", "s_p256"), ("ppo", "gold"), ("ppo", "xs_p1024"),
               ("ppo", "ens2_xs_p1024:worst_case"), ("grpo", "gold"), ("grpo", "xs_p1024"),
               ("dpo", "pairs"), ("ipo", "pairs")]:
    assert want in methods, want
  for r in curves:
    assert math.isfinite(r["gold"]) and r["kl"] >= -1e-9 and r["d"] == pytest.approx(math.sqrt(max(r["kl"], 0)))
  ppo_betas = {r["beta"] for r in curves if r["method"] == "ppo" and r["target"] == "xs_p1024"}
  assert ppo_betas == {0.0, 0.1}
  config = json.load(open(root / "results" / "config.json"))
  assert config["spec"] == "configs/overoptimization.py:test"
  assert set(summary["runtimes"]) >= {"proxies", "best_of_n", "ppo", "grpo", "direct_alignment",
                                      "total"}


def test_best_of_n_is_exact_and_the_estimator_agrees(results):
  root, _ = results
  curves = driver.curves_by_run(_read(root, "curves.jsonl"))
  for run_id, pts in curves.items():
    if not run_id.startswith("bon/"):
      continue
    assert pts[0]["n"] == 1 and pts[0]["kl"] == pytest.approx(0.0, abs=1e-9)
    assert pts[-1]["n"] == 2 ** 12
    for p in pts:
      assert p["kl"] <= p["kl_bound"] + 1e-6, p   # the analytic formula bounds the exact KL
    proxy = [p["proxy"] for p in pts]
    assert all(b >= a - 1e-9 for a, b in zip(proxy, proxy[1:])), run_id  # BoN raises its target
  gold = [p["gold"] for p in curves["bon/gold"]]
  assert all(b >= a - 1e-9 for a, b in zip(gold, gold[1:]))   # gold as target: no fall
  assert gold[-1] > gold[0] + 1.0
  est = _read(root, "estimator.jsonl")
  n1 = [r for r in est if r["n"] == 1]
  assert n1 and all(abs(r["gold"] - r["gold_exact"]) < 0.5 for r in n1)
  for r in est:
    assert r["n"] <= r["num_samples"]


def test_ppo_and_direct_alignment_move_away_from_the_reference(results):
  root, summary = results
  curves = driver.curves_by_run(_read(root, "curves.jsonl"))
  for run_id in ("ppo/gold/beta=0", "ppo/xs_p1024/beta=0", "grpo/gold/beta=0",
                 "grpo/xs_p1024/beta=0", "dpo/beta=0.5", "ipo/beta=0.5"):
    pts = sorted(curves[run_id], key=lambda p: p["step"])
    assert pts[0]["step"] == 0 and pts[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert pts[-1]["kl"] > 0.01, (run_id, pts[-1])
  for method in ("ppo", "grpo"):
    gold_run = sorted(curves[f"{method}/gold/beta=0"], key=lambda p: p["step"])
    assert gold_run[-1]["gold"] > gold_run[0]["gold"], method
    # evaluated every c.grpo.eval_every / c.ppo.eval_every iterations, the start included
    assert [p["step"] for p in gold_run] == [0, 2, 4], gold_run
  acc = summary["acceptance"]
  for key in ("bon_proxy", "bon_gold", "ppo_proxy", "ppo_gold", "grpo_proxy", "grpo_gold"):
    assert {"gold_peak", "final_over_peak", "fit_r2"} <= set(acc[key]), key


def test_fits_cover_every_curve_with_both_forms(results):
  root, summary = results
  fit_rows = _read(root, "fits.jsonl")
  runs_with_fits = {f["run"] for f in fit_rows}
  assert {"bon/xs_p1024", "ppo/xs_p1024/beta=0", "grpo/xs_p1024/beta=0", "kl_opt/gold",
          "dpo/beta=0.5"} <= runs_with_fits
  for f in fit_rows:
    assert f["form"] in ("bon", "rl") and (f["r2"] is None or f["r2"] <= 1.0 + 1e-9)
  assert {"size", "data"} <= set(summary["trends"]["bon"])


def test_trie_distribution_equals_the_stage_evaluator(results):
  """The prefix-trie scorer (1024 rows per prompt) matches EnumerableEvaluator (5461 rows)."""
  root, _ = results
  config = runs.stage_config("configs/sft.py:enumerable",
                             [("data.data_dir", str(root / "runs" / "data"))])
  world = world_lib.make_world(config, 2, batch_size=2048)
  sft = export.load(str(root / "runs" / "sft"), world.mesh, world.rules, kind="lm")
  fast, _ = world_lib.PolicyScorer(world, sft.graphdef).distribution(sft.params)
  ev = EnumerableEvaluator(world.task, world.layout, sft.graphdef, world.mesh, batch_size=2048,
                           max_prompts=2)
  slow, _ = ev.distribution(sft.params)
  np.testing.assert_allclose(np.exp(fast), np.exp(slow), atol=1e-6)
  np.testing.assert_allclose(fast, slow, atol=1e-3)


def _execute(name, results_dir, figures_dir):
  """notebooks/<name>.ipynb executed headless on `results_dir`; returns the executed notebook."""
  os.environ["OVEROPT_RESULTS"] = str(results_dir)
  os.environ["OVEROPT_FIGURES"] = str(figures_dir)
  os.environ["MPLBACKEND"] = "Agg"
  try:
    nb = nbformat.read(os.path.join(REPO, "notebooks", f"{name}.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
  finally:
    for key in ("OVEROPT_RESULTS", "OVEROPT_FIGURES"):
      os.environ.pop(key, None)
  return nb


@pytest.mark.parametrize("name", ["overoptimization_curves", "loss_ablations"])
def test_notebook_runs_headless_on_the_test_results(results, name, tmp_path):
  root, _ = results
  nb = _execute(name, root / "results", tmp_path / "figures")
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert len(images) >= 2
  assert os.listdir(tmp_path / "figures")


def test_analysis_and_notebook_take_any_direct_alignment_loss(results, tmp_path):
  """A direct-alignment loss the study did not run (SimPO) added to the curves: the analysis
  fits it in the R_RL form (its paper form, as every DAA's), like the DPO curve it copies, and
  the loss-ablation notebook shows it."""
  root, _ = results
  shutil.copytree(root / "results", tmp_path / "results")
  path = str(tmp_path / "results" / "curves.jsonl")
  curves = driver.read_jsonl(path)
  added = [{**r, "method": "simpo", "run": r["run"].replace("dpo/", "simpo/", 1)}
           for r in curves if r["method"] == "dpo"]
  assert added
  driver.write_jsonl(path, curves + added)
  driver.reanalyze(configlib.get("configs/overoptimization.py:test"), str(tmp_path / "results"))
  fit_rows = _read(tmp_path, "fits.jsonl")
  paper = {f["run"]: f for f in fit_rows if f["paper_form"]}
  assert paper["simpo/beta=0.5"]["form"] == "rl"
  for key in ("alpha", "beta", "r2", "gold_peak"):
    assert paper["simpo/beta=0.5"][key] == paper["dpo/beta=0.5"][key], key
  assert plots.load(str(tmp_path / "results")).direct_methods() == ["dpo", "ipo", "simpo"]
  nb = _execute("loss_ablations", tmp_path / "results", tmp_path / "figures")
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
  assert "simpo/beta=0.5" in text and "ipo/beta=0.5" in text


def test_an_unknown_direct_alignment_loss_fails_before_any_work(tmp_path):
  config = configlib.get("configs/overoptimization.py:test")
  config.dpo.losses = ("dpo", "simp")
  with pytest.raises(ValueError, match=r"dpo.losses: unknown loss 'simp'; valid choices: .*'simpo'"):
    driver.run(config, str(tmp_path / "runs"), str(tmp_path / "results"))
  assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
