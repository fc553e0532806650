"""The over-optimisation experiment's steps (see experiments/overoptimization.py) and its result files.

Result rows (JSONL, one per point):
  proxies.jsonl    one per reward model: name, shape, params, pairs, ensemble size, held-out
                   accuracy, calibration (a, b) of the proxy to gold units under π_ref, seconds
  curves.jsonl     one per point of an optimisation curve: method (bon | kl_opt | ppo | grpo, or a
                   direct-alignment loss name: dpo, ipo, simpo, ... with kind "direct"),
                   run (curve id), target (proxy name, "<ensemble>:<combine>" or "gold"), its
                   shape / params / pairs, beta, n or step, kl, d = √kl, gold, gold_gain, proxy
                   (the target's own expected score, normalised units) and proxy_cal (gold units)
  estimator.jsonl  best-of-n from N samples (unbiased estimator) beside the exact value, per repeat
  fits.jsonl       per curve and functional form: α, β, R², fitted and observed peaks
  summary.json     the acceptance figures, the α/β trends, the claims table (claims.py),
                   runtimes; config.json the config
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time

import jax
import numpy as np

from rlhf_jax.tasks import exact
from rlhf_jax.train import dpo as dpo_steps, export
from rlhf_jax.train.jsonl import read_jsonl

from experiments.overopt import bon, claims as claims_lib, fits, runs, world as world_lib

_log = logging.getLogger(__name__)


def paper_form(row: dict) -> str:
  """The functional form (fits.FORMS) the literature fits to a curve like `row`'s: best-of-n
  the quadratic R_bon (Gao et al. 2022, eq. 1); RL (PPO, GRPO, the exact KL optimum) R_RL
  (eq. 2); and every direct-alignment loss, whatever its name (its rows are of kind "direct"),
  R_RL as well, as Rafailov et al. 2024 ("Scaling Laws for Reward Model Overoptimization in
  Direct Alignment Algorithms") fit their training trajectories."""
  if row["method"] == "bon":
    return "bon"
  if row["method"] in ("kl_opt", "ppo", "grpo") or row.get("kind") == "direct":
    return "rl"
  raise ValueError(f"no functional form for method {row['method']!r} (kind {row.get('kind')!r})")


def check_config(c) -> None:
  """Fails before any training on a direct-alignment loss the DPO step cannot run."""
  valid = dpo_steps.pair_loss_names()
  losses = list(c.dpo.losses)
  for name in losses:
    if name not in valid:
      raise ValueError(f"dpo.losses: unknown loss {name!r}; valid choices: {valid}")
  if len(set(losses)) != len(losses):
    raise ValueError(f"dpo.losses: {losses} names a loss twice")


def enable_compilation_cache(path: str) -> None:
  """Persistent XLA cache: the many PPO/DPO runs share most of their jitted computations."""
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _clean(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if isinstance(x, np.generic):
    return _clean(x.item())
  return x


def write_jsonl(path: str, rows: list[dict]) -> None:
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(_clean(row), sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------ proxies
def proxy_specs(c) -> list[dict]:
  """The reward models of the experiment, smallest shape first; the ensemble last."""
  p = c.proxy
  for shape in p.sizes:
    if shape not in p.shapes:
      raise ValueError(f"proxy.sizes: unknown shape {shape!r}; valid: {sorted(p.shapes)}")
  if p.grid == "full":
    combos = [(s, n) for s in p.sizes for n in p.pairs]
  elif p.grid == "cross":
    if p.default_shape not in p.sizes or p.default_pairs not in p.pairs:
      raise ValueError(f"proxy.grid='cross' needs default_shape in sizes and default_pairs in "
                       f"pairs; got {p.default_shape!r} / {p.default_pairs}")
    combos = [(s, p.default_pairs) for s in p.sizes]
    combos += [(p.default_shape, n) for n in p.pairs if n != p.default_pairs]
  else:
    raise ValueError(f"unknown proxy.grid {p.grid!r}; valid: ['cross', 'full']")
  specs = [{"name": f"{s}_p{n}", "shape": s, "pairs": int(n), "ensemble_size": 1,
            "data_fraction": 1.0} for s, n in combos]
  e = p.ensemble
  if e.size > 1:
    specs.append({"name": f"ens{e.size}_{e.shape}_p{e.pairs}", "shape": e.shape,
                  "pairs": int(e.pairs), "ensemble_size": int(e.size),
                  "data_fraction": float(e.data_fraction)})
  return specs


def acceptance_proxy(c) -> str:
  return c.acceptance_proxy or f"{c.proxy.sizes[0]}_p{c.proxy.default_pairs}"


def ref_moments(ref_logp_PxN, table_PxN) -> tuple[float, float]:
  """Mean and std of a table under π_ref, pooled over prompts (prompts weighted equally)."""
  mean = float(np.mean(exact.expectation(ref_logp_PxN, table_PxN)))
  var = float(np.mean(exact.expectation(ref_logp_PxN, (table_PxN - mean) ** 2)))
  return mean, math.sqrt(var)


def calibration(ref_logp_PxN, gold_PxN, table_PxN) -> dict:
  """proxy_cal = a + b·proxy matches gold's mean and std under π_ref (a plotting unit only)."""
  gm, gs = ref_moments(ref_logp_PxN, gold_PxN)
  pm, ps = ref_moments(ref_logp_PxN, table_PxN)
  b = gs / ps if ps > 0 else 1.0
  p_PxN = np.exp(ref_logp_PxN)
  cov = float(np.mean(np.sum(p_PxN * (gold_PxN - gm) * (table_PxN - pm), -1)))
  return {"a": gm - b * pm, "b": b, "ref_corr": cov / (gs * ps) if gs * ps > 0 else None}


# ------------------------------------------------------------------------------------ run
class Results:
  def __init__(self, directory: str):
    self.dir = directory
    os.makedirs(directory, exist_ok=True)
    self.proxies, self.curves, self.estimator, self.fits = [], [], [], []
    self.summary = {"runtimes": {}}

  def flush(self) -> None:
    for name in ("proxies", "curves", "estimator", "fits"):
      write_jsonl(os.path.join(self.dir, f"{name}.jsonl"), getattr(self, name))
    runs.write_json(os.path.join(self.dir, "summary.json"), _clean(self.summary))


def _curve_rows(method: str, run: str, meta: dict, points: list[dict], calib: dict,
                gold0: float, **extra) -> list[dict]:
  out = []
  for pt in points:
    row = {"method": method, "run": run, **meta, **extra, **pt}
    row["d"] = math.sqrt(max(row["kl"], 0.0))
    row["gold_gain"] = row["gold"] - gold0
    if row.get("proxy") is not None:
      row["proxy_cal"] = calib["a"] + calib["b"] * row["proxy"]
    out.append(row)
  return out


def run(c, workdir: str, results_dir: str, *, config_spec: str = "", overrides=()) -> dict:
  check_config(c)
  c = copy.deepcopy(c)
  c.data_dir = c.data_dir or os.path.join(os.path.abspath(workdir), "data")
  os.makedirs(workdir, exist_ok=True)
  res = Results(results_dir)
  runs.write_json(os.path.join(results_dir, "config.json"),
                  {"spec": config_spec, "overrides": [list(o) for o in overrides],
                   "config": json.loads(c.to_json())})
  times = res.summary["runtimes"]
  t_start, cpu_start = time.perf_counter(), time.process_time()

  def phase(name, t0):
    times[name] = round(time.perf_counter() - t0, 1)
    times["total"] = round(time.perf_counter() - t_start, 1)
    times["total_cpu"] = round(time.process_time() - cpu_start, 1)
    _log.info("phase %s: %.1f s (total %.1f s)", name, times[name], times["total"])
    res.flush()

  # 1. SFT policy = π_ref, and the exact tables.
  t0 = time.perf_counter()
  sft_dir = os.path.join(workdir, "sft")
  runs.train_sft(c, sft_dir)
  world = world_lib.make_world(runs.stage_config("configs/sft.py:enumerable", runs.base_overrides(c)),
                               c.world.prompts, batch_size=c.world.batch_size)
  sft = export.load(sft_dir, world.mesh, world.rules, kind="lm")
  scorer = world_lib.PolicyScorer(world, sft.graphdef)
  ref_PxN, invalid = scorer.distribution(sft.params)
  gold_PxN = world.gold_PxN
  gold0 = float(np.mean(exact.expectation(ref_PxN, gold_PxN)))
  res.summary["reference"] = {"prompts": world.prompts, "gold": gold0, "invalid_mass": invalid,
                              "kl_to_world_reference": float(np.mean(exact.exact_kl(
                                  ref_PxN, np.stack([world.task.reference_logp_N(x)
                                                     for x in world.prompts]))))}
  phase("sft_and_reference", t0)

  # 2. Proxies.
  t0 = time.perf_counter()
  targets = {"gold": ({"target": "gold", "kind": "gold", "shape": None, "params": None,
                       "pairs": None, "ensemble_size": None, "combine": None}, gold_PxN)}
  calibs = {"gold": {"a": 0.0, "b": 1.0, "ref_corr": 1.0}}
  for spec in proxy_specs(c):
    shape = spec["shape"]
    if c.proxy.init == "scratch":
      init_dir = os.path.join(workdir, f"init_{shape}")
      runs.init_export(c, init_dir, shape)
    elif c.proxy.init == "sft":
      init_dir = os.path.join(workdir, f"sft_{shape}")
      runs.train_sft(c, init_dir, shape=shape, root=workdir)
    else:
      raise ValueError(f"unknown proxy.init {c.proxy.init!r}; valid: ['scratch', 'sft']")
    rm_dir = os.path.join(workdir, "rm", spec["name"])
    seconds = runs.train_proxy(c, rm_dir, init_dir=init_dir, pairs=spec["pairs"],
                               ensemble_size=spec["ensemble_size"],
                               data_fraction=spec["data_fraction"])
    loaded = export.load(rm_dir, world.mesh, world.rules, kind="scalar")
    scores_ExPxN = world_lib.proxy_scores(world, loaded)
    n_params = sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(loaded.params))
    meta = {"shape": shape, "params": n_params, "pairs": spec["pairs"],
            "ensemble_size": spec["ensemble_size"]}
    if spec["ensemble_size"] == 1:
      named = {spec["name"]: (None, scores_ExPxN[0])}
    else:
      named = {f"{spec['name']}:{mode}": (mode, world_lib.combine(scores_ExPxN, mode,
                                                                  c.proxy.ensemble.lam))
               for mode in ("mean", "worst_case", "mean_minus_var")}
      named[f"{spec['name']}:member0"] = ("member0", scores_ExPxN[0])
    for name, (mode, table) in named.items():
      targets[name] = ({"target": name, "kind": "proxy" if mode is None else "ensemble", **meta,
                        "combine": mode}, table)
      calibs[name] = calibration(ref_PxN, gold_PxN, table)
    res.proxies.append({**spec, **meta, **runs.proxy_accuracy(rm_dir), "seconds": round(seconds, 1),
                        "calibration": calibs[next(iter(named))],
                        "init": c.proxy.init, "steps": c.proxy.steps})
  accept = acceptance_proxy(c)
  if accept not in targets:
    raise ValueError(f"acceptance_proxy {accept!r} is not a trained proxy; have {sorted(targets)}")
  phase("proxies", t0)

  # 3. Best-of-n, exact; the sample estimator as a check.
  t0 = time.perf_counter()
  ns = bon.n_grid(c.bon.n_max, c.bon.points_per_octave)
  for name, (meta, table) in targets.items():
    points = bon.exact_curve(ref_PxN, table, {"gold": gold_PxN, "proxy": table}, ns)
    res.curves += _curve_rows("bon", f"bon/{name}", meta, points, calibs[name], gold0, beta=None)
  est_ns = [n for n in c.bon.estimator_ns if n <= c.bon.estimator_samples]
  for name in (accept, "gold"):
    meta, table = targets[name]
    exact_pts = {p["n"]: p for p in bon.exact_curve(ref_PxN, table, {"gold": gold_PxN,
                                                                     "proxy": table}, est_ns)}
    for rep in range(c.bon.estimator_repeats):
      rng = np.random.default_rng([c.seed, rep])
      for pt in bon.sample_estimate(ref_PxN, table, {"gold": gold_PxN, "proxy": table}, est_ns,
                                    c.bon.estimator_samples, rng):
        e = exact_pts[pt["n"]]
        res.estimator.append({"target": name, "repeat": rep, **pt, "gold_exact": e["gold"],
                              "proxy_exact": e["proxy"], "kl_exact": e["kl"]})
  phase("best_of_n", t0)

  # 4. The exact KL-regularised optimum π*_β ∝ π_ref·exp(r/β), β from large to small.
  t0 = time.perf_counter()
  for name, (meta, table) in targets.items():
    points = [{"beta": None, "kl": 0.0, "gold": gold0,
               "proxy": float(np.mean(exact.expectation(ref_PxN, table)))}]
    for beta in sorted(c.kl_opt.betas, reverse=True):
      lp = exact.optimal_policy(ref_PxN, table, beta)
      points.append({"beta": float(beta), "kl": float(np.mean(exact.exact_kl(lp, ref_PxN))),
                     "gold": float(np.mean(exact.expectation(lp, gold_PxN))),
                     "proxy": float(np.mean(exact.expectation(lp, table)))})
    res.curves += _curve_rows("kl_opt", f"kl_opt/{name}", meta, points, calibs[name], gold0)
  phase("kl_optimum", t0)

  # 5. PPO, then GRPO.
  def online_runs(method: str, plan: list[tuple[str, float]], run_fn) -> None:
    t0, seconds_by_run = time.perf_counter(), {}
    for name, beta in plan:
      meta, table = targets[name]
      run_id = f"{method}/{name}/beta={beta:g}"
      reward_dir = "" if name == "gold" else os.path.join(workdir, "rm", name.split(":")[0])
      evaluator = runs.ExactEval(scorer, ref_PxN, {"target": table})
      kwargs = ({"combine": meta["combine"] or "mean", "lam": c.proxy.ensemble.lam}
                if method == "ppo" else {})
      rows, seconds = run_fn(c, os.path.join(workdir, run_id.replace("=", "")), sft_dir=sft_dir,
                             evaluator=evaluator, reward_dir=reward_dir, beta=beta, **kwargs)
      points = [{"step": r["step"], "kl": r["kl"], "gold": r["gold_reward"],
                 "proxy": r["proxy/target"], "invalid_mass": r["invalid_mass"]} for r in rows]
      res.curves += _curve_rows(method, run_id, meta, points, calibs[name], gold0, beta=beta)
      seconds_by_run[run_id] = round(seconds, 1)
      times[f"{method}_runs"] = seconds_by_run
      res.flush()
    phase(method, t0)

  pc = c.ppo
  plan = []   # (target name, beta)
  if pc.gold:
    plan.append(("gold", 0.0))
  singles = [n for n, (m, _) in targets.items() if m["kind"] == "proxy"]
  for name in (singles if pc.proxies == "all" else [accept]):
    plan.append((name, 0.0))
  plan += [(accept, float(b)) for b in pc.betas]
  ens = [n for n, (m, _) in targets.items() if m["kind"] == "ensemble"]
  plan += [(n, 0.0) for n in ens if targets[n][0]["combine"] in pc.ensemble_combines]
  online_runs("ppo", plan, runs.run_ppo)
  grpo_plan = [("gold", 0.0)] if c.grpo.gold else []
  online_runs("grpo", grpo_plan + [(accept, float(b)) for b in c.grpo.betas], runs.run_grpo)

  # 6. Direct alignment.
  t0 = time.perf_counter()
  dpo_meta = {"target": "pairs", "kind": "direct", "shape": None, "params": None,
              "pairs": int(c.dpo.pairs), "ensemble_size": None, "combine": None}
  dpo_times = {}
  for loss in c.dpo.losses:
    for beta in c.dpo.betas:
      run_id = f"{loss}/beta={beta:g}"
      evaluator = runs.ExactEval(scorer, ref_PxN, {})
      rows, seconds = runs.run_dpo(c, os.path.join(workdir, run_id.replace("=", "")),
                                   sft_dir=sft_dir, evaluator=evaluator, loss=loss, beta=beta)
      points = [{"step": r["step"], "kl": r["kl"], "gold": r["gold_reward"], "proxy": None,
                 "pair_accuracy": r.get("accuracy")} for r in rows]
      res.curves += _curve_rows(loss, run_id, dpo_meta, points, calibs["gold"], gold0,
                                beta=float(beta))
      dpo_times[run_id] = round(seconds, 1)
      times["dpo_runs"] = dpo_times
      res.flush()
  phase("direct_alignment", t0)

  # 7. Fits and the summary.
  analyze(res, c)
  phase("fits", time.perf_counter())
  return res.summary


def analyze(res: Results, c) -> None:
  """Fits, acceptance figures and trends from the curves (also run alone by `reanalyze`)."""
  res.fits = fit_curves(res.curves, c.bon.fit_n_max)
  res.summary["acceptance"] = acceptance(res.curves, res.fits, acceptance_proxy(c))
  res.summary["trends"] = trends(res.fits, res.proxies, c)
  res.summary["claims"] = claims_lib.claims(res.curves, res.summary["trends"],
                                            acceptance_proxy(c))


def reanalyze(c, results_dir: str) -> dict:
  """Recomputes fits.jsonl and the summary's analysis from curves.jsonl / proxies.jsonl."""
  res = Results(results_dir)
  res.proxies = read_jsonl(os.path.join(results_dir, "proxies.jsonl"))
  res.curves = read_jsonl(os.path.join(results_dir, "curves.jsonl"))
  res.estimator = read_jsonl(os.path.join(results_dir, "estimator.jsonl"))
  with open(os.path.join(results_dir, "summary.json")) as f:
    res.summary = json.load(f)
  analyze(res, c)
  res.flush()
  return res.summary


# ------------------------------------------------------------------------------------ analysis
def curves_by_run(curves: list[dict]) -> dict[str, list[dict]]:
  out = {}
  for row in curves:
    out.setdefault(row["run"], []).append(row)
  return out


def fit_curves(curves: list[dict], fit_n_max: int) -> list[dict]:
  """Both functional forms on every curve (the paper's form for its method marked)."""
  rows = []
  for run_id, pts in curves_by_run(curves).items():
    if run_id.startswith("bon/"):
      pts = [p for p in pts if p["n"] <= fit_n_max]
    if len(pts) < 3:
      continue
    d = [p["d"] for p in pts]
    gain = [p["gold_gain"] for p in pts]
    first = pts[0]
    meta = {k: first.get(k) for k in ("method", "run", "target", "kind", "shape", "params",
                                      "pairs", "ensemble_size", "combine")}
    meta["run_beta"] = first.get("beta")   # the run's KL coefficient / DPO β ("beta" is the fit's)
    for form in fits.FORMS:
      rows.append({**meta, **fits.fit(form, d, gain), **fits.peak_summary(d, [p["gold"] for p in pts]),
                   "paper_form": paper_form(first) == form})
  return rows


def _curve_check(pts: list[dict]) -> dict:
  d = [p["d"] for p in pts]
  out = fits.peak_summary(d, [p["gold"] for p in pts])
  proxy = [p["proxy"] for p in pts if p.get("proxy") is not None]
  if proxy:
    i_peak = int(np.argmax([p["gold"] for p in pts]))
    out.update({"proxy_start": proxy[0], "proxy_at_gold_peak": proxy[i_peak],
                "proxy_final": proxy[-1], "proxy_max": max(proxy),
                "proxy_rises_after_gold_peak": proxy[-1] > proxy[i_peak]})
  out["falls"] = bool(out["peak_gain"] > 0 and out["final_over_peak"] <= 0.8)
  return out


def acceptance(curves, fit_rows, accept: str) -> dict:
  by_run = curves_by_run(curves)
  paper = {(f["run"]): f for f in fit_rows if f["paper_form"]}
  out = {"acceptance_proxy": accept}
  for key, run_id in (("bon_proxy", f"bon/{accept}"), ("bon_gold", "bon/gold"),
                      ("ppo_proxy", f"ppo/{accept}/beta=0"), ("ppo_gold", "ppo/gold/beta=0"),
                      ("grpo_proxy", f"grpo/{accept}/beta=0"), ("grpo_gold", "grpo/gold/beta=0"),
                      ("kl_opt_proxy", f"kl_opt/{accept}"), ("kl_opt_gold", "kl_opt/gold")):
    if run_id in by_run:
      out[key] = {**_curve_check(by_run[run_id]),
                  **{f"fit_{k}": paper[run_id][k] for k in ("alpha", "beta", "r2")
                     if run_id in paper}}
  return out


def trends(fit_rows, proxies, c) -> dict:
  """Per method: the fitted α, β (paper form) and observed peak of each single proxy, ordered by
  params (at default_pairs) and by pairs (at default_shape), with whether the peak rises/moves
  right monotonically."""
  out = {}
  for method in ("bon", "kl_opt", "ppo"):
    rows = {f["target"]: f for f in fit_rows if f["method"] == method and f["paper_form"]
            and f["kind"] == "proxy" and (method != "ppo" or f["run_beta"] == 0.0)}
    by_size = sorted([r for r in rows.values() if r["pairs"] == c.proxy.default_pairs],
                     key=lambda r: r["params"])
    by_data = sorted([r for r in rows.values() if r["shape"] == c.proxy.default_shape],
                     key=lambda r: r["pairs"])
    entry = {}
    for axis, seq in (("size", by_size), ("data", by_data)):
      keep = ("target", "params", "pairs", "alpha", "beta", "r2", "gold_peak", "d_peak",
              "peak_gain", "final_over_peak")
      entry[axis] = {
          "rows": [{k: r[k] for k in keep} for r in seq],
          "peak_gold_increasing": bool(all(a["gold_peak"] < b["gold_peak"]
                                           for a, b in zip(seq, seq[1:]))),
          "peak_d_increasing": bool(all(a["d_peak"] < b["d_peak"] for a, b in zip(seq, seq[1:]))),
      }
    out[method] = entry
  return out
