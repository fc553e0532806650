"""Supervised fine-tuning of a tiny Llama-style model on a built-in task.

  python -m rlhf_jax.main --config=configs/sft.py --workdir=runs/sft
  python -m rlhf_jax.main --config=configs/sft.py:enumerable --workdir=runs/sft_enum
Variants (VARIANTS below) go comma-separated after the colon, e.g. `:enumerable,test`.
"""

from rlhf_jax import configlib, defaults

VARIANTS = {
    "small": "the `small` model preset instead of `tiny`",
    "enumerable": "the enumerable preference world instead of arithmetic",
    "test": "seconds-long, for tests",
}


def get_config(arg=None):
  variants = configlib.parse_variants(arg, VARIANTS)
  c = defaults.base_config()
  c.stage = "sft"
  if "small" in variants:
    c.model.preset = "small"
  if "enumerable" in variants:
    defaults.use_enumerable_world(c)
    c.train.num_steps = 400
  if "test" in variants:
    defaults.shrink_for_test(c, num_steps=10, eval_every=5, log_every=2, eval_examples=32)
  return c
