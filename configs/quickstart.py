"""The quickstart: the main job on its embedded default (tiny model, built-in arithmetic task).

  python -m rlhf_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
"""

from rlhf_jax import configlib, defaults


def get_config(arg=None):
  configlib.parse_variants(arg, set())
  c = defaults.base_config()
  c.stage = "sft"
  c.train.num_steps = 600
  c.train.eval_every = 100
  return c
