"""LoRA: only adapters train, the base stays bitwise fixed, adapters equal their merged weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rlhf_jax import configlib, models
from rlhf_jax.models import lora as lora_model
from rlhf_jax.parallel import mesh as mesh_lib
from rlhf_jax.train import lora, loop, optimizer, sft as sft_steps
from rlhf_jax.train import state as state_lib
from scale_testlib import random_params

CFG = models.get_model_config("tiny", vocab_size=64)


def _batch(b=8, s=12):
  tokens = np.random.default_rng(0).integers(3, 64, size=(b, s)).astype(np.int32)
  completion_mask = np.zeros_like(tokens)
  completion_mask[:, 6:] = 1
  return {"tokens": tokens, "mask": np.ones_like(tokens), "completion_mask": completion_mask}


def _logits_fn(graphdef, batch):
  tokens, mask = jnp.asarray(batch["tokens"]), jnp.asarray(batch["mask"])
  return jax.jit(lambda params: nnx.merge(graphdef, params)(tokens, mask_BxS=mask))


@pytest.fixture(scope="module")
def trained():
  config = configlib.get("configs/sft.py:test", [
      ("optimizer.warmup_steps", "0"), ("optimizer.lr", "0.05"), ("lora.rank", "4"),
      ("lora.alpha", "8.0"), ("lora.targets", "all")])
  mesh = mesh_lib.make_mesh({"data": 2}, jax.devices()[:2])
  rules = tuple(tuple(r) for r in config.logical_axis_rules)
  make_model = lambda r: models.Transformer(CFG, rngs=r)
  make_adapted, tx, trainable = lora.pieces(config.lora, make_model,
                                            optimizer.make_optimizer(config.optimizer, 10))
  graphdef, params = random_params(make_adapted, mesh=mesh, rules=rules)  # B = 0, A random
  base = lora._select(params, lambda p: not lora_model.is_adapter_path(p))
  plain_graphdef, _ = state_lib.abstract_model(make_model)
  _, state, shardings = state_lib.init_state(make_adapted, tx, mesh, rules, 0, params=params)
  batch = _batch()
  lora_logits, plain_logits = _logits_fn(graphdef, batch), _logits_fn(plain_graphdef, batch)
  initial = jax.device_get((lora_logits(state.params), plain_logits(base)))
  step = loop.jit_train_step(sft_steps.make_train_step(graphdef, tx, trainable=trainable),
                             shardings, batch, mesh)
  losses = []
  for i in range(4):
    state, metrics = step(state, loop.to_global(batch, mesh), jax.random.key(i))
    losses.append(float(metrics["loss"]))
  merge = jax.jit(lambda p: lora_model.merge(p, alpha=8.0))
  return dict(base=jax.device_get(base), state=state, merge=merge, initial=initial,
              losses=losses, lora_logits=lora_logits, plain_logits=plain_logits)


def test_only_adapters_train(trained):
  params = jax.device_get(trained["state"].params)
  adapters = lora._select(params, lora_model.is_adapter_path)
  base_part = lora._select(params, lambda p: not lora_model.is_adapter_path(p))
  jax.tree.map(np.testing.assert_array_equal, base_part, trained["base"])  # bitwise unchanged
  layer = adapters["layers"][0]
  assert set(layer["attn"]) == {"wq_lora", "wk_lora", "wv_lora", "wo_lora"}
  assert set(layer["mlp"]) == {"w_gate_lora", "w_up_lora", "w_down_lora"}
  assert layer["attn"]["wo_lora"]["a"].shape == (CFG.n_heads, CFG.head_dim, 4)
  assert layer["attn"]["wo_lora"]["b"].shape == (4, CFG.d_model)
  assert all(np.abs(m["b"]).max() > 0 for m in [*layer["attn"].values(), *layer["mlp"].values()])
  assert trained["losses"][-1] < trained["losses"][0], trained["losses"]
  # Adam moments exist for the adapters only.
  n_adapter = sum(x.size for x in jax.tree.leaves(adapters))
  moments = sum(x.size for x in jax.tree.leaves(trained["state"].opt_state)
                if jnp.issubdtype(x.dtype, jnp.floating))
  assert moments == 2 * n_adapter


def test_adapters_start_at_zero_and_equal_merged_weights(trained):
  adapted_logits, base_logits = trained["initial"]
  np.testing.assert_array_equal(adapted_logits, base_logits)  # B = 0 at init

  params = trained["state"].params
  merged = trained["merge"](params)  # W + (alpha / r) A B, adapters removed
  assert jax.tree.structure(merged) == jax.tree.structure(trained["base"])
  lora_logits = trained["lora_logits"](params)
  assert float(jnp.abs(lora_logits - base_logits).max()) > 1e-2  # the adapters did something
  np.testing.assert_allclose(lora_logits, trained["plain_logits"](merged), rtol=1e-5, atol=1e-5)


def test_init_params_adds_fresh_adapters_to_given_base():
  mesh = mesh_lib.make_mesh({"data": 1}, jax.devices()[:1])
  rules = tuple(tuple(r) for r in configlib.get("configs/sft.py:test").logical_axis_rules)
  make_model = lambda r: models.Transformer(CFG, rngs=r)
  _, base = random_params(make_model, mesh=mesh, rules=rules)
  make_adapted = lora.with_adapters(make_model, rank=2, alpha=4.0, targets="wv")
  params = lora.init_params(make_adapted, base, mesh, rules, seed=3)
  plain = lora._select(params, lambda p: not lora_model.is_adapter_path(p))
  assert jax.tree.structure(plain) == jax.tree.structure(base)
  assert params["embed"] is base["embed"]  # the given base, not a fresh draw
  adapter = params["layers"][1]["attn"]["wv_lora"]
  assert adapter["a"].shape == (CFG.d_model, 2) and float(jnp.abs(adapter["a"]).max()) > 0
  np.testing.assert_array_equal(adapter["b"], np.zeros((2, CFG.n_kv_heads, CFG.head_dim)))


def test_targets_and_reward_model_head():
  assert lora_model.resolve_targets("attn") == ("wq", "wk", "wv", "wo")
  assert lora_model.resolve_targets("wq, mlp") == ("wq", "w_gate", "w_up", "w_down")
  with pytest.raises(ValueError, match="unknown LoRA target 'q_proj'"):
    lora_model.resolve_targets("q_proj")
  make_rm = lora.with_adapters(lambda r: models.ScalarModel(CFG, rngs=r), rank=2, alpha=2.0,
                               targets="wq")
  _, abstract = state_lib.abstract_model(make_rm)
  mask = lora.trainable_mask(nnx.to_pure_dict(abstract), also_train=("head",))
  assert mask["head"] == {"w": True, "b": True}
  assert mask["backbone"]["layers"][0]["attn"] == {"wq": False, "wq_lora": {"a": True, "b": True},
                                                   "wk": False, "wv": False, "wo": False}
  assert not any(jax.tree.leaves(mask["backbone"]["embed"]))
  tx = lora.freeze_optimizer(optax.adam(1e-3), also_train=("head",))
  opt = jax.eval_shape(tx.init, nnx.to_pure_dict(abstract))
  assert sum(x.size for x in jax.tree.leaves(opt) if x.dtype == jnp.float32) == 2 * (
      CFG.d_model + 1 + CFG.n_layers * (CFG.d_model * 2 + 2 * CFG.n_heads * CFG.head_dim))
