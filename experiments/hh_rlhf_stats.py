"""Figures of the hh_rlhf builder on real HH-RLHF files: pairs kept/dropped and token lengths.

  python -m experiments.hh_rlhf_stats --manual_dir /work/shared/data/hh-rlhf \
      --subset harmless-base --out /tmp/hh_rlhf_stats.json

Builds the strict config first (to show where it stops, if it does), then the "-skip-malformed"
config, prints the counts per split and the p50/p90/p99/max token lengths of prompt, chosen and
rejected under a sentencepiece model trained (vocab 4000) on the kept pairs' text.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import tensorflow_datasets as tfds

from rlhf_jax.data import hh_rlhf
from rlhf_jax.data.tokenizer import train_sentencepiece

FIELDS = ("prompt", "chosen", "rejected")
PERCENTILES = (50, 90, 99)


def _prepare(name: str, data_dir: str, manual_dir: str):
  builder = tfds.builder(f"hh_rlhf/{name}", data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _records(builder, split: str) -> list[dict[str, str]]:
  ds = builder.as_data_source(split=split)
  return [{k: ds[i][k].decode("utf-8") for k in FIELDS} for i in range(len(ds))]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--manual_dir", default="/work/shared/data/hh-rlhf")
  parser.add_argument("--subset", default="harmless-base", choices=hh_rlhf.SUBSETS)
  parser.add_argument("--data_dir", default="", help="TFDS data dir (default: a fresh temp dir)")
  parser.add_argument("--vocab_size", type=int, default=4000)
  parser.add_argument("--out", default="", help="write the figures as JSON here")
  args = parser.parse_args()
  data_dir = args.data_dir or tempfile.mkdtemp(prefix="hh_rlhf_stats_")

  result: dict = {"subset": args.subset, "manual_dir": args.manual_dir}
  try:
    _prepare(args.subset, data_dir, args.manual_dir)
    result["strict"] = "built without malformed lines"
  except hh_rlhf.MalformedRecordError as e:
    result["strict"] = f"stopped: {e}"
  print(f"strict config {args.subset!r}: {result['strict']}")

  builder = _prepare(f"{args.subset}-skip-malformed", data_dir, args.manual_dir)
  counts = hh_rlhf.preparation_counts(builder)
  result["counts"] = counts
  print(f"missing splits: {counts['missing_splits']}")
  records = {}
  for split, c in counts["counts"].items():
    dropped = {k: v for k, v in c["dropped"].items() if v}
    print(f"{split}: {c['lines']} lines, {c['kept']} kept, {sum(dropped.values())} dropped "
          f"{dropped}")
    records[split] = _records(builder, split)

  every = [r for rs in records.values() for r in rs]
  tok = train_sentencepiece((r[f] for r in every for f in FIELDS), vocab_size=args.vocab_size)
  result["tokenizer"] = {"vocab_size": tok.vocab_size, "trained_on_pairs": len(every)}
  result["token_lengths"] = {}
  print(f"sentencepiece vocab {tok.vocab_size}, trained on {len(every)} pairs' text")
  for split, rs in records.items():
    table = {}
    for f in FIELDS:
      n = np.array([len(tok.encode(r[f])) for r in rs])
      table[f] = {**{f"p{q}": float(np.percentile(n, q)) for q in PERCENTILES},
                  "max": int(n.max()), "mean": float(n.mean())}
      print(f"{split:5s} {f:8s} " + "  ".join(f"{k}={v:.0f}" for k, v in table[f].items()))
    result["token_lengths"][split] = table
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(result, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
