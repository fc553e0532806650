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
    if "enumerable" in variants:
      c.task.params.num_sft = (2048, 256)
      c.task.params.num_pairs = (512, 128)
    else:
      c.task.params.max_operand = 19
    c.data.batch_size = 16
    c.train.num_steps = 10
    c.train.log_every = 2
    c.train.eval_every = 5
    c.train.eval_examples = 32
    c.train.checkpoint_every = 10
    c.train.tensorboard = False
  return c
