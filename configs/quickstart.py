"""The quickstart: the InstructGPT recipe (SFT → reward model → PPO), tiny model, no download.

The main job on its embedded default — the InstructGPT recipe (SFT → reward model → PPO) with a
tiny model on the built-in enumerable preference world. No download; minutes on 2 CPU cores.

  python -m rlhf_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
"""

from rlhf_jax import configlib

VARIANTS = {}


def get_config(arg=None):
  configlib.parse_variants(arg, VARIANTS)
  return configlib.sub_config(__file__, "instructgpt.py")
