"""LoRA in the reward-model, DPO and GRPO stages (from one SFT export on the enumerable world):
only adapters (and the RM head) train, the frozen base stays bitwise equal to the SFT weights,
learning happens, and the export is the plain model computing what the adapted one did. Also:
DPO's gradient accumulation equals the full-batch step, and generation applies the adapters."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlhf_jax import configlib, models
from rlhf_jax.generation import SamplingConfig, generate
from rlhf_jax.models import lora as lora_model
from rlhf_jax.rewards import learned
from rlhf_jax.stages import common, dpo as dpo_stage, online, policy_gradient
from rlhf_jax.stages import reward_model as rm_stage
from rlhf_jax.train import dpo as dpo_steps, export, lora, loop, metrics as metrics_lib
from rlhf_jax.train import state as state_lib
from tests import stagelib

LORA = [("lora.rank", "4"), ("lora.alpha", "8.0"), ("lora.targets", "all")]


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
  return stagelib.enumerable_sft(tmp_path_factory.mktemp("lora_stages"))


def _config(spec, root, *overrides):
  return stagelib.from_sft(spec, root, *LORA, *overrides)


def _logged(workdir, key):
  """The rows of the run's metrics.jsonl that have `key`."""
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return [r for r in rows if key in r]


def _parts(params):
  """(adapters, everything else) of a pure parameter dict."""
  return (lora._select(params, lora_model.is_adapter_path),
          lora._select(params, lambda p: not lora_model.is_adapter_path(p)))


def _adapted_graphdef(make_model, config):
  lc = config.lora
  return state_lib.abstract_model(lora.with_adapters(
      make_model, rank=int(lc.rank), alpha=float(lc.alpha), targets=lc.targets))[0]


def _rows(vocab, b=8, s=10):
  tokens = np.random.default_rng(0).integers(3, vocab, size=(b, s)).astype(np.int32)
  return jnp.asarray(tokens), jnp.ones_like(jnp.asarray(tokens))


def _check_frozen_lm(params, sft_params):
  """Base leaves bitwise equal to the SFT export's; every adapter's B moved away from 0."""
  adapters, base = _parts(jax.device_get(params))
  jax.tree.map(np.testing.assert_array_equal, base, jax.device_get(sft_params))
  b_leaves = [v for p, v in jax.tree_util.tree_leaves_with_path(adapters)
              if str(getattr(p[-1], "key", "")) == "b"]
  assert b_leaves and all(np.abs(b).max() > 0 for b in b_leaves)


def _check_lm_export(workdir, graphdef, params, mesh, rules):
  """The export is a plain LM (no adapter leaves) whose logits equal the adapted model's."""
  exp = export.load(workdir, mesh, rules, kind="lm")
  assert not _parts(jax.device_get(exp.params))[0]
  tokens, mask = _rows(exp.model_config.vocab_size)
  logits = lambda g, p: jax.jit(lambda q: nnx.merge(g, q)(tokens, mask_BxS=mask))(p)
  np.testing.assert_allclose(logits(exp.graphdef, exp.params), logits(graphdef, params),
                             rtol=1e-4, atol=1e-4)
  return exp


