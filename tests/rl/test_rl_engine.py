"""The RL engine's pieces against hand-computed values: dynamic sampling's group selection, DAPO's
shaping, where the KL goes, truncated importance sampling, β control in the train state, and the
algorithm registry (a user module registers one)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from rlhf_jax import losses, validate, configlib
from rlhf_jax.generation import score_tokens
from rlhf_jax.models import Transformer, get_model_config
from rlhf_jax.rl import algorithms, engine, learn
from rlhf_jax.rl.rollout import Rollout

B, P, T, VOCAB = 4, 3, 4, 32


def test_dynamic_sampling_keeps_exactly_the_informative_groups():
  # Two rounds of 3 groups of 2: groups 0 (equal), 1 (informative), 2 (equal) | 3, 4 (informative),
  # 5 (equal). Three are needed: groups 1, 3, 4, in order.
  rounds = [np.array([1.0, 1.0, 0.0, 1.0, 0.5, 0.5]), np.array([0.0, 1.0, 1.0, 0.2, 0.0, 0.0])]
  rows, stats = engine.select_groups(rounds, 2, 3)
  np.testing.assert_array_equal(rows, [2, 3, 6, 7, 8, 9])
  assert stats == {"dynamic_sampling/rounds": 2.0, "dynamic_sampling/informative_frac": 0.5,
                   "dynamic_sampling/filled_groups": 0.0}
  np.testing.assert_array_equal(engine.informative(rounds, 2), [0, 1, 0, 1, 1, 0])
  # Only one informative group in one round: topped up with the first degenerate groups, counted.
  rows, stats = engine.select_groups(rounds[:1], 2, 3)
  np.testing.assert_array_equal(rows, [0, 1, 2, 3, 4, 5])
  assert stats["dynamic_sampling/filled_groups"] == 2.0


def _config(**pg):
  c = ml_collections.ConfigDict({
      "stage": "policy_gradient",
      "pg": {"algorithm": "rloo", "group_size": 2, "scale": "group", "baseline": "none",
             "clip_eps": 0.2, "clip_eps_high": 0.0, "level": "token", "kl_estimator": "k3",
             "aggregation": "token-mean", "entropy_coef": 0.0, "epochs": 1, "minibatches": 1,
             "stop_kl": 0.0, "overlong_buffer": 0, "overlong_penalty": 1.0,
             "mask_truncated": False},
      "kl": {"coef": 0.1, "controller": "fixed", "target": 1.0, "horizon": 100.0,
             "placement": "auto"},
      "rl": {"tis_cap": 0.0},
      "data": {"completion_len": T}})
  c.pg.update(pg)
  return c


@pytest.fixture(scope="module")
def tiny():
  model = Transformer(get_model_config("tiny", vocab_size=VOCAB),
                      rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
  graphdef, state = nnx.split(model, nnx.Param)
  return graphdef, nnx.to_pure_dict(state)


def _rollout(seed=0, **fields) -> Rollout:
  rng = np.random.default_rng(seed)
  logp = lambda: jnp.asarray(-rng.uniform(0.5, 3.0, size=(B, T)), jnp.float32)
  r = Rollout(prompt_tokens_BxP=jnp.asarray(rng.integers(1, VOCAB, (B, P)), jnp.int32),
              prompt_mask_BxP=jnp.ones((B, P), jnp.int32),
              tokens_BxT=jnp.asarray(rng.integers(1, VOCAB, (B, T)), jnp.int32),
              mask_BxT=jnp.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]),
              stopped_B=jnp.array([False, True, True, False]),
              sampler_logp_BxT=logp(), old_logp_BxT=logp(), ref_logp_BxT=logp(),
              values_BxT=jnp.zeros((B, T)), scores_B=jnp.array([1.0, 0.0, 0.3, 0.9]),
              group_B=jnp.array([0, 0, 1, 1]))
  return r.replace(**fields)


def test_shaping_adds_the_overlong_penalty_and_masks_truncated_rows():
  cfg = _config(overlong_buffer=2, mask_truncated=True).pg
  r, scores, metrics = learn.shape_rollout(cfg, _rollout(), T)
  # Lengths 4, 2, 3, 4 with a budget of 4 and a buffer of 2: penalties -1, 0, -0.5, -1.
  np.testing.assert_allclose(scores, [0.0, 0.0, -0.2, -0.1], atol=1e-6)
  np.testing.assert_array_equal(r.mask_BxT[0], 0)   # truncated rows leave the loss
  np.testing.assert_array_equal(r.mask_BxT[2], [1, 1, 1, 0])
  assert float(metrics["truncated_frac"]) == 0.5
  assert float(metrics["overlong_penalty"]) == pytest.approx(-0.625)


def _loss(tiny, config, rollout, beta):
  graphdef, params = tiny
  algorithm = algorithms.get(config.pg.algorithm)
  adv, _ = algorithm.advantages(config.pg, rollout, rollout.scores_B, jnp.zeros((B, T)), 0.0)
  loss_fn = learn.make_loss_fn(algorithm, learn.Model(policy_graphdef=graphdef), config)
  loss, metrics = loss_fn(params, {"rollout": rollout, "advantages": adv}, jnp.float32(beta))
  return float(loss), metrics


def test_kl_in_the_loss_adds_beta_times_the_estimator_and_in_the_reward_does_not(tiny):
  r = _rollout()
  mask = r.mask_BxT.astype(jnp.float32)
  logp = score_tokens(tiny[0], tiny[1], *r.rows).logp_BxT
  k3 = float(losses.masked_mean(losses.kl_penalty(logp, r.ref_logp_BxT, estimator="k3"), mask))
  config = _config()
  config.kl.placement = "loss"
  base, _ = _loss(tiny, config, r, 0.0)
  with_kl, metrics = _loss(tiny, config, r, 0.5)
  assert with_kl - base == pytest.approx(0.5 * k3, rel=1e-4)
  assert float(metrics["kl_loss_term"]) == pytest.approx(k3, rel=1e-5)
  config.kl.placement = "auto"   # RLOO's own: in the reward, so the loss ignores beta
  assert _loss(tiny, config, r, 0.5)[0] == _loss(tiny, config, r, 0.0)[0]
  assert algorithms.placement(algorithms.get("grpo"), config.kl) == "loss"
  assert algorithms.placement(algorithms.get("rloo"), config.kl) == "reward"


def test_truncated_importance_weights_scale_each_tokens_policy_loss(tiny):
  r = _rollout()
  mask = r.mask_BxT.astype(jnp.float32)
  config = _config()
  config.rl.tis_cap = 2.0
  got, _ = _loss(tiny, config, r, 0.0)
  logp = score_tokens(tiny[0], tiny[1], *r.rows).logp_BxT
  adv = losses.sequence_to_token(losses.rloo_advantages(r.scores_B, group_size=2), mask)
  pg = losses.ppo_policy_loss(logp, r.old_logp_BxT, adv, mask, clip_eps=0.2)
  w = np.minimum(np.exp(np.asarray(r.old_logp_BxT - r.sampler_logp_BxT)), 2.0)
  want = float(np.sum(np.asarray(pg) * w * np.asarray(mask)) / np.sum(np.asarray(mask)))
  assert got == pytest.approx(want, rel=1e-5)
  config.rl.tis_cap = 0.0
  assert _loss(tiny, config, r, 0.0)[0] == pytest.approx(float(losses.masked_mean(pg, mask)),
                                                        rel=1e-5)


def test_learn_moves_the_params_and_the_adaptive_beta_in_the_state(tiny):
  graphdef, params = tiny
  config = _config(algorithm="grpo")
  config.kl.update(controller="adaptive", target=0.5, horizon=40.0)
  tx = optax.adam(1e-2)
  state = learn.RLState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                        control={"kl_coef": jnp.float32(0.1)})
  fn = jax.jit(learn.make_learn_fn(algorithms.get("grpo"), learn.Model(policy_graphdef=graphdef),
                                   config, tx))
  r = _rollout()
  new, metrics = fn(state, r, jax.random.key(0))
  kl = float(np.mean(np.sum((np.asarray(r.old_logp_BxT) - np.asarray(r.ref_logp_BxT))
                            * np.asarray(r.mask_BxT), axis=1)))
  assert float(metrics["kl"]) == pytest.approx(kl, rel=1e-5)
  error = np.clip((kl - 0.5) / 0.5, -0.2, 0.2)   # Ziegler et al.'s controller, n = B rows
  assert float(new.control["kl_coef"]) == pytest.approx(0.1 * (1 + error * B / 40.0), rel=1e-5)
  assert float(metrics["kl_coef"]) == pytest.approx(0.1)
  assert int(new.step) == 1
  moved = sum(float(jnp.abs(a - b).sum()) for a, b in zip(jax.tree.leaves(new.params),
                                                          jax.tree.leaves(params)))
  assert moved > 0


def test_registry_errors_and_a_user_module_registers_an_algorithm(tiny):
  with pytest.raises(ValueError, match=r"unknown RL algorithm 'grp'; valid: \[.*'grpo'"):
    algorithms.get("grp")
  with pytest.raises(ValueError, match="already registered"):
    algorithms.register(algorithms.Algorithm("grpo", algorithms.get("grpo").advantages))
  with pytest.raises(ValueError, match="kl_placement 'both'"):
    algorithms.Algorithm("x", lambda *a: None, kl_placement="both")
  config = configlib.get("configs/grpo.py:test", [("rl.algorithm_modules", "tests.rl.toy_algorithm"),
                                                  ("pg.algorithm", "group_sign")])
  validate.validate(config)   # imports the module, which registers "group_sign"
  algorithm = algorithms.get("group_sign", critic=False)
  adv, _ = algorithm.advantages(_config().pg, None, jnp.array([1.0, 0.0, 0.3, 0.9]),
                                jnp.zeros((B, T)), 0.0)
  np.testing.assert_array_equal(adv, [1.0, -1.0, -1.0, 1.0])
