"""Layout of [prompt | completion] rows, over-long policies, per-process sharding, exact resume."""

import numpy as np
import pytest

from rlhf_jax.data import pipeline, tokenizer as tokenizer_lib
from rlhf_jax.tasks.arithmetic import ArithmeticTask


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.train_sentencepiece(ArithmeticTask(max_operand=30).texts(), vocab_size=300)


def test_layout_left_pads_prompt_right_pads_completion(tok):
  arrays, stats = pipeline.prepare_sft([{"prompt": "12+30=", "completion": "42"}],
                                       pipeline.Layout(tok, 10, 5))
  tokens, mask, cmask = arrays["tokens"][0], arrays["mask"][0], arrays["completion_mask"][0]
  p = [tok.bos_id] + tok.encode("12+30=")
  c = tok.encode("42") + [tok.eos_id]
  np.testing.assert_array_equal(tokens[10 - len(p):10], p)
  np.testing.assert_array_equal(tokens[10:10 + len(c)], c)
  assert tokens[:10 - len(p)].tolist() == [0] * (10 - len(p)) and tokens[10 + len(c):].sum() == 0
  np.testing.assert_array_equal(mask, (np.arange(15) >= 10 - len(p)) & (np.arange(15) < 10 + len(c)))
  np.testing.assert_array_equal(cmask, (np.arange(15) >= 10) & (np.arange(15) < 10 + len(c)))
  assert stats.as_dict() == {"kept": 1}


def test_overlong_prompt_policies_are_never_silent(tok):
  records = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "11+11+11+11=", "completion": "44"}]
  with pytest.raises(ValueError, match=r"sft record 1: prompt has \d+ tokens, more than .*prompt_len=6"):
    pipeline.prepare_sft(records, pipeline.Layout(tok, 6, 4, overlong="error"))
  arrays, stats = pipeline.prepare_sft(records, pipeline.Layout(tok, 6, 4, overlong="drop"))
  assert len(arrays["tokens"]) == 1 and stats.as_dict() == {"kept": 1,
                                                            "dropped/overlong_prompt": 1}
  arrays, stats = pipeline.prepare_sft(records, pipeline.Layout(tok, 6, 4, overlong="truncate"))
  assert stats.as_dict() == {"kept": 2, "truncated/prompt": 1}
  # Left truncation keeps the end of the prompt (the question's last tokens).
  assert tok.decode(arrays["tokens"][1][:6]) == tok.decode(tok.encode("11+11+11+11=")[-6:])


def test_bad_records_are_named(tok):
  with pytest.raises(ValueError, match="sft record 1: empty completion"):
    pipeline.prepare_sft([{"prompt": "1+1=", "completion": "2"}, {"prompt": "1+2=", "completion": ""}],
                         pipeline.Layout(tok, 8, 4))
  with pytest.raises(ValueError, match="sft record 0: field 'completion' missing"):
    pipeline.prepare_sft([{"prompt": "1+1="}], pipeline.Layout(tok, 8, 4))
  with pytest.raises(ValueError, match="unknown overlong policy 'cut'"):
    pipeline.Layout(tok, 8, 4, overlong="cut")


def test_preference_pairs_and_end_by_length():
  tok = tokenizer_lib.CharTokenizer("abcd")
  records = [{"prompt": "ab", "chosen": "abcd", "rejected": "", "chosen_gold": 2.0,
              "rejected_gold": -1.0},
             {"prompt": "ab", "chosen": "cc", "rejected": "cc"},             # identical: dropped
             {"prompt": "ab", "chosen": "abcdab", "rejected": "a"}]          # 6 > 4: dropped
  layout = pipeline.Layout(tok, 3, 4, overlong="drop", allow_empty=True, end_by_length=True)
  arrays, stats = pipeline.prepare_preference(records, layout)
  assert stats.as_dict() == {"kept": 1, "dropped/identical_pair": 1,
                             "dropped/overlong_completion": 1}
  # "abcd" fills completion_len=4 exactly: it ended by length, no EOS; "" is EOS alone.
  np.testing.assert_array_equal(arrays["chosen_tokens"][0], [1, 3, 4, 3, 4, 5, 6])
  np.testing.assert_array_equal(arrays["rejected_tokens"][0], [1, 3, 4, 2, 0, 0, 0])
  np.testing.assert_array_equal(arrays["rejected_completion_mask"][0], [0, 0, 0, 1, 0, 0, 0])
  assert arrays["chosen_gold"][0] == 2.0 and arrays["rejected_gold"][0] == -1.0
  with pytest.raises(ValueError, match=r"preference record 0 \(rejected\): empty completion"):
    pipeline.prepare_preference(records[:1], pipeline.Layout(tok, 3, 4, end_by_length=True))


