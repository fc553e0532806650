"""`rlhf-jax export`: a run's export as a Hugging Face checkpoint that transformers loads, with
the same logits, the same token ids and the same greedy continuation as ours."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from rlhf_jax import main as main_lib, models
from rlhf_jax.data import tokenizer as tokenizer_lib
from rlhf_jax.rewards import learned
from rlhf_jax.train import export, state as state_lib

ALPHABET = "abcde xyz\n"
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
SP_TEXTS = ["the quick brown fox jumps over the lazy dog", "12 + 34 = 46",
            "hello   world\nnew line", "the theme of the thesis"] * 4


def _random_export(workdir, kind, cfg, tokenizer, *, seed=0, ensemble=0, head_b=0.0, extra=None):
  """Writes `workdir/export` of random parameters (norms and biases too); returns them."""
  rng = np.random.default_rng(seed)
  _, abstract = state_lib.abstract_model(lambda r: export.make_model(kind, cfg, r))
  lead = (ensemble,) if ensemble else ()
  params = jax.tree.map(lambda x: (0.2 * rng.standard_normal(lead + x.shape)).astype(np.float32),
                        nnx.to_pure_dict(abstract))
  if kind == "scalar":
    params["head"]["b"] = np.full(lead, head_b, np.float32)
  export.save(str(workdir), params, kind=kind, model_config=cfg, tokenizer=tokenizer,
              extra=dict(extra or {}, **({"ensemble_size": ensemble} if ensemble else {})))
  return params


def _run(capsys, *flags):
  code = main_lib.main(["export", *flags])
  return code, capsys.readouterr().err


def _our_logits(cfg, params, tokens, mask):
  graphdef, _ = state_lib.abstract_model(lambda r: models.Transformer(cfg, rngs=r))
  model = nnx.merge(graphdef, params)
  return np.asarray(model(tokens, mask_BxS=mask))


def _torch(x):
  return torch.tensor(np.asarray(x), dtype=torch.long)


def _check_lm(out, cfg, params, tok, texts, tokenizer_class=transformers.AutoTokenizer):
  """transformers' tokenizer and model from `out` against ours on `texts`."""
  hf_tok = tokenizer_class.from_pretrained(out)
  assert (hf_tok.pad_token_id, hf_tok.bos_token_id, hf_tok.eos_token_id) == (0, 1, 2)
  for text in texts:
    ids = tok.encode(text)
    assert hf_tok.encode(text, add_special_tokens=False) == ids, text
    assert hf_tok(text).input_ids == [tok.bos_id] + ids  # BOS first, as our prompts
    assert hf_tok.decode(hf_tok(text).input_ids, skip_special_tokens=True) == text
  # Logits on BOS-started rows, one of them left-padded (positions from the mask).
  rows = [[tok.bos_id] + tok.encode(t)[:7] for t in texts[:3]]
  length = max(map(len, rows))
  tokens = np.array([[0] * (length - len(r)) + r for r in rows], np.int32)
  mask = (np.arange(length)[None] >= (length - np.array([len(r) for r in rows]))[:, None])
  mask = mask.astype(np.int32)
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  ours = _our_logits(cfg, params, tokens, mask)
  model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  with torch.no_grad():
    theirs = model(input_ids=_torch(tokens), attention_mask=_torch(mask),
                   position_ids=_torch(positions)).logits.numpy()
  real = mask.astype(bool)
  np.testing.assert_allclose(theirs[real], ours[real], atol=1e-4, rtol=0)
  # Greedy generation from an unpadded prompt: the first new token is our argmax.
  prompt = tokens[-1:][:, mask[-1].astype(bool)]
  with torch.no_grad():
    new = model.generate(_torch(prompt), attention_mask=torch.ones_like(_torch(prompt)),
                         max_new_tokens=3, do_sample=False, min_new_tokens=3)
  assert new.shape == (1, prompt.shape[1] + 3)
  first = _our_logits(cfg, params, prompt, np.ones_like(prompt))[0, -1].argmax()
  assert int(new[0, prompt.shape[1]]) == int(first)


