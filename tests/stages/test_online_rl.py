"""Online RL on the enumerable world: every policy-gradient variant from its config switch,
learning with one compilation per jitted piece, PPO with the adaptive KL controller."""

import os
import signal
import threading
import time

import jax
import numpy as np
import pytest

from rlhf_jax.models import flops
from rlhf_jax.parallel import mesh as mesh_lib, sharding as sharding_lib
from rlhf_jax.rl import engine, rollout as rollout_lib
from rlhf_jax.stages import online, policy_gradient, ppo
from rlhf_jax.train import export, loop, metrics as metrics_lib, nonfinite, preemption
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
    assert metrics.pop(nonfinite.FLAG) == ""  # every value of the iteration finite
    rows.append({k: float(v) for k, v in metrics.items()})
  return state, rows


def test_old_logps_from_the_sampler_match_a_rescoring_pass(sft_dir):
  """With untempered float32 sampling the old-policy pass is skipped (rl.rescore_policy=False,
  the default): the update then sees generation's log-probs, which must equal the re-scored
  ones; a tempered sampler is always re-scored."""
  runs = {}
  for rescore in (False, True):
    config = _config("configs/grpo.py:test,enumerable", sft_dir,
                     ("rl.rescore_policy", str(rescore)), ("pg.epochs", "2"))
    s = online.setup(config, str(sft_dir / f"rescore_{rescore}"))
    assert engine.rescore_policy(config, s) == rescore
    built = policy_gradient.build(config, s)
    # One rollout scored by the stage's jitted score function (old_logp as the update sees it).
    batch = loop.to_global(next(built.stream), s.mesh)
    shardings = rollout_lib.shardings_of(s.sft.params, s.mesh)
    gen_fn = rollout_lib.make_generate_fn(s.sft.graphdef, s.sampling, mesh=s.mesh,
                                          param_shardings=shardings,
                                          group_size=config.pg.group_size)
    pt, pm, out = gen_fn(built.state.params, batch["prompt_tokens"], batch["prompt_mask"],
                         jax.random.key(5))
    scored = built.iteration.score_fn({"policy": built.state.params, "ref": s.sft.params}, pt, pm,
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
  assert engine.rescore_policy(tempered, online.setup(tempered, str(sft_dir / "tempered")))


# Every critic-free algorithm, one config line apart (a variant of configs/grpo.py, or one a user
# module registers: tests/rl/toy_algorithm.py).
ALGORITHMS = {
    "grpo": (), "dr_grpo": (), "dapo": (), "gspo": (), "rloo": (), "reinforce": (),
    "reinforce_pp": (), "cispo": (),
    "group_sign": (("rl.algorithm_modules", "tests.rl.toy_algorithm"),
                   ("pg.algorithm", "group_sign")),
}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_each_algorithm_raises_gold_reward_with_one_compilation_per_piece(sft_dir, name):
  """16 iterations of 8 prompts x 4 samples, two optimizer steps each, from the same SFT policy:
  the exact gold reward of the policy rises by a margin (it starts near 0.7)."""
  workdir = str(sft_dir / f"learn_{name}")
  variant = f",{name}" if name in ("dr_grpo", "dapo", "gspo", "rloo", "reinforce",
                                   "reinforce_pp", "cispo") else ""
  config = _config("configs/grpo.py:test,enumerable" + variant, sft_dir,
                   ("train.num_steps", "16"), ("train.eval_every", "16"),
                   ("rl.prompts_per_step", "8"), ("optimizer.lr", "3e-3"),
                   ("pg.minibatches", "2"), *ALGORITHMS[name])
  result = policy_gradient.run(config, workdir)
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = [r for r in rows if "eval/gold_reward" in r]
  assert evals[-1]["eval/gold_reward"] > evals[0]["eval/gold_reward"] + 0.3, evals
  for row in (r for r in rows if "train/loss" in r):
    assert all(v is not None and np.isfinite(v) for v in row.values()), row
    assert row["train/minibatches_run"] == 2.0
    assert 0.0 <= row["train/truncated_frac"] <= 1.0
    if name == "dapo":   # dynamic sampling: a full batch, every round counted
      assert 1 <= row["train/dynamic_sampling/rounds"] <= 3
      assert row["train/dynamic_sampling/filled_groups"] >= 0
  for piece, fn in result.jitted_step.jitted.items():
    assert fn._cache_size() == 1, piece  # 16 iterations, one compilation each


def _ppo_adaptive(sft_dir, workdir):
  config = _config("configs/ppo.py:test,adaptive", sft_dir, ("train.num_steps", "8"),
                   ("train.eval_every", "8"), ("kl.target", "0.05"), ("kl.horizon", "100"),
                   ("optimizer.lr", "1e-3"), ("train.eval_samples", "2"))
  return ppo.run(config, str(workdir))


@pytest.fixture(scope="module")
def ppo_adaptive(sft_dir):
  workdir = sft_dir / "ppo_adaptive"
  _ppo_adaptive(sft_dir, workdir)
  return workdir


def test_ppo_gold_rises_and_adaptive_kl_tracks_target(ppo_adaptive):
  rows = metrics_lib.read_jsonl(os.path.join(ppo_adaptive, "metrics.jsonl"))
  evals = [r for r in rows if "eval/gold_reward" in r]
  train = [r for r in rows if "train/kl_coef" in r]
  assert evals[-1]["eval/gold_reward"] > evals[0]["eval/gold_reward"] + 0.2, evals
  # The measured KL overshoots the small target, so the controller raises beta every time.
  betas = [r["train/kl_coef"] for r in train]
  kls = [r["train/kl"] for r in train]
  assert all(b2 > b1 for b1, b2, kl in zip(betas, betas[1:], kls) if kl > 0.05 * 1.2), (betas, kls)
  assert betas[-1] > betas[0]


def test_ppo_evaluations_write_samples_with_gold_reward(ppo_adaptive):
  rows = metrics_lib.read_jsonl(os.path.join(ppo_adaptive, "samples.jsonl"))
  assert [r["step"] for r in rows] == [0, 0, 8, 8]
  assert [r["prompt"] for r in rows[:2]] == [r["prompt"] for r in rows[2:]]
  for r in rows:  # the enumerable world: 3-letter prompts, up to 6 letters, a gold reward
    assert len(r["prompt"]) == 3 and len(r["completion"]) <= 6
    assert np.isfinite(r["gold_reward"])


def test_ppo_logs_each_iterations_analytic_flops_and_mfu(ppo_adaptive, sft_dir):
  config = _config("configs/ppo.py:test,adaptive", sft_dir)
  cfg = export.load_meta_model(str(sft_dir / "sft"))
  n, p, t = config.rl.prompts_per_step, config.data.prompt_len, config.data.completion_len
  rows = [r for r in metrics_lib.read_jsonl(os.path.join(ppo_adaptive, "metrics.jsonl"))
          if "train/kl_coef" in r]
  assert config.train.log_every == 1 and len(rows) == 8
  policy, critic = (flops.score_flops(cfg, n, p, t, lm_head=head) for head in (True, False))
  for r in rows:
    # epochs x (policy and separate critic trained, 3x their scoring passes) over every row
    assert r["train/flops/update"] == pytest.approx(config.ppo.epochs * 3 * (policy + critic))
    # the reference and the critic always, the old policy when re-scored
    assert r["train/flops/scoring"] in (pytest.approx(policy + critic),
                                        pytest.approx(2 * policy + critic))
    # a prefill, then 1 to T decode steps
    decode = lambda steps: flops.decode_flops(cfg, n, p, steps, prefill_lm_head=False)
    assert decode(1) <= r["train/flops/generation"] <= decode(t)
    total = sum(r[f"train/flops/{k}"] for k in ("generation", "scoring", "update"))
    # one iteration per window, which holds the iteration's wall time and a little more
    assert 0 < r["train/tflops_per_sec"] * 1e12 <= total / r["train/time/iteration"]
    assert 0 < r["train/mfu"] < 1


def _sigterm_after(workdir, step):
  """A thread that sends this process SIGTERM once `step` is logged in workdir's metrics."""
  path = os.path.join(workdir, "metrics.jsonl")

  def watch():
    while not (os.path.exists(path) and any(
        r["step"] >= step for r in metrics_lib.read_jsonl(path) if "train/loss" in r)):
      time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)

  thread = threading.Thread(target=watch, daemon=True)
  thread.start()
  return thread


