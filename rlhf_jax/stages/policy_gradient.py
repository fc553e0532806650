"""Critic-free policy-gradient stage: GRPO (and Dr. GRPO / DAPO / GSPO settings), RLOO,
REINFORCE, REINFORCE++, CISPO.

Selected by `config.pg.algorithm` (train/policy_gradient.py); the loop, rollouts, rewards and KL
control are shared with PPO (stages/online.py). Produces `<workdir>/export` (kind "lm").
config.lora.rank > 0: LoRA on the policy (stages/online.py `make_policy`), exported merged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax import losses
from rlhf_jax.stages import online
from rlhf_jax.train import loop, optimizer as optimizer_lib, rl_update
from rlhf_jax.train import policy_gradient as pg, state as state_lib


def make_prepare_fn(cfg, max_len: int):
  """Advantages of a rollout. DAPO's stabilisers, when set: pg.overlong_buffer > 0 adds the soft
  overlong penalty (losses/shaping.py, scaled by pg.overlong_penalty) to the scores;
  pg.mask_truncated drops completions that hit the budget without EOS from the loss (their
  rows' masks are zeroed; they still count in the group statistics)."""
  def prepare(fields, scores_B, beta):
    mask = fields["mask"].astype(jnp.float32)
    metrics = {}
    if cfg.overlong_buffer:
      penalty_B = losses.overlong_penalty(jnp.sum(mask, axis=-1), max_len=max_len,
                                          buffer=cfg.overlong_buffer, factor=cfg.overlong_penalty)
      scores_B = scores_B + penalty_B
      metrics["overlong_penalty"] = jnp.mean(penalty_B)
    kl_B = losses.sequence_kl(fields["old_logp"], fields["ref_logp"], mask)
    kl_BxT = losses.kl_penalty(fields["old_logp"], fields["ref_logp"],
                               estimator=cfg.kl_estimator) * mask
    adv_B = pg.advantages(cfg, scores_B, kl_B, beta, kl_BxT, mask)  # [B], or [B, T]
    batch = {k: fields[k] for k in ("prompt_tokens", "prompt_mask", "tokens", "mask", "old_logp",
                                    "ref_logp")}
    truncated_B = ~fields["stopped"]
    metrics["truncated_frac"] = jnp.mean(truncated_B.astype(jnp.float32))
    if cfg.mask_truncated:
      batch["mask"] = jnp.where(truncated_B[:, None], 0, fields["mask"])
    batch["advantages"] = adv_B
    batch["kl_coef"] = jnp.full(adv_B.shape[:1], beta, jnp.float32)
    return batch, {**metrics, "kl": jnp.mean(kl_B), "advantage_abs": jnp.mean(jnp.abs(adv_B))}
  return jax.jit(prepare)


def optimizer_steps(config) -> int:
  return config.train.num_steps * config.pg.epochs * config.pg.minibatches


def build(config, s: online.Setup) -> online.Built:
  cfg = config.pg
  online.check_no_microbatches(config, "pg.minibatches")
  tx = optimizer_lib.make_optimizer(config.optimizer, optimizer_steps(config))
  policy = online.make_policy(config, s, tx)
  graphdef, state, shardings = state_lib.init_state(policy.make_model, policy.tx, s.mesh, s.rules,
                                                    config.seed, params=policy.params)
  update = rl_update.make_update_fn(pg.make_loss_fn(graphdef, cfg, config.data.completion_len),
                                    policy.tx, num_epochs=cfg.epochs,
                                    num_minibatches=cfg.minibatches, stop_kl=cfg.stop_kl or None,
                                    trainable=policy.trainable)
  update_fn = online.jit_update(update, config, shardings,
                                check_inputs=("advantages", "old_logp", "ref_logp"))
  stream = online.PromptStream(s.prompt_arrays["train"], config, config.kl.coef)
  iteration = online.make_iteration(
      s, config, policy_graphdef=graphdef, policy_of=lambda p: p, critic_of=lambda p: None,
      value_fn=None, prepare_fn=make_prepare_fn(cfg, config.data.completion_len),
      update_fn=update_fn, stream=stream,
      group_size=cfg.group_size)
  evaluate = online.make_evaluator(s, config, policy.export, stream)
  return online.Built(state, shardings, iteration, evaluate, stream, export_params=policy.export,
                      learning_rate=optimizer_lib.make_schedule(config.optimizer,
                                                                optimizer_steps(config)))


def run(config, workdir: str) -> loop.LoopResult:
  s = online.setup(config, workdir)
  return online.run(config, workdir, s, build(config, s))
