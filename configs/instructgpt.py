"""The InstructGPT recipe (Ouyang et al. 2022) at toy scale: SFT → reward model → PPO.

On the enumerable world: SFT on reference demonstrations, a Bradley-Terry reward model on
gold-labelled pairs, then PPO against the learned reward with a KL penalty, evaluated exactly
(gold reward and KL to the SFT policy). Minutes on 2 CPU cores.
  python -m rlhf_jax.main --config=configs/instructgpt.py --workdir=runs/instructgpt
  python -m rlhf_jax.main --config=configs/instructgpt.py --workdir=runs/igpt --config.ppo.kl.coef=0.1
"""

import ml_collections

from rlhf_jax import configlib

VARIANTS = {"test": "seconds-long run of every stage, for tests"}


def get_config(arg=None):
  variants = configlib.parse_variants(arg, VARIANTS)
  test = ",test" if "test" in variants else ""
  c = ml_collections.ConfigDict()
  c.stage = "recipe"
  c.recipe = ml_collections.ConfigDict({
      "steps": ("sft", "reward_model", "ppo"),
      "links": (("reward_model", "init.from_workdir", "sft"),
                ("ppo", "init.from_workdir", "sft"),
                ("ppo", "reward.from_workdir", "reward_model"))})
  c.sft = configlib.sub_config(__file__, "sft.py:enumerable" + test)
  c.reward_model = configlib.sub_config(__file__, "reward_model.py" + (":test" if test else ""))
  c.ppo = configlib.sub_config(__file__, "ppo.py:learned" + test)
  if not test:
    c.ppo.train.num_steps = 60
    c.ppo.train.eval_every = 20
  return c
