"""Online RL on the enumerable world: every policy-gradient variant from its config switch,
learning with one compilation per jitted piece, PPO with the adaptive KL controller."""

import os

import jax
import numpy as np
import pytest

from rlhf_jax.stages import online, policy_gradient, ppo
from rlhf_jax.train import loop, metrics as metrics_lib
from tests import stagelib


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
  return stagelib.enumerable_sft(tmp_path_factory.mktemp("online"))


_config = stagelib.from_sft


def _iterate(built, mesh, n, seed=0):
  state, rows = built.state, []
  for i in range(n):
    batch = loop.to_global(next(built.stream), mesh)
    state, metrics = built.iteration(state, batch, jax.random.key(seed + i))
    rows.append({k: float(v) for k, v in metrics.items()})
  return state, rows


@pytest.mark.parametrize("variant", ["", "dr_grpo", "dapo", "gspo", "rloo", "reinforce"])
def test_policy_gradient_variant_runs_from_config_switch(sft_dir, variant):
  spec = "configs/grpo.py:test,enumerable" + (f",{variant}" if variant else "")
  config = _config(spec, sft_dir, ("pg.epochs", "2"), ("pg.minibatches", "2"))
  s = online.setup(config, str(sft_dir / f"pg_{variant or 'grpo'}"))
  built = policy_gradient.build(config, s)
  before = jax.tree.map(np.asarray, built.state.params)
  state, rows = _iterate(built, s.mesh, 2)
  for row in rows:
    assert all(np.isfinite(v) for v in row.values()), row
    assert row["minibatches_run"] == 4.0
  moved = sum(float(np.abs(np.asarray(a) - b).sum())
              for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)))
  assert moved > 0


def test_old_logps_from_the_sampler_match_a_rescoring_pass(sft_dir):
  """With untempered float32 sampling the old-policy pass is skipped (rl.rescore_policy=False,
  the default): the update then sees generation's log-probs, which must equal the re-scored
  ones; a tempered sampler is always re-scored."""
  runs = {}
  for rescore in (False, True):
    config = _config("configs/grpo.py:test,enumerable", sft_dir,
                     ("rl.rescore_policy", str(rescore)), ("pg.epochs", "2"))
    s = online.setup(config, str(sft_dir / f"rescore_{rescore}"))
    assert online.rescore_policy(config, s) == rescore
    built = policy_gradient.build(config, s)
    # One rollout scored by the stage's jitted score function (old_logp as the update sees it).
    batch = loop.to_global(next(built.stream), s.mesh)
    gen_fn = online.rollout_lib.make_generate_fn(s.sft.graphdef, s.sampling,
                                                 group_size=config.pg.group_size)
    pt, pm, out = gen_fn(built.state.params, batch["prompt_tokens"], batch["prompt_mask"],
                         jax.random.key(5))
    scored = built.iteration.jitted["score"](built.state.params, s.sft.params, None, None, pt, pm,
                                             out.tokens_BxT, out.mask_BxT, out.logp_BxT)
    old_logp = np.asarray(scored["old_logp"])
    if not rescore:
      np.testing.assert_array_equal(old_logp, np.asarray(out.logp_BxT))
    _, rows = _iterate(built, s.mesh, 2)
    runs[rescore] = (old_logp, rows)
  np.testing.assert_allclose(runs[False][0], runs[True][0], atol=2e-5)
  for a, b in zip(runs[False][1], runs[True][1]):
    assert a["reward"] == b["reward"]  # the same rollouts
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-3, atol=1e-6)
  tempered = _config("configs/grpo.py:test,enumerable", sft_dir, ("rl.temperature", "0.7"))
  assert online.rescore_policy(tempered, online.setup(tempered, str(sft_dir / "tempered")))


def test_grpo_raises_gold_reward_and_compiles_each_piece_once(sft_dir):
  workdir = str(sft_dir / "grpo_learn")
  config = _config("configs/grpo.py:test,enumerable", sft_dir, ("train.num_steps", "16"),
                   ("train.eval_every", "16"), ("rl.prompts_per_step", "8"),
                   ("optimizer.lr", "3e-3"))
  result = policy_gradient.run(config, workdir)
  evals = [r for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
           if "eval/gold_reward" in r]
  assert evals[-1]["eval/gold_reward"] > evals[0]["eval/gold_reward"] + 0.3, evals
  for name, fn in result.jitted_step.jitted.items():
    assert fn._cache_size() == 1, name  # 16 iterations, one compilation each


def test_ppo_gold_rises_and_adaptive_kl_tracks_target(sft_dir):
  workdir = str(sft_dir / "ppo_adaptive")
  config = _config("configs/ppo.py:test,adaptive", sft_dir, ("train.num_steps", "8"),
                   ("train.eval_every", "8"), ("kl.target", "0.05"), ("kl.horizon", "100"),
                   ("optimizer.lr", "1e-3"))
  ppo.run(config, workdir)
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = [r for r in rows if "eval/gold_reward" in r]
  train = [r for r in rows if "train/kl_coef" in r]
  assert evals[-1]["eval/gold_reward"] > evals[0]["eval/gold_reward"] + 0.2, evals
  # The measured KL overshoots the small target, so the controller raises beta every time.
  betas = [r["train/kl_coef"] for r in train]
  kls = [r["train/kl"] for r in train]
  assert all(b2 > b1 for b1, b2, kl in zip(betas, betas[1:], kls) if kl > 0.05 * 1.2), (betas, kls)
  assert betas[-1] > betas[0]