def test_reward_model_lora_head_and_adapters_train(sft_dir):
  workdir = str(sft_dir / "rm")
  config = _config("configs/reward_model.py:test", sft_dir, ("train.num_steps", "100"),
                   ("train.eval_every", "100"), ("data.batch_size", "32"),
                   ("optimizer.lr", "1e-2"), ("model.remat", "full"))
  result = rm_stage.run(config, workdir)
  evals = _logged(workdir, "eval/accuracy")
  first, last = evals[0], evals[-1]
  # A gain over the measured start (0.55 -> 0.84 on a Zen 3 CPU), not a level.
  assert last["eval/accuracy"] > first["eval/accuracy"] + 0.15, (first, last)
  assert last["eval/loss"] < first["eval/loss"] - 0.1, (first, last)

  mesh, rules = common.mesh_and_rules(config)
  sft = export.load(str(sft_dir / "sft"), mesh, rules, kind="lm")
  params = result.state.params  # one member stacked on a leading axis
  adapters, base = _parts(jax.device_get(params))
  want = jax.tree.map(lambda x: x[None], {k: v for k, v in jax.device_get(sft.params).items()
                                          if k != "lm_head"})
  jax.tree.map(np.testing.assert_array_equal, base["backbone"], want)
  assert set(adapters) == {"backbone"}
  # Adam moments only for the adapters and the head: the frozen backbone has no optimizer state.
  trained = sum(x.size for x in jax.tree.leaves((adapters, base["head"])))
  moments = sum(x.size for x in jax.tree.leaves(result.state.opt_state)
                if jnp.issubdtype(x.dtype, jnp.floating))
  assert moments == 2 * trained

  exp = export.load(workdir, mesh, rules, kind="scalar")
  assert not _parts(jax.device_get(exp.params))[0]
  assert exp.model_config.remat == "none"  # a training option, not exported
  graphdef = _adapted_graphdef(lambda r: models.ScalarModel(exp.model_config, rngs=r), config)
  tokens, mask = _rows(exp.model_config.vocab_size)
  scores = lambda g, p: jax.jit(lambda q: learned.ensemble_scores(g, q, tokens, mask))(p)
  np.testing.assert_allclose(scores(exp.graphdef, exp.params), scores(graphdef, params),
                             rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def dpo_setup(sft_dir):
  """(the DPO run's config, its workdir, a Setup prepared there without the exact evaluator)."""
  config = _config("configs/dpo.py:test", sft_dir, ("train.num_steps", "12"),
                   ("train.eval_every", "12"), ("optimizer.lr", "1e-2"), ("model.remat", "full"),
                   ("train.microbatches", "2"))
  workdir = str(sft_dir / "dpo")
  no_exact = _config("configs/dpo.py:test", sft_dir, ("model.remat", "full"),
                     ("eval.exact_prompts", "0"))
  return config, workdir, dpo_stage.prepare(no_exact, workdir)


def test_dpo_lora_trains_adapters_and_exports_merged(sft_dir, dpo_setup):
  config, workdir, s = dpo_setup
  assert nnx.merge(s.graphdef, s.state.params).cfg.remat == "full"
  result = dpo_stage.run(config, workdir)  # its own setup; the reference log-probs are cached
  evals = _logged(workdir, "eval/gold_reward")
  first, last = evals[0], evals[-1]
  assert first["eval/kl"] == 0.0  # adapters start at zero: the policy is the reference
  assert last["eval/gold_reward"] > first["eval/gold_reward"] + 1.0, (first, last)
  assert last["eval/accuracy"] > 0.5, last  # better than chance (0.72 on a Zen 3 CPU)
  losses = [r["train/loss"] for r in _logged(workdir, "train/loss")]
  assert losses[0] == pytest.approx(np.log(2.0), abs=1e-5), losses  # DPO loss at the reference
  assert losses[-1] < losses[0] - 0.1, losses
  _check_frozen_lm(result.state.params, s.sft.params)
  _check_lm_export(workdir, s.graphdef, result.state.params, s.mesh,
                   common.mesh_and_rules(config)[1])


def test_dpo_microbatches_match_full_batch(dpo_setup):
  config, _, s = dpo_setup
  batch = next(dpo_stage.train_iterator(config, s.arrays["train"]))
  out = {}
  for k in (1, 2):
    step = loop.jit_train_step(
        dpo_steps.make_train_step(s.graphdef, s.tx, config.loss, config.data.prompt_len,
                                  microbatches=k, trainable=s.trainable),
        s.shardings, batch, s.mesh)
    new, metrics = step(jax.tree.map(jnp.copy, s.state), loop.to_global(batch, s.mesh),
                        jax.random.key(0))
    out[k] = jax.device_get((new.params, metrics))
  (p1, m1), (p2, m2) = out[1], out[2]
  assert set(m1) == set(m2)
  for key in m1:
    np.testing.assert_allclose(m2[key], m1[key], rtol=1e-5, atol=1e-6, err_msg=key)
  assert m1["grad_norm"] > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p2, p1)


def test_grpo_lora_learns_generates_with_adapters_and_exports_merged(sft_dir):
  workdir = str(sft_dir / "grpo")
  config = _config("configs/grpo.py:test,enumerable", sft_dir, ("train.num_steps", "10"),
                   ("train.eval_every", "10"), ("rl.prompts_per_step", "8"),
                   ("optimizer.lr", "1e-2"))
  result = policy_gradient.run(config, workdir)
  evals = _logged(workdir, "eval/gold_reward")
  assert evals[-1]["eval/gold_reward"] > evals[0]["eval/gold_reward"] + 1.0, evals

  mesh, rules = common.mesh_and_rules(config)
  sft = export.load(str(sft_dir / "sft"), mesh, rules, kind="lm")
  _check_frozen_lm(result.state.params, sft.params)
  graphdef = _adapted_graphdef(lambda r: models.Transformer(sft.model_config, rngs=r), config)
  exp = _check_lm_export(workdir, graphdef, result.state.params, mesh, rules)

  # Rollouts sample from the adapted model: the decode step must apply the attention adapters.
  prompts, mask = _rows(sft.model_config.vocab_size, s=4)
  sampling = SamplingConfig(max_new_tokens=6, greedy=True)

  def greedy(g, p):
    return jax.jit(lambda q: generate(g, q, prompts, mask, jax.random.key(0), config=sampling))(p)
  adapted, plain = greedy(graphdef, result.state.params), greedy(exp.graphdef, exp.params)
  np.testing.assert_array_equal(adapted.tokens_BxT, plain.tokens_BxT)
  np.testing.assert_allclose(adapted.logp_BxT, plain.logp_BxT, rtol=1e-4, atol=1e-4)


def test_online_rl_rejects_microbatches():
  config = configlib.get("configs/grpo.py:test", [("train.microbatches", "2")])
  with pytest.raises(ValueError, match=r"train.microbatches=2 is not supported.*pg.minibatches"):
    online.check_no_microbatches(config, "pg.minibatches")