def test_char_lm_export_loads_in_transformers(tmp_path, capsys):
  tok = tokenizer_lib.CharTokenizer(ALPHABET)
  cfg = models.get_model_config("tiny", vocab_size=tok.vocab_size, max_positions=32)
  spec = {"kind": "char", "alphabet": ALPHABET, "chat_template": TEMPLATE}
  params = _random_export(tmp_path / "run", "lm", cfg, spec)
  out = str(tmp_path / "hf")
  assert _run(capsys, f"--workdir={tmp_path / 'run'}", f"--hf={out}") == (0, "")
  assert sorted(os.listdir(out)) == ["config.json", "generation_config.json",
                                     "model.safetensors", "tokenizer.json",
                                     "tokenizer_config.json"]
  _check_lm(out, cfg, params, tok, ["abc de", "zyx\nab", "eeee  a"])
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  assert hf_tok.chat_template == TEMPLATE
  with open(os.path.join(out, "generation_config.json")) as f:
    assert json.load(f) == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

  # Kind "hf" (here the checkpoint just written): its tokenizer files and generation config are
  # copied, the spec's chat template replaces the checkpoint's.
  _random_export(tmp_path / "run_hf", "lm", cfg,
                 {"kind": "hf", "path": out, "chat_template": "X{{ messages[0]['content'] }}"})
  out_hf = str(tmp_path / "hf_kind")
  assert _run(capsys, f"--workdir={tmp_path / 'run_hf'}", f"--hf={out_hf}")[0] == 0
  copied = transformers.AutoTokenizer.from_pretrained(out_hf)
  assert copied.encode("zyx\nab", add_special_tokens=False) == tok.encode("zyx\nab")
  assert copied.chat_template == "X{{ messages[0]['content'] }}"
  with open(os.path.join(out_hf, "generation_config.json")) as f:
    assert json.load(f)["eos_token_id"] == 2

  # A non-empty OUT is refused without --force, replaced with it (stale weights removed).
  open(os.path.join(out, "model-00001-of-00002.safetensors"), "w").close()
  code, err = _run(capsys, f"--workdir={tmp_path / 'run'}", f"--hf={out}")
  assert code == 2 and "rlhf-jax: export error:" in err and "not empty" in err and "--force" in err
  open(os.path.join(out, "notes.txt"), "w").close()
  assert _run(capsys, f"--workdir={tmp_path / 'run'}", f"--hf={out}", "--force",
              "--dtype=bfloat16")[0] == 0
  assert "model-00001-of-00002.safetensors" not in os.listdir(out)
  assert "notes.txt" in os.listdir(out)  # not ours: left alone
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["dtype"] == "bfloat16"


