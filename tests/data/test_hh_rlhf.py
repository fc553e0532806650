"""Tests of the hh_rlhf TFDS builder on a small fixture written here (never the real data)."""

import gzip
import json

import pytest
import tensorflow_datasets as tfds

from rlhf_jax.data import hh_rlhf

H, A = "\n\nHuman:", "\n\nAssistant:"


def _dialogue(*turns):
  return "".join(f"{H if i % 2 == 0 else A} {t}" for i, t in enumerate(turns))


SINGLE = {"chosen": _dialogue("Hi?", "Hello there."), "rejected": _dialogue("Hi?", "Go away.")}
MULTI = {"chosen": _dialogue("Q1", "A1", "Q2", "A2", "Q3", "Good answer."),
         "rejected": _dialogue("Q1", "A1", "Q2", "A2", "Q3", "Bad answer.")}
IDENTICAL = {"chosen": _dialogue("Same?", "Same."), "rejected": _dialogue("Same?", "Same.")}
DIFFERENT_EARLIER = {"chosen": _dialogue("Q1", "A1", "Q2", "x"),
                     "rejected": _dialogue("Q1", "Other A1", "Q2", "y")}
LAST = {"chosen": _dialogue("Bye?", "Bye!"), "rejected": _dialogue("Bye?", "No.")}

TRAIN_LINES = [json.dumps(SINGLE), json.dumps(MULTI), json.dumps(IDENTICAL),
               json.dumps(DIFFERENT_EARLIER), '{"chosen": "broken', json.dumps(LAST)]
TEST_LINES = [json.dumps(MULTI), json.dumps({"chosen": _dialogue("Q", "A")}),
              json.dumps({"chosen": _dialogue("Q", " "), "rejected": _dialogue("Q", "r")})]


