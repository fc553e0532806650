"""Tokenizers: a sentencepiece model (trained from task text when none is given) and a fixed alphabet.

Every tokenizer exposes the same small surface, used by pipelines, generation and tasks:

  encode(text) -> list[int]     ids without BOS/EOS
  decode(ids)  -> str           stops at nothing; pad/bos/eos ids are dropped
  pad_id, bos_id, eos_id, vocab_size

Special ids are fixed across both kinds: pad = 0, bos = 1, eos = 2. A third kind, "hf", is the
tokenizer beside Hugging Face weights (models/hf/tokenizer.py); it keeps the checkpoint's own ids.
"""

from __future__ import annotations

import io
import os
import re
from typing import Iterable, Protocol, Sequence

import sentencepiece as spm

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


class Tokenizer(Protocol):
  pad_id: int
  bos_id: int
  eos_id: int
  vocab_size: int

  def encode(self, text: str) -> list[int]:
    ...

  def decode(self, ids: Sequence[int]) -> str:
    ...


class SentencePieceTokenizer:
  """Wraps a `sentencepiece` model with pad=0, bos=1, eos=2, unk=3."""

  def __init__(self, model_proto: bytes):
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.model_proto = model_proto
    for name, want in (("pad", PAD_ID), ("bos", BOS_ID), ("eos", EOS_ID)):
      got = getattr(self._sp, f"{name}_id")()
      if got != want:
        raise ValueError(
            f"sentencepiece model has {name}_id={got}; rlhf_jax expects {name}_id={want} "
            "(train with pad_id=0, bos_id=1, eos_id=2, unk_id=3)")
    self.pad_id, self.bos_id, self.eos_id = PAD_ID, BOS_ID, EOS_ID
    self.vocab_size = self._sp.get_piece_size()

  @classmethod
  def load(cls, path: str) -> "SentencePieceTokenizer":
    with open(path, "rb") as f:
      return cls(f.read())

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(self.model_proto)
    os.replace(tmp, path)

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character spans of `text`, where the control pieces a chat template writes
    (`<s>`, `</s>`) become the BOS/EOS ids, as a Hugging Face tokenizer reads them."""
    specials = {self._sp.id_to_piece(i): i for i in (BOS_ID, EOS_ID)}
    ids, offsets, start = [], [], 0
    for chunk in re.split("(" + "|".join(map(re.escape, specials)) + ")", text):
      if chunk in specials:
        ids.append(specials[chunk])
        offsets.append((start, start + len(chunk)))
      elif chunk:
        char_of_byte = [c for c, ch in enumerate(chunk) for _ in ch.encode("utf-8")]
        char_of_byte.append(len(chunk))
        for piece in self._sp.encode(chunk, return_type="proto").pieces:
          ids.append(piece.id)
          offsets.append((start + char_of_byte[piece.begin], start + char_of_byte[piece.end]))
      start += len(chunk)
    return ids, offsets

  def id_to_token(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids if int(i) not in (PAD_ID, BOS_ID, EOS_ID)])


def train_sentencepiece(texts: Iterable[str], *, vocab_size: int, model_type: str = "bpe",
                        symbols: Sequence[str] = ()) -> SentencePieceTokenizer:
  """Trains a sentencepiece model on `texts` with an exact encode/decode round trip.

  Identity normalisation, no dummy prefix, whitespace kept and byte fallback make
  `decode(encode(t)) == t` for any UTF-8 text, including characters never seen in training.
  Digits are split so numbers tokenize one digit per piece (arithmetic tasks rely on this).
  `symbols` (e.g. a chat template's role markers) are always single pieces.
  """
  buf = io.BytesIO()
  texts = [t for t in texts if t]
  if not texts:
    raise ValueError("train_sentencepiece: no non-empty training text given")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size,
      model_type=model_type, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
      normalization_rule_name="identity", add_dummy_prefix=False,
      remove_extra_whitespaces=False, split_digits=True, byte_fallback=True,
      allow_whitespace_only_pieces=True, hard_vocab_limit=False,
      # The whitespace marker is always a piece, so spaces round-trip even when the training
      # text has none (as a byte-fallback piece it would decode to a literal "\u2581").
      character_coverage=1.0, required_chars="\u2581", max_sentence_length=1 << 16,
      num_threads=1, user_defined_symbols=list(symbols),
      minloglevel=2)
  return SentencePieceTokenizer(buf.getvalue())


def load_or_train(path: str, texts_fn, *, vocab_size: int,
                  symbols: Sequence[str] = ()) -> SentencePieceTokenizer:
  """Loads the model at `path`; if absent, trains one from `texts_fn()` and caches it there."""
  if os.path.exists(path):
    return SentencePieceTokenizer.load(path)
  tok = train_sentencepiece(texts_fn(), vocab_size=vocab_size, symbols=symbols)
  tok.save(path)
  return tok


class CharTokenizer:
  """One id per character of a fixed alphabet, after pad/bos/eos; for enumerable toy worlds.

  With a k-letter alphabet the vocabulary is k + 3, so every completion of length L can be
  enumerated (there are (k+1)^L sequences counting EOS).
  """

  def __init__(self, alphabet: str):
    if len(set(alphabet)) != len(alphabet) or not alphabet:
      raise ValueError(f"CharTokenizer alphabet must be non-empty and unique, got {alphabet!r}")
    self.alphabet = alphabet
    self.pad_id, self.bos_id, self.eos_id = PAD_ID, BOS_ID, EOS_ID
    self._offset = 3
    self.vocab_size = len(alphabet) + self._offset
    self._index = {c: i + self._offset for i, c in enumerate(alphabet)}

  def encode(self, text: str) -> list[int]:
    try:
      return [self._index[c] for c in text]
    except KeyError as e:
      raise ValueError(
          f"CharTokenizer: character {e.args[0]!r} in {text!r} is not in the alphabet "
          f"{self.alphabet!r}") from None

  def decode(self, ids: Sequence[int]) -> str:
    return "".join(self.alphabet[int(i) - self._offset] for i in ids
                   if int(i) >= self._offset)

  def id_to_token(self, i: int) -> str:
    return {PAD_ID: "<pad>", BOS_ID: "<s>", EOS_ID: "</s>"}.get(int(i)) or self.decode([i])


def to_spec(tok, path: str = "") -> dict:
  """A JSON-able description from which `from_spec` rebuilds the tokenizer.

  `path` is the sentencepiece model file, or for an HFTokenizer the checkpoint directory."""
  if isinstance(tok, CharTokenizer):
    return {"kind": "char", "alphabet": tok.alphabet}
  if isinstance(tok, SentencePieceTokenizer):
    if not path:
      raise ValueError("to_spec: a sentencepiece tokenizer needs the path of its model file")
    return {"kind": "sentencepiece", "path": os.path.abspath(path)}
  if type(tok).__name__ == "HFTokenizer":  # models/hf/tokenizer.py (not imported here)
    if not path:
      raise ValueError("to_spec: a Hugging Face tokenizer needs its checkpoint directory")
    return {"kind": "hf", "path": os.path.abspath(path)}
  raise TypeError(f"to_spec: unsupported tokenizer type {type(tok).__name__}")


SPEC_KINDS = ("char", "sentencepiece", "hf")
# What config.tokenizer.kind may name ("hf" comes from model.hf_path instead; stages/common.py).
CONFIG_KINDS = ("char", "sentencepiece")


def from_spec(spec: dict):
  """The tokenizer `spec` describes (see `to_spec`).

  kind "hf": `models.hf.load_hf_tokenizer(spec["path"])`, the tokenizer.model / tokenizer.json
  beside Hugging Face weights. Its special ids are the checkpoint's (a tokenizer without a pad
  token pads with EOS, one without BOS starts prompts with EOS; masks mark padding everywhere);
  each must lie inside the vocabulary, or this raises.
  """
  kind = spec.get("kind")
  if kind == "char":
    return CharTokenizer(spec["alphabet"])
  if kind == "sentencepiece":
    return SentencePieceTokenizer.load(spec["path"])
  if kind == "hf":
    # Imported here: models/hf/tokenizer.py builds on this module.
    from rlhf_jax.models.hf.tokenizer import load_hf_tokenizer
    tok = load_hf_tokenizer(spec["path"])
    for name in ("pad", "bos", "eos"):
      value = getattr(tok, f"{name}_id")
      if not 0 <= value < tok.vocab_size:
        raise ValueError(f"tokenizer in {spec['path']!r}: {name}_id={value} is outside its "
                         f"vocabulary of {tok.vocab_size}")
    return tok
  raise ValueError(f"unknown tokenizer kind {kind!r} in {spec}; valid: {list(SPEC_KINDS)}")
