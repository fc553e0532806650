"""Reading and plotting the over-optimisation results: the helpers that the notebooks/ share.

The notebooks only read the result files that experiments/overoptimization.py writes (their rows
are described in driver.py); this module holds what they share:

  load(results_dir=None) -> Results   every result file of one run; Results.runs(method, **match)
                                      groups curve points by run id, Results.fit_of(run) gives its
                                      fitted functional form, Results.label_of(target) names a proxy
                                      with its size, data and held-out accuracy,
                                      Results.direct_methods() the direct-alignment losses present
  ordered(pts)                        a curve's points in order of optimisation effort
  plot_gold(ax, pts, ...)             gold reward against d = √KL along a curve
  plot_fit(ax, pts, fit, ...)         the fitted R(d) (fits.py) on top of the curve's start
  panel_grid(res, method, select, title, name)  one panel per curve: gold, proxy, fit and peak
  show(fig, name)                     saves a figure as a PNG and embeds that PNG in the output

Environment: OVEROPT_RESULTS is the results directory (default experiments/results/overoptimization
of this checkout); OVEROPT_FIGURES is where the PNGs go (default a fresh temporary directory).
Importing this module selects matplotlib's non-interactive Agg backend: figures reach the notebook
only as the PNGs that show() embeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from rlhf_jax.train.jsonl import read_jsonl  # noqa: E402  (JAX-free too)
from experiments.overopt import fits as fits_lib  # noqa: E402  (numpy only: no JAX in notebooks)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_RESULTS = os.path.join(REPO, "experiments", "results", "overoptimization")
_figure_dir = None


def results_dir() -> str:
  """$OVEROPT_RESULTS, else the committed results of this checkout."""
  return os.environ.get("OVEROPT_RESULTS", DEFAULT_RESULTS)


def figure_dir() -> str:
  """$OVEROPT_FIGURES, else a temporary directory made once per process; created if missing."""
  global _figure_dir
  if _figure_dir is None:
    _figure_dir = os.environ.get("OVEROPT_FIGURES") or tempfile.mkdtemp(prefix="overopt_figures_")
    os.makedirs(_figure_dir, exist_ok=True)
  return _figure_dir


@dataclasses.dataclass
class Results:
  """The result files of one run of experiments/overoptimization.py (rows as in driver.py)."""
  path: str
  curves: list[dict]
  fits: list[dict]
  proxies: list[dict]
  estimator: list[dict]
  summary: dict
  config: dict

  def runs(self, method: str | None = None, **match) -> dict[str, list[dict]]:
    """Curve points grouped by run id, in file order; only `method` and rows matching `match`."""
    out = {}
    for r in self.curves:
      if (method is None or r["method"] == method) and all(r.get(k) == v for k, v in match.items()):
        out.setdefault(r["run"], []).append(r)
    return out

  def direct_methods(self) -> list[str]:
    """The direct-alignment losses in the results (rows of kind "direct"), in file order."""
    return list(dict.fromkeys(r["method"] for r in self.curves if r.get("kind") == "direct"))

  def fit_of(self, run: str, paper: bool = True) -> dict | None:
    """The fit row of `run` in the paper's form for its method (paper=True) or the other form."""
    for f in self.fits:
      if f["run"] == run and f["paper_form"] == paper:
        return f
    return None

  def label_of(self, target: str) -> str:
    """`target` with its proxy's parameters, training pairs and held-out accuracy."""
    for p in self.proxies:
      if p["name"] == target.split(":")[0]:
        return f"{target} ({p['params']:,} params, {p['pairs']} pairs, acc {p['test_accuracy']:.2f})"
    return target

  def describe(self) -> str:
    return (f"results: {os.path.abspath(self.path)}\n"
            f"config: {self.config['spec']} {self.config['overrides']}\n"
            f"reference gold (SFT policy): {round(self.summary['reference']['gold'], 3)}")


def load(path: str | None = None) -> Results:
  """Reads every result file in `path` (default results_dir())."""
  path = results_dir() if path is None else path

  def json_file(name):
    with open(os.path.join(path, name)) as f:
      return json.load(f)

  rows = {name: read_jsonl(os.path.join(path, name + ".jsonl"))
          for name in ("curves", "fits", "proxies", "estimator")}
  return Results(path=path, summary=json_file("summary.json"), config=json_file("config.json"),
                 **rows)


def ordered(pts: list[dict]) -> list[dict]:
  """Points along optimisation effort: increasing n (best-of-n), step (PPO, DPO) or decreasing β."""
  return sorted(pts, key=lambda p: (p.get("n") or 0, p.get("step") or 0, -(p.get("beta") or 1e9)))


def plot_gold(ax, pts: list[dict], *fmt, **kwargs):
  """Gold reward against d = √KL along the curve `pts` (ordered first); returns the line."""
  pts = ordered(pts)
  return ax.plot([p["d"] for p in pts], [p["gold"] for p in pts], *fmt, **kwargs)[0]


def plot_fit(ax, pts: list[dict], fit: dict, *fmt, num: int = 200, **kwargs):
  """The fitted gain R(d) added to the curve's starting gold, from d = 0 to the curve's largest d."""
  dd = np.linspace(0, max(p["d"] for p in pts), num)
  gold0 = ordered(pts)[0]["gold"]
  return ax.plot(dd, gold0 + fits_lib.predict(fit["form"], dd, fit["alpha"], fit["beta"]), *fmt,
                 **kwargs)[0]


def panel_grid(res: Results, method: str, select, title: str, name: str) -> None:
  """One panel per run of `method` whose first point passes `select`: gold and calibrated proxy
  against d, the paper-form fit (dashed) and the gold peak (star); proxies by size, gold last."""
  items = [(run, pts) for run, pts in res.runs(method).items() if select(pts[0])]
  items.sort(key=lambda it: (it[1][0]["target"] == "gold", it[1][0].get("params") or 0,
                             it[1][0].get("pairs") or 0))
  if not items:
    print("no", method, "curves")
    return
  cols = min(3, len(items))
  rows = math.ceil(len(items) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
  for ax, (run, pts) in zip(axes.flat, items):
    pts = ordered(pts)
    d, gold = np.array([p["d"] for p in pts]), np.array([p["gold"] for p in pts])
    ax.plot(d, gold, "o-", color="C0", ms=3, label="gold")
    if pts[0].get("proxy_cal") is not None and pts[0]["target"] != "gold":
      ax.plot(d, [p["proxy_cal"] for p in pts], "s-", color="C1", ms=3, label="proxy (gold units)")
    f = res.fit_of(run)
    if f is not None:
      plot_fit(ax, pts, f, "--", color="k", lw=1,
               label=f"fit α={f['alpha']:.2f} β={f['beta']:.2f} R²={f['r2']:.2f}")
    i = int(np.argmax(gold))
    ax.plot(d[i], gold[i], "*", color="C3", ms=12)
    ax.set_title(res.label_of(pts[0]["target"]), fontsize=9)
    ax.set_xlabel("d = √KL(π‖π_ref)  [√nats]")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
  for ax in list(axes.flat)[len(items):]:
    ax.axis("off")
  fig.suptitle(title, fontsize=12)
  fig.tight_layout()
  show(fig, name)


def show(fig, name: str) -> None:
  """Saves `fig` as figure_dir()/<name>.png, closes it and embeds that PNG in the cell's output."""
  from IPython.display import Image, display  # pylint: disable=g-import-not-at-top
  path = os.path.join(figure_dir(), name + ".png")
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  display(Image(filename=path))
