"""Best-of-n sampling (inference) or rejection-sampling fine-tuning from a policy export.

  python -m rlhf_jax.main --config=configs/best_of_n.py:enumerable --workdir=runs/bon \\
      --config.init.from_workdir=runs/sft_enum --config.bon.n=16
  python -m rlhf_jax.main --config=configs/best_of_n.py:rejection_sampling --workdir=runs/rs \\
      --config.init.from_workdir=runs/sft
"""

import ml_collections

from rlhf_jax import configlib, defaults

VARIANTS = {
    "enumerable": "the enumerable world: exact best-of-n KL and gold reward",
    "rejection_sampling": "select the best sample per prompt, then SFT on them",
    "learned": "reward from the reward model in reward.from_workdir",
    "test": "seconds-long, for tests",
}


def get_config(arg=None):
  variants = configlib.parse_variants(arg, VARIANTS)
  c = defaults.base_config()
  c.stage = "best_of_n"
  if "enumerable" in variants:
    defaults.use_enumerable_world(c)
  defaults.online_rl(c)
  c.bon = ml_collections.ConfigDict({
      "mode": "rejection_sampling" if "rejection_sampling" in variants else "best_of_n",
      "n": 16, "keep": "best_per_prompt", "top_k": 1024, "max_train_prompts": 4096,
      "min_reward": -1e9})   # e.g. 1.0 keeps only verified-correct samples
  if "learned" in variants:
    c.reward.source = "learned"
  if "rejection_sampling" in variants:
    # Samples re-tokenize from text (a stray byte piece decodes to U+FFFD, three bytes); ones
    # that no longer fit completion_len are dropped and counted.
    c.data.overlong = "drop"
  c.rl.prompts_per_step = 64
  c.train.eval_examples = 512       # held-out prompts for best-of-n
  c.train.num_steps = 200           # SFT steps on the selected samples (rejection sampling)
  c.train.eval_every = 100
  c.optimizer.lr = 1e-3
  if "test" in variants:
    defaults.shrink_for_test(c, num_steps=4, eval_every=4, log_every=1, eval_examples=16)
    c.bon.n = 4
    c.bon.max_train_prompts = 64
    c.rl.prompts_per_step = 8
  return c
