"""DPO (or any preference loss) from an SFT export, on the enumerable world's gold-labelled pairs.

  python -m rlhf_jax.main --config=configs/sft.py:enumerable --workdir=runs/sft_enum
  python -m rlhf_jax.main --config=configs/dpo.py --workdir=runs/dpo \\
      --config.init.from_workdir=runs/sft_enum --config.loss.name=ipo --config.loss.beta=0.5
"""

import ml_collections

from rlhf_jax import configlib, defaults

VARIANTS = {
    "bt": "labels sampled from the Bradley-Terry model of the gold reward "
          "(DPO optimum π* ∝ π_ref·exp(gold/β))",
    "arithmetic": "the arithmetic task's correct vs near-miss answers",
    "on_policy": "pairs sampled from the SFT policy (bon.n per prompt), best vs worst by reward",
    "test": "seconds-long, for tests",
}


def get_config(arg=None):
  variants = configlib.parse_variants(arg, VARIANTS)
  c = defaults.base_config()
  c.stage = "dpo"
  if "arithmetic" not in variants:
    defaults.use_enumerable_world(c)
  if "bt" in variants:
    c.task.params.labels = "bradley_terry"
  # Pairs: the task's gold-labelled ones, or sampled from the SFT policy and ranked by a reward
  # (on_policy: bon.n samples per prompt, best vs worst; reward.source gold or learned).
  c.data.pairs = "on_policy" if "on_policy" in variants else "task"
  defaults.online_rl(c)
  c.bon = ml_collections.ConfigDict({"n": 4, "max_train_prompts": 4096})
  c.loss = ml_collections.ConfigDict({
      "name": "dpo", "beta": 0.5, "label_smoothing": 0.0, "simpo_gamma": 0.5,
      "sft_coef": 0.0})
  # Exact evaluation on the enumerable world: prompts scored over every completion (eval.*).
  c.optimizer.lr = 1e-3
  c.train.num_steps = 300
  c.train.eval_every = 100
  c.train.eval_examples = 1024
  if "test" in variants:
    defaults.shrink_for_test(c, num_steps=10, eval_every=5, log_every=2)
    c.bon.max_train_prompts = 64
    c.rl.prompts_per_step = 8
  return c