def _without_clock(rows):
  return [{k: v for k, v in r.items() if not metrics_lib.measures_clock(k)} for r in rows]


def test_ppo_sigterm_mid_run_checkpoints_and_resumes_bit_identically(sft_dir, ppo_adaptive):
  workdir = sft_dir / "ppo_preempted"
  preemption.install()  # as main does
  try:
    thread = _sigterm_after(workdir, 3)
    with pytest.raises(preemption.Preempted, match="ppo: stopped by SIGTERM after step") as e:
      _ppo_adaptive(sft_dir, workdir)
    thread.join()
  finally:
    preemption.uninstall()
  assert e.value.exit_code == 143
  stopped = int(str(e.value).split("after step ")[1].split(";")[0])
  assert 3 <= stopped < 8 and os.path.isdir(workdir / "checkpoints" / str(stopped))
  result = _ppo_adaptive(sft_dir, workdir)  # the rerun resumes (beta included) and finishes
  assert result.start_step == stopped and result.finished
  want = metrics_lib.read_jsonl(os.path.join(ppo_adaptive, "metrics.jsonl"))
  got = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert _without_clock(got) == _without_clock(want)
  mesh, rules = mesh_lib.make_mesh({"data": -1}), sharding_lib.DEFAULT_RULES
  load = lambda d: jax.device_get(export.load(str(d), mesh, rules).params)
  jax.tree.map(np.testing.assert_array_equal, load(workdir), load(ppo_adaptive))
