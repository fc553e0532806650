"""Up-front config validation (rlhf_jax/validate.py): every named choice, loss family, count and
static batch split of every stage (and recipe step) fails before any work, naming the field and
the valid choices; check_devices fits the mesh to the devices; every shipped config validates."""

import glob
import os
import subprocess
import sys

import jax
import pytest

from rlhf_jax import configlib, losses, validate
from rlhf_jax.data import builders, pipeline, tokenizer
from rlhf_jax.models import remat
from rlhf_jax.rewards import functions as reward_fns, learned
from rlhf_jax.stages import best_of_n, dpo as dpo_stage
from rlhf_jax.rl import algorithms as rl_algorithms, kl_control
from rlhf_jax.train import dpo as dpo_steps, precision
from rlhf_jax.train import reward_model as rm_steps

# (config, override key, bad value, the valid choices the message must list)
TYPOS = [
    ("ppo.py:test", "kl.controller", "adaptve", kl_control.KINDS),
    ("grpo.py:test", "pg.algorithm", "grp", tuple(rl_algorithms.names(critic=False))),
    ("ppo.py:test", "reward.source", "gld", reward_fns.SOURCES),
    ("grpo.py:test", "kl.placement", "rewards", rl_algorithms.KL_PLACEMENTS),
    ("sft.py:test", "model.dtype", "bf16", precision.COMPUTE_DTYPES),
    ("sft.py:test", "model.remat", "ful", tuple(remat.REMAT_POLICIES)),
    ("sft.py:test", "task.name", "arith", tuple(builders.TASKS)),
    ("sft.py:test", "tokenizer.kind", "bpe", tokenizer.CONFIG_KINDS),
    ("sft.py:test", "data.overlong", "cut", pipeline.OVERLONG_POLICIES),
    ("best_of_n.py:test", "bon.mode", "best", best_of_n.MODES),
    ("best_of_n.py:test", "bon.keep", "top", best_of_n.KEEP),
    ("dpo.py:test", "data.pairs", "onpolicy", dpo_stage.PAIRS),
    ("grpo.py:test", "pg.scale", "grp", losses.GROUP_SCALES),
    ("grpo.py:test", "pg.baseline", "mean", losses.REINFORCE_BASELINES),
    ("grpo.py:test", "pg.level", "tok", losses.RATIO_LEVELS),
    ("grpo.py:test", "pg.aggregation", "mean", losses.AGGREGATION_MODES),
    ("grpo.py:test", "pg.kl_estimator", "k4", losses.KL_ESTIMATORS),
    ("ppo.py:test", "ppo.kl_estimator", "k4", losses.KL_ESTIMATORS),
    ("ppo.py:test", "reward.ensemble_combine", "min", learned.COMBINE_MODES),
    ("dpo.py:test", "loss.name", "dpoo", tuple(dpo_steps.pair_loss_names())),
    # Recipe steps: the field is named as its override key, the step in front.
    ("instructgpt.py:test", "ppo.kl.controller", "adaptve", kl_control.KINDS),
    ("r1.py:test", "grpo.pg.algorithm", "grp", tuple(rl_algorithms.names(critic=False))),
    ("tulu3.py:test", "rlvr.pg.level", "tok", losses.RATIO_LEVELS),
]


def _config(spec: str, *overrides):
  return configlib.get(f"configs/{spec}", list(overrides))


def _error(spec: str, *overrides, exc=ValueError) -> str:
  config = _config(spec, *overrides)
  with pytest.raises(exc) as info:
    validate.validate(config)
  return str(info.value)


@pytest.mark.parametrize("spec,key,value,valid", TYPOS, ids=[f"{t[0]}-{t[1]}" for t in TYPOS])
def test_typo_names_the_field_and_lists_valid_choices(spec, key, value, valid):
  msg = _error(spec, (key, value))
  assert f"unknown {key} {value!r}; valid choices: [" in msg, msg
  assert all(repr(v) in msg.split("valid choices: ")[1] for v in valid), msg
  if spec.startswith(("instructgpt", "r1", "tulu3")):
    assert msg.startswith(f"recipe step {key.split('.')[0]!r}"), msg


def test_lora_target_typo_lists_targets():
  msg = _error("sft.py:test", ("lora.targets", "attn,wqq"))
  assert "lora.targets='attn,wqq'" in msg and "'wqq'" in msg
  assert all(repr(n) in msg for n in ("all", "attn", "mlp", "wq", "w_down")), msg


@pytest.mark.parametrize("spec,name,family", [
    ("dpo.py:test", "gae", "advantages"),
    ("dpo.py:test", "bradley_terry", "reward"),
    ("reward_model.py:test", "dpo", "preference"),
])
def test_loss_of_another_family_is_rejected(spec, name, family):
  stage = spec.split(".")[0]
  msg = _error(spec, ("loss.name", name))
  assert f"loss.name {name!r} (a loss of the {family!r} family) cannot be used by the {stage}" \
         in msg, msg
  valid = (dpo_steps.pair_loss_names() if stage == "dpo" else rm_steps.LOSSES)
  assert f"valid choices: {list(valid)}" in msg
  assert name not in valid


