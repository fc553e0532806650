"""Shared by the stage tests: one short SFT run on the enumerable world that later stages start
from, and configs pointed at it."""

from rlhf_jax import configlib
from rlhf_jax.stages import sft as sft_stage


def enumerable_sft(root):
  """Trains 40 SFT steps at <root>/sft (task data under <root>/data); returns root."""
  config = configlib.get("configs/sft.py:enumerable,test", [
      ("train.num_steps", "40"), ("train.eval_every", "0"), ("data.data_dir", str(root / "data"))])
  sft_stage.run(config, str(root / "sft"))
  return root


def from_sft(spec, root, *overrides):
  """Config `spec` starting from enumerable_sft(root)'s export, with its data dir."""
  return configlib.get(spec, [("init.from_workdir", str(root / "sft")),
                              ("data.data_dir", str(root / "data")), *overrides])