def _ids_dataset(n):
  return {"id": np.arange(n, dtype=np.int32), "x": np.arange(n, dtype=np.int32) * 10}


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_cover_each_epoch_exactly_once(process_count):
  n, global_batch = 48, 8
  steps_per_epoch = n // global_batch
  iters = [iter(pipeline.train_dataset(_ids_dataset(n), global_batch=global_batch, seed=3,
                                       process_index=p, process_count=process_count))
           for p in range(process_count)]
  epochs = []
  for _ in range(2):
    seen = []
    for _ in range(steps_per_epoch):
      for it in iters:
        batch = next(it)
        assert batch["id"].shape == (global_batch // process_count,)
        np.testing.assert_array_equal(batch["x"], batch["id"] * 10)
        seen.extend(batch["id"].tolist())
    assert sorted(seen) == list(range(n))  # each example exactly once per epoch
    epochs.append(seen)
  assert epochs[0] != epochs[1]  # reshuffled every epoch


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_batches_stack_into_the_single_process_batch(process_count):
  """loop.to_global stacks the processes' rows in process order: that must give back exactly
  the 1-process global batch (rollout sampling noise is drawn per row position)."""
  data = _ids_dataset(44)
  single = iter(pipeline.train_dataset(data, global_batch=8, seed=5))
  shards = [iter(pipeline.train_dataset(data, global_batch=8, seed=5, process_index=p,
                                        process_count=process_count))
            for p in range(process_count)]
  for _ in range(12):  # crosses epoch boundaries
    np.testing.assert_array_equal(np.concatenate([next(it)["id"] for it in shards]),
                                  next(single)["id"])
  want = [b["id"] for b in pipeline.eval_batches(data, global_batch=8)]
  got = [np.concatenate(parts) for parts in zip(*[
      [b["id"] for b in pipeline.eval_batches(data, global_batch=8, process_index=p,
                                              process_count=process_count)]
      for p in range(process_count)])]
  assert len(got) == len(want) == 6
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)


def test_restored_iterator_yields_exactly_the_next_batch():
  ds = pipeline.train_dataset(_ids_dataset(30), global_batch=4, seed=1)
  it = iter(ds)
  for _ in range(11):  # crosses an epoch boundary
    next(it)
  state = it.get_state()
  want = [next(it)["id"].tolist() for _ in range(3)]
  fresh = iter(pipeline.train_dataset(_ids_dataset(30), global_batch=4, seed=1))
  fresh.set_state(state)
  assert [next(fresh)["id"].tolist() for _ in range(3)] == want


def test_eval_batches_cover_once_and_pad_with_zero_rows():
  data = {"id": np.arange(1, 12, dtype=np.int32), "mask": np.ones((11, 3), np.int32)}
  seen, padded = [], 0
  for p in range(2):
    for batch in pipeline.eval_batches(data, global_batch=4, process_index=p, process_count=2):
      assert batch["id"].shape == (2,) and batch["mask"].shape == (2, 3)
      for i, m in zip(batch["id"], batch["mask"]):
        if m.sum() == 0:
          padded += 1
          assert i == 0
        else:
          seen.append(int(i))
  assert sorted(seen) == list(range(1, 12)) and padded == 1


def test_global_batch_must_divide_over_processes():
  with pytest.raises(ValueError, match="global batch 6 is not divisible by 4 processes"):
    pipeline.train_dataset(_ids_dataset(8), global_batch=6, seed=0, process_index=0,
                           process_count=4)
