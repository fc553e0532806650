"""User data that is wrong fails with a ValueError naming the file and line and what is wrong:
JSONL records (data/sources.read_file, data/formats.canonical, then the layout's messages) and a
model.hf_path checkpoint whose config.json is not JSON (hf.read_hf_config, validate)."""

import json
import os
import re

import pytest

from rlhf_jax import configlib, validate
from rlhf_jax.data import formats, pipeline, sources, tokenizer as tokenizer_lib
from rlhf_jax.models import hf
from rlhf_jax.stages import sft

GOOD = b'{"prompt": "1+1=", "completion": "2"}\n'


def _write(tmp_path, data: bytes, name: str = "records.jsonl") -> str:
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


def _read_sft(path: str) -> sources.Records:
  return formats.canonical(sources.read_file(path), "sft")[0]


def _read_error(path: str) -> str:
  with pytest.raises(ValueError) as info:
    _read_sft(path)
  return str(info.value)


def test_good_records_keep_their_lines(tmp_path):
  path = _write(tmp_path, b"\xef\xbb\xbf" + GOOD + b"\n  \n" + GOOD.replace(b"2", b"3"))
  read = _read_sft(path)
  assert [r["completion"] for r in read.records] == ["2", "3"]
  assert read.where == [f"{path}:1", f"{path}:4"]


def test_invalid_utf8_names_line_and_byte_offset(tmp_path):
  bad = b'{"prompt": "1+1=", "completion": "\xff"}\n'
  path = _write(tmp_path, GOOD + bad)
  msg = _read_error(path)
  column = bad.index(b"\xff")
  assert msg.startswith(f"{path}:2: invalid UTF-8"), msg
  assert f"at byte {column} of the line (byte offset {len(GOOD) + column} of the file)" in msg


def test_json_array_line(tmp_path):
  path = _write(tmp_path, GOOD + b"\n" + b'["1+1=", "2"]\n')
  assert _read_error(path) == f"{path}:3: expected a JSON object per line, got list"


def test_not_json(tmp_path):
  path = _write(tmp_path, GOOD + b'{"prompt": "1+1=", "completion": 2\n')
  msg = _read_error(path)
  assert msg.startswith(f"{path}:2: not valid JSON (") and "column" in msg, msg


@pytest.mark.parametrize("line,problem", [
    (b'{"prompt": "1+1="}', "not an SFT record: expected {prompt, completion}, {messages} or a "
                            "preference pair (this record has ['prompt']"),
    (b'{"prompt": "1+1=", "answer": "2"}', "not an SFT record"),
    (b'{"prompt": "1+1=", "completion": 2}', "field 'completion' is a int; expected text or a "
                                             "list of {role, content} messages"),
    (b'{"prompt": null, "completion": "2"}', "field 'prompt' is null"),
    (b'{"messages": [{"role": "user", "content": 1}]}', "(messages): message 0 is not a {role: "
                                                        "str, content: str} object"),
])
def test_missing_or_non_text_field(tmp_path, line, problem):
  path = _write(tmp_path, GOOD + GOOD + line + b"\n")
  msg = _read_error(path)
  assert msg.startswith(f"{path}:3") and problem in msg, msg


def test_empty_file(tmp_path):
  path = _write(tmp_path, b"\n\n")
  assert _read_error(path).startswith(f"{path}: no records")


@pytest.fixture(scope="module")
def layout():
  return pipeline.Layout(tokenizer_lib.CharTokenizer("0123456789+=-"), 6, 3)


@pytest.mark.parametrize("line,problem", [
    (b'{"prompt": "1+1=", "completion": ""}', "empty completion"),
    (b'{"prompt": "11+11+11=", "completion": "33"}', "prompt has 10 tokens"),
])
def test_layout_errors_name_the_file_line(tmp_path, layout, line, problem):
  path = _write(tmp_path, GOOD + b"\n" + line + b"\n")
  read = _read_sft(path)
  with pytest.raises(ValueError) as info:
    pipeline.prepare_sft(read.records, layout, name="sft/train", where=read.where)
  assert str(info.value).startswith(f"{path}:3 (sft/train record 1): {problem}")


def test_sft_stage_fails_on_bad_records_before_training(tmp_path):
  path = _write(tmp_path, GOOD + b"[1, 2]\n")
  config = configlib.get("configs/sft.py:test", [("data.sft_records_path", path)])
  validate.validate(config)  # the file exists; its lines are checked when the stage reads it
  with pytest.raises(ValueError, match="^" + re.escape(f"{path}:2: expected a JSON object")):
    sft.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def _hf_dir(tmp_path, config_json: bytes) -> str:
  """A checkpoint directory by file names, with the given config.json bytes."""
  path = tmp_path / "hf"
  path.mkdir()
  (path / "config.json").write_bytes(config_json)
  (path / "model.safetensors").write_bytes(b"")
  (path / "tokenizer.json").write_text("{}")
  return str(path)


def test_broken_hf_config_json_names_file_line_and_column(tmp_path):
  path = _hf_dir(tmp_path, b'{"model_type": "llama",\n  "hidden_size": 64,\n}\n')
  file = os.path.join(path, "config.json")
  with pytest.raises(ValueError) as info:
    hf.read_hf_config(path)
  assert str(info.value).startswith(f"{file}: not valid JSON: ")
  assert "at line 3, column 1" in str(info.value)
  config = configlib.get("configs/sft.py:test", [("model.hf_path", path)])
  for check in (validate.validate, validate.check_hf_path):
    with pytest.raises(ValueError) as info:  # a ValueError, not JSONDecodeError's TypeError
      check(config)
    assert type(info.value) is ValueError
    msg = str(info.value)
    assert msg.startswith(f"model.hf_path={path!r}: {file}: not valid JSON"), msg
    assert "line 3, column 1" in msg


@pytest.mark.parametrize("data,problem", [
    (json.dumps([{"model_type": "llama"}]).encode(), "expected a JSON object"),
    (b'{"model_type": "llama\xff"}', "not UTF-8 text (byte offset 21"),
])
def test_hf_config_json_not_an_object_or_not_utf8(tmp_path, data, problem):
  path = _hf_dir(tmp_path, data)
  config = configlib.get("configs/sft.py:test", [("model.hf_path", path)])
  with pytest.raises(ValueError, match=r"^model\.hf_path=.*config\.json: " + re.escape(problem)):
    validate.validate(config)
