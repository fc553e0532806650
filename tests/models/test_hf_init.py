"""config.model.hf_path: the sft stage starts from a Hugging Face checkpoint's shape, weights
and tokenizer, and its export carries the tokenizer on to later stages."""

import dataclasses
import json
import os
import shutil
import types

import jax
import numpy as np
import pytest
import tokenizers

from hf_testlib import random_params
from rlhf_jax import configlib, models, validate
from rlhf_jax.data import chat, pipeline, tokenizer as tokenizer_lib
from rlhf_jax.stages import common, reward_model as rm_stage, sft as sft_stage
from rlhf_jax.train import export, metrics as metrics_lib

NUM_STEPS = 20
# Not the `tiny` preset's shape, so a run that ignored config.json would not match it; the vocab
# is wider than the tokenizer's, as Hugging Face checkpoints often pad it.
SHAPE = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64)


def _config(hf_path, *more):
  return configlib.get("configs/sft.py:test", [
      ("model.hf_path", hf_path), ("train.num_steps", str(NUM_STEPS)),
      ("train.eval_every", str(NUM_STEPS)), ("optimizer.warmup_steps", "0"),
      ("optimizer.lr", "0.01"), *more])


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A tiny random Llama checkpoint written by save_hf, with a sentencepiece tokenizer.model
  trained on the arithmetic task's text beside it."""
  path = str(tmp_path_factory.mktemp("hf_llama"))
  task = common.make_task(_config(""))
  tok = tokenizer_lib.train_sentencepiece(task.texts(), vocab_size=320)
  tok.save(os.path.join(path, "tokenizer.model"))
  vocab = -(-tok.vocab_size // 64) * 64 + 64
  cfg = dataclasses.replace(models.get_model_config("tiny", family="llama", vocab_size=vocab),
                            **SHAPE)
  models.save_hf(path, cfg, random_params(cfg, seed=7),
                 extra_config={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
  return path


@pytest.fixture(scope="module")
def sft_run(hf_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sft_from_hf"))
  config = _config(hf_dir)
  validate.validate(config)
  return sft_stage.run(config, workdir), workdir, config


def test_sft_starts_from_the_checkpoint_weights_and_learns(hf_dir, sft_run):
  result, workdir, config = sft_run
  assert result.finished
  evals = [r for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
           if "eval/loss" in r]
  assert evals[0]["step"] == 0 and evals[-1]["step"] == NUM_STEPS
  # The step-0 eval loss is that of load_hf's parameters on the same held-out batches.
  mesh, rules = common.mesh_and_rules(config)
  loaded = models.load_hf(hf_dir, mesh=mesh, rules=rules)
  layout = common.layout(config, models.load_hf_tokenizer(hf_dir))
  eval_arrays, _ = pipeline.prepare_sft(common.records(config, workdir, "sft", "test"), layout,
                                        name="test")
  direct = sft_stage.make_evaluator(loaded.graphdef, eval_arrays, mesh, config)(
      types.SimpleNamespace(params=loaded.params))
  np.testing.assert_allclose(evals[0]["eval/loss"], direct["loss"], rtol=1e-5)
  # Then training moves it: about 1 nat in 20 steps from these random N(0, 0.1^2) weights.
  assert evals[-1]["eval/loss"] < evals[0]["eval/loss"] - 0.5, evals


def test_export_reloads_with_the_hf_tokenizer(hf_dir, sft_run):
  _, workdir, config = sft_run
  mesh, rules = common.mesh_and_rules(config)
  exp = export.load(workdir, mesh, rules, kind="lm")
  # The checkpoint has no chat template of its own: the built-in one travels with the export.
  assert exp.tokenizer == {"kind": "hf", "path": os.path.abspath(hf_dir),
                           "chat_template": chat.DEFAULT_TEMPLATE}
  hf_cfg = models.load_hf(hf_dir).cfg
  assert exp.model_config == hf_cfg
  assert {k: exp.model_config.__dict__[k] for k in SHAPE} == SHAPE
  tok = tokenizer_lib.from_spec(exp.tokenizer)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.decode(tok.encode("12+7=19")) == "12+7=19"
  # A later stage started from the export gets the same tokenizer and shape.
  later = configlib.get("configs/dpo.py:test", [("init.from_workdir", workdir)])
  assert common.tokenizer_spec(later, workdir, None) == exp.tokenizer
  assert common.model_config(later, tok.vocab_size) == hf_cfg


def test_config_errors(hf_dir, tmp_path):
  with pytest.raises(ValueError, match="model.hf_path=.* and init.from_workdir=.*set only one"):
    validate.validate(_config(hf_dir, ("init.from_workdir", str(tmp_path))))
  with pytest.raises(ValueError, match="model.hf_path=.* and init.from_workdir=.*set only one"):
    common.tokenizer_spec(_config(hf_dir, ("init.from_workdir", str(tmp_path))), "", None)
  with pytest.raises(FileNotFoundError, match="directory .*nowhere.* does not exist"):
    validate.validate(_config(str(tmp_path / "nowhere")))
  with pytest.raises(FileNotFoundError, match="no config.json"):
    validate.validate(_config(str(tmp_path)))
  no_tok = tmp_path / "no_tokenizer"
  no_tok.mkdir()
  for name in ("config.json", "model.safetensors"):
    shutil.copy(os.path.join(hf_dir, name), no_tok / name)
  with pytest.raises(FileNotFoundError, match="no tokenizer beside the weights"):
    validate.validate(_config(str(no_tok)))
  with pytest.raises(ValueError, match="read by stages \\['sft', 'reward_model'\\] only, not 'dpo'"):
    validate.validate(configlib.get("configs/dpo.py:test", [("model.hf_path", hf_dir)]))
  with pytest.raises(ValueError, match="the tokenizer has 100000 tokens but config.json's"):
    common.model_config(_config(hf_dir), 100_000)


def test_reward_model_backbone_starts_from_the_checkpoint(hf_dir, tmp_path):
  """The reward_model stage reads model.hf_path too: with a zero learning rate its exported
  backbone is exactly the checkpoint's weights (lm_head dropped, a fresh scalar head added)."""
  config = configlib.get("configs/reward_model.py:test,arithmetic", [
      ("model.hf_path", hf_dir), ("train.num_steps", "2"), ("train.eval_every", "0"),
      ("optimizer.lr", "0.0"), ("optimizer.warmup_steps", "0"), ("reward.normalize", "False")])
  validate.validate(config)
  rm_stage.run(config, str(tmp_path))
  exported = export.load(str(tmp_path), *common.mesh_and_rules(config), kind="scalar")
  assert exported.tokenizer["kind"] == "hf"
  loaded = models.load_hf(hf_dir).params
  want = {k: v for k, v in loaded.items() if k != "lm_head"}
  got = jax.tree.map(lambda x: np.asarray(x)[0], exported.params["backbone"])  # member 0
  np.testing.assert_equal(got, jax.tree.map(np.asarray, want))


def test_tokenizer_json_spec_pads_with_eos(tmp_path):
  """An HF tokenizer without a pad token: spec kind "hf" pads with EOS (and starts with it when
  there is no BOS either); to_spec / from_spec round-trip it."""
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {"<eos>": 0, "1": 1, "2": 2, "+": 3, "=": 4, "[UNK]": 5}, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
  tok.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
  spec = {"kind": "hf", "path": str(tmp_path)}
  hf_tok = tokenizer_lib.from_spec(spec)
  assert isinstance(hf_tok, models.HFTokenizer)
  assert (hf_tok.pad_id, hf_tok.bos_id, hf_tok.eos_id, hf_tok.vocab_size) == (0, 0, 0, 6)
  assert hf_tok.encode("12+1") == [1, 2, 3, 1]
  assert tokenizer_lib.to_spec(hf_tok, str(tmp_path)) == spec
  (tmp_path / "config.json").write_text(json.dumps({"pad_token_id": 9}))
  with pytest.raises(ValueError, match="pad_id=9 is outside its vocabulary of 6"):
    tokenizer_lib.from_spec(spec)
