"""Supervised fine-tuning of a tiny Llama-style model on the built-in arithmetic task.

Variants (comma-separated after the colon): `test` (seconds, for tests), `small` (bigger model).
  python -m rlhf_jax.main --config=configs/sft.py --workdir=runs/sft
  python -m rlhf_jax.main --config=configs/sft.py:test --workdir=/tmp/sft --config.optimizer.lr=1e-3
"""

from rlhf_jax import configlib, defaults


def get_config(arg=None):
  variants = configlib.parse_variants(arg, {"test", "small"})
  c = defaults.base_config()
  c.stage = "sft"
  if "small" in variants:
    c.model.preset = "small"
  if "test" in variants:
    c.task.params.max_operand = 19
    c.data.batch_size = 16
    c.train.num_steps = 10
    c.train.log_every = 2
    c.train.eval_every = 5
    c.train.eval_examples = 32
    c.train.checkpoint_every = 5
    c.train.tensorboard = False
  return c
