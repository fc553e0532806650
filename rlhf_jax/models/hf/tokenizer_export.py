"""The tokenizer files of a Hugging Face export (`rlhf-jax export`, rlhf_jax/export_hf.py): a
checkpoint's own files copied, or rlhf_jax's char / sentencepiece tokenizers converted to a
tokenizer.json that transformers reads to the same ids (checked on probe texts before anything
is written).
"""

from __future__ import annotations

import json
import os
import shutil
import struct

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers,
                        processors)
from tokenizers import models as tokenizer_models

from rlhf_jax.data import tokenizer as tokenizer_lib

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "vocab.json", "merges.txt")
SPECIAL_NAMES = ("<pad>", "<s>", "</s>")  # rlhf_jax's ids 0, 1, 2 (data/tokenizer.py)


class ExportError(ValueError):
  """An export that cannot be written as asked (the message says why)."""


class ExportTokenizer:
  """The export's tokenizer spec, checked (and for sentencepiece converted) up front."""

  def __init__(self, spec: dict, *, max_positions: int):
    self.spec, self.kind, self.max_positions = spec, spec.get("kind"), max_positions
    self.chat_template = spec.get("chat_template")
    if self.kind == "hf":
      path = spec.get("path", "")
      if not os.path.isdir(path):
        raise ExportError(f"the export's tokenizer is the Hugging Face checkpoint {path!r}, "
                          "which no longer exists")
      self.files = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(path, n))]
      if not {"tokenizer.json", "tokenizer.model"} & set(self.files):
        raise ExportError(f"no tokenizer.json or tokenizer.model in {path!r}, the export's "
                          "tokenizer checkpoint")
      self.tok = tokenizer_lib.from_spec(spec)
    elif self.kind == "char":
      self.tok = tokenizer_lib.from_spec(spec)
      self.fast = char_tokenizer_json(self.tok.alphabet)
    elif self.kind == "sentencepiece":
      if not os.path.isfile(spec.get("path", "")):
        raise ExportError(f"the export's sentencepiece model {spec.get('path')!r} is missing")
      self.tok = tokenizer_lib.from_spec(spec)
      self.fast, self.tokens = sentencepiece_tokenizer_json(self.tok.model_proto)
      check_same_ids(self.tok, self.fast, probe_texts(self.tok.model_proto))
    else:
      raise ExportError(f"unknown tokenizer kind {self.kind!r} in the export's spec {spec}; "
                        f"valid: {list(tokenizer_lib.SPEC_KINDS)}")

  def special_ids(self) -> dict:
    """bos/eos/pad_token_id for config.json: the source checkpoint's for "hf" (where it has
    them), else the tokenizer's."""
    ids = {f"{k}_token_id": int(getattr(self.tok, f"{k}_id")) for k in ("bos", "eos", "pad")}
    if self.kind == "hf":
      src = os.path.join(self.spec["path"], "config.json")
      if os.path.isfile(src):
        with open(src) as f:
          ids.update({k: v for k, v in json.load(f).items() if k in ids and v is not None})
    return ids

  def write(self, out: str) -> None:
    if self.kind == "hf":
      for name in self.files:
        shutil.copyfile(os.path.join(self.spec["path"], name), os.path.join(out, name))
      if not self.chat_template:
        return
      config = _read_json(os.path.join(out, "tokenizer_config.json"))
    else:
      self.fast.save(os.path.join(out, "tokenizer.json"))
      names = dict(zip(("pad_token", "bos_token", "eos_token"), SPECIAL_NAMES))
      if self.kind == "sentencepiece":
        self.tok.save(os.path.join(out, "tokenizer.model"))
        names = dict(self.tokens)
      config = {"tokenizer_class": "PreTrainedTokenizerFast", **names,
                "model_max_length": self.max_positions, "clean_up_tokenization_spaces": False,
                "add_bos_token": True, "add_eos_token": False}
    if self.chat_template:
      config["chat_template"] = self.chat_template
      if os.path.exists(os.path.join(out, "chat_template.jinja")):  # read before the json
        with open(os.path.join(out, "chat_template.jinja"), "w") as f:
          f.write(self.chat_template)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)

  def write_generation_config(self, out: str, ids: dict) -> None:
    src = os.path.join(self.spec.get("path", ""), "generation_config.json")
    if self.kind == "hf" and os.path.isfile(src):
      shutil.copyfile(src, os.path.join(out, "generation_config.json"))
      return
    with open(os.path.join(out, "generation_config.json"), "w") as f:
      json.dump(dict(ids), f, indent=2)


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def char_tokenizer_json(alphabet: str):
  """A `tokenizers.Tokenizer` with CharTokenizer's ids: <pad>, <s>, </s>, then one token per
  alphabet character; BOS added in front; decoding concatenates."""
  vocab = {name: i for i, name in enumerate(SPECIAL_NAMES)}
  vocab.update({c: i + len(SPECIAL_NAMES) for i, c in enumerate(alphabet)})
  tok = Tokenizer(tokenizer_models.WordLevel(vocab))
  tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
  tok.decoder = decoders.Fuse()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_NAMES])
  tok.post_processor = _add_bos(SPECIAL_NAMES[1], tokenizer_lib.BOS_ID)
  return tok


def _add_bos(bos: str, bos_id: int):
  return processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                       special_tokens=[(bos, bos_id)])


# sentencepiece's ModelProto, read without protobuf: the wire format of the few fields used.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_BPE = 2


