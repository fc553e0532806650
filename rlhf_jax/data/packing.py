"""Sequence packing for SFT: several [prompt | completion] examples share one row.

`prepare_sft` (pipeline.py) gives one example per row of S = prompt_len + completion_len
columns, mostly padding when prompts and completions are short. `pack_sft` takes each example's
real tokens (mask = 1: BOS + prompt, completion + EOS) and places them, best fit, into rows of
`row_len` columns (row_len >= the longest example; the SFT stage uses S). Per packed row:

  tokens_S           int32, the examples back to back, then padding (0)
  mask_S             int32, 1 on real tokens
  completion_mask_S  int32, 1 on completion tokens (the loss targets), as before packing
  segment_ids_S      int32, 0 on padding, 1..k for the k examples of the row, in order
  positions_S        int32, 0 at each example's first token, counting up within the example

The model attends causally within a segment only (Transformer `segment_ids_BxS`) at these
positions, so each example's logits are those it would have alone in its own row; the SFT loss
masks any target whose segment differs from its predictor's (train/sft.py `target_mask`), so
the last token of example i never predicts the first token of example i + 1. An example longer
than row_len is an error naming it (never truncated). `PackStats` counts examples, rows and the
fill fraction (real tokens / row_len x rows); `placement_Nx2` says where example n went
(row, segment id).

Enabled by config `data.packing` (SFT stage, training split only; evaluation stays unpacked, so
eval losses are comparable with and without packing).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

PACKED_FIELDS = ("tokens", "mask", "completion_mask", "segment_ids", "positions")


@dataclasses.dataclass
class PackStats:
  """What packing did: counts, and where each example went."""
  examples: int
  rows: int
  row_len: int
  real_tokens: int
  placement_Nx2: np.ndarray   # [N, 2] (row, segment id) of example n

  @property
  def fill(self) -> float:
    """Fraction of the packed rows' slots holding real tokens."""
    return self.real_tokens / max(self.rows * self.row_len, 1)

  def as_dict(self, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}examples": self.examples, f"{prefix}rows": self.rows,
            f"{prefix}fill": self.fill}


def _best_fit(lengths_N: np.ndarray, row_len: int) -> tuple[np.ndarray, int]:
  """Row of each example: the open row with the least free space that still fits it (best fit,
  in the given order), else a new row. Returns (row_N, number of rows)."""
  open_rows: list[list[int]] = [[] for _ in range(row_len + 1)]  # free space -> rows (a stack)
  free: list[int] = []
  row_N = np.zeros(len(lengths_N), np.int64)
  for n, length in enumerate(lengths_N):
    space = next((s for s in range(length, row_len + 1) if open_rows[s]), None)
    if space is None:
      r = len(free)
      free.append(row_len)
    else:
      r = open_rows[space].pop()
    free[r] -= length
    open_rows[free[r]].append(r)
    row_N[n] = r
  return row_N, len(free)


def pack_sft(arrays: dict[str, np.ndarray], row_len: int, *, name: str = "sft"
             ) -> tuple[dict[str, np.ndarray], PackStats]:
  """prepare_sft arrays (tokens/mask/completion_mask [N, S]) -> packed rows [R, row_len].

  Raises ValueError naming the first example with more than row_len real tokens.
  """
  tokens_NxS, mask_NxS = arrays["tokens"], arrays["mask"].astype(bool)
  completion_NxS = arrays["completion_mask"]
  lengths_N = mask_NxS.sum(axis=1)
  if len(lengths_N) == 0:
    raise ValueError(f"{name}: nothing to pack (no examples)")
  over = np.flatnonzero(lengths_N > row_len)
  if over.size:
    n = int(over[0])
    raise ValueError(f"{name} example {n}: {int(lengths_N[n])} tokens, more than the packed row "
                     f"length {row_len} ({over.size} such examples; packing never truncates)")
  row_N, rows = _best_fit(lengths_N, row_len)
  out = {k: np.zeros((rows, row_len), np.int32) for k in PACKED_FIELDS}
  used_R = np.zeros(rows, np.int64)
  segments_R = np.zeros(rows, np.int64)
  placement_Nx2 = np.zeros((len(lengths_N), 2), np.int64)
  for n, (r, length) in enumerate(zip(row_N, lengths_N)):
    start, real = used_R[r], mask_NxS[n]
    cols = slice(start, start + length)
    segments_R[r] += 1
    out["tokens"][r, cols] = tokens_NxS[n][real]
    out["mask"][r, cols] = 1
    out["completion_mask"][r, cols] = completion_NxS[n][real]
    out["segment_ids"][r, cols] = segments_R[r]
    out["positions"][r, cols] = np.arange(length)
    used_R[r] += length
    placement_Nx2[n] = (r, segments_R[r])
  stats = PackStats(examples=len(lengths_N), rows=rows, row_len=row_len,
                    real_tokens=int(lengths_N.sum()), placement_Nx2=placement_Nx2)
  logging.info("%s packing: %s", name, stats.as_dict())
  return out, stats
