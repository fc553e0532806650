"""Critic-free policy-gradient stage: GRPO (and its Dr. GRPO / DAPO / GSPO settings), RLOO,
REINFORCE, REINFORCE++, CISPO, or an algorithm registered by a module of
config.rl.algorithm_modules; `config.pg.algorithm` picks it (rl/algorithms.py).

Wiring only: the engine (rl/) generates, scores, rewards and learns. Produces
`<workdir>/export` (kind "lm"). config.lora.rank > 0: LoRA on the policy, exported merged.
"""

from __future__ import annotations

from rlhf_jax.rl import algorithms, engine, evaluate, learn
from rlhf_jax.stages import online
from rlhf_jax.train import loop, optimizer as optimizer_lib, state as state_lib


def optimizer_steps(config) -> int:
  return config.train.num_steps * config.pg.epochs * config.pg.minibatches


def build(config, s: online.Setup) -> engine.Built:
  cfg = config.pg
  online.check_no_microbatches(config, "pg.minibatches")
  algorithms.load_modules(config.rl.get("algorithm_modules", ""))
  algorithm = algorithms.get(cfg.algorithm, critic=False)
  tx = optimizer_lib.make_optimizer(config.optimizer, optimizer_steps(config))
  policy = online.make_policy(config, s, tx)
  graphdef, state, shardings = state_lib.init_state(policy.make_model, policy.tx, s.mesh, s.rules,
                                                    config.seed, params=policy.params)
  state, shardings = engine.rl_state(state, shardings, config.kl.coef, s.mesh)
  model = learn.Model(policy_graphdef=graphdef)
  learn_fn = engine.jit_learn(
      learn.make_learn_fn(algorithm, model, config, policy.tx, trainable=policy.trainable),
      config, shardings, s.mesh, check_inputs=("scores_B", "old_logp_BxT", "ref_logp_BxT"))
  stream = online.prompt_stream(s, config)
  iteration = engine.make_iteration(s, config, model=model, learn_fn=learn_fn,
                                    shardings=shardings, stream=stream,
                                    group_size=cfg.group_size)
  return engine.Built(state, shardings, iteration, evaluate.make_evaluator(s, config, policy.export),
                      stream, export_params=policy.export,
                      learning_rate=optimizer_lib.make_schedule(config.optimizer,
                                                                optimizer_steps(config)))


def run(config, workdir: str) -> loop.LoopResult:
  s = online.setup(config, workdir)
  return online.run(config, workdir, s, build(config, s))