def _varint(buf: bytes, i: int) -> tuple[int, int]:
  out = shift = 0
  while True:
    byte = buf[i]
    i += 1
    out |= (byte & 0x7F) << shift
    shift += 7
    if byte < 0x80:
      return out, i


def _fields(buf: bytes):
  """(field number, value) of a protobuf message: ints for varints, bytes otherwise."""
  i = 0
  while i < len(buf):
    key, i = _varint(buf, i)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, i = _varint(buf, i)
    elif wire in (1, 5):
      size = 8 if wire == 1 else 4
      value, i = buf[i:i + size], i + size
    elif wire == 2:
      size, i = _varint(buf, i)
      value, i = buf[i:i + size], i + size
    else:
      raise ValueError(f"sentencepiece model: unsupported protobuf wire type {wire}")
    yield number, value


def read_sentencepiece(model_proto: bytes) -> tuple[list[tuple[str, float, int]], dict, dict]:
  """(pieces as (piece, score, type), trainer spec fields, normalizer spec fields)."""
  pieces, trainer, normalizer = [], {}, {}
  for number, value in _fields(model_proto):
    if number == 1:
      piece = dict(_fields(value))
      pieces.append((piece.get(1, b"").decode("utf-8"),
                     struct.unpack("<f", piece[2])[0] if 2 in piece else 0.0,
                     int(piece.get(3, _NORMAL))))
    elif number == 2:
      trainer = dict(_fields(value))
    elif number == 3:
      normalizer = dict(_fields(value))
  return pieces, trainer, normalizer


def sentencepiece_tokenizer_json(model_proto: bytes):
  """(`tokenizers.Tokenizer`, special token names) encoding like the sentencepiece BPE model
  `train_sentencepiece` writes (identity normalisation, no dummy prefix, byte fallback).

  Merges come from the pieces as in transformers' SentencePieceExtractor: every split of a
  normal piece into two normal pieces, ranked by the merged piece's score. User-defined pieces
  become added tokens, matched before BPE as sentencepiece does."""
  pieces, trainer, normalizer = read_sentencepiece(model_proto)
  settings = {"model_type (BPE)": trainer.get(3, 1) == _BPE,
              "normalization 'identity'": normalizer.get(1, b"") == b"identity",
              "add_dummy_prefix=false": not normalizer.get(3, 1),
              "remove_extra_whitespaces=false": not normalizer.get(4, 1),
              "escape_whitespaces=true": bool(normalizer.get(5, 1))}
  wrong = [name for name, ok in settings.items() if not ok]
  if wrong:
    raise ExportError(f"sentencepiece model: only BPE models as train_sentencepiece writes them "
                      f"convert to tokenizer.json; this one differs in {wrong}")
  vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
  normal = {p: i for i, (p, _, kind) in enumerate(pieces) if kind == _NORMAL}
  merges = []
  for piece, i in normal.items():
    splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))
              if piece[:k] in normal and piece[k:] in normal]
    splits.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges += [(pieces[i][1], m) for m in splits]
  merges = [m for _, m in sorted(merges, key=lambda s: -s[0])]  # stable: ties keep their order
  unk = pieces[tokenizer_lib.UNK_ID][0]
  tok = Tokenizer(tokenizer_models.BPE(vocab, merges, unk_token=unk, fuse_unk=True,
                                       byte_fallback=True))
  tok.normalizer = normalizers.Replace(" ", "\u2581")
  tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                   decoders.Fuse()])
  tok.add_tokens([AddedToken(p, special=False, normalized=False)
                  for p, _, kind in pieces if kind == _USER_DEFINED])
  tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                          for p, _, kind in pieces if kind in (_CONTROL, _UNKNOWN)])
  bos = pieces[tokenizer_lib.BOS_ID][0]
  tok.post_processor = _add_bos(bos, tokenizer_lib.BOS_ID)
  names = {"pad_token": pieces[tokenizer_lib.PAD_ID][0], "bos_token": bos,
           "eos_token": pieces[tokenizer_lib.EOS_ID][0], "unk_token": unk}
  return tok, names


def probe_texts(model_proto: bytes) -> list[str]:
  """Texts on which the converted tokenizer must agree with sentencepiece: every normal piece's
  text, pairs of neighbouring pieces, and mixed text (spaces, digits, unseen characters)."""
  pieces, _, _ = read_sentencepiece(model_proto)
  words = [p.replace("\u2581", " ") for p, _, kind in pieces if kind in (_NORMAL, _USER_DEFINED)]
  pairs = [a + b for a, b in zip(words, words[1:])]
  mixed = ["The year 2024 had 366 days.", "  two  spaces\tand a tab\n", "naïve café — 東京 🙂",
           " ".join(words[:64])]
  # Left out: texts holding a special token's text, which transformers reads as that token (as
  # rlhf_jax's chat encoding does), where plain sentencepiece spells it out.
  specials = [p for p, _, kind in pieces if kind in (_CONTROL, _UNKNOWN)]
  return [t for t in words + pairs + mixed if not any(s in t for s in specials)]


def check_same_ids(ours, fast, texts: list[str]) -> None:
  """Raises ExportError naming the first text `fast` (a tokenizers.Tokenizer) encodes to other
  ids than `ours`."""
  theirs = fast.encode_batch(texts, add_special_tokens=False)
  for text, enc in zip(texts, theirs):
    want = ours.encode(text)
    if list(enc.ids) != want:
      raise ExportError(f"the tokenizer.json built from the sentencepiece model encodes {text!r} "
                        f"to {list(enc.ids)}, but sentencepiece gives {want}: not exporting a "
                        "tokenizer that disagrees with the one the model was trained with")

