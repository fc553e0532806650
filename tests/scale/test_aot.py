"""AOT compile from abstract shapes: the memory analysis is reported and matches the estimates."""

import jax
import numpy as np

from rlhf_jax import configlib, models
from rlhf_jax.parallel import mesh as mesh_lib
from rlhf_jax.train import aot


def test_sft_step_compiles_from_abstract_shapes_with_memory_analysis():
  config = configlib.get("configs/sft.py:test", [
      ("mesh.data", "2"), ("mesh.fsdp", "2"), ("mesh.tensor", "2"), ("model.dtype", "bfloat16"),
      ("model.remat", "full"), ("train.microbatches", "2")])
  cfg = models.get_model_config("tiny", vocab_size=320, dtype="bfloat16", remat="full")
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  rules = tuple(tuple(r) for r in config.logical_axis_rules)
  live = len(jax.live_arrays())
  report = aot.sft_report(config, cfg, mesh, rules)
  assert len(jax.live_arrays()) == live  # nothing was materialised

  mem = report.memory
  for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes"):
    assert mem[field] > 0, mem
  # The compiled step's arguments are exactly one device's train state and batch shards
  # (+ at most the rng key).
  extra = mem["argument_size_in_bytes"] - report.state_per_device_bytes - \
      report.batch_per_device_bytes
  assert 0 <= extra <= 16, (mem, report)
  assert mem["alias_size_in_bytes"] == report.state_per_device_bytes  # the state is donated
  assert mem["total_per_device_bytes"] >= mem["argument_size_in_bytes"]

  roles = {r.role: r for r in report.roles}
  n = cfg.num_params()
  assert roles["policy"].params == roles["reference"].params == n
  assert roles["policy"].bytes == roles["reference"].bytes == 4 * n  # float32 master weights
  assert roles["critic"].params == roles["reward_model"].params == n - cfg.d_model * 320 + \
      cfg.d_model + 1  # no LM head, a scalar head instead
  # AdamW: two float32 moments per parameter plus int32 step counts.
  assert 8 * n <= roles["optimizer_state/policy"].bytes <= 8 * n + 16
  # Per device: the fsdp x tensor shards of the large matrices, norms replicated.
  assert n * 4 / 4 < roles["policy"].bytes_per_device < n * 4 / 2
  assert roles["total"].bytes == sum(r.bytes for r in report.roles[:-1])


def test_role_memory_of_an_ensemble_and_bf16_reference():
  cfg = models.get_model_config("tiny", vocab_size=64)
  mesh = mesh_lib.make_mesh({"data": 8})
  config = configlib.get("configs/sft.py:test")
  rules = tuple(tuple(r) for r in config.logical_axis_rules)
  from rlhf_jax.train import optimizer  # pylint: disable=g-import-not-at-top
  trees = aot.role_trees(cfg, optimizer.make_optimizer(config.optimizer, 10), mesh, rules,
                         roles=("reference", "reward_model"), reference_dtype="bfloat16",
                         reward_ensemble=3)
  rows = {r.role: r for r in aot.role_memory(trees)}
  assert rows["reference"].bytes == 2 * cfg.num_params()
  assert rows["reward_model"].params == 3 * (cfg.num_params() - 64 * cfg.d_model + cfg.d_model + 1)
  np.testing.assert_equal(rows["reference"].bytes, rows["reference"].bytes_per_device)  # data only
