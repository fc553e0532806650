"""The user's own data in every stage, from config alone (data.source = files / tfds): SFT on a
conversation JSONL and a remapped Parquet file, a reward model on HH-RLHF dialogue pairs (learns
beyond chance), DPO on message-list pairs with an implicit prompt, a Plackett-Luce reward model
on ranked JSON records, GRPO on prompt-only records scored by named reward functions (a built-in
and a user module) with the records' extra columns, and the HH-RLHF recipe on a fixture in the
real data's format through the TFDS builder."""

import gzip
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_jax import configlib, main as main_lib
from rlhf_jax.train import export

PHRASES = ["the cat sat on the mat", "a dog ran home", "birds sing at dawn", "rain falls softly"]


def _sum_chat(rng, n):
  rows = []
  for _ in range(n):
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    rows.append({"messages": [
        {"role": "user", "content": f"what is {a} plus {b}?"},
        {"role": "assistant", "content": f"it is {a + b}."},
        {"role": "user", "content": "and twice that?"},
        {"role": "assistant", "content": f"{2 * (a + b)}"}]})
  return rows


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def _user(spec, path, *overrides, prompt_len=24, completion_len=16):
  """`spec` on the files at `path`: a sentencepiece tokenizer trained on them, text lengths."""
  return [f"--config={spec}", "--config.data.source=files", f"--config.data.path={path}",
          f"--config.data.prompt_len={prompt_len}",
          f"--config.data.completion_len={completion_len}",
          "--config.data.allow_empty_completion=False", "--config.data.end_by_length=False",
          "--config.tokenizer.kind=sentencepiece", "--config.tokenizer.vocab_size=400",
          *overrides]


def _run(workdir, argv):
  assert main_lib.main([f"--workdir={workdir}", *argv]) == 0
  return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def _first_last(rows, key):
  values = [r[key] for r in rows if key in r]
  return values[0], values[-1]


@pytest.fixture(scope="module")
def chat_sft(tmp_path_factory):
  """SFT on a 3-turn conversation JSONL (default chat template, loss on the replies)."""
  root = tmp_path_factory.mktemp("user_data")
  path = _write_jsonl(root / "chat.jsonl", _sum_chat(random.Random(0), 256))
  rows = _run(root / "sft", _user("configs/sft.py:test", path, "--config.train.num_steps=30",
                                  "--config.train.eval_every=30", prompt_len=24,
                                  completion_len=24))
  return root, rows


def test_sft_on_conversations_learns_and_records_the_template(chat_sft):
  root, rows = chat_sft
  start, end = _first_last(rows, "eval/loss")
  assert end < start - 0.5, (start, end)
  spec = export.load_meta(str(root / "sft"))["tokenizer"]
  assert spec["kind"] == "sentencepiece" and "<|assistant|>" in spec["chat_template"]


def test_sft_on_remapped_parquet(tmp_path):
  rows = [{"question": f"say {p}", "answer": p} for p in PHRASES * 16]
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
  pq.write_table(pa.Table.from_pylist(rows[:16]), tmp_path / "test.parquet")
  got = _run(tmp_path / "run", _user("configs/sft.py:test", str(tmp_path),
                                     "--config.data.fields.prompt=question",
                                     "--config.data.fields.completion=answer"))
  start, end = _first_last(got, "eval/loss")
  assert end < start


def _hh(prompt, reply):
  return f"\n\nHuman: {prompt}\n\nAssistant: {reply}"


def _hh_pairs(rng, n):
  """Dialogue pairs whose chosen reply declines and whose rejected reply complies."""
  rows = []
  for _ in range(n):
    ask = rng.choice(PHRASES)
    history = _hh("hello", "hi there") if rng.random() < 0.5 else ""
    rows.append({"chosen": history + _hh(f"how do I break {ask}?", "sorry, I cannot help."),
                 "rejected": history + _hh(f"how do I break {ask}?", f"sure, smash {ask}.")})
  return rows


def test_reward_model_on_hh_dialogues_beats_chance(tmp_path):
  path = _write_jsonl(tmp_path / "pairs.jsonl", _hh_pairs(random.Random(1), 320))
  rows = _run(tmp_path / "rm", _user("configs/reward_model.py:test", path,
                                     "--config.train.num_steps=40", "--config.train.eval_every=40",
                                     "--config.data.heldout_fraction=0.2", prompt_len=32))
  _, end = _first_last(rows, "eval/accuracy")
  assert end >= 0.8, rows[-1]   # chance is 0.5; the replies differ in a learnable way


def test_dpo_on_message_pairs_with_an_implicit_prompt(chat_sft, tmp_path):
  root, _ = chat_sft
  rng = random.Random(2)
  pairs = []
  for row in _sum_chat(rng, 96):
    good = row["messages"]
    bad = good[:3] + [{"role": "assistant", "content": str(int(good[3]["content"]) + 1)}]
    pairs.append({"chosen": good, "rejected": bad})
  pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "pairs.parquet")
  rows = _run(tmp_path / "dpo", _user(
      "configs/dpo.py:test", str(tmp_path / "pairs.parquet"), f"--config.init.from_workdir={root}/sft",
      "--config.eval.exact_prompts=0", "--config.train.num_steps=20",
      "--config.train.eval_every=20", prompt_len=40, completion_len=8))
  start, end = _first_last(rows, "eval/margin")
  assert end > start and _first_last(rows, "eval/accuracy")[1] > 0.5, rows[-1]