def test_reward_model_lists_pairwise_and_ranked_losses():
  msg = _error("reward_model.py:test", ("loss.name", "ipo"))
  assert "rankings" in msg and "valid choices: ['bradley_terry', 'plackett_luce']" in msg
  validate.validate(_config("reward_model.py:test", ("loss.name", "plackett_luce")))


def test_chosen_nll_is_a_term_not_a_loss():
  msg = _error("dpo.py:test", ("loss.name", "chosen_nll"))
  assert "loss.sft_coef" in msg and "'ipo'" in msg and "'chosen_nll'" not in msg.split("valid")[1]


def test_every_pair_loss_is_accepted():
  for name in dpo_steps.pair_loss_names():
    validate.validate(_config("dpo.py:test", ("loss.name", name)))


@pytest.mark.parametrize("spec,overrides,expected", [
    ("sft.py:test", [("train.num_steps", "0")], "train.num_steps=0: must be an integer >= 1"),
    ("sft.py:test", [("data.batch_size", "0")], "data.batch_size=0: must be an integer >= 1"),
    ("grpo.py:test", [("rl.prompts_per_step", "-1")], "rl.prompts_per_step=-1: must be"),
    ("grpo.py:test", [("pg.group_size", "1")], "pg.group_size=1: pg.algorithm='grpo' needs at "
                                               "least 2"),
    ("grpo.py:rloo,test", [("pg.group_size", "1")], "pg.group_size=1: pg.algorithm='rloo'"),
    ("best_of_n.py:test", [("bon.n", "0")], "bon.n=0: must be an integer >= 1"),
    ("reward_model.py:test", [("reward.data_fraction", "0.0")], "reward.data_fraction=0.0"),
    ("ppo.py:adaptive,test", [("kl.target", "0.0")], "kl.target=0.0"),
    ("dpo.py:bt,test", [("task.params.labels", "bt")], "task.params of task 'enumerable'"),
    ("grpo.py:reinforce,test", [("pg.group_size", "1"), ("rl.dynamic_sampling", "True")],
     "rl.dynamic_sampling drops groups whose rewards are all equal: it needs pg.group_size >= 2"),
    ("ppo.py:test", [("rl.dynamic_sampling", "True")], "it needs pg.group_size >= 2"),
    ("grpo.py:test", [("rl.dynamic_sampling", "True"), ("rl.max_sampling_rounds", "0")],
     "rl.max_sampling_rounds=0: must be an integer >= 1"),
    ("grpo.py:test", [("rl.tis_cap", "0.5")], "rl.tis_cap=0.5"),
    ("grpo.py:test", [("pg.algorithm", "ppo")], "unknown pg.algorithm 'ppo'"),
    ("grpo.py:test", [("rl.algorithm_modules", "no_such_module_xyz")],
     "rl.algorithm_modules: cannot import 'no_such_module_xyz'"),
])
def test_bad_counts_fail(spec, overrides, expected):
  assert expected in _error(spec, *overrides)


def test_reinforce_takes_one_sample_per_prompt():
  validate.validate(_config("grpo.py:reinforce,test", ("pg.group_size", "1")))


@pytest.mark.parametrize("spec,overrides,expected", [
    # rollout rows (prompts x group) by minibatches
    ("grpo.py:test", [("pg.minibatches", "3")],
     "pg.minibatches=3 does not divide the rollout's 32 rows (rl.prompts_per_step=8 x "
     "pg.group_size=4)"),
    ("ppo.py:test", [("ppo.minibatches", "3")], "ppo.minibatches=3 does not divide the rollout's"),
    # data.batch_size by train.microbatches
    ("sft.py:test", [("train.microbatches", "3")],
     "data.batch_size=16 is not divisible by train.microbatches=3"),
    # global batches by the data-parallel shards the mesh fixes
    ("sft.py:test", [("mesh.data", "4"), ("data.batch_size", "6")],
     "data.batch_size=6 is not divisible by the 4 data-parallel shards (mesh data=4 x fsdp=1)"),
    ("sft.py:test", [("mesh.fsdp", "4"), ("data.batch_size", "6")],
     "a multiple of 4 (mesh data=-1 x fsdp=4)"),
    ("grpo.py:test", [("mesh.data", "16")], "rl.prompts_per_step=8 is not divisible by the 16"),
    # each shard's rows by train.microbatches
    ("sft.py:test", [("mesh.data", "4"), ("train.microbatches", "8")],
     "leaves 4 rows on each of the 4 data-parallel shards"),
    ("tulu3.py:test", [("sft.train.microbatches", "3")],
     "recipe step 'sft' (stage 'sft'): sft.data.batch_size=16 is not divisible by "
     "sft.train.microbatches=3"),
])
def test_static_batch_splits(spec, overrides, expected):
  assert expected in _error(spec, *overrides)


