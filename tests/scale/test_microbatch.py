"""Gradient accumulation over micro-batches equals the full-batch step (float32, token-weighted
for SFT, member-weighted for a reward-model ensemble)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import configlib, models
from rlhf_jax.parallel import mesh as mesh_lib, sharding as sharding_lib
from rlhf_jax.train import loop, microbatch, optimizer, reward_model as rm_steps, sft as sft_steps
from rlhf_jax.train import state as state_lib
from scale_testlib import random_params


def _batch(b=16, s=12, vocab=64):
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, vocab, size=(b, s)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[:, :2] = 0
  tokens = tokens * mask
  completion_mask = np.zeros_like(tokens)
  for i in range(b):  # 1..6 completion tokens: micro-batches hold different token counts
    completion_mask[i, s - 1 - i % 6:] = 1
  return {"tokens": tokens, "mask": mask, "completion_mask": completion_mask}


def test_microbatches_match_full_batch():
  # SGD: the update is linear in the gradient, so parameters compare the gradients themselves.
  config = configlib.get("configs/sft.py:test", [
      ("optimizer.warmup_steps", "0"), ("optimizer.name", "sgd"), ("optimizer.lr", "0.5")])
  mesh = mesh_lib.make_mesh({"data": 4}, jax.devices()[:4])
  rules = tuple(tuple(r) for r in config.logical_axis_rules)
  cfg = models.get_model_config("tiny", vocab_size=64)
  tx = optimizer.make_optimizer(config.optimizer, 10)
  graphdef, params = random_params(lambda r: models.Transformer(cfg, rngs=r), mesh=mesh,
                                   rules=rules)
  param_sh = jax.tree.map(lambda x: x.sharding, params)
  state, shardings = state_lib.state_from_params(params, param_sh, tx, mesh)
  batch = _batch()
  out = {}
  for k in (1, 4):  # each of the 4 devices holds 4 rows of the batch, 1 of each micro-batch
    step = loop.jit_train_step(sft_steps.make_train_step(graphdef, tx, microbatches=k),
                               shardings, batch, mesh)
    new, metrics = step(jax.tree.map(jnp.copy, state), loop.to_global(batch, mesh),
                        jax.random.key(0))
    out[k] = jax.device_get((new.params, metrics))
  (p1, m1), (p4, m4) = out[1], out[4]
  assert m1["num_tokens"] == m4["num_tokens"] == batch["completion_mask"][:, 1:].sum()
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
  np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p4, p1)

  # Token weighting matters here: the micro-batches hold different numbers of target tokens, so
  # averaging their own token means would not give the batch's token mean.
  counts = [batch["completion_mask"][i::4, 1:].sum() for i in range(4)]
  assert len(set(counts)) > 1, counts


def test_split_is_strided_and_checks_divisibility():
  x = jnp.arange(12)
  np.testing.assert_array_equal(microbatch.split({"x": x}, 3)["x"],
                                [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])
  with pytest.raises(ValueError, match=r"\['tokens'\].*not divisible by train.microbatches=5"):
    microbatch.split({"tokens": jnp.zeros((12, 3))}, 5)


def test_reward_model_microbatches_match_full_batch():
  """An ensemble of 2 on member-specific data subsets: each member's weight total is the whole
  batch's, so accumulating 2 micro-batches gives the full-batch loss, metrics and update."""
  config = configlib.get("configs/reward_model.py:test", [
      ("optimizer.warmup_steps", "0"), ("optimizer.name", "sgd"), ("optimizer.lr", "0.5")])
  mesh = mesh_lib.make_mesh({"data": 2}, jax.devices()[:2])
  rules = tuple(tuple(r) for r in config.logical_axis_rules)
  cfg = models.get_model_config("tiny", vocab_size=64)
  make_model = lambda r: models.ScalarModel(cfg, rngs=r)
  graphdef, abstract = state_lib.abstract_model(make_model)
  members = [random_params(make_model, seed=e)[1] for e in range(2)]
  param_sh = state_lib.stacked(sharding_lib.param_shardings(abstract, mesh, rules), mesh)
  params = jax.device_put(jax.tree.map(lambda *x: np.stack(x), *members), param_sh)
  tx = optimizer.make_optimizer(config.optimizer, 10)
  state, shardings = state_lib.state_from_params(params, param_sh, tx, mesh)
  rng = np.random.default_rng(1)
  batch = {"index": np.arange(16, dtype=np.int32)}
  for side in ("chosen", "rejected"):
    batch[f"{side}_tokens"] = rng.integers(3, 64, size=(16, 10)).astype(np.int32)
    batch[f"{side}_mask"] = (np.arange(10)[None] < rng.integers(4, 11, size=(16, 1))
                             ).astype(np.int32)
  out = {}
  for k in (1, 2):
    step = loop.jit_train_step(rm_steps.make_train_step(
        graphdef, tx, loss_name="bradley_terry", loss_kwargs={"margin": 0.0,
                                                               "centering_coef": 0.01},
        ensemble_size=2, data_fraction=0.5, seed=0, microbatches=k), shardings, batch, mesh)
    new, metrics = step(jax.tree.map(jnp.copy, state), loop.to_global(batch, mesh),
                        jax.random.key(0))
    out[k] = jax.device_get((new.params, metrics))
  (p1, m1), (p2, m2) = out[1], out[2]
  for key in m1:
    np.testing.assert_allclose(m2[key], m1[key], rtol=1e-5, atol=1e-7, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p2, p1)
  # The members' subsets differ in size between the micro-batches: plain micro-batch means
  # would not add up to the batch's weighted means.
  w = rm_steps.member_weights(jnp.arange(16), 2, 0.5, 0)
  assert len({float(w[e, i::2].sum()) for e in range(2) for i in range(2)}) > 1, w
