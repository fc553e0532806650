r"""The learning half of an RL iteration, one jitted function: advantages → K epochs of
minibatch updates → KL control.

  learn(state: RLState, rollout: Rollout, rng) -> (state, metrics)

1. Shaping: DAPO's soft overlong penalty on the scores (`overlong_buffer` > 0,
   losses.overlong_penalty); truncated completions (no EOS in the budget) leave the loss
   (`mask_truncated`; they still count in the group statistics).
2. Advantages: the algorithm's (rl/algorithms.py), from the scores and the per-token rollout KL
   :math:`k(\log\pi_{old} - \log\pi_{ref})` (estimator `kl_estimator`, clipped to
   ±`kl_value_clamp` when set, as verl's ``low_var_kl``), which enters the rewards with β when the
   KL is placed in the reward.
3. Update: for each of K epochs, the rows are permuted and split into M minibatches, one optimizer
   step each, on

   .. math::
       L = \mathrm{agg}\big(w_t\,\ell^{pg}_t + \beta\,k(\log\pi_\theta - \log\pi_{ref})_t\,[\text{KL in
           loss}] - c_H H_t\big) + c_v\,\overline{\ell^{V}} + \gamma_{ptx}\,\overline{\ell^{ptx}}

   with :math:`\ell^{pg}` the algorithm's policy loss, :math:`w_t` the truncated importance weight
   :math:`\min(\pi_{old}/\pi_{sampler}, C)` when `rl.tis_cap` = C > 0 (losses.tis_weights),
   the entropy bonus (losses.entropy_bonus), the critic's clipped value loss (PPO) and the
   pretraining mix (losses.ptx_loss). Early stop (`stop_kl`): once a minibatch's approximate KL
   to the rollout policy exceeds it, the remaining minibatches are discarded (one compilation
   whatever happens).
4. KL control: β (in the train state) follows rl/kl_control.py from the rollout's mean
   sequence KL :math:`\sum_t (\log\pi_{old} - \log\pi_{ref})`.

There is no gradient accumulation (`train.microbatches`): the minibatches already bound the
activation memory of one optimizer step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from rlhf_jax import losses
from rlhf_jax.generation import score_tokens
from rlhf_jax.rl import algorithms, kl_control
from rlhf_jax.rl.rollout import Rollout
from rlhf_jax.train import lora
from rlhf_jax.train.state import TrainState


@flax.struct.dataclass
class RLState(TrainState):
  """The train state of online RL: params and optimizer, plus the controllers' state
  (`control["kl_coef"]`: β), checkpointed with them."""
  control: Any = None


@dataclasses.dataclass(frozen=True)
class Model:
  """How the update reaches the models in the train state's params."""
  policy_graphdef: Any
  policy_of: Callable = lambda params: params
  critic_of: Callable = lambda params: None
  value_fn: Optional[Callable] = None    # (critic_params, policy_params, *rows) -> values_BxT


def shape_rollout(cfg, rollout: Rollout, max_len: int) -> tuple[Rollout, jax.Array, dict]:
  """(rollout with the loss mask, shaped scores_B, metrics): DAPO's stabilisers when set."""
  mask = rollout.mask_BxT.astype(jnp.float32)
  scores_B, metrics = rollout.scores_B, {}
  if cfg.get("overlong_buffer"):
    penalty_B = losses.overlong_penalty(jnp.sum(mask, axis=-1), max_len=max_len,
                                        buffer=cfg.overlong_buffer, factor=cfg.overlong_penalty)
    scores_B = scores_B + penalty_B
    metrics["overlong_penalty"] = jnp.mean(penalty_B)
  truncated_B = jnp.logical_not(rollout.stopped_B)
  metrics["truncated_frac"] = jnp.mean(truncated_B.astype(jnp.float32))
  if cfg.get("mask_truncated"):
    rollout = rollout.replace(mask_BxT=jnp.where(truncated_B[:, None], 0, rollout.mask_BxT))
  return rollout, scores_B, metrics


def stage_block(config):
  """The stage's own hyper-parameters: config.ppo for PPO, config.pg for the critic-free stage."""
  return config.ppo if config.stage == "ppo" else config.pg


