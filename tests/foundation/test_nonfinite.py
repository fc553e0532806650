"""The non-finite guard: a NaN stops the run loudly (no checkpoint after it, no export), or in
skip mode is skipped, counted, and stops the run after N consecutive skips; loaded weights are
checked too."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlhf_jax import configlib
from rlhf_jax.parallel import sharding as sharding_lib
from rlhf_jax.stages import sft as sft_stage
from rlhf_jax.train import export, metrics as metrics_lib, nonfinite
from tests import toyloop


def test_guard_flags_the_first_nonfinite_metric_and_skip_keeps_the_state():
  def step(state, batch, rng):
    del rng
    return state + 1.0, {"a": batch["x"], "b": jnp.float32(1.0), "c": batch["x"] * 2,
                         "count": jnp.int32(3)}

  for mode in nonfinite.MODES:
    guarded = jax.jit(nonfinite.guard_step(step, mode=mode, check_inputs=("x",)))
    state, m = guarded(jnp.float32(0.0), {"x": jnp.float32(2.0)}, None)
    assert int(m[nonfinite.FLAG]) == -1 and float(state) == 1.0
    state, m = guarded(jnp.float32(0.0), {"x": jnp.array([1.0, jnp.inf])}, None)
    # sorted float names: a, b, batch/x, c -> 'a' is the first non-finite one
    assert int(m[nonfinite.FLAG]) == 0
    assert float(state) == (0.0 if mode == "skip" else 1.0)
  with pytest.raises(ValueError, match="valid: \\['stop', 'skip'\\]"):
    nonfinite.guard_step(step, mode="ignore")


def test_nan_stops_the_run_naming_step_metric_and_last_checkpoint(tmp_path):
  with pytest.raises(nonfinite.NonFiniteError) as e:
    toyloop.run(tmp_path, bad=(5,))
  message = str(e.value)
  assert "sft: non-finite value" in message and "at step 5" in message
  assert "'grad_norm'" in message  # sorted: grad_norm before loss
  assert f"{tmp_path}/checkpoints/4 (step 4)" in message
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))  # strict JSON
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  assert rows[-1]["train/loss"] is None and rows[-1]["nonfinite_keys"] == ["train/grad_norm",
                                                                           "train/loss"]


def test_skip_mode_drops_the_update_counts_it_and_stops_after_n_in_a_row(tmp_path):
  clean, _ = toyloop.run(tmp_path / "clean", num_steps=6)
  skipped, _ = toyloop.run(tmp_path / "skip", bad=(3, 4), num_steps=8, nonfinite="skip")
  rows = metrics_lib.read_jsonl(str(tmp_path / "skip" / "metrics.jsonl"))
  assert [r["train/nonfinite_skips"] for r in rows] == [0, 0, 1, 2, 2, 2, 2, 2]
  # The two skipped steps left the state as it was: 8 steps with 2 skipped = 6 clean steps.
  assert int(skipped.state.step) == 6
  np.testing.assert_array_equal(skipped.state.params["w"], clean.state.params["w"])
  assert skipped.finished
  with pytest.raises(nonfinite.NonFiniteError, match="3 consecutive steps skipped"):
    toyloop.run(tmp_path / "stop", bad=(2, 3, 4, 5), nonfinite="skip", nonfinite_max_skips=3)


def test_sft_with_a_huge_learning_rate_stops_without_export(tmp_path):
  config = configlib.get("configs/sft.py:enumerable,test", [
      ("optimizer.lr", "1e6"), ("train.num_steps", "40"), ("train.eval_every", "0"),
      ("data.data_dir", str(tmp_path / "data"))])
  with pytest.raises(nonfinite.NonFiniteError, match="sft: non-finite value .* at step"):
    sft_stage.run(config, str(tmp_path / "sft"))
  assert not os.path.exists(tmp_path / "sft" / "export")


def test_loaded_weights_are_checked(tmp_path):
  params = {"a": jnp.ones((4,)), "b": {"c": jnp.array([1.0, np.nan])}}
  with pytest.raises(nonfinite.NonFiniteError, match=r"my weights: \['b'\]\['c'\] holds non-finite"):
    nonfinite.check_finite(params, "my weights")
  nonfinite.check_finite({"a": jnp.ones(3), "i": jnp.arange(3)}, "fine")
  # An export whose weights hold a NaN does not load.
  cfg = export.models.get_model_config("tiny", vocab_size=16)
  mesh, rules = toyloop.mesh_lib.make_mesh({"data": -1}), sharding_lib.DEFAULT_RULES
  _, abstract = export.state_lib.abstract_model(lambda r: export.make_model("lm", cfg, r))
  params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), nnx.to_pure_dict(abstract))
  params["embed"][0, 0] = np.inf
  export.save(str(tmp_path), params, kind="lm", model_config=cfg, tokenizer={"kind": "char"})
  with pytest.raises(nonfinite.NonFiniteError, match="\\['embed'\\] holds non-finite"):
    export.load(str(tmp_path), mesh, rules)