def _write(path, lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")


@pytest.fixture
def manual_dir(tmp_path):
  root = tmp_path / "manual"
  _write(root / "harmless-base" / "train.jsonl.gz", TRAIN_LINES)
  _write(root / "harmless-base" / "test.jsonl.gz", TEST_LINES)
  _write(root / "helpful-base" / "test.jsonl.gz", [json.dumps(SINGLE)])
  return root


def _prepare(name, tmp_path, manual_dir):
  builder = tfds.builder(f"hh_rlhf/{name}", data_dir=str(tmp_path / "tfds"))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _read(builder, split):
  ds = builder.as_data_source(split=split)
  rows = [{k: v.decode("utf-8") for k, v in ds[i].items()} for i in range(len(ds))]
  return sorted(rows, key=lambda r: int(r["id"].rsplit(":", 1)[1]))


def test_split_dialogue_is_lossless_and_uses_the_last_marker():
  text = MULTI["chosen"]
  prompt, response = hh_rlhf.split_dialogue(text)
  assert prompt + response == text
  assert prompt.endswith("Q3" + A) and response == " Good answer."
  assert prompt.count(A) == 3


@pytest.mark.parametrize("line, reason", [
    (b"\xff\xfe", "bad_encoding"),
    (b"{not json", "bad_json"),
    (b"   ", "bad_json"),
    (b"[1, 2]", "not_an_object"),
    (json.dumps({"chosen": _dialogue("Q", "A")}).encode(), "missing_key"),
    (json.dumps({"chosen": _dialogue("Q", "A"), "rejected": 3}).encode(), "not_a_string"),
    (json.dumps({"chosen": "\n\nHuman: hi", "rejected": _dialogue("Q", "A")}).encode(),
     "no_assistant_turn"),
    (json.dumps({"chosen": _dialogue("Q", "A"), "rejected": _dialogue("Q", "")}).encode(),
     "empty_response"),
    (json.dumps({"chosen": _dialogue("Q", "A", "more?"), "rejected": _dialogue("Q", "B")}).encode(),
     "ends_with_human_turn"),
])
def test_parse_line_names_each_malformed_reason(line, reason):
  with pytest.raises(hh_rlhf._Malformed) as info:
    hh_rlhf.parse_line(line)
  assert info.value.reason == reason


def test_parse_line_drops_and_keeps():
  assert hh_rlhf.parse_line(json.dumps(IDENTICAL).encode()) == ("identical_pair", None)
  assert hh_rlhf.parse_line(json.dumps(DIFFERENT_EARLIER).encode()) == ("prompt_mismatch", None)
  reason, record = hh_rlhf.parse_line(json.dumps(SINGLE).encode())
  assert reason is None
  assert record == {"prompt": H + " Hi?" + A, "chosen": " Hello there.", "rejected": " Go away."}


def test_builder_is_registered_with_subset_configs():
  assert tfds.builder_cls("hh_rlhf") is hh_rlhf.HhRlhf
  names = {c.name for c in hh_rlhf.HhRlhf.BUILDER_CONFIGS}
  for subset in hh_rlhf.SUBSETS:
    assert {subset, subset + "-skip-malformed"} <= names


def test_strict_config_names_file_and_line(tmp_path, manual_dir):
  with pytest.raises(hh_rlhf.MalformedRecordError,
                     match=r"harmless-base/train\.jsonl\.gz:5: malformed HH-RLHF line \(bad_json\)"):
    _prepare("harmless-base", tmp_path, manual_dir)


def test_skip_config_splits_and_counts(tmp_path, manual_dir):
  builder = _prepare("harmless-base-skip-malformed", tmp_path, manual_dir)
  train = _read(builder, "train")
  assert [r["id"] for r in train] == ["harmless-base/train:1", "harmless-base/train:2",
                                      "harmless-base/train:6"]
  assert train[0] == {"prompt": H + " Hi?" + A, "chosen": " Hello there.",
                      "rejected": " Go away.", "id": "harmless-base/train:1"}
  multi = train[1]
  assert multi["prompt"] == _dialogue("Q1", "A1", "Q2", "A2", "Q3") + A
  assert multi["prompt"] + multi["chosen"] == MULTI["chosen"]
  assert multi["prompt"] + multi["rejected"] == MULTI["rejected"]
  assert [r["id"] for r in _read(builder, "test")] == ["harmless-base/test:1"]

  counts = hh_rlhf.preparation_counts(builder)
  assert counts["missing_splits"] == [] and counts["skip_malformed"] is True
  train_counts, test_counts = counts["counts"]["train"], counts["counts"]["test"]
  assert (train_counts["lines"], train_counts["kept"]) == (6, 3)
  assert {k: v for k, v in train_counts["dropped"].items() if v} == {
      "identical_pair": 1, "prompt_mismatch": 1, "malformed/bad_json": 1}
  assert (test_counts["lines"], test_counts["kept"]) == (3, 1)
  assert {k: v for k, v in test_counts["dropped"].items() if v} == {
      "malformed/missing_key": 1, "malformed/empty_response": 1}
  assert train_counts["file"].endswith("harmless-base/train.jsonl.gz")

  # The counts survive a reload from disk (metadata.json beside the data).
  reloaded = tfds.builder("hh_rlhf/harmless-base-skip-malformed", data_dir=str(tmp_path / "tfds"))
  assert hh_rlhf.preparation_counts(reloaded) == counts


def test_missing_split_is_skipped_and_recorded(tmp_path, manual_dir):
  builder = _prepare("helpful-base", tmp_path, manual_dir)
  assert list(builder.info.splits) == ["test"]
  counts = hh_rlhf.preparation_counts(builder)
  assert counts["missing_splits"] == ["train"] and counts["counts"]["test"]["kept"] == 1


def test_manual_dir_without_the_subset_is_a_clear_error(tmp_path, manual_dir):
  with pytest.raises(FileNotFoundError, match=r"helpful-online/train\.jsonl\.gz"):
    _prepare("helpful-online", tmp_path, manual_dir)


def test_unreadable_files_are_named(tmp_path):
  pointer = tmp_path / "lfs.jsonl.gz"
  pointer.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
  with pytest.raises(hh_rlhf.MalformedRecordError, match="lfs.jsonl.gz: is a Git LFS pointer"):
    list(hh_rlhf.read_pairs(pointer))
  plain = tmp_path / "plain.jsonl.gz"
  plain.write_text(json.dumps(SINGLE) + "\n")
  with pytest.raises(hh_rlhf.MalformedRecordError, match="plain.jsonl.gz: unreadable gzip"):
    list(hh_rlhf.read_pairs(plain))
