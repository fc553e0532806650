"""PPO stage: policy + critic in one train state, frozen reference, reward from gold or an RM.

The critic is a scalar model on its own backbone (initialised from the reward model's member 0
when the reward is learned and `critic.init_from_reward_model`, else from the SFT trunk) or a
head on the policy's backbone (`critic.shared_backbone`). KL-shaped rewards, GAE, whitening and
the clipped losses live in train/ppo.py; rollouts, rewards and KL control in stages/online.py.

config.lora.rank > 0 puts LoRA on the policy only (stages/online.py `make_policy`): a separate
critic trains in full; a shared-backbone critic trains its head and, through the shared trunk,
the policy's adapters. The export is the plain policy LM (adapters merged).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax import losses, models
from rlhf_jax.data import pipeline
from rlhf_jax.parallel import sharding as sharding_lib
from rlhf_jax.stages import common, online
from rlhf_jax.train import lora, loop, optimizer as optimizer_lib, ppo, precision, rl_update
from rlhf_jax.train import state as state_lib

FIELDS = ("prompt_tokens", "prompt_mask", "tokens", "mask", "old_logp", "values")


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


def make_prepare_fn(cfg, with_ptx: bool):
  def prepare(fields, scores_B, beta):
    adv, returns, rewards = ppo.advantages_and_returns(cfg, fields, scores_B, beta)
    mask = fields["mask"].astype(jnp.float32)
    batch = {k: fields[k] for k in FIELDS}
    batch.update(advantages=adv, returns=returns)
    if with_ptx:
      batch.update({k: fields[k] for k in ("ptx_tokens", "ptx_mask", "ptx_completion_mask")})
    kl_B = losses.sequence_kl(fields["old_logp"], fields["ref_logp"], mask)
    return batch, {"kl": jnp.mean(kl_B), "shaped_reward": jnp.mean(jnp.sum(rewards, axis=1))}
  return jax.jit(prepare)


def build(config, s: online.Setup, workdir: str) -> online.Built:
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

  value_fn = ppo.make_value_fn(critic_graphdef, shared_backbone=config.critic.shared_backbone)
  with_ptx = bool(cfg.ptx_coef)
  update = rl_update.make_update_fn(
      ppo.make_loss_fn(policy_graphdef, value_fn, cfg, config.data.prompt_len), tx,
      num_epochs=cfg.epochs, num_minibatches=cfg.minibatches, stop_kl=cfg.stop_kl or None,
      trainable=trainable)
  update_fn = online.jit_update(update, config, shardings,
                                check_inputs=("advantages", "returns", "old_logp", "values"))
  prepare_fn = make_prepare_fn(cfg, with_ptx)
  if with_ptx:
    prepare_fn = _with_ptx_batches(config, s, workdir, prepare_fn)
  stream = online.PromptStream(s.prompt_arrays["train"], config, config.kl.coef)
  iteration = online.make_iteration(
      s, config, policy_graphdef=policy_graphdef, policy_of=lambda p: p["policy"],
      critic_of=lambda p: p["critic"], value_fn=value_fn, prepare_fn=prepare_fn,
      update_fn=update_fn, stream=stream, group_size=1)
  export_params = lambda p: policy.export(p["policy"])
  evaluate = online.make_evaluator(s, config, export_params, stream)
  return online.Built(state, shardings, iteration, evaluate, stream, export_params=export_params,
                      learning_rate=optimizer_lib.make_schedule(config.optimizer, steps))


def run(config, workdir: str) -> loop.LoopResult:
  s = online.setup(config, workdir)
  return online.run(config, workdir, s, build(config, s, workdir))


def _with_ptx_batches(config, s: online.Setup, workdir: str, prepare_fn):
  """Adds an SFT batch (the PPO-ptx pretraining mix) of the rollout's size to every update."""
  arrays, _ = pipeline.prepare_sft(common.records(config, workdir, "sft", "train"), s.layout,
                                   name="ptx")
  it = iter(pipeline.train_dataset(arrays, global_batch=config.rl.prompts_per_step,
                                   seed=config.seed + 7, process_index=jax.process_index(),
                                   process_count=jax.process_count()))

  def prepare(fields, scores_B, beta):
    ptx = loop.to_global(next(it), s.mesh)
    fields = {**fields, "ptx_tokens": ptx["tokens"], "ptx_mask": ptx["mask"],
              "ptx_completion_mask": ptx["completion_mask"]}
    return prepare_fn(fields, scores_B, beta)

  return prepare
