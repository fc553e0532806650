"""Supervised fine-tuning of a tiny Llama-style model on a built-in task.

Variants (comma-separated after the colon): `test` (seconds, for tests), `small` (bigger model),
`enumerable` (the enumerable preference world instead of arithmetic).
  python -m rlhf_jax.main --config=configs/sft.py --workdir=runs/sft
  python -m rlhf_jax.main --config=configs/sft.py:enumerable --workdir=runs/sft_enum
"""

from rlhf_jax import configlib, defaults


def get_config(arg=None):
  variants = configlib.parse_variants(arg, {"test", "small", "enumerable"})
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
