"""Dataset sources (data/sources.py) and record formats (data/formats.py): local files in every
layout, held-out splits, field remapping, every record format into canonical records, and the
[prompt | completion] layout of conversations (assistant-only loss masks)."""

import json
import logging

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_jax.data import chat, formats, pipeline, sources, tokenizer as tokenizer_lib

ROWS = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(20)]


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _data_config(**kw):
  c = {"source": "files", "path": "", "manual_dir": "", "train_split": "train",
       "eval_split": "test", "heldout_fraction": 0.1, "split_seed": 0}
  c.update(kw)
  return ml_collections.ConfigDict(c)


def _read(data, split):
  return sources.read(data, split, data_dir="", task_reader=None)


def test_jsonl_json_parquet_read_alike(tmp_path):
  _jsonl(tmp_path / "a.jsonl", ROWS[:5])
  (tmp_path / "b.json").write_text(json.dumps({"data": ROWS[5:10]}))
  pq.write_table(pa.Table.from_pylist(ROWS[10:15]), tmp_path / "c.parquet")
  got = [sources.read_file(str(tmp_path / n)) for n in ("a.jsonl", "b.json", "c.parquet")]
  assert [r for g in got for r in g.records] == ROWS[:15]
  assert got[0].where[2] == f"{tmp_path}/a.jsonl:3"
  assert got[1].where[0] == f"{tmp_path}/b.json record 0"
  assert got[2].where[4] == f"{tmp_path}/c.parquet row 4"


def test_directory_splits_and_globs(tmp_path):
  _jsonl(tmp_path / "train-00000.jsonl", ROWS[:8])
  pq.write_table(pa.Table.from_pylist(ROWS[8:16]), tmp_path / "train-00001.parquet")
  _jsonl(tmp_path / "test.jsonl", ROWS[16:])
  data = _data_config(path=str(tmp_path))
  assert _read(data, "train").records == ROWS[:16]
  assert _read(data, "eval").records == ROWS[16:]   # the directory's own split: nothing held out
  glob_data = _data_config(path=str(tmp_path / "train-*"))
  train, held = _read(glob_data, "train"), _read(glob_data, "eval")
  assert len(train) == 14 and len(held) == 2


def test_heldout_is_seeded_disjoint_and_complete(tmp_path):
  data = _data_config(path=_jsonl(tmp_path / "all.jsonl", ROWS), heldout_fraction=0.25)
  train, held = _read(data, "train"), _read(data, "eval")
  assert len(held) == 5 and len(train) == 15
  assert sorted(r["prompt"] for r in train.records + held.records) == sorted(r["prompt"]
                                                                             for r in ROWS)
  assert _read(data, "eval").records == held.records   # the same rows on every read
  other = _read(_data_config(path=data.path, heldout_fraction=0.25, split_seed=1), "eval")
  assert other.records != held.records
  with pytest.raises(ValueError, match="has no 'test' split; set data.heldout_fraction"):
    _read(_data_config(path=data.path, heldout_fraction=0.0), "eval")


def test_missing_paths_and_bad_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no .jsonl/.json/.parquet file matches"):
    _read(_data_config(path=str(tmp_path / "nope*.jsonl")), "train")
  (tmp_path / "x.csv").write_text("a,b\n")
  with pytest.raises(ValueError, match="unsupported file type '.csv'"):
    sources.read_file(str(tmp_path / "x.csv"))
  (tmp_path / "bad.json").write_text('[{"prompt": "a"}, 3]')
  with pytest.raises(ValueError, match="bad.json record 1: expected an object, got int"):
    sources.read_file(str(tmp_path / "bad.json"))


def _canonical(rows, kind, fields=None):
  raw = sources.Records(rows, [f"f.jsonl:{i + 1}" for i in range(len(rows))])
  return formats.canonical(raw, kind, fields)