def make_loss_fn(algorithm: algorithms.Algorithm, model: Model, config):
  """loss_fn(params, minibatch, beta) -> (loss, metrics); minibatch = {"rollout": Rollout,
  "advantages": [B] or [B, T], **the algorithm's extras}."""
  cfg = stage_block(config)
  in_loss = algorithms.placement(algorithm, config.kl) == "loss"
  tis_cap = float(config.rl.get("tis_cap", 0.0))
  aggregation = cfg.get("aggregation", "token-mean")
  extra = ({"max_len": config.data.completion_len}
           if aggregation == "sequence-mean-token-sum-norm" else {})
  clip = algorithms.clip_args(cfg)

  def loss_fn(params, mb, beta):
    r: Rollout = mb["rollout"]
    mask = r.mask_BxT.astype(jnp.float32)
    policy = model.policy_of(params)
    scores = score_tokens(model.policy_graphdef, policy, *r.rows, with_entropy=True)
    adv = mb["advantages"]
    adv_BxT = adv * mask if adv.ndim == 2 else losses.sequence_to_token(adv, mask)
    pg_BxT = algorithm.policy_loss(cfg, scores.logp_BxT, r.old_logp_BxT, adv_BxT, mask)
    metrics = losses.ppo_policy_metrics(scores.logp_BxT, r.old_logp_BxT, adv_BxT, mask, **clip)
    if tis_cap:
      pg_BxT = pg_BxT * losses.tis_weights(r.old_logp_BxT, r.sampler_logp_BxT, mask, cap=tis_cap)
    kl_BxT = losses.kl_penalty(scores.logp_BxT, r.ref_logp_BxT, estimator=cfg.kl_estimator,
                               value_clamp=algorithms.kl_clamp(cfg))
    per_token = pg_BxT + (beta * kl_BxT * mask if in_loss else 0.0)
    if cfg.entropy_coef:
      per_token = per_token + losses.entropy_bonus(scores.entropy_BxT, mask, coef=cfg.entropy_coef)
    loss = losses.aggregate_loss(per_token, mask, mode=aggregation, **extra)
    metrics.update(policy_loss=losses.masked_mean(pg_BxT, mask),
                   entropy=losses.masked_mean(scores.entropy_BxT, mask),
                   kl_loss_term=losses.masked_mean(kl_BxT, mask))
    if algorithm.uses_critic:
      values_BxT = model.value_fn(model.critic_of(params), policy, *r.rows)
      value_BxT = losses.value_loss(values_BxT, r.values_BxT, mb["returns"], mask,
                                    clip_eps=cfg.value_clip_eps or None)
      value = losses.masked_mean(value_BxT, mask)
      loss = loss + cfg.value_coef * value
      metrics.update(value_loss=value, value_error=losses.masked_mean(
          jnp.square(values_BxT - mb["returns"]), mask))
    if cfg.get("ptx_coef"):
      ptx_tokens, ptx_mask = r.extra["ptx_prompt_tokens"], r.extra["ptx_prompt_mask"]
      ptx = score_tokens(model.policy_graphdef, policy, ptx_tokens, ptx_mask,
                         r.extra["ptx_tokens"], r.extra["ptx_mask"])
      ptx_mask_BxT = r.extra["ptx_mask"].astype(jnp.float32)
      ptx_loss = losses.aggregate_loss(losses.ptx_loss(ptx.logp_BxT, ptx_mask_BxT, coef=1.0),
                                       ptx_mask_BxT, mode="token-mean")
      loss = loss + cfg.ptx_coef * ptx_loss
      metrics["ptx_loss"] = ptx_loss
    metrics["loss"] = loss
    return loss, metrics

  return loss_fn


