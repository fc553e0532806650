"""The tokenizer stored beside Hugging Face weights, behind rlhf_jax's small tokenizer surface
(`data/tokenizer.py`): encode / decode / pad_id / bos_id / eos_id / vocab_size.

A sentencepiece `tokenizer.model` is used as `SentencePieceTokenizer` when its special ids are
rlhf_jax's fixed ones (pad 0, bos 1, eos 2); otherwise `tokenizer.json` is read with the
`tokenizers` package. Special ids come from tokenizer_config.json / special_tokens_map.json (token
strings), then config.json / generation_config.json (ids). A checkpoint without a pad token pads
with EOS, one without a BOS token (GPT-2 style end-of-text, Qwen2) uses EOS as BOS; masks, not pad
ids, mark padding everywhere in rlhf_jax, so this only fills slots.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

from rlhf_jax.data.tokenizer import SentencePieceTokenizer


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


class HFTokenizer:
  """A `tokenizers.Tokenizer` (tokenizer.json) with explicit special ids.

  encode(text) adds no special tokens; decode(ids) drops pad/bos/eos ids.
  """

  def __init__(self, tokenizer: Any, *, pad_id: int, bos_id: int, eos_id: int):
    self._tok = tokenizer
    self.pad_id, self.bos_id, self.eos_id = int(pad_id), int(bos_id), int(eos_id)
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_dir(cls, path: str) -> "HFTokenizer":
    import tokenizers  # only needed for tokenizer.json checkpoints

    tok = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    ids = _special_ids(path, tok)
    if ids["eos"] is None:
      raise ValueError(f"{path}: no EOS token found in tokenizer_config.json, "
                       "special_tokens_map.json, config.json or generation_config.json")
    eos = ids["eos"]
    return cls(tok, pad_id=eos if ids["pad"] is None else ids["pad"],
               bos_id=eos if ids["bos"] is None else ids["bos"], eos_id=eos)

  def encode(self, text: str) -> list[int]:
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    encoding = self._tok.encode(text, add_special_tokens=False)
    return list(encoding.ids), [tuple(o) for o in encoding.offsets]

  def id_to_token(self, i: int) -> str:
    return self._tok.id_to_token(int(i))

  def decode(self, ids: Sequence[int]) -> str:
    special = {self.pad_id, self.bos_id, self.eos_id}
    return self._tok.decode([int(i) for i in ids if int(i) not in special],
                            skip_special_tokens=False)


def _special_ids(path: str, tok) -> dict[str, Optional[int]]:
  """{'pad'|'bos'|'eos': id or None} from the files transformers writes beside a tokenizer."""
  tok_cfg = {**_read_json(os.path.join(path, "special_tokens_map.json")),
             **_read_json(os.path.join(path, "tokenizer_config.json"))}
  model_cfgs = [_read_json(os.path.join(path, "generation_config.json")),
                _read_json(os.path.join(path, "config.json"))]
  out: dict[str, Optional[int]] = {}
  for kind in ("pad", "bos", "eos"):
    token = tok_cfg.get(f"{kind}_token")
    if isinstance(token, dict):
      token = token.get("content")
    found = tok.token_to_id(token) if isinstance(token, str) else None
    for cfg in model_cfgs:
      if found is None:
        value = cfg.get(f"{kind}_token_id")
        found = value[0] if isinstance(value, list) and value else value
    out[kind] = None if found is None else int(found)
  return out


def load_hf_tokenizer(path: str):
  """The tokenizer in a Hugging Face checkpoint directory (see the module docstring)."""
  sp_file, json_file = (os.path.join(path, "tokenizer.model"),
                        os.path.join(path, "tokenizer.json"))
  sp_error = None
  if os.path.exists(sp_file):
    try:
      return SentencePieceTokenizer.load(sp_file)
    except ValueError as e:  # special ids differ from rlhf_jax's fixed ones
      sp_error = e
  if os.path.exists(json_file):
    return HFTokenizer.from_dir(path)
  if sp_error is not None:
    raise ValueError(f"{sp_file}: {sp_error}; and there is no tokenizer.json beside it") from None
  raise FileNotFoundError(f"no tokenizer.model or tokenizer.json in {path!r}")
