"""The SFT stage learns with packed rows (data.packing) and with length buckets
(data.length_buckets), compiling its train step once per batch width."""

import os

import pytest

from rlhf_jax import configlib
from rlhf_jax.stages import sft as sft_stage
from rlhf_jax.train import metrics as metrics_lib


# Arithmetic `:test` rows are 18 wide. Packed rows (two examples of 7-10 tokens) reach column 18
# in every batch: one shape. Unpacked rows end by column 16 (completions <= 4 of 6 tokens), so
# bucket 16 cuts every batch: one shape, 16 wide.
@pytest.mark.parametrize("overrides", [[("data.packing", "True")],
                                       [("data.length_buckets", "(12, 16)")]],
                         ids=["packing", "buckets"])
def test_sft_eval_loss_falls(tmp_path, overrides):
  config = configlib.get("configs/sft.py:test", overrides + [("train.num_steps", "30"),
                                                             ("train.eval_every", "30")])
  result = sft_stage.run(config, str(tmp_path))
  assert result.state.step == 30
  assert result.jitted_step._cache_size() == 1
  rows = metrics_lib.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  evals = [r for r in rows if "eval/loss" in r]  # held-out split, unpacked and full width
  assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
  assert evals[-1]["eval/loss"] < 0.5 * evals[0]["eval/loss"], evals
