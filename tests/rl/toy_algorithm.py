"""A user-defined RL algorithm, registered from a module named in config.rl.algorithm_modules:
group-sign advantages, A = sign(r - mean of the group's r), with the clipped surrogate."""

import jax.numpy as jnp

from rlhf_jax.rl import algorithms


def sign_advantages(cfg, rollout, scores_B, kl_BxT, beta):
  r_GxN = algorithms.shaped_scores(scores_B, kl_BxT, beta).reshape(-1, cfg.group_size)
  return jnp.sign(r_GxN - r_GxN.mean(axis=1, keepdims=True)).reshape(-1), {}


algorithms.register(algorithms.Algorithm("group_sign", sign_advantages, min_group_size=2),
                    overwrite=True)