def make_learn_fn(algorithm: algorithms.Algorithm, model: Model, config,
                  tx: optax.GradientTransformation, *, trainable=None) -> Callable:
  """`learn(state, rollout, rng) -> (state, metrics)` (module docstring), not yet jitted.

  trainable: a pytree of bools like the params (train/lora.py's mask), or None (all); frozen
  leaves get stop_gradient, so their weight gradients are never computed."""
  cfg = stage_block(config)
  num_epochs, num_minibatches = int(cfg.epochs), int(cfg.minibatches)
  stop_kl = cfg.stop_kl or None
  beta_in_reward = algorithms.placement(algorithm, config.kl) == "reward"
  kc = config.kl
  tis_cap = float(config.rl.get("tis_cap", 0.0))
  loss_fn = make_loss_fn(algorithm, model, config)
  frozen_loss_fn = lambda params, mb, beta: loss_fn(lora.freeze(params, trainable), mb, beta)

  def learn(state: RLState, rollout: Rollout, rng):
    beta = state.control["kl_coef"]
    rollout, scores_B, metrics = shape_rollout(cfg, rollout, config.data.completion_len)
    mask = rollout.mask_BxT.astype(jnp.float32)
    kl_BxT = losses.kl_penalty(rollout.old_logp_BxT, rollout.ref_logp_BxT,
                               estimator=cfg.kl_estimator,
                               value_clamp=algorithms.kl_clamp(cfg)) * mask
    adv, extras = algorithm.advantages(cfg, rollout, scores_B, kl_BxT,
                                       beta if beta_in_reward else 0.0)
    metrics.update(extras.pop("metrics", {}))
    # The minibatches carry what the loss reads: not the per-function reward columns (logged
    # only), nor the critic's values where there is no critic.
    kept = rollout.replace(rewards={}, **({} if algorithm.uses_critic else {"values_BxT": None}))
    data = {"rollout": kept, "advantages": adv, **extras}
    b = rollout.mask_BxT.shape[0]
    if b % num_minibatches:
      raise ValueError(f"rollout batch {b} is not divisible by {num_minibatches} minibatches")
    size = b // num_minibatches

    def epoch(carry, key):
      perm = jax.random.permutation(key, b)
      shuffled = jax.tree.map(lambda x: x[perm].reshape((num_minibatches, size) + x.shape[1:]),
                              data)

      def minibatch(carry, mb):
        state, stopped = carry
        (_, m), grads = jax.value_and_grad(frozen_loss_fn, has_aux=True)(state.params, mb, beta)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = jnp.logical_not(stopped)
        pick = lambda new, old: jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)
        new = state.replace(step=state.step + keep.astype(jnp.int32),
                            params=pick(params, state.params),
                            opt_state=pick(opt_state, state.opt_state))
        m = {**m, "grad_norm": optax.tree.norm(grads), "ran": keep.astype(jnp.float32)}
        if stop_kl is not None:
          stopped = stopped | (m["approx_kl"] > stop_kl)
        return (new, stopped), m

      return jax.lax.scan(minibatch, carry, shuffled)

    keys = jax.random.split(rng, num_epochs)
    (state, stopped), steps = jax.lax.scan(epoch, (state, jnp.zeros((), bool)), keys)
    ran = steps.pop("ran")
    n = jnp.maximum(jnp.sum(ran), 1.0)
    metrics.update({k: jnp.sum(v * ran) / n for k, v in steps.items()})
    kl_B = losses.sequence_kl(rollout.old_logp_BxT, rollout.ref_logp_BxT, rollout.mask_BxT)
    kl = jnp.mean(kl_B)
    # How far the sampler's log-probs are from the trainer's (0 when they are the same pass).
    metrics["sampler_logp_gap"] = losses.masked_mean(
        jnp.abs(rollout.old_logp_BxT - rollout.sampler_logp_BxT), mask)
    metrics.update(minibatches_run=jnp.sum(ran), early_stopped=stopped.astype(jnp.float32),
                   kl=kl, kl_coef=beta, advantage_abs=jnp.mean(jnp.abs(adv)),
                   reward=jnp.mean(rollout.scores_B))
    if tis_cap:
      w_BxT = losses.tis_weights(rollout.old_logp_BxT, rollout.sampler_logp_BxT, mask, cap=tis_cap)
      metrics.update(tis_weight=losses.masked_mean(w_BxT, mask),
                     tis_capped_frac=losses.masked_mean((w_BxT >= tis_cap).astype(jnp.float32),
                                                        mask))
    new_beta = kl_control.update(beta, kl, kind=kc.controller, target=kc.target,
                                 horizon=kc.horizon, batch_size=b)
    state = state.replace(control={**state.control, "kl_coef": jnp.asarray(new_beta, jnp.float32)})
    return state, metrics

  return learn
