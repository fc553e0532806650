"""Config loading, variants, overrides and the errors that list valid choices; every config
file's VARIANTS; `rlhf-jax configs` (the listing) and `rlhf-jax show` (a resolved config)."""

import glob
import inspect
import re
import subprocess
import sys

import pytest

from rlhf_jax import configlib
from rlhf_jax import main as main_lib
from rlhf_jax.train import optimizer as optimizer_lib

SFT = "configs/sft.py"
CONFIG_FILES = sorted(glob.glob("configs/*.py"))  # tests run from the repo root


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


def test_the_config_files_are_found():
  assert SFT in CONFIG_FILES and "configs/quickstart.py" in CONFIG_FILES, CONFIG_FILES


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_config_declares_the_variants_get_config_accepts(path):
  module = configlib.load_module(path)
  assert isinstance(getattr(module, "VARIANTS", None), dict), f"{path} defines no VARIANTS dict"
  for name, text in module.VARIANTS.items():
    assert re.fullmatch(r"[a-z0-9_]+", name), (path, name)
    assert isinstance(text, str) and text.strip() and "\n" not in text, (path, name, text)
  # The docstring's first line is the listing's summary: a line of its own, then a blank line.
  doc = inspect.cleandoc(module.__doc__ or "").splitlines()
  assert doc and doc[0].strip() and (len(doc) == 1 or not doc[1].strip()), (path, doc[:2])
  for name in module.VARIANTS:  # each variant alone is accepted
    configlib.load_config_file(f"{path}:{name}")
  # ... and nothing else: the error lists exactly VARIANTS.
  with pytest.raises(ValueError, match=re.escape(f"valid variants: {sorted(module.VARIANTS)}")):
    configlib.load_config_file(f"{path}:__no_such_variant__")


def test_configs_lists_every_file_with_its_summary_and_variants(capsys):
  assert main_lib.main(["configs"]) == 0
  lines = capsys.readouterr().out.splitlines()
  at = 0
  for path in CONFIG_FILES:
    module = configlib.load_module(path)
    summary = inspect.cleandoc(module.__doc__).splitlines()[0]
    assert re.fullmatch(re.escape(path) + r" +" + re.escape(summary), lines[at]), lines[at]
    at += 1
    if not module.VARIANTS:
      assert lines[at] == "  (no variants)", lines[at]
      at += 1
    for name, text in module.VARIANTS.items():
      assert re.fullmatch(rf"  :{name} +{re.escape(text)}", lines[at]), (path, lines[at])
      at += 1
  assert at == len(lines), lines[at:]
  out = "\n".join(lines)
  assert re.search(r"^configs/grpo\.py +Critic-free RL", out, re.M)
  assert re.search(r"^  :dapo +DAPO: clip-higher", out, re.M)
  assert re.search(r"^configs/quickstart\.py .*\n  \(no variants\)$", out, re.M)


def test_configs_lists_files_without_variants_and_broken_files(tmp_path, capsys):
  (tmp_path / "a.py").write_text('"""Plain config.\n\nMore."""\ndef get_config(arg=None): pass\n')
  (tmp_path / "b.py").write_text("raise RuntimeError('boom')\n")
  (tmp_path / "c.py").write_text('"""With variants."""\nVARIANTS = {"x": "does x"}\n')
  (tmp_path / "notes.txt").write_text("not a config")
  assert main_lib.main(["configs", f"--configs_dir={tmp_path}"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert [line.split()[0] for line in lines] == [
      f"{tmp_path}/a.py", "(no", f"{tmp_path}/b.py", f"{tmp_path}/c.py", ":x"]
  assert lines[0].endswith("Plain config.") and lines[3].endswith("With variants.")
  assert "(cannot load: RuntimeError: boom)" in lines[2]
  assert lines[4].endswith(" does x")
  assert main_lib.main(["configs", f"--configs_dir={tmp_path / 'nope'}"]) == 2
  assert "rlhf-jax: config error: configs directory" in capsys.readouterr().err


def _shown(text: str) -> dict[str, str]:
  """The dotted key -> value text of `show`'s nested output; checks each level is sorted."""
  leaves, path, siblings = {}, [], [[]]
  for line in text.splitlines():
    if line.startswith("#"):
      continue
    depth = (len(line) - len(line.lstrip(" "))) // 2
    key, _, value = line.strip().partition(":")
    del path[depth:]
    del siblings[depth + 1:]
    siblings[depth].append(key)
    assert siblings[depth] == sorted(siblings[depth]), siblings[depth]
    if value:
      leaves[".".join(path + [key])] = value.strip()
    else:
      path.append(key)
      siblings.append([])
  return leaves


def _flat(config, prefix=""):
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = repr(value)
  return out


def test_show_prints_the_resolved_config_and_runs_nothing(capsys, monkeypatch):
  def no_run(*args, **kwargs):
    raise AssertionError("show must not run anything")
  monkeypatch.setattr(main_lib, "run", no_run)
  monkeypatch.setattr(main_lib, "setup", no_run)
  assert main_lib.main(["show", "--config=configs/sft.py:test", "--config.optimizer.lr=0.5",
                        "--config.model.preset", "small"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("# configs/sft.py:test --config.optimizer.lr=0.5 "
                        "--config.model.preset=small\n")
  assert re.search(r"^optimizer:\n(  .*\n)*  lr: 0\.5$", out, re.M), out
  shown = _shown(out)
  assert shown["optimizer.lr"] == "0.5" and shown["model.preset"] == "'small'"
  assert shown["train.num_steps"] == "10"  # the test variant
  config = configlib.get("configs/sft.py:test", [("optimizer.lr", "0.5"),
                                                 ("model.preset", "small")])
  assert shown == _flat(config)


def test_show_a_config_without_a_stage_unvalidated(capsys):
  assert main_lib.main(["show", "--config=configs/overoptimization.py:test",
                        "--config.ppo.steps=7"]) == 0
  out = capsys.readouterr().out
  assert "# not validated: no `stage` field" in out
  assert _shown(out)["ppo.steps"] == "7"


@pytest.mark.parametrize("args,expected", [
    (["--config=configs/sft.py:test", "--config.optimizer.lrr=0.5"],
     "unknown config key 'optimizer.lrr': 'lrr' is not a field of optimizer; valid keys: ["),
    (["--config=configs/sft.py:tset"],
     "unknown config variant(s) ['tset']; valid variants: ['enumerable', 'small', 'test']"),
    (["--config=configs/sft.py", "--config.data.batch_size=many"],
     "--config.data.batch_size=many: cannot parse as int"),
    (["--config=configs/sft.py", "--config.optimizer.name=nope"],  # from validate.validate
     "unknown optimizer.name 'nope'; valid choices: ['adafactor'"),
    (["--config=configs/nope.py"], "config file 'configs/nope.py' not found"),
    (["--config=configs/sft.py", "--config.optimizer.lr"], "--config.optimizer.lr: missing value"),
])
def test_show_bad_config_exits_2_with_the_run_message(capsys, args, expected):
  assert main_lib.main(["show"] + args) == 2
  captured = capsys.readouterr()
  assert captured.out == ""
  assert captured.err.startswith("rlhf-jax: config error: ")
  assert expected in captured.err, captured.err
