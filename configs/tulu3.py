"""The Tülu 3 recipe (Lambert et al. 2024) at toy scale, on the arithmetic task:
SFT → reward model → DPO on on-policy pairs ranked by the RM → RL with a verifier (RLVR, GRPO).

  python -m rlhf_jax.main --config=configs/tulu3.py --workdir=runs/tulu3
Variants: `test` (seconds, for tests).
"""

import ml_collections

from rlhf_jax import configlib


def get_config(arg=None):
  variants = configlib.parse_variants(arg, {"test"})
  test = ",test" if "test" in variants else ""
  c = ml_collections.ConfigDict()
  c.stage = "recipe"
  c.recipe = ml_collections.ConfigDict({
      "steps": ("sft", "reward_model", "dpo", "rlvr"),
      "links": (("reward_model", "init.from_workdir", "sft"),
                ("dpo", "init.from_workdir", "sft"),
                ("dpo", "reward.from_workdir", "reward_model"),
                ("rlvr", "init.from_workdir", "dpo"))})
  c.sft = configlib.sub_config(__file__, "sft.py" + (":test" if test else ""))
  c.reward_model = configlib.sub_config(__file__, "reward_model.py:arithmetic" + test)
  c.dpo = configlib.sub_config(__file__, "dpo.py:arithmetic,on_policy" + test)
  c.dpo.reward.source = "learned"
  # Sampled completions re-tokenize from text; ones that no longer fit are dropped and counted.
  c.dpo.data.overlong = "drop"
  c.rlvr = configlib.sub_config(__file__, "grpo.py" + (":test" if test else ""))
  if not test:
    c.sft.train.num_steps = 1000
  return c
