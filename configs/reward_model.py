"""Reward model (or an ensemble) on gold-labelled preference pairs of the enumerable world.

  python -m rlhf_jax.main --config=configs/sft.py:enumerable --workdir=runs/sft_enum
  python -m rlhf_jax.main --config=configs/reward_model.py --workdir=runs/rm \\
      --config.init.from_workdir=runs/sft_enum
`:plackett_luce` trains on the enumerable world's "ranked" records: K = 4 π_ref samples per
prompt ranked by gold (K is task.params.num_completions). Loss by name: --config.loss.name=bradley_terry (with
--config.loss.margin, --config.loss.centering_coef) or plackett_luce (ranked data; on the
enumerable world, whose task makes ranked records).
"""

import ml_collections

from rlhf_jax import configlib, defaults

VARIANTS = {
    "ensemble": "an ensemble of 4 members, each on an 80 % subset of the pairs",
    "arithmetic": "the arithmetic task's correct vs near-miss pairs",
    "plackett_luce": "a Plackett-Luce RM on gold rankings of 4 samples per prompt (enumerable)",
    "test": "seconds-long, for tests",
}


def get_config(arg=None):
  variants = configlib.parse_variants(arg, VARIANTS)
  c = defaults.base_config()
  c.stage = "reward_model"
  if "arithmetic" not in variants:
    defaults.use_enumerable_world(c)
  c.loss = ml_collections.ConfigDict({"name": "bradley_terry", "margin": 0.0,
                                      "centering_coef": 0.0})
  c.reward = ml_collections.ConfigDict({"ensemble_size": 1, "data_fraction": 1.0,
                                        "normalize": True, "normalization_examples": 1024})
  c.optimizer.lr = 3e-3
  c.train.num_steps = 600
  c.train.eval_every = 100
  c.train.eval_examples = 1024
  if "ensemble" in variants:
    c.reward.ensemble_size = 4
    c.reward.data_fraction = 0.8
  if "plackett_luce" in variants:
    if "arithmetic" in variants:
      raise ValueError("variant plackett_luce needs the enumerable world's ranked records; the "
                       "arithmetic task makes none")
    c.loss.name = "plackett_luce"
    c.task.params.num_completions = 4
    c.task.params.num_ranked = (2048, 512)   # (train, test) rankings
  if "test" in variants:
    defaults.shrink_for_test(c, num_steps=10, eval_every=5, log_every=2)
    c.reward.normalization_examples = 64
    if "plackett_luce" in variants:
      c.task.params.num_ranked = (256, 64)
  return c
