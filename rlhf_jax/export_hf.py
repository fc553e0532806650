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
import struct
import sys

import numpy as np

from rlhf_jax.models.hf.tokenizer_export import (TOKENIZER_FILES, ExportError,
                                                 ExportTokenizer)

DTYPES = ("float32", "bfloat16", "float16")
# What --force replaces in OUT (anything else there is left alone).
OWN_FILES = TOKENIZER_FILES + ("config.json", "generation_config.json",
                               "model.safetensors.index.json")
SEQUENCE_CLASSIFIERS = {"llama": "LlamaForSequenceClassification",
                        "qwen2": "Qwen2ForSequenceClassification",
                        "gemma": "GemmaForSequenceClassification",
                        "gpt2": "GPT2ForSequenceClassification"}
SCORE_FILE = "model-score.safetensors"


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
  tokenizer = ExportTokenizer(meta["tokenizer"], max_positions=int(meta["model"]["max_positions"]))
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


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
