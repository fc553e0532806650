"""The study's trends set beside the literature's claims, claim by claim (numpy only: notebooks
read it without JAX).

Each claim is a dict: id, source (paper and section), claim (the paper's statement), test (the
rule applied here), numbers (what the rule reads, from the fits and curves of one results set),
figures (those numbers in one line), verdict ("reproduced" or "not reproduced"). d = √KL(π‖π_ref); gold in the gold reward's units.

  rm_size_beta / rm_size_alpha   Gao, Schulman & Hilton 2022, §3.2 and fig. 3: with a larger
      proxy RM, β (the over-optimisation coefficient) falls and α rises, for best-of-n and RL.
      Rule: over the single proxies at the default number of pairs ordered by parameters, the
      largest proxy's β is below (α above) the smallest's. `monotone` says whether every step
      agrees.
  data_peak   Gao et al. §3.4: more preference data, less over-optimisation; here the observed
      gold peak rises with the proxy's training pairs (default shape). Rule: the most pairs'
      peak above the fewest's.
  kl_penalty_early_stopping   Gao et al. §3.5: a KL penalty raises the proxy score at a given KL
      but not the gold reward: it acts like early stopping and does not move the gold-vs-d
      frontier. Rule: no PPO run with β > 0 against the acceptance proxy rises above the β = 0
      run's gold at the same d (linear interpolation, within the β = 0 run's range) by more than
      10% of the β = 0 run's peak gain.
  ensemble_bon_vs_ppo   Coste et al. 2023 ("Reward Model Ensembles Help Mitigate
      Overoptimization"): conservative ensemble objectives (worst case, mean − variance) mitigate
      over-optimisation, by far more for best-of-n than for PPO. Rule: per method, the best
      conservative objective's gold minus the single proxy's (the ensemble members' own shape
      and pairs), at the largest d both curves reach; reproduced when best-of-n's advantage
      exceeds PPO's.
"""

from __future__ import annotations

import numpy as np

CONSERVATIVE = ("worst_case", "mean_minus_var")
KL_FRONTIER_TOLERANCE = 0.1   # of the β = 0 run's peak gain


def _verdict(ok: bool) -> str:
  return "reproduced" if ok else "not reproduced"


def _seq(values) -> str:
  return " → ".join(f"{v:,}" if isinstance(v, int) else f"{v:.3g}" for v in values)


def _by_run(curves: list[dict]) -> dict[str, list[dict]]:
  out = {}
  for row in curves:
    out.setdefault(row["run"], []).append(row)
  return out


def gold_at(pts: list[dict], d: float) -> float:
  """A curve's gold at `d`, linearly interpolated over its points sorted by d."""
  order = sorted(pts, key=lambda p: p["d"])
  return float(np.interp(d, [p["d"] for p in order], [p["gold"] for p in order]))


def rm_size(trends: dict, key: str) -> dict:
  """β falls (key="beta") or α rises (key="alpha") with the proxy's parameters."""
  falls = key == "beta"
  numbers, ok = {}, True
  for method in ("bon", "ppo"):
    rows = trends.get(method, {}).get("size", {}).get("rows", [])
    values = [r[key] for r in rows]
    numbers[method] = {"params": [r["params"] for r in rows], key: values}
    if len(values) < 2:
      ok = False
      continue
    steps = np.diff(values)
    numbers[method]["monotone"] = bool(np.all(steps < 0) if falls else np.all(steps > 0))
    ok &= bool(values[-1] < values[0] if falls else values[-1] > values[0])
  what = "falls" if falls else "rises"
  symbol = "β" if falls else "α"
  figures = "; ".join(f"{m}: {symbol} {_seq(v[key])} at {_seq(v['params'])} params"
                      for m, v in numbers.items())
  return {"id": f"rm_size_{key}", "source": "Gao et al. 2022, §3.2, fig. 3",
          "claim": f"{symbol} {what} as the proxy RM grows (best-of-n and RL)",
          "test": f"the largest proxy's {symbol} {'<' if falls else '>'} the smallest's, "
                  "for best-of-n and PPO",
          "numbers": numbers, "figures": figures, "verdict": _verdict(ok)}


def data_peak(trends: dict) -> dict:
  numbers, ok = {}, True
  for method in ("bon", "ppo"):
    rows = trends.get(method, {}).get("data", {}).get("rows", [])
    peaks = [r["gold_peak"] for r in rows]
    numbers[method] = {"pairs": [r["pairs"] for r in rows], "gold_peak": peaks}
    if len(peaks) < 2:
      ok = False
      continue
    numbers[method]["monotone"] = bool(np.all(np.diff(peaks) > 0))
    ok &= bool(peaks[-1] > peaks[0])
  figures = "; ".join(f"{m}: peak gold {_seq(v['gold_peak'])} at {_seq(v['pairs'])} pairs"
                      for m, v in numbers.items())
  return {"id": "data_peak", "source": "Gao et al. 2022, §3.4",
          "claim": "more preference data, less over-optimisation (a higher gold peak)",
          "test": "the gold peak with the most pairs > with the fewest, for best-of-n and PPO",
          "numbers": numbers, "figures": figures, "verdict": _verdict(ok)}


