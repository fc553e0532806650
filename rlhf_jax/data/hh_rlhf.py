"""TFDS builder `hh_rlhf`: Anthropic's helpful/harmless preference pairs as prompt + two responses.

Source format (Bai et al. 2022, github.com/anthropics/hh-rlhf): `<subset>/<split>.jsonl.gz`, one
JSON object per line with `chosen` and `rejected`, each a whole dialogue
"\\n\\nHuman: …\\n\\nAssistant: …\\n\\nHuman: …\\n\\nAssistant: <final response>".

Split of a dialogue d. With m = the last occurrence of "\\n\\nAssistant:" in d:

  prompt   = d[: m + len("\\n\\nAssistant:")]   every turn up to and including the last marker
  response = d[m + len("\\n\\nAssistant:") :]   the final response, leading space kept

so prompt + response == d exactly (nothing is stripped). A record is
{'prompt', 'chosen', 'rejected', 'id'} with id = "<subset>/<split>:<line number>".

Per line, in this order (reason names are the keys of the counts):
  malformed/<reason>   bad_encoding, bad_json, not_an_object, missing_key, not_a_string,
                       no_assistant_turn (no marker), empty_response (blank final response),
                       ends_with_human_turn (a "\\n\\nHuman:" after the last marker).
                       A MalformedRecordError naming file and line, unless the config has
                       `skip_malformed=True` (configs "<subset>-skip-malformed"): counted, skipped.
  identical_pair       chosen == rejected: no preference; counted and dropped.
  prompt_mismatch      the two prompts differ (earlier turns differ). Counted and dropped: the
                       rejected response answers another context, so keeping it with either prompt
                       would mislabel it. In the real data these come from responses that contain
                       turn markers themselves (5 of 2,312 harmless-base test pairs).
  kept                 everything else.
Counts per split ({'file', 'lines', 'kept', 'dropped': {reason: n}}) are logged, stored in the
dataset's metadata (metadata.json beside the data) and returned by `preparation_counts(builder)`.

Sources. If the download config's manual_dir exists and is non-empty it must hold
`<subset>/train.jsonl.gz` and/or `<subset>/test.jsonl.gz`; a missing split is skipped with a
warning and listed under 'missing_splits' (no split at all is an error). Otherwise the public
files are downloaded from GitHub. Note: the real data has blank final responses (4 chosen ones in
harmless-base test), so the strict configs stop there; use the "-skip-malformed" configs for it.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import zlib
from typing import Any, Iterator

import tensorflow_datasets as tfds
from etils import epath

_log = logging.getLogger(__name__)

SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
SPLITS = ("train", "test")
ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"
URL = "https://github.com/anthropics/hh-rlhf/raw/master/{subset}/{split}.jsonl.gz"
MALFORMED_REASONS = ("bad_encoding", "bad_json", "not_an_object", "missing_key", "not_a_string",
                     "no_assistant_turn", "empty_response", "ends_with_human_turn")
DROP_REASONS = ("identical_pair", "prompt_mismatch") + tuple(f"malformed/{r}"
                                                             for r in MALFORMED_REASONS)


class MalformedRecordError(ValueError):
  """A line of an HH-RLHF file that cannot be read as a preference pair (file and line named)."""


class _Malformed(Exception):

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason, self.detail = reason, detail


def split_dialogue(text: str, *, field: str = "dialogue") -> tuple[str, str]:
  """(prompt, response) of one dialogue; prompt + response == text. Raises _Malformed."""
  m = text.rfind(ASSISTANT)
  if m < 0:
    raise _Malformed("no_assistant_turn", f"{field} has no {ASSISTANT!r} marker")
  cut = m + len(ASSISTANT)
  prompt, response = text[:cut], text[cut:]
  if HUMAN in response:
    raise _Malformed("ends_with_human_turn",
                     f"{field} has a {HUMAN!r} turn after its last Assistant marker")
  if not response.strip():
    raise _Malformed("empty_response", f"{field} has an empty final response")
  return prompt, response


def parse_line(raw: bytes) -> tuple[str | None, dict[str, str] | None]:
  """(drop_reason, record) for one raw line: (None, record) when kept, (reason, None) when dropped.

  Raises _Malformed for a malformed line.
  """
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise _Malformed("bad_encoding", f"not UTF-8 ({e})") from None
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    what = "blank line" if not line.strip() else f"invalid JSON ({e})"
    raise _Malformed("bad_json", what) from None
  if not isinstance(obj, dict):
    raise _Malformed("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
  sides = {}
  for key in ("chosen", "rejected"):
    if key not in obj:
      raise _Malformed("missing_key", f"no {key!r} key (keys: {sorted(obj)})")
    if not isinstance(obj[key], str):
      raise _Malformed("not_a_string", f"{key!r} is a {type(obj[key]).__name__}, not a string")
    sides[key] = split_dialogue(obj[key], field=repr(key))
  if obj["chosen"] == obj["rejected"]:
    return "identical_pair", None
  (prompt, chosen), (prompt_r, rejected) = sides["chosen"], sides["rejected"]
  if prompt != prompt_r:
    return "prompt_mismatch", None
  return None, {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def new_counts(path: str) -> dict[str, Any]:
  return {"file": path, "lines": 0, "kept": 0, "dropped": {r: 0 for r in DROP_REASONS}}


def read_pairs(path: os.PathLike | str, *, skip_malformed: bool = False,
               counts: dict[str, Any] | None = None) -> Iterator[tuple[int, dict[str, str]]]:
  """Yields (line number, {'prompt', 'chosen', 'rejected'}) for the kept pairs of a .jsonl.gz file.

  `counts` (see `new_counts`) is updated as lines are read. A malformed line raises
  MalformedRecordError("<path>:<line>: …") unless `skip_malformed`.
  """
  path = epath.Path(path)
  counts = counts if counts is not None else new_counts(os.fspath(path))
  line_no = 0
  with path.open("rb") as f:
    head = f.read(64)
    f.seek(0)
    if head.startswith(b"version https://git-lfs"):
      raise MalformedRecordError(f"{path}: is a Git LFS pointer, not the data; download the file "
                                 "itself (github.com/…/raw/… or git lfs pull)")
    try:
      with gzip.GzipFile(fileobj=f) as lines:
        for line_no, raw in enumerate(lines, start=1):
          counts["lines"] += 1
          try:
            reason, record = parse_line(raw)
          except _Malformed as e:
            if not skip_malformed:
              raise MalformedRecordError(
                  f"{path}:{line_no}: malformed HH-RLHF line ({e.reason}): {e.detail}. Use a "
                  "'-skip-malformed' config (skip_malformed=True) to count and skip such lines"
              ) from None
            reason, record = f"malformed/{e.reason}", None
            _log.warning("hh_rlhf: skipping %s:%d (%s): %s", path, line_no, e.reason, e.detail)
          if reason is not None:
            counts["dropped"][reason] += 1
            continue
          counts["kept"] += 1
          yield line_no, record
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
      raise MalformedRecordError(
          f"{path}: unreadable gzip data after line {line_no} ({type(e).__name__}: {e})") from e


@dataclasses.dataclass(eq=False)
class HhRlhfConfig(tfds.core.BuilderConfig):
  """One HH-RLHF subset; `skip_malformed` counts and skips malformed lines instead of raising."""
  subset: str = "harmless-base"
  skip_malformed: bool = False


def _configs() -> list[HhRlhfConfig]:
  out = []
  for skip in (False, True):
    for subset in SUBSETS:
      name = subset + ("-skip-malformed" if skip else "")
      how = "counted and skipped" if skip else "an error"
      out.append(HhRlhfConfig(name=name, subset=subset, skip_malformed=skip,
                              description=f"HH-RLHF {subset}; malformed lines are {how}."))
  return out


class HhRlhf(tfds.core.GeneratorBasedBuilder):
  """Anthropic HH-RLHF pairs split into a shared prompt and the chosen/rejected final responses."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Prompt/response split; drops counted in metadata."}
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Optional. Put <subset>/train.jsonl.gz and/or <subset>/test.jsonl.gz from "
      "github.com/anthropics/hh-rlhf under the manual dir; without a manual dir the files are "
      "downloaded.")

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "prompt": tfds.features.Text(), "chosen": tfds.features.Text(),
            "rejected": tfds.features.Text(), "id": tfds.features.Text()}),
        homepage="https://github.com/anthropics/hh-rlhf",
        metadata=tfds.core.MetadataDict(),
        citation="Bai et al. 2022, Training a Helpful and Harmless Assistant with RLHF, "
                 "arXiv:2204.05862")

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    try:
      manual_dir = dl_manager.manual_dir  # raises when absent or empty
    except (AssertionError, ValueError):
      manual_dir = None
    meta = self.info.metadata
    meta.update({"subset": cfg.subset, "skip_malformed": cfg.skip_malformed, "counts": {},
                 "missing_splits": []})
    if manual_dir is not None:
      meta["source"] = os.fspath(manual_dir)
      paths = {s: manual_dir / cfg.subset / f"{s}.jsonl.gz" for s in SPLITS}
      found = {s: p for s, p in paths.items() if p.exists()}
      if not found:
        raise FileNotFoundError(
            f"hh_rlhf/{cfg.name}: manual dir {manual_dir} has none of "
            f"{[os.fspath(p) for p in paths.values()]}; put the subset's files there, or use no "
            "manual dir to download them")
      for split in sorted(set(paths) - set(found)):
        _log.warning("hh_rlhf/%s: %s is missing; split %r is skipped", cfg.name,
                        paths[split], split)
        meta["missing_splits"].append(split)
    else:
      urls = {s: URL.format(subset=cfg.subset, split=s) for s in SPLITS}
      meta["source"] = "download"
      found = dl_manager.download(urls)
    return {split: self._generate_examples(path, split) for split, path in found.items()}

  def _generate_examples(self, path, split: str):
    cfg = self.builder_config
    counts = new_counts(os.fspath(path))
    self.info.metadata["counts"][split] = counts  # filled in as lines are read
    for line_no, record in read_pairs(path, skip_malformed=cfg.skip_malformed, counts=counts):
      yield line_no, {**record, "id": f"{cfg.subset}/{split}:{line_no}"}
    _log.info("hh_rlhf/%s %s: %d lines, %d kept, dropped %s", cfg.name, split,
                 counts["lines"], counts["kept"], {k: v for k, v in counts["dropped"].items() if v})


def preparation_counts(builder: tfds.core.DatasetBuilder) -> dict[str, Any]:
  """What preparing `builder` read, kept and dropped (from its metadata; works after a reload):

  {'subset', 'skip_malformed', 'source', 'missing_splits',
   'counts': {split: {'file', 'lines', 'kept', 'dropped': {reason: n}}}}
  """
  meta = builder.info.metadata
  if meta is None or "counts" not in meta:
    raise ValueError(f"{builder.info.full_name} at {builder.data_dir} has no hh_rlhf counts; "
                     "was it prepared by rlhf_jax.data.hh_rlhf?")
  return json.loads(json.dumps(dict(meta)))
