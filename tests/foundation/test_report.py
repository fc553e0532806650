"""The console lines of train/report.py and the progress bar's clock (train/loop.py)."""

import os
import struct

import tqdm

from rlhf_jax.train import loop, metrics as metrics_lib, report


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


def read_events(directory):
  """The Events of a TensorBoard log directory (TFRecord files: length, its CRC, the record,
  its CRC)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = []
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  return events


def test_samples_go_to_samples_jsonl_and_tensorboard_text(tmp_path):
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=True, resume_step=0)
  rows = [{"prompt": "12+7=", "completion": "19", "gold_reward": 1.0},
          {"prompt": "3|4", "completion": "a\nb", "gold_reward": float("nan")}]
  writer.write_samples(5, rows)
  writer.close()
  written = metrics_lib.read_jsonl(str(tmp_path / "samples.jsonl"))
  assert written[0] == {"step": 5, **rows[0]}
  assert written[1]["gold_reward"] is None and written[1]["nonfinite_keys"] == ["gold_reward"]
  texts = [(e.step, v) for e in read_events(tmp_path / "tensorboard")
           for v in e.summary.value if v.tag.startswith("samples")]
  assert len(texts) == 1 and texts[0][0] == 5
  table = texts[0][1].tensor.string_val[0].decode()
  assert "| prompt | completion | gold_reward |" in table and "| 12+7= | 19 | 1.0 |" in table
  assert "3\\|4" in table and "a b" in table  # a table cell: pipes escaped, no line breaks
  # A run resumed at step 0 (a fresh start) writes its samples again: the old rows go.
  metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False, resume_step=0).close()
  assert metrics_lib.read_jsonl(str(tmp_path / "samples.jsonl")) == []