def kl_penalty(curves: list[dict], accept: str) -> dict:
  runs = _by_run(curves)
  frontier = runs.get(f"ppo/{accept}/beta=0", [])
  numbers = {"frontier_run": f"ppo/{accept}/beta=0", "penalised": {}}
  ok = bool(frontier)
  if frontier:
    gold0 = frontier[0]["gold"]
    peak_gain = max(p["gold"] for p in frontier) - gold0
    d_max = max(p["d"] for p in frontier)
    tolerance = KL_FRONTIER_TOLERANCE * peak_gain
    numbers.update(frontier_peak_gold=max(p["gold"] for p in frontier), tolerance=tolerance)
    penalised = sorted((pts for run, pts in runs.items() if run.startswith(f"ppo/{accept}/beta=")
                        and pts[0]["beta"]), key=lambda pts: pts[0]["beta"])
    ok = bool(penalised)
    for pts in penalised:  # the points past the start (at d = 0 every run is the SFT policy)
      inside = [p for p in pts if 0 < p["d"] <= d_max]
      excess = max((p["gold"] - gold_at(frontier, p["d"]) for p in inside), default=None)
      peak = max(pts, key=lambda p: p["gold"])
      numbers["penalised"][f"beta={pts[0]['beta']:g}"] = {
          "peak_gold": peak["gold"], "d_at_peak": peak["d"], "max_excess_over_frontier": excess}
      ok &= excess is not None and bool(excess <= tolerance)
  figures = "; ".join(
      f"{b}: peak gold {v['peak_gold']:.3g} at d {v['d_at_peak']:.3g}, max gold above the "
      f"frontier {'n/a' if v['max_excess_over_frontier'] is None else format(v['max_excess_over_frontier'], '.3g')}"
      for b, v in numbers["penalised"].items())
  if frontier:
    figures = (f"β = 0: peak gold {numbers['frontier_peak_gold']:.3g}, tolerance "
               f"{numbers['tolerance']:.3g}; " + figures)
  return {"id": "kl_penalty_early_stopping", "source": "Gao et al. 2022, §3.5",
          "claim": "a KL penalty acts like early stopping: it does not move the gold-vs-KL "
                   "frontier",
          "test": f"no β > 0 PPO run exceeds the β = 0 run's gold at equal d by more than "
                  f"{KL_FRONTIER_TOLERANCE:g} of its peak gain",
          "numbers": numbers, "figures": figures, "verdict": _verdict(ok)}


def ensemble_help(curves: list[dict]) -> dict:
  runs = _by_run(curves)
  numbers, best = {}, {}
  for method in ("bon", "ppo"):
    numbers[method] = {}
    for run, pts in runs.items():
      first = pts[0]
      if first["method"] != method or first["kind"] != "ensemble":
        continue
      if first["combine"] not in CONSERVATIVE or (method == "ppo" and first["beta"]):
        continue
      single_target = f"{first['shape']}_p{first['pairs']}"
      single = runs.get(f"bon/{single_target}" if method == "bon"
                        else f"ppo/{single_target}/beta=0")
      if single is None:
        continue
      d = min(max(p["d"] for p in pts), max(p["d"] for p in single))
      numbers[method][first["target"]] = {
          "vs": single_target, "d": d, "gold": gold_at(pts, d),
          "single_gold": gold_at(single, d), "help": gold_at(pts, d) - gold_at(single, d)}
    helps = [v["help"] for v in numbers[method].values()]
    best[method] = max(helps) if helps else None
  numbers["best_help"] = best
  ok = best["bon"] is not None and best["ppo"] is not None and best["bon"] > best["ppo"]
  figures = "; ".join(f"{m}: " + ", ".join(f"{t.split(':')[-1]} {v['help']:+.3g} at d {v['d']:.3g}"
                                            for t, v in numbers[m].items())
                      for m in ("bon", "ppo"))
  return {"id": "ensemble_bon_vs_ppo", "source": "Coste et al. 2023",
          "claim": "conservative ensemble objectives mitigate over-optimisation more for "
                   "best-of-n than for PPO",
          "test": "best conservative objective's gold minus the single proxy's at the largest "
                  "common d: best-of-n's > PPO's",
          "numbers": numbers, "figures": figures, "verdict": _verdict(ok)}


def claims(curves: list[dict], trends: dict, accept: str) -> list[dict]:
  """Every claim of the module docstring, from one results set's curves and fitted trends."""
  return [rm_size(trends, "beta"), rm_size(trends, "alpha"), data_peak(trends),
          kl_penalty(curves, accept), ensemble_help(curves)]


def table(rows: list[dict]) -> str:
  """The claims as a Markdown table: claim, source, the rule, the numbers, verdict."""
  lines = ["| claim | source | test here | numbers | verdict |", "|---|---|---|---|---|"]
  lines += [f"| {r['claim']} | {r['source']} | {r['test']} | {r['figures']} | "
            f"**{r['verdict']}** |" for r in rows]
  return "\n".join(lines)
