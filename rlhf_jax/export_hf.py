"""`rlhf-jax export --workdir=RUN --hf=OUT`: a stage's export (`RUN/export`, train/export.py) as a
Hugging Face checkpoint that transformers' `AutoModelForCausalLM` (or, for a reward model,
`AutoModelForSequenceClassification`) and `AutoTokenizer` load.

OUT gets safetensors weights + config.json (`models.save_hf`), the tokenizer and, for a language
model, generation_config.json. The tokenizer files by kind of the export's tokenizer spec:
  hf             the checkpoint's own files, copied (tokenizer.json, tokenizer.model, ...)
  sentencepiece  tokenizer.model, plus a tokenizer.json (`tokenizers` BPE with byte fallback,
                 built from the model's pieces and scores) that encodes text to the same ids;
                 checked on probe texts before anything is written
  char           a tokenizer.json: a WordLevel vocabulary <pad>=0, <s>=1, </s>=2, then the
                 alphabet, one token per character
For the sentencepiece and char kinds, tokenizer_config.json names the special tokens and makes
the tokenizer add BOS, as rlhf_jax's prompts start with it; `encode(text,
add_special_tokens=False)` gives rlhf_jax's ids. A chat template in the spec ("chat_template")
goes into tokenizer_config.json. Caveat: for model_type "qwen2", transformers 5's AutoTokenizer
ignores tokenizer_config's class and rebuilds its own byte-level Qwen2Tokenizer from the
vocabulary, which encodes these tokenizers differently; load them with
`transformers.PreTrainedTokenizerFast.from_pretrained(OUT)` (a warning says so).

Reward models (kind "scalar": backbone + head r = h·w + b at the last real token) become a
`<Family>ForSequenceClassification` with num_labels=1, whose `score.weight` [1, D] has no bias.
transformers pools at the rightmost token that is not pad_token_id (ours: the last token the mask
marks), so rows must be padded with the pad id, and a tokenizer whose pad id is its EOS id (some
"hf" tokenizers) must not end rows with EOS. The export's reward normalisation r' = (r − μ)/σ is
folded into the weight (w/σ); what is left, the constant c = (b − μ)/σ (c = b without
normalisation), has no place in the score layer: a non-zero c is refused unless
--allow_reward_offset, which writes scores r' − c (preference comparisons are unchanged) and
records c in config.json ("rlhf_jax_reward"). An ensemble needs --member=i: one member is exported.

Every process of a multi-process run must run the command (parameters are gathered); process 0
writes. Exit status 0, or 2 with one line `rlhf-jax: export error: ...` on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import struct
import sys

import numpy as np
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers,
                        processors)
from tokenizers import models as tokenizer_models

from rlhf_jax.data import tokenizer as tokenizer_lib

DTYPES = ("float32", "bfloat16", "float16")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                   "vocab.json", "merges.txt")
# What --force replaces in OUT (anything else there is left alone).
OWN_FILES = TOKENIZER_FILES + ("config.json", "generation_config.json",
                               "model.safetensors.index.json")
SEQUENCE_CLASSIFIERS = {"llama": "LlamaForSequenceClassification",
                        "qwen2": "Qwen2ForSequenceClassification",
                        "gemma": "GemmaForSequenceClassification",
                        "gpt2": "GPT2ForSequenceClassification"}
SCORE_FILE = "model-score.safetensors"
SPECIAL_NAMES = ("<pad>", "<s>", "</s>")  # rlhf_jax's ids 0, 1, 2 (data/tokenizer.py)


class ExportError(ValueError):
  """An export that cannot be written as asked (the message says why)."""


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="rlhf-jax export", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="a run directory holding export/")
  parser.add_argument("--hf", required=True, help="output directory of the HF checkpoint")
  parser.add_argument("--dtype", default="float32", choices=DTYPES, help="tensor storage dtype")
  parser.add_argument("--force", action="store_true",
                      help="write into a non-empty OUT, replacing the checkpoint files there")
  parser.add_argument("--member", type=int, default=None,
                      help="reward-model ensembles: the member to export")
  parser.add_argument("--allow_reward_offset", action="store_true",
                      help="reward models: export even though the score layer cannot hold the "
                           "head's constant offset (scores shift by it)")
  parser.add_argument("--log_level", default="INFO")
  return parser.parse_args(argv)


def main(argv) -> int:
  """`rlhf-jax export FLAGS` (argv: the flags after the word "export"); exit status."""
  from rlhf_jax.train import nonfinite  # pylint: disable=g-import-not-at-top
  args = parse_args(argv)
  logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
  for noisy in ("absl", "jax._src", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    out = export(args.workdir, args.hf, dtype=args.dtype, force=args.force, member=args.member,
                 allow_reward_offset=args.allow_reward_offset)
  except (ExportError, FileNotFoundError, ValueError, nonfinite.NonFiniteError) as e:
    print(f"rlhf-jax: export error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  logging.info("wrote a Hugging Face checkpoint to %s", out)
  return 0


def export(workdir: str, out: str, *, dtype: str = "float32", force: bool = False,
           member: int | None = None, allow_reward_offset: bool = False) -> str:
  """Writes `workdir`'s export as a Hugging Face checkpoint in `out` (see the module docstring).

  All cheap checks (the export's metadata, OUT, the tokenizer spec) come before the parameters
  are loaded. Returns the absolute path of `out`."""
  import jax  # pylint: disable=g-import-not-at-top
  from rlhf_jax import models  # pylint: disable=g-import-not-at-top
  from rlhf_jax.parallel import distributed, mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from rlhf_jax.parallel import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from rlhf_jax.train import export as export_lib  # pylint: disable=g-import-not-at-top
  if dtype not in DTYPES:
    raise ExportError(f"--dtype={dtype!r}; valid: {list(DTYPES)}")
  distributed.initialize(None)  # RLHF_JAX_* variables (parallel/distributed.py)
  meta = export_lib.load_meta(workdir)  # FileNotFoundError naming the missing export.json
  out = os.path.abspath(out)
  _check_out(out, os.path.abspath(workdir), force)
  kind, extra = meta["kind"], meta.get("extra") or {}
  if kind not in export_lib.KINDS:
    raise ExportError(f"{workdir!r}: unknown export kind {kind!r}; valid: {list(export_lib.KINDS)}")
  ensemble_size = int(extra.get("ensemble_size") or 0)
  if kind == "scalar":
    member = _check_member(member, ensemble_size)
  elif member is not None:
    raise ExportError(f"--member is for reward-model ensembles; {workdir!r} exports a {kind!r} "
                      "model")
  tokenizer = _Tokenizer(meta["tokenizer"], max_positions=int(meta["model"]["max_positions"]))
  distributed.barrier("export_hf_checked")  # every process checked OUT before any writes to it
  mesh = mesh_lib.make_mesh({"fsdp": -1})
  exported = export_lib.load(workdir, mesh, sharding_lib.DEFAULT_RULES)
  cfg, params = exported.model_config, exported.params
  head = None
  if kind == "scalar":  # may refuse: before anything in OUT is touched
    head = _reward_head(cfg, params, extra, member=member, ensemble_size=ensemble_size,
                        allow_offset=allow_reward_offset)
  write = jax.process_index() == 0
  if write:
    _clear(out, force)
  ids = tokenizer.special_ids()
  if cfg.family == "qwen2" and tokenizer.kind != "hf" and write:
    logging.warning("model_type qwen2: transformers' AutoTokenizer replaces the exported %s "
                    "tokenizer by its byte-level Qwen2Tokenizer; load it with "
                    "transformers.PreTrainedTokenizerFast.from_pretrained(%r)", tokenizer.kind, out)
  if kind == "scalar" and ids["pad_token_id"] == ids["eos_token_id"] and write:
    logging.warning("the tokenizer pads with its EOS id %s: transformers' sequence classifier "
                    "scores the last token that is not that id, so rows ending in EOS are "
                    "scored one token early (rlhf_jax scores the last real token)",
                    ids["pad_token_id"])
  if kind == "lm":
    models.save_hf(out, cfg, params, dtype=dtype, extra_config=ids)
  else:
    _save_scalar(out, cfg, head, ids, dtype=dtype, write=write)
  if write:
    tokenizer.write(out)
    if kind == "lm":
      tokenizer.write_generation_config(out, ids)
  distributed.barrier("export_hf")
  return out


def _check_out(out: str, workdir: str, force: bool) -> None:
  if os.path.exists(out) and not os.path.isdir(out):
    raise ExportError(f"--hf={out!r} is a file, not a directory")
  if out == workdir or workdir.startswith(out.rstrip(os.sep) + os.sep):
    raise ExportError(f"--hf={out!r} would write over the run directory {workdir!r}; choose "
                      "another output directory")
  if os.path.isdir(out) and os.listdir(out) and not force:
    raise ExportError(f"output directory {out!r} is not empty ({len(os.listdir(out))} entries); "
                      "pass --force to replace the checkpoint files there, or choose another")


def _clear(out: str, force: bool) -> None:
  """With --force, removes the files an earlier export may have left in `out` (stale weights
  or tokenizer files would be read instead of, or beside, the new ones)."""
  if not (force and os.path.isdir(out)):
    return
  for name in os.listdir(out):
    if name in OWN_FILES or (name.startswith("model") and name.endswith(".safetensors")):
      os.remove(os.path.join(out, name))


def _check_member(member: int | None, ensemble_size: int) -> int | None:
  if not ensemble_size:
    if member not in (None, 0):
      raise ExportError(f"--member={member}: the reward model is a single model, not an ensemble")
    return None
  if member is None:
    if ensemble_size == 1:
      return 0
    raise ExportError(f"the reward model is an ensemble of {ensemble_size} members and a "
                      "Hugging Face sequence classifier holds one: pass --member=i with 0 <= i < "
                      f"{ensemble_size}")
  if not 0 <= member < ensemble_size:
    raise ExportError(f"--member={member} is outside the ensemble of {ensemble_size} members "
                      f"(valid: 0..{ensemble_size - 1})")
  return member


def _host(x) -> np.ndarray:
  """A full host copy of `x`, gathered across processes when needed (all processes call this)."""
  import jax  # pylint: disable=g-import-not-at-top
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


@dataclasses.dataclass
class _RewardHead:
  """One member's scalar model as a sequence classifier: backbone params + score row."""
  backbone: dict
  score_D: np.ndarray  # float64, normalisation folded in
  info: dict  # config.json's "rlhf_jax_reward"


def _reward_head(cfg, params, extra, *, member, ensemble_size, allow_offset) -> _RewardHead:
  """Member `member`'s head with the normalisation folded in; refuses a constant offset unless
  `allow_offset` (module docstring). Every process calls this (host copies are gathered)."""
  import jax  # pylint: disable=g-import-not-at-top
  if ensemble_size:
    params = jax.tree.map(lambda x: x[member], params)
  w_D = _host(params["head"]["w"]).astype(np.float64)
  b = float(_host(params["head"]["b"]))
  norm = extra.get("normalization")
  offset, what = b, "its bias b"
  if norm:
    mean, std = float(norm["mean"]), float(norm["std"])
    w_D, offset = w_D / std, (b - mean) / std
    what = f"(b - mean) / std = ({b:.6g} - {mean:.6g}) / {std:.6g}"
  if offset != 0.0 and not allow_offset:
    raise ExportError(
        f"the reward head adds a constant {offset:.6g} ({what}), and transformers' "
        f"{SEQUENCE_CLASSIFIERS[cfg.family]} score layer has no bias to hold it: pass "
        "--allow_reward_offset to export scores shifted by that constant (comparisons between "
        "responses are unchanged; the constant is recorded in config.json)")
  info = {"offset": offset, "ensemble_size": ensemble_size or None, "member": member,
          "normalization": norm or None, "note": "exported score = rlhf_jax reward - offset"}
  return _RewardHead(params["backbone"], w_D, info)


def _save_scalar(out, cfg, head: _RewardHead, ids, *, dtype, write) -> None:
  """A reward model as `<Family>ForSequenceClassification` (num_labels=1); module docstring."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rlhf_jax import models  # pylint: disable=g-import-not-at-top
  extra_config = dict(ids, architectures=[SEQUENCE_CLASSIFIERS[cfg.family]],
                      id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
                      tie_word_embeddings=cfg.tie_embeddings, rlhf_jax_reward=head.info)
  # save_hf writes the backbone (no lm_head: the tied flag only silences its check, config.json
  # keeps the real one via extra_config); the score tensor goes into a file of its own.
  models.save_hf(out, dataclasses.replace(cfg, tie_embeddings=True), head.backbone,
                 dtype=dtype, extra_config=extra_config)
  if write:
    _add_tensor(out, "score.weight", head.score_D[None, :].astype(jnp.dtype(dtype)))


def _add_tensor(out: str, name: str, value: np.ndarray) -> None:
  """Adds one tensor to the checkpoint in `out` through model.safetensors.index.json (a single
  model.safetensors is renamed into the index: transformers reads it before any index)."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  index_file = os.path.join(out, "model.safetensors.index.json")
  if os.path.exists(index_file):
    with open(index_file) as f:
      index = json.load(f)
  else:
    backbone = "model-backbone.safetensors"
    os.replace(os.path.join(out, "model.safetensors"), os.path.join(out, backbone))
    file = os.path.join(out, backbone)
    with safe_open(file, framework="numpy") as f:
      index = {"metadata": {}, "weight_map": {k: backbone for k in f.keys()}}
    with open(file, "rb") as f:  # tensor bytes: the file less its 8-byte length and JSON header
      header = struct.unpack("<Q", f.read(8))[0]
    index["metadata"]["total_size"] = os.path.getsize(file) - 8 - header
  save_file({name: np.ascontiguousarray(value)}, os.path.join(out, SCORE_FILE),
            metadata={"format": "pt"})
  index["weight_map"][name] = SCORE_FILE
  index["metadata"]["total_size"] = int(index["metadata"].get("total_size", 0)) + value.nbytes
  with open(index_file, "w") as f:
    json.dump(index, f, indent=2)


class _Tokenizer:
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


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
