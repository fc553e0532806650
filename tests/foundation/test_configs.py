"""Config loading, variants, overrides and the errors that list valid choices."""

import subprocess
import sys

import pytest

from rlhf_jax import configlib
from rlhf_jax.train import optimizer as optimizer_lib

SFT = "configs/sft.py"


def test_variant_and_override_apply():
  c = configlib.get(SFT + ":test", [("optimizer.lr", "0.5"), ("model.preset", "small"),
                                    ("train.tensorboard", "true"), ("data.batch_size", "8")])
  assert c.train.num_steps == 10 and c.optimizer.lr == 0.5 and c.model.preset == "small"
  assert c.train.tensorboard is True and c.data.batch_size == 8


def test_config_is_locked():
  c = configlib.get(SFT)
  with pytest.raises(AttributeError):
    c.new_field = 1


def test_misspelled_key_lists_valid_keys():
  with pytest.raises(KeyError, match=r"valid keys: \[.*'lr'.*\]"):
    configlib.get(SFT, [("optimizer.lrr", "0.1")])
  with pytest.raises(KeyError, match=r"'optimiser'.*valid keys: \[.*'optimizer'.*\]"):
    configlib.get(SFT, [("optimiser.lr", "0.1")])


def test_unknown_variant_lists_valid():
  with pytest.raises(ValueError, match=r"valid variants: \['enumerable', 'small', 'test'\]"):
    configlib.get(SFT + ":tset")


def test_bad_type_is_rejected():
  with pytest.raises(ValueError, match="data.batch_size"):
    configlib.get(SFT, [("data.batch_size", "many")])


def test_unknown_optimizer_lists_valid():
  c = configlib.get(SFT, [("optimizer.name", "nope")])
  with pytest.raises(ValueError, match=r"unknown optimizer.name 'nope'; valid optimizers: "
                                       r"\['adafactor', 'adam', 'adamw', 'lion', 'sgd'\]"):
    optimizer_lib.make_optimizer(c.optimizer, 10)


@pytest.mark.parametrize("override,expected", [
    ("--config.optimizer.name=nope", "unknown optimizer.name 'nope'; valid choices: ['adafactor'"),
    ("--config.stage=nope", "unknown stage 'nope'; valid choices: ['"),
    ("--config.trian.num_steps=3", "valid keys: ["),
])
def test_cli_errors_list_valid_choices(tmp_path, override, expected):
  proc = subprocess.run([sys.executable, "-m", "rlhf_jax.main", "--config=configs/sft.py:test",
                         f"--workdir={tmp_path}", override], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2
  assert expected in proc.stderr, proc.stderr[-2000:]
  if "stage" in override:
    assert "'sft'" in proc.stderr and "'dpo'" in proc.stderr


def test_a_group_takes_a_dict_literal_and_nothing_else():
  c = configlib.get("configs/grpo.py:test", [
      ("reward.function_params", "{'length': {'target': 3, 'unit': 'chars'}}")])
  assert c.reward.function_params.length.target == 3
  assert c.reward.function_params.length.unit == "chars"
  with pytest.raises(KeyError, match="is a group, not a value"):
    configlib.get("configs/grpo.py:test", [("reward.function_params", "3")])
