"""Sharded Hugging Face import on the 8-device CPU mesh: every parameter lands directly in the
NamedSharding its logical axes give, with the values of a plain load."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from hf_testlib import random_hf_model
from rlhf_jax import models
from rlhf_jax.models.hf.checkpoint import abstract_model
from rlhf_jax.parallel import mesh as mesh_lib
from rlhf_jax.parallel import sharding as sharding_lib


@pytest.fixture(scope="module")
def mesh():
  assert jax.device_count() == 8
  return mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def _assert_loaded_as_expected(sharded, plain, mesh, rules):
  _, abstract = abstract_model(sharded.cfg)
  expected = sharding_lib.param_shardings(abstract, mesh, rules)
  got = jax.tree.map(lambda x: x.sharding, sharded.params)
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    assert isinstance(g, NamedSharding) and g.mesh == e.mesh and g.spec == e.spec
  for x, y in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(plain.params)):
    assert len(x.addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("variant", ["llama", "gpt2"])
def test_sharded_load_places_every_parameter(hf_checkpoints, mesh, variant):
  path, _ = hf_checkpoints[variant]
  sharded = models.load_hf(path, mesh=mesh, rules=sharding_lib.DEFAULT_RULES)
  _assert_loaded_as_expected(sharded, models.load_hf(path), mesh, sharding_lib.DEFAULT_RULES)
  params = sharded.params
  assert params["layers"][0]["attn"]["wq"].sharding.spec == P("fsdp", "tensor", None)
  assert params["embed"].sharding.spec == P("tensor", "fsdp")
  assert params["layers"][1]["mlp"]["w_down"].sharding.spec == P("tensor", "fsdp")
  if variant == "gpt2":
    assert params["pos_embed"].sharding.spec == P(None, "fsdp")
    assert params["layers"][0]["attn"]["bq"].sharding.spec == P("tensor", None)
  else:
    assert params["lm_head"].sharding.spec == P("fsdp", "tensor")


def test_sharded_load_of_a_multi_file_checkpoint_with_custom_rules(mesh, tmp_path):
  hf_model = random_hf_model("qwen2", seed=5)
  hf_model.save_pretrained(str(tmp_path), max_shard_size="40KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  rules = tuple((name, None if name == "vocab" else target)
                for name, target in sharding_lib.DEFAULT_RULES)
  sharded = models.load_hf(str(tmp_path), mesh=mesh, rules=rules)
  _assert_loaded_as_expected(sharded, models.load_hf(str(tmp_path)), mesh, rules)
  assert sharded.params["embed"].sharding.spec == P(None, "fsdp")
  assert sharded.params["layers"][0]["attn"]["bk"].sharding.spec == P("tensor", None)
