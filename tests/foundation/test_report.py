"""The console lines of train/report.py and the progress bar's clock (train/loop.py)."""

import tqdm

from rlhf_jax.train import loop, report


ROWS = [
    {"step": 0, "eval/loss": 2.2234, "eval/token_accuracy": 0.25},
    {"step": 10, "train/loss": 1.9},
    {"step": 20, "eval/loss": 1.3712, "eval/token_accuracy": 0.5, "eval/curve": [1, 2]},
]


def test_eval_line_puts_headline_figures_first_and_leaves_out_lists():
  line = report.eval_line("sft", ROWS[2])
  assert line == "sft step 20 eval: loss 1.371 · token_accuracy 0.5"
  many = {"step": 1, **{f"eval/m{i}": float(i) for i in range(12)}, "eval/kl": None}
  line = report.eval_line("ppo", many)
  assert line.startswith("ppo step 1 eval: kl nan · m0 0 · m1 1") and "(+5 in metrics.jsonl)" in line


def test_summary_line_gives_first_and_last_evaluation():
  line = report.summary_line("sft", ROWS, seconds=62.4, export_dir="/w/export")
  assert line == "sft done in 1 min 2 s (20 steps): loss 2.223 → 1.371; export: /w/export"
  assert report.summary_line("bon", [{"step": 3}], seconds=None, export_dir=None) == \
      "bon done (3 steps): no evaluation; no export"


def test_recipe_table_aligns_its_columns():
  table = report.recipe_table([
      {"step": "sft", "stage": "sft", "rows": ROWS, "seconds": None, "export_dir": "/w/sft/export"},
      {"step": "ppo", "stage": "ppo", "seconds": 3725.0, "export_dir": None,
       "rows": [{"step": 0, "eval/gold_reward": 0.73, "eval/kl": 0.0},
                {"step": 60, "eval/gold_reward": 2.53, "eval/kl": 2.14}]}]).splitlines()
  assert len(table) == 4 and set(table[1]) <= {"-", " "}
  assert table[2].split()[:2] == ["sft", "sft"] and "loss 2.223 → 1.371" in table[2]
  assert "gold_reward 0.73 → 2.53, kl 0 → 2.14" in table[3] and "1 h 2 min" in table[3]
  starts = [table[0].index("wall"), table[2].index("done before"), table[3].index("1 h")]
  assert len(set(starts)) == 1  # one column


def test_the_bar_clock_restarts_after_the_compiling_step():
  bar = tqdm.tqdm(total=100, initial=40, disable=False, file=open("/dev/null", "w"),
                  smoothing=0)
  bar.start_t -= 100.0  # the first step took 100 s (compilation)
  loop._restart_clock(bar, 40)
  bar.update(1)
  assert bar.n == 41 and bar.initial == 40 and bar.format_dict["elapsed"] < 5
  bar.update(9)
  meter = tqdm.tqdm.format_meter(**bar.format_dict)  # "... [elapsed<remaining, rate]"
  remaining = meter.split("<")[1].split(",")[0]
  seconds = sum(int(p) * 60 ** i for i, p in enumerate(reversed(remaining.split(":"))))
  # The ETA comes from the 10 steps after the restart: without it, 10 steps in 100 s would give
  # 50 steps x 10 s = 500 s.
  assert seconds < 100, meter
  bar.close()