def test_plackett_luce_reward_model_on_ranked_json(tmp_path):
  rng = random.Random(3)
  records = []
  for _ in range(160):
    p = rng.choice(PHRASES)
    completions = [f"{p} " + "!" * k for k in range(4)]   # rank by the number of "!"
    order = list(range(4))
    rng.shuffle(order)
    records.append({"prompt": f"cheer {p}", "completions": [completions[i] for i in order],
                    "ranks": [3 - i for i in order]})
  (tmp_path / "ranked.json").write_text(json.dumps(records))
  rows = _run(tmp_path / "pl", _user("configs/reward_model.py:plackett_luce,test",
                                     str(tmp_path / "ranked.json"), "--config.train.num_steps=30",
                                     "--config.train.eval_every=30", prompt_len=12,
                                     completion_len=16))
  start, end = _first_last(rows, "eval/pairwise_accuracy")
  assert end > start + 0.2 and end > 0.75, (start, end)   # chance is 0.5
  assert export.load_meta(str(tmp_path / "pl"))["kind"] == "scalar"


def test_grpo_on_prompts_with_named_reward_functions(chat_sft, tmp_path, monkeypatch):
  root, _ = chat_sft
  (tmp_path / "my_rewards.py").write_text(
      "def brevity(prompts, completions, answer):\n"
      "  assert len(answer) == len(completions)\n"
      "  return [-len(c) / 10 for c in completions]\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  rng = random.Random(4)
  prompts = []
  for _ in range(64):
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    prompts.append({"messages": [{"role": "user", "content": f"what is {a} plus {b}?"}],
                    "answer": str(a + b)})
  path = _write_jsonl(tmp_path / "prompts.jsonl", prompts)
  rows = _run(tmp_path / "grpo", _user(
      "configs/grpo.py:test", path, f"--config.init.from_workdir={root}/sft",
      "--config.reward.source=functions",
      "--config.reward.functions=math_answer,my_rewards:brevity*0.1", prompt_len=24,
      completion_len=16))
  train = [r for r in rows if "train/reward" in r]
  assert train
  for r in train:   # the reward is the weighted sum of the functions' scores
    assert r["train/reward"] == pytest.approx(
        r["train/reward/math_answer"] + 0.1 * r["train/reward/brevity"], abs=1e-5)
  assert any("eval/reward" in r for r in rows)


def test_rejection_sampling_on_chat_prompts_writes_chat_sft_records(chat_sft, tmp_path):
  root, _ = chat_sft
  rng = random.Random(6)
  prompts = [{"prompt": [{"role": "user", "content": f"what is {a} plus {b}?"}],
              "answer": str(a + b)} for a, b in ((rng.randint(0, 20), rng.randint(0, 20))
                                                 for _ in range(48))]
  path = _write_jsonl(tmp_path / "prompts.jsonl", prompts)
  _run(tmp_path / "rs", _user(
      "configs/best_of_n.py:rejection_sampling,test", path,
      f"--config.init.from_workdir={root}/sft", "--config.reward.source=functions",
      "--config.reward.functions=length*1.0", "--config.reward.function_params={'length': {'target': 1}}",
      prompt_len=24, completion_len=16))
  samples = [json.loads(line) for line in open(tmp_path / "rs" / "rejection_samples.jsonl")]
  assert samples and all(s["completion"][0]["role"] == "assistant" for s in samples)
  assert export.load_meta(str(tmp_path / "rs"))["kind"] == "lm"


def test_hh_rlhf_recipe_on_a_fixture_in_the_real_format(tmp_path):
  manual = tmp_path / "hh" / "harmless-base"
  manual.mkdir(parents=True)
  rng = random.Random(5)
  for split, n in (("train", 160), ("test", 32)):
    with gzip.open(manual / f"{split}.jsonl.gz", "wt") as f:
      for row in _hh_pairs(rng, n):
        f.write(json.dumps(row) + "\n")
  run = tmp_path / "run"
  code = main_lib.main(["--config=configs/hh_rlhf.py:test", f"--workdir={run}",
                        f"--config.data.manual_dir={tmp_path / 'hh'}"])
  assert code == 0
  for step, kind in (("sft", "lm"), ("reward_model", "scalar"), ("dpo", "lm"), ("ppo", "lm")):
    assert export.load_meta(str(run / step))["kind"] == kind
  ppo = [json.loads(line) for line in open(run / "ppo" / "metrics.jsonl")]
  assert any("eval/reward" in r and "eval/kl" in r for r in ppo)
  config = configlib.get("configs/hh_rlhf.py:test")
  assert config.sft.data.path == "hh_rlhf/harmless-base-skip-malformed"