def test_online_rl_rejects_microbatches_up_front():
  assert "train.microbatches=2 is not supported" in _error("grpo.py:test",
                                                           ("train.microbatches", "2"))


def test_mesh_shape_errors_need_no_devices():
  assert "at most one axis may be -1" in _error("sft.py:test", ("mesh.fsdp", "-1"))
  assert "sizes must be positive or -1" in _error("sft.py:test", ("mesh.tensor", "0"))


def test_missing_sft_records_file(tmp_path):
  msg = _error("sft.py:test", ("data.sft_records_path", str(tmp_path / "nope.jsonl")),
               exc=FileNotFoundError)
  assert "data.sft_records_path=" in msg and "nope.jsonl" in msg


def test_logical_axis_rule_names_a_mesh_axis():
  msg = _error("sft.py:test", ("logical_axis_rules", "(('batch', 'dta'),)"))
  assert "'dta'" in msg and "['data', 'fsdp', 'tensor']" in msg


def test_check_devices_mesh_too_big():
  config = _config("sft.py:test", ("mesh.data", "16"))
  validate.validate(config)  # no devices needed
  with pytest.raises(ValueError) as info:
    validate.check_devices(config, 8, platform="cpu")
  msg = str(info.value)
  assert "mesh needs 16 devices (data=16 x fsdp=1 x tensor=1), but 8 are available" in msg
  assert "XLA_FLAGS=--xla_force_host_platform_device_count=16" in msg
  with pytest.raises(ValueError) as info:
    validate.check_devices(config, 8, platform="gpu")
  assert "16 devices" in str(info.value) and "XLA_FLAGS" not in str(info.value)


def test_check_devices_fill_axis_and_batches():
  with pytest.raises(ValueError, match=r"a multiple of 3 devices .*but 8 are available"):
    validate.check_devices(_config("sft.py:test", ("mesh.tensor", "3")), 8, platform="cpu")
  # data = -1 resolves to 8 shards: the batch of 12 rows does not split over them.
  with pytest.raises(ValueError, match=r"data.batch_size=12 is not divisible by the 8 "
                                       r"data-parallel shards \(mesh data=8 x fsdp=1\)"):
    validate.check_devices(_config("sft.py:test", ("data.batch_size", "12")), 8)
  validate.check_devices(_config("sft.py:test", ("data.batch_size", "12")), 4)


def test_check_devices_checks_every_recipe_step():
  config = _config("instructgpt.py:test", ("reward_model.mesh.tensor", "16"))
  validate.validate(config)
  with pytest.raises(ValueError, match=r"^recipe step 'reward_model' \(stage 'reward_model'\): "
                                       r"reward_model.mesh needs a multiple of 16 devices "
                                       r".*reward_model.mesh.data=-1 takes"):
    validate.check_devices(config, 8, platform="cpu")


def _shipped_configs():
  """Every config file with each of its variants (its VARIANTS; tests/foundation/test_configs.py
  checks they are what get_config accepts), and each with `test` where the file has it."""
  specs = []
  for path in sorted(glob.glob("configs/*.py")):
    variants = list(configlib.load_module(path).VARIANTS)
    specs += [path] + [f"{path}:{v}" for v in variants]
    specs += [f"{path}:{v},test" for v in variants if "test" in variants and v != "test"]
  return specs


def test_every_shipped_config_and_variant_validates(monkeypatch):
  def no_devices(*args, **kwargs):
    raise AssertionError("validate.validate must not need devices")
  for name in ("devices", "device_count", "local_devices", "default_backend"):
    monkeypatch.setattr(jax, name, no_devices)
  checked = 0
  for spec in _shipped_configs():
    config = configlib.get(spec)
    if "stage" not in config:  # configs/overoptimization.py: read by experiments/, not main
      continue
    required = config.recipe.get("required", ()) if config.stage == "recipe" else ()
    if required:  # e.g. configs/hh_rlhf.py:hf needs the user's checkpoint: named when missing
      with pytest.raises(ValueError, match=f"recipe: {required[0]} must be set"):
        validate.validate(config)
      checked += 1
      continue
    validate.validate(config)
    validate.check_devices(config, 8, platform="cpu")
    checked += 1
  assert checked >= 40


def test_cli_recipe_step_typo_exits_2_before_any_data(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "rlhf_jax.main", "--config=configs/instructgpt.py:test",
       f"--workdir={workdir}", "--config.ppo.kl.controller=adaptve"],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert ("config error: recipe step 'ppo' (stage 'ppo'): unknown ppo.kl.controller 'adaptve'; "
          "valid choices: ['fixed', 'adaptive']") in proc.stderr, proc.stderr[-2000:]
  made = [os.path.relpath(os.path.join(d, n), workdir)
          for d, dirs, files in os.walk(workdir) for n in dirs + files]
  assert not any(p.split(os.sep)[-1] in ("data", "checkpoints", "export") for p in made), made
