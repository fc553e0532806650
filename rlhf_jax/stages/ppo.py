"""PPO stage: policy + critic in one train state, frozen reference, reward from gold or an RM.

The critic is a scalar model on its own backbone (initialised from the reward model's member 0
when the reward is learned and `critic.init_from_reward_model`, else from the SFT trunk) or a
head on the policy's backbone (`critic.shared_backbone`, rl/critic.py). The algorithm (KL-shaped
rewards, GAE, whitening, clipped losses) is the "ppo" entry of rl/algorithms.py, run by the
engine (rl/); this module wires it.

config.lora.rank > 0 puts LoRA on the policy only (stages/online.py `make_policy`): a separate
critic trains in full; a shared-backbone critic trains its head and, through the shared trunk,
the policy's adapters. The export is the plain policy LM (adapters merged).
"""

from __future__ import annotations

import jax

from rlhf_jax import models
from rlhf_jax.data import pipeline
from rlhf_jax.parallel import sharding as sharding_lib
from rlhf_jax.rl import algorithms, critic, engine, evaluate, learn
from rlhf_jax.stages import common, online
from rlhf_jax.train import lora, loop, optimizer as optimizer_lib, precision
from rlhf_jax.train import state as state_lib


def init_critic(config, s: online.Setup):
  """(critic graphdef for scoring, critic params, their shardings).

  With a shared backbone the critic is the head alone and its graphdef a ScalarModel carrying
  the policy's LoRA adapters (when config.lora.rank > 0), since it runs on the policy's trunk."""
  cfg = precision.apply_model_options(s.sft.model_config, config)  # + remat
  make_scalar = lambda r: models.ScalarModel(cfg, rngs=r)
  scalar_graphdef, scalar_abstract = state_lib.abstract_model(make_scalar)
  scalar_sh = sharding_lib.param_shardings(scalar_abstract, s.mesh, s.rules)
  _, fresh = state_lib.init_params(make_scalar, s.mesh, s.rules, config.seed + 1)
  if config.critic.shared_backbone:
    if lora.enabled(config.lora):
      lc = config.lora
      scalar_graphdef, _ = state_lib.abstract_model(lora.with_adapters(
          make_scalar, rank=int(lc.rank), alpha=float(lc.alpha), targets=lc.targets))
    return scalar_graphdef, {"head": fresh["head"]}, {"head": scalar_sh["head"]}
  if config.critic.init_from_reward_model and s.rm is not None:
    backbone = jax.tree.map(lambda x: x[0], s.rm.params["backbone"])  # member 0
  else:
    backbone = {k: v for k, v in s.sft.params.items() if k != "lm_head"}
  backbone = jax.tree.map(lambda x, sh: jax.device_put(x, sh), backbone, scalar_sh["backbone"])
  return scalar_graphdef, {"backbone": backbone, "head": fresh["head"]}, scalar_sh


def build(config, s: online.Setup, workdir: str) -> engine.Built:
  cfg = config.ppo
  online.check_no_microbatches(config, "ppo.minibatches")
  steps = config.train.num_steps * cfg.epochs * cfg.minibatches
  base_tx = optimizer_lib.make_optimizer(config.optimizer, steps)
  policy = online.make_policy(config, s, base_tx)
  policy_graphdef, policy_abstract = state_lib.abstract_model(policy.make_model)
  policy_sh = sharding_lib.param_shardings(policy_abstract, s.mesh, s.rules)
  critic_graphdef, critic_params, critic_sh = init_critic(config, s)
  trainable, tx = None, base_tx
  if lora.enabled(config.lora):  # the policy's adapters and the whole critic train
    tx = lora.freeze_optimizer(base_tx, also_train=("critic",))
    trainable = {"policy": policy.trainable,
                 "critic": jax.tree.map(lambda _: True, critic_params)}
  state, shardings = state_lib.state_from_params(
      {"policy": policy.params, "critic": critic_params},
      {"policy": policy_sh, "critic": critic_sh}, tx, s.mesh)
  state, shardings = engine.rl_state(state, shardings, config.kl.coef, s.mesh)
  model = learn.Model(
      policy_graphdef=policy_graphdef, policy_of=lambda p: p["policy"],
      critic_of=lambda p: p["critic"],
      value_fn=critic.make_value_fn(critic_graphdef, shared_backbone=config.critic.shared_backbone))
  learn_fn = engine.jit_learn(
      learn.make_learn_fn(algorithms.get("ppo"), model, config, tx, trainable=trainable),
      config, shardings, s.mesh,
      check_inputs=("scores_B", "old_logp_BxT", "ref_logp_BxT", "values_BxT"))
  stream = online.prompt_stream(s, config)
  iteration = engine.make_iteration(
      s, config, model=model, learn_fn=learn_fn, shardings=shardings, stream=stream, group_size=1,
      extra_fn=_ptx_batches(config, s, workdir) if cfg.ptx_coef else None)
  export_params = lambda p: policy.export(p["policy"])
  return engine.Built(state, shardings, iteration,
                      evaluate.make_evaluator(s, config, export_params), stream,
                      export_params=export_params,
                      learning_rate=optimizer_lib.make_schedule(config.optimizer, steps))


def run(config, workdir: str) -> loop.LoopResult:
  s = online.setup(config, workdir)
  return online.run(config, workdir, s, build(config, s, workdir))


def _ptx_batches(config, s: online.Setup, workdir: str):
  """SFT rows (the PPO-ptx pretraining mix), one batch of the rollout's size per iteration, as
  the rollout's extra fields: ptx_prompt_tokens / ptx_prompt_mask / ptx_tokens / ptx_mask (the
  completion mask: the tokens the NLL counts)."""
  arrays, _ = pipeline.prepare_sft(common.records(config, workdir, "sft", "train"), s.layout,
                                   name="ptx")
  it = iter(pipeline.train_dataset(arrays, global_batch=config.rl.prompts_per_step,
                                   seed=config.seed + 7, process_index=jax.process_index(),
                                   process_count=jax.process_count()))
  p = config.data.prompt_len

  def batch() -> dict:
    ptx = next(it)  # this process's rows, split into [prompt | completion] before placing
    return loop.to_global({
        "ptx_prompt_tokens": ptx["tokens"][:, :p], "ptx_prompt_mask": ptx["mask"][:, :p],
        "ptx_tokens": ptx["tokens"][:, p:], "ptx_mask": ptx["completion_mask"][:, p:]}, s.mesh)

  return batch
