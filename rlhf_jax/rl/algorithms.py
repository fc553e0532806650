"""Online-RL algorithms as registry entries: each gives its advantages and its policy loss.

An algorithm is an `Algorithm`: pure functions of arrays, called inside the jitted update
(rl/learn.py), which does everything they share (the KL in the reward or in the loss, truncated
importance sampling, the entropy bonus, aggregation, the critic's value loss, PPO-ptx, epochs of
minibatches, KL control):

  advantages(cfg, rollout, scores_B, kl_BxT, beta) -> (advantages_B or advantages_BxT, extras)
      scores_B   the rollout's rewards (after any overlong shaping)
      kl_BxT     the per-token KL estimate k(log π_old − log π_ref) (config estimator), masked
      beta       the KL coefficient when the KL goes in the reward, else 0
      extras     {name: per-row array} the loss also needs (PPO: the GAE returns), and
                 optionally "metrics": {name: scalar} to log
  policy_loss(cfg, logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT) -> loss_BxT   (unreduced)

`cfg` is the stage's block (config.pg or config.ppo). Built in (one config line apart):

  ppo           GAE on KL-shaped token rewards with a critic, clipped surrogate (Ouyang et al. 2022)
  grpo          (r − mean_g r) / (std_g r + 1e-4) per group (Shao et al. 2024); pg.scale = none
                is Dr. GRPO (Liu et al. 2025), asymmetric clip + token-mean is DAPO (Yu et al.
                2025), pg.level = sequence is GSPO (Zheng et al. 2025)
  rloo          r' − mean of the other G − 1 r' (Ahmadian et al. 2024), r' = r − β·KL_seq
  reinforce     r' − baseline (Williams 1992)
  reinforce_pp  batch-whitened returns of per-token KL rewards (Hu 2025)
  cispo         group advantages, clipped IS-weight REINFORCE loss (MiniMax-M1, 2025)

A new algorithm is one `register(Algorithm(...))`, here or in a module named in
`config.rl.algorithm_modules` (imported before the config is checked), e.g.

  # my_lab/algos.py
  from rlhf_jax import losses
  from rlhf_jax.rl import algorithms

  def _advantages(cfg, rollout, scores_B, kl_BxT, beta):
    return losses.reinforce_advantages(scores_B, baseline="batch_mean"), {}

  algorithms.register(algorithms.Algorithm("mean_baseline", _advantages))

  --config.rl.algorithm_modules=my_lab.algos --config.pg.algorithm=mean_baseline
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import jax.numpy as jnp

from rlhf_jax import losses

PLACEMENTS = ("reward", "loss")
KL_PLACEMENTS = ("auto",) + PLACEMENTS  # config.kl.placement; auto = the algorithm's own


def clipped_surrogate(cfg, logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT):
  """PPO's clipped surrogate (losses.ppo_policy_loss): symmetric or asymmetric (clip_eps_high),
  per token or per sequence (level, GSPO)."""
  return losses.ppo_policy_loss(logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT,
                                **clip_args(cfg))


def clip_args(cfg) -> dict:
  return dict(clip_eps=cfg.clip_eps, clip_eps_high=cfg.get("clip_eps_high") or None,
              level=cfg.get("level", "token"))


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """One online-RL algorithm (see the module docstring).

  kl_placement: where β·KL goes unless config.kl.placement says otherwise ("reward": in the
    rewards the advantages see, at rollout time; "loss": β·k(log π_θ, log π_ref) per token in the
    loss, with gradients). min_group_size: the smallest pg.group_size its statistics need.
  uses_critic: needs a value model (the rollout's values_BxT; the PPO stage only)."""
  name: str
  advantages: Callable
  policy_loss: Callable = clipped_surrogate
  kl_placement: str = "reward"
  min_group_size: int = 1
  uses_critic: bool = False

  def __post_init__(self):
    if self.kl_placement not in PLACEMENTS:
      raise ValueError(f"algorithm {self.name!r}: kl_placement {self.kl_placement!r}; "
                       f"valid: {list(PLACEMENTS)}")


_REGISTRY: dict[str, Algorithm] = {}


def register(algorithm: Algorithm, *, overwrite: bool = False) -> Algorithm:
  if algorithm.name in _REGISTRY and not overwrite:
    raise ValueError(f"an RL algorithm named {algorithm.name!r} is already registered")
  _REGISTRY[algorithm.name] = algorithm
  return algorithm


def names(*, critic: bool | None = None) -> list[str]:
  """Registered names; critic=False / True: only the critic-free / critic algorithms."""
  return sorted(n for n, a in _REGISTRY.items() if critic is None or a.uses_critic == critic)


def get(name: str, *, critic: bool | None = None) -> Algorithm:
  if name not in names(critic=critic):
    raise ValueError(f"unknown RL algorithm {name!r}; valid: {names(critic=critic)}")
  return _REGISTRY[name]


def load_modules(spec: str) -> None:
  """Imports the comma-separated modules of config.rl.algorithm_modules (they register)."""
  for module in (m.strip() for m in spec.split(",")):
    if not module:
      continue
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ValueError(f"rl.algorithm_modules: cannot import {module!r}: {e}") from e


def placement(algorithm: Algorithm, kl_config) -> str:
  """Where the KL goes: config.kl.placement, or the algorithm's own when it is 'auto'."""
  chosen = kl_config.get("placement", "auto")
  return algorithm.kl_placement if chosen == "auto" else chosen


def kl_clamp(cfg) -> float | None:
  """The per-token KL estimate's clip (pg.kl_value_clamp / ppo.kl_value_clamp; 0 = none)."""
  return cfg.get("kl_value_clamp") or None


def shaped_scores(scores_B, kl_BxT, beta):
  """r' = r − β·Σ_t kl_t: a sequence reward with the KL in it."""
  return scores_B - beta * jnp.sum(kl_BxT, axis=-1)


# --- built-in algorithms -------------------------------------------------------------------------


def _ppo_advantages(cfg, r, scores_B, kl_BxT, beta):
  mask = r.mask_BxT.astype(jnp.float32)
  penalty = cfg.missing_eos_penalty or None
  rewards_BxT = losses.kl_shaped_rewards(scores_B, r.old_logp_BxT, r.ref_logp_BxT, mask,
                                         r.stopped_B, beta=beta, estimator=cfg.kl_estimator,
                                         missing_eos_penalty=penalty,
                                         value_clamp=kl_clamp(cfg))
  if cfg.whiten_rewards:
    rewards_BxT = losses.whiten(rewards_BxT, mask, shift_mean=False)
  adv_BxT, returns_BxT = losses.gae(rewards_BxT, r.values_BxT, mask, gamma=cfg.gamma, lam=cfg.lam)
  metrics = {"shaped_reward": jnp.mean(jnp.sum(rewards_BxT, axis=1))}
  return losses.whiten(adv_BxT, mask), {"returns": returns_BxT, "metrics": metrics}


def _group_advantages(cfg, r, scores_B, kl_BxT, beta):
  return losses.group_advantages(shaped_scores(scores_B, kl_BxT, beta),
                                 group_size=cfg.group_size, scale=cfg.scale), {}


def _rloo_advantages(cfg, r, scores_B, kl_BxT, beta):
  return losses.rloo_advantages(shaped_scores(scores_B, kl_BxT, beta),
                                group_size=cfg.group_size), {}


def _reinforce_advantages(cfg, r, scores_B, kl_BxT, beta):
  return losses.reinforce_advantages(shaped_scores(scores_B, kl_BxT, beta),
                                     baseline=cfg.baseline), {}


def _reinforce_pp_advantages(cfg, r, scores_B, kl_BxT, beta):
  return losses.reinforce_pp_advantages(scores_B, kl_BxT, r.mask_BxT, beta=beta), {}


def _cispo_loss(cfg, logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT):
  return losses.cispo_policy_loss(logp_BxT, old_logp_BxT, advantages_BxT, mask_BxT,
                                  clip_eps_high=cfg.clip_eps_high or cfg.clip_eps)


register(Algorithm("ppo", _ppo_advantages, uses_critic=True))
register(Algorithm("grpo", _group_advantages, kl_placement="loss", min_group_size=2))
register(Algorithm("rloo", _rloo_advantages, min_group_size=2))
register(Algorithm("reinforce", _reinforce_advantages))
register(Algorithm("reinforce_pp", _reinforce_pp_advantages))
register(Algorithm("cispo", _group_advantages, _cispo_loss, kl_placement="loss",
                   min_group_size=2))