def test_sentencepiece_lm_export_loads_in_transformers(tmp_path, capsys):
  tok = tokenizer_lib.train_sentencepiece(SP_TEXTS, vocab_size=330, symbols=("<|user|>",))
  tok.save(str(tmp_path / "sp.model"))
  cfg = models.get_model_config("tiny", family="gpt2", vocab_size=tok.vocab_size,
                                max_positions=32, n_kv_heads=4)
  params = _random_export(tmp_path / "run", "lm", cfg,
                          tokenizer_lib.to_spec(tok, str(tmp_path / "sp.model")), seed=1)
  out = str(tmp_path / "hf")
  assert _run(capsys, f"--workdir={tmp_path / 'run'}", f"--hf={out}")[0] == 0
  assert {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
  texts = ["the lazy fox", "12 + 9 = 21", "<|user|>hello  world\n", "unseen Ω ü", " the"]
  _check_lm(out, cfg, params, tok, texts)
  # Our own loader reads the exported directory back to the same tokenizer and weights.
  assert models.load_hf_tokenizer(out).encode(texts[0]) == tok.encode(texts[0])
  assert models.load_hf(out).cfg == cfg


def test_qwen2_export_warns_that_autotokenizer_swaps_the_tokenizer(tmp_path, capsys, caplog):
  """transformers 5 forces its byte-level Qwen2Tokenizer on model_type qwen2: the exported
  tokenizer.json is still exact through PreTrainedTokenizerFast, and the export says so."""
  tok = tokenizer_lib.CharTokenizer(ALPHABET)
  cfg = models.get_model_config("tiny", family="qwen2", vocab_size=tok.vocab_size,
                                max_positions=32)
  params = _random_export(tmp_path / "run", "lm", cfg, {"kind": "char", "alphabet": ALPHABET})
  out = str(tmp_path / "hf")
  assert _run(capsys, f"--workdir={tmp_path / 'run'}", f"--hf={out}")[0] == 0
  assert "PreTrainedTokenizerFast.from_pretrained" in caplog.text
  _check_lm(out, cfg, params, tok, ["abc de", "zyx\nab"],
            tokenizer_class=transformers.PreTrainedTokenizerFast)


def test_reward_ensemble_member_exports_as_sequence_classifier(tmp_path, capsys):
  cfg = models.get_model_config("tiny", family="gemma", vocab_size=40, max_positions=32)
  spec = {"kind": "char", "alphabet": ALPHABET + "".join(map(chr, range(70, 97)))}
  norm = {"mean": 0.5, "std": 2.0, "examples": 8}
  run = tmp_path / "run"
  params = _random_export(run, "scalar", cfg, spec, seed=2, ensemble=2, head_b=0.25,
                          extra={"normalization": norm})
  out = str(tmp_path / "hf")
  code, err = _run(capsys, f"--workdir={run}", f"--hf={out}")
  assert code == 2 and "ensemble of 2 members" in err and "--member=i" in err
  code, err = _run(capsys, f"--workdir={run}", f"--hf={out}", "--member=2")
  assert code == 2 and "--member=2 is outside" in err
  os.makedirs(out)
  open(os.path.join(out, "model.safetensors"), "w").close()
  code, err = _run(capsys, f"--workdir={run}", f"--hf={out}", "--member=1", "--force")
  assert code == 2 and "no bias" in err and "--allow_reward_offset" in err
  assert "(b - mean) / std" in err
  assert os.listdir(out) == ["model.safetensors"]  # refused before OUT was touched
  assert _run(capsys, f"--workdir={run}", f"--hf={out}", "--member=1", "--force",
              "--allow_reward_offset")[0] == 0
  with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
  offset = (0.25 - 0.5) / 2.0
  assert config["architectures"] == ["GemmaForSequenceClassification"]
  assert config["rlhf_jax_reward"]["offset"] == pytest.approx(offset)

  # Right-padded rows with the pad id; ours: member 1's normalised reward at the last real token.
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, cfg.vocab_size, (3, 9)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[1, 6:], mask[2, 4:] = 0, 0
  tokens *= mask
  graphdef, _ = state_lib.abstract_model(lambda r: models.ScalarModel(cfg, rngs=r))
  ours = learned.normalize(learned.ensemble_scores(graphdef, params, tokens, mask), norm)[1]
  model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  with torch.no_grad():
    theirs = model(input_ids=_torch(tokens), attention_mask=_torch(mask)).logits.numpy()
  assert theirs.shape == (3, 1)
  np.testing.assert_allclose(theirs[:, 0], np.asarray(ours) - offset, atol=1e-4, rtol=0)


def test_missing_export_and_bad_flags_exit_2(tmp_path, capsys):
  code, err = _run(capsys, f"--workdir={tmp_path}", f"--hf={tmp_path / 'hf'}")
  assert code == 2 and err.startswith("rlhf-jax: export error:") and "no exported model" in err
  assert len(err.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "hf")
  cfg = models.get_model_config("tiny", vocab_size=8, max_positions=16)
  _random_export(tmp_path / "run", "lm", cfg, {"kind": "sentencepiece", "path": "/nonexistent"})
  code, err = _run(capsys, f"--workdir={tmp_path / 'run'}", f"--hf={tmp_path / 'hf'}")
  assert code == 2 and "sentencepiece model '/nonexistent' is missing" in err
  code, err = _run(capsys, f"--workdir={tmp_path / 'run'}", f"--hf={tmp_path}")
  assert code == 2 and "over the run directory" in err
  code, err = _run(capsys, f"--workdir={tmp_path / 'run'}", f"--hf={tmp_path / 'hf'}",
                   "--member=1")
  assert code == 2 and "--member is for reward-model ensembles" in err
