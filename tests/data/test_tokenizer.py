"""Sentencepiece trained from task text: exact round trip, special ids, caching."""

import os

import pytest

from rlhf_jax.data import tokenizer as tokenizer_lib
from rlhf_jax.tasks.arithmetic import ArithmeticTask


def test_round_trip_is_exact_on_task_text_and_beyond(tmp_path):
  task = ArithmeticTask(max_operand=40)
  tok = tokenizer_lib.train_sentencepiece(task.texts(), vocab_size=300)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  for text in task.texts():
    ids = tok.encode(text)
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.decode(ids) == text
  for text in ["  two  spaces\n\nHuman: ünïcode 😀", "\t"]:  # unseen characters: byte fallback
    assert tok.decode(tok.encode(text)) == text
  # Special ids are dropped on decode.
  assert tok.decode([tok.bos_id] + tok.encode("7+8=15") + [tok.eos_id, 0, 0]) == "7+8=15"


def test_load_or_train_caches_in_workdir(tmp_path):
  path = str(tmp_path / "tok.model")
  calls = []
  def texts():
    calls.append(1)
    return list(ArithmeticTask(max_operand=10).texts())
  a = tokenizer_lib.load_or_train(path, texts, vocab_size=280)
  b = tokenizer_lib.load_or_train(path, texts, vocab_size=280)
  assert os.path.exists(path) and len(calls) == 1
  assert a.encode("3+4=7") == b.encode("3+4=7")


def test_char_tokenizer_names_bad_characters():
  tok = tokenizer_lib.CharTokenizer("abcd")
  assert tok.vocab_size == 7 and tok.encode("dab") == [6, 3, 4] and tok.decode([1, 6, 3, 2, 0]) == "da"
  with pytest.raises(ValueError, match="character 'z' in 'abz' is not in the alphabet 'abcd'"):
    tok.encode("abz")
