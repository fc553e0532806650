"""The tokenizer beside Hugging Face weights, behind rlhf_jax's small tokenizer surface."""

import io

import pytest
import sentencepiece as spm
import tokenizers
import transformers

from rlhf_jax import models
from rlhf_jax.data import tokenizer as tokenizer_lib

TEXTS = ["the cat sat on the mat", "a dog ate 12 bones", "héllo wörld, again and again"] * 20


def _byte_level_bpe() -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|endoftext|>"],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(TEXTS, trainer)
  return tok


def test_tokenizer_json_matches_transformers(tmp_path):
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=_byte_level_bpe(),
                                              eos_token="<|endoftext|>")
  fast.save_pretrained(str(tmp_path))
  tok = models.load_hf_tokenizer(str(tmp_path))
  assert isinstance(tok, models.HFTokenizer)
  eos = fast.convert_tokens_to_ids("<|endoftext|>")
  assert tok.eos_id == eos and tok.pad_id == eos and tok.bos_id == eos  # GPT-2 style fallback
  assert tok.vocab_size == len(fast)
  text = "the dog sat on 12 mats, héllo!"
  ids = tok.encode(text)
  assert ids == fast(text, add_special_tokens=False)["input_ids"]
  assert tok.decode(ids + [tok.eos_id, tok.pad_id]) == text


def test_special_ids_from_config_json(tmp_path):
  _byte_level_bpe().save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "config.json").write_text('{"bos_token_id": 3, "eos_token_id": [1, 2], '
                                        '"pad_token_id": 0}')
  tok = models.load_hf_tokenizer(str(tmp_path))
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 3, 1)


def test_rlhf_sentencepiece_model_is_used_as_is(tmp_path):
  sp = tokenizer_lib.train_sentencepiece(TEXTS, vocab_size=300)
  sp.save(str(tmp_path / "tokenizer.model"))
  tok = models.load_hf_tokenizer(str(tmp_path))
  assert isinstance(tok, tokenizer_lib.SentencePieceTokenizer)
  assert tok.decode(tok.encode("the cat ate")) == "the cat ate"


def test_foreign_sentencepiece_ids_need_tokenizer_json(tmp_path):
  buf = io.BytesIO()  # sentencepiece defaults: unk 0, bos 1, eos 2, no pad (Llama 2 style)
  spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_writer=buf, vocab_size=25,
                                 minloglevel=2)
  (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
  with pytest.raises(ValueError, match="no tokenizer.json beside it"):
    models.load_hf_tokenizer(str(tmp_path))
  _byte_level_bpe().save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|endoftext|>"}')
  assert isinstance(models.load_hf_tokenizer(str(tmp_path)), models.HFTokenizer)
  with pytest.raises(FileNotFoundError, match="no tokenizer.model or tokenizer.json"):
    models.load_hf_tokenizer(str(tmp_path / "nowhere"))