CONV = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def test_sft_formats_and_field_remap():
  rows = [{"question": "q", "answer": "a"}, {"messages": CONV},
          {"prompt": CONV[:1], "completion": CONV[1:2]},
          {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"}]
  got, drops = _canonical(rows[:1], "sft", {"prompt": "question", "completion": "answer"})
  assert got.records == [{"prompt": "q", "completion": "a"}] and not drops
  got, _ = _canonical(rows[1:], "sft")
  assert got.records == [{"messages": CONV}, {"prompt": CONV[:1], "completion": CONV[1:2]},
                         {"prompt": "\n\nHuman: hi\n\nAssistant:", "completion": " yes"}]
  with pytest.raises(ValueError, match="f.jsonl:1: data.fields maps 'prompt' to column 'q'"):
    _canonical(rows[:1], "sft", {"prompt": "q"})
  with pytest.raises(ValueError, match="f.jsonl:1: fields .* mix text and message lists"):
    _canonical([{"prompt": "q", "completion": CONV[1:2]}], "sft")


def test_preference_formats():
  hh = {"chosen": "\n\nHuman: a\n\nAssistant: x\n\nHuman: b\n\nAssistant: good",
        "rejected": "\n\nHuman: a\n\nAssistant: x\n\nHuman: b\n\nAssistant: bad"}
  mismatch = {"chosen": "\n\nHuman: a\n\nAssistant: good", "rejected": "\n\nHuman: c\n\nAssistant: bad"}
  implicit = {"chosen": CONV, "rejected": CONV[:3] + [{"role": "assistant", "content": "5"}]}
  explicit = {"prompt": "p", "chosen": "c", "rejected": "r", "chosen_gold": 1, "rejected_gold": 0}
  got, drops = _canonical([hh, mismatch, implicit, explicit, {**explicit, "rejected": "c"}],
                          "preference")
  assert drops == {"prompt_mismatch": 1, "identical_pair": 1}
  assert got.records[0] == {"prompt": "\n\nHuman: a\n\nAssistant: x\n\nHuman: b\n\nAssistant:",
                            "chosen": " good", "rejected": " bad"}
  assert got.records[1] == {"prompt": CONV[:3], "chosen": CONV[3:],
                            "rejected": [{"role": "assistant", "content": "5"}]}
  assert got.records[2] == {"prompt": "p", "chosen": "c", "rejected": "r", "chosen_gold": 1.0,
                            "rejected_gold": 0.0}
  assert got.where == ["f.jsonl:1", "f.jsonl:3", "f.jsonl:4"]


def test_prompt_formats_keep_other_columns():
  rows = [{"prompt": "1+1=", "answer": "2", "id": 7}, {"messages": CONV},
          {"chosen": "\n\nHuman: a\n\nAssistant: y", "rejected": "\n\nHuman: a\n\nAssistant: n"}]
  got, _ = _canonical(rows, "prompt")
  assert got.records == [{"prompt": "1+1=", "columns": {"answer": "2", "id": 7}},
                         {"prompt": CONV[:3], "columns": {}},
                         {"prompt": "\n\nHuman: a\n\nAssistant:", "columns": {}}]


@pytest.fixture(scope="module")
def sp_layout():
  texts = ["hi hello 2+2? 4 the cat sat", "what is it"] * 30
  tok = tokenizer_lib.train_sentencepiece(texts, vocab_size=320, symbols=chat.DEFAULT_MARKERS)
  template = chat.ChatTemplate(chat.DEFAULT_TEMPLATE, chat.special_tokens(tok))
  return pipeline.Layout(tok, 32, 32, chat=template)


def _loss_text(layout, row):
  tok = layout.tokenizer
  ids = [int(t) for t, m in zip(row["tokens"], row["completion_mask"]) if m]
  return tok.decode(ids), ids.count(tok.eos_id)


@pytest.mark.parametrize("last_turn_only", [False, True])
def test_conversation_layout_masks_assistant_turns_only(sp_layout, last_turn_only):
  import dataclasses  # pylint: disable=g-import-not-at-top
  layout = dataclasses.replace(sp_layout, last_turn_only=last_turn_only)
  messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
              {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
              {"role": "user", "content": "the cat?"}, {"role": "assistant", "content": "sat"}]
  arrays, stats = pipeline.prepare_sft([{"messages": messages}], layout)
  row = {k: v[0] for k, v in arrays.items()}
  ids, mask = chat.encode_chat(layout.tokenizer, layout.chat, messages)
  # The row holds the conversation's tokens (left-padded prompt, then the rest) ...
  assert [int(t) for t, m in zip(row["tokens"], row["mask"]) if m] == ids
  # ... cut before the first reply (last_turn_only: before the last one).
  cut = (len(mask) - mask[::-1].index(0)) if last_turn_only else mask.index(1)
  assert row["mask"][:32].sum() == cut and row["completion_mask"][:32].sum() == 0
  got = list(row["completion_mask"][32:32 + len(ids) - cut])
  if last_turn_only:   # only the last reply; the earlier ones are context
    assert got == [1] * (len(ids) - cut)
    assert _loss_text(layout, row) == ("sat", 1)
  else:                # token by token: every reply and its EOS, nothing of the user's turns
    assert got == mask[cut:]
    assert _loss_text(layout, row) == ("hello4sat", 3)
  assert stats.kept == 1


def test_message_pairs_share_the_prompt_tokens(sp_layout):
  pair = {"prompt": CONV[:3], "chosen": [CONV[3]],
          "rejected": [{"role": "assistant", "content": "the cat"}]}
  arrays, _ = pipeline.prepare_preference([pair], sp_layout)
  np.testing.assert_array_equal(arrays["chosen_tokens"][0, :32], arrays["rejected_tokens"][0, :32])
  tok = sp_layout.tokenizer
  assert tok.decode(arrays["chosen_tokens"][0, 32:]) == "4"
  assert tok.decode(arrays["rejected_tokens"][0, 32:]) == "the cat"
  with pytest.raises(ValueError, match="needs a chat template"):
    import dataclasses  # pylint: disable=g-import-not-at-top
    pipeline.prepare_preference([pair], dataclasses.replace(sp_layout, chat=None))


def test_validation_checks_the_configured_train_split_of_a_directory(tmp_path):
  from rlhf_jax import configlib, validate  # pylint: disable=g-import-not-at-top
  _jsonl(tmp_path / "test.jsonl", ROWS)
  overrides = [("data.source", "files"), ("data.path", str(tmp_path))]
  with pytest.raises(FileNotFoundError, match="no train split"):
    validate.validate(configlib.get("configs/sft.py:test", overrides))
  validate.validate(configlib.get("configs/sft.py:test", overrides + [
      ("data.train_split", "test"), ("tokenizer.kind", "sentencepiece")]))


def test_toy_task_preparation_prints_no_tfds_banners(tmp_path, capsys, caplog):
  """Data generated here gets one info line per split, not TFDS's download banner (stdout) and
  its "Using custom data configuration" warning with the config as one line of JSON."""
  from rlhf_jax.data import builders  # pylint: disable=g-import-not-at-top
  caplog.set_level("INFO")
  level = logging.getLogger("absl").level
  for _ in range(2):  # prepared, then reused
    source = builders.load_split("enumerable", "sft", "test", data_dir=str(tmp_path))
  assert len(source) > 0
  out = capsys.readouterr().out
  assert "Downloading and preparing" not in out and "downloaded and prepared" not in out, out
  assert "Using custom data configuration" not in caplog.text, caplog.text
  assert caplog.text.count("toy_task enumerable-sft-") == 2, caplog.text
  assert logging.getLogger("absl").level == level   # restored
