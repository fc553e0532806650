"""The Plackett-Luce reward model from config: ranked records, their layout, the ranked step and
a real `reward_model.py:plackett_luce,test` run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import configlib, losses, main, models, validate
from rlhf_jax.data import builders, pipeline, ranked, tokenizer as tokenizer_lib
from rlhf_jax.parallel import mesh as mesh_lib
from rlhf_jax.rewards import learned
from rlhf_jax.stages import reward_model as rm_stage
from rlhf_jax.train import export, loop, metrics as metrics_lib, optimizer
from rlhf_jax.train import reward_model as rm_steps, state as state_lib

TOK = tokenizer_lib.CharTokenizer("abcd")  # pad 0, bos 1, eos 2, a..d = 3..6


def _completion(arrays, n, k):
  """The completion token ids of example n, slot k (EOS included)."""
  cmask = arrays["completion_mask"][n, k].astype(bool)
  return arrays["tokens"][n, k][cmask].tolist()


def test_prepare_ranked_orders_best_first_and_pads_k():
  layout = pipeline.Layout(TOK, 4, 4)
  records = [{"prompt": "ab", "completions": ["c", "dd", "a"], "ranks": [1, 2, 0],
              "golds": [0.5, -1.0, 2.0]},
             {"prompt": "b", "completions": ["a", "bc"], "ranks": [1, 0]}]
  arrays, stats = ranked.prepare_ranked(records, layout, name="ranked")
  assert stats.as_dict() == {"kept": 2}
  assert arrays["tokens"].shape == (2, 3, 8) and arrays["completion_valid"].shape == (2, 3)
  # Best (rank 0) first: "a" (rank 0), "c" (rank 1), "dd" (rank 2); then "bc", "a", padding.
  assert [_completion(arrays, 0, k) for k in range(3)] == [[3, 2], [5, 2], [6, 6, 2]]
  assert [_completion(arrays, 1, k) for k in range(2)] == [[4, 5, 2], [3, 2]]
  np.testing.assert_array_equal(arrays["completion_valid"], [[1, 1, 1], [1, 1, 0]])
  np.testing.assert_allclose(arrays["gold"][0], [2.0, 0.5, -1.0])
  assert np.isnan(arrays["gold"][1]).all()
  # Each slot is the layout's own [prompt | completion] row; the padded slot is empty.
  p = layout.prompt_ids("ab", "x", pipeline.LayoutStats())
  row = layout.row(p, layout.completion_ids("c", "x", pipeline.LayoutStats()))
  for key in ("tokens", "mask", "completion_mask"):
    np.testing.assert_array_equal(arrays[key][0, 1], row[key])
    assert not arrays[key][1, 2].any()
  assert ranked.prepare_ranked(records, layout, max_completions=5)[0]["tokens"].shape[1] == 5


def test_prepare_ranked_errors_and_drops_are_named_and_counted():
  layout = pipeline.Layout(TOK, 4, 3, overlong="drop")
  ok = {"prompt": "a", "completions": ["b", "c"], "ranks": [0, 1]}
  tie = {"prompt": "a", "completions": ["b", "c", "d"], "ranks": [1, 0, 1]}
  with pytest.raises(ValueError, match=r"ranked/train record 1: completions 0 and 2 are tied "
                                       r"at rank 1.*ties are not allowed"):
    ranked.prepare_ranked([ok, tie], layout, name="ranked/train")
  with pytest.raises(ValueError, match=r"^data.jsonl:7 \(ranked record 1\): .*tied"):
    ranked.prepare_ranked([ok, tie], layout, where=["data.jsonl:3", "data.jsonl:7"])
  with pytest.raises(ValueError, match="record 0: 1 completion"):
    ranked.prepare_ranked([{"prompt": "a", "completions": ["b"], "ranks": [0]}], layout)
  with pytest.raises(ValueError, match=r"record 0: field 'ranks' must be a list of 2 integers"):
    ranked.prepare_ranked([{"prompt": "a", "completions": ["b", "c"], "ranks": [0]}], layout)
  # "abcd" + EOS is 5 tokens > completion_len 3: the whole ranking is dropped, counted once.
  long = {"prompt": "a", "completions": ["b", "abcd", "dcba"], "ranks": [0, 1, 2]}
  dup = {"prompt": "a", "completions": ["b", "b"], "ranks": [0, 1]}
  arrays, stats = ranked.prepare_ranked([ok, long, dup], layout)
  assert len(arrays["tokens"]) == 1
  assert stats.as_dict() == {"kept": 1, "dropped/duplicate_completion": 1,
                             "dropped/overlong_completion": 1}
  with pytest.raises(ValueError, match=r"ranked record 1 \(completion 1, rank 1\): completion "
                                       r"has 5 tokens"):
    ranked.prepare_ranked([ok, long], pipeline.Layout(TOK, 4, 3, overlong="error"))


def test_enumerable_ranked_records_through_the_tfds_builder(tmp_path):
  params = {"num_ranked": (6, 3), "num_completions": 4}
  source = builders.load_split("enumerable", "ranked", "train", data_dir=str(tmp_path),
                               task_params=params)
  records = [builders.decode_record(source[i]) for i in range(len(source))]
  assert len(records) == 6
  for r in records:
    assert isinstance(r["prompt"], str) and len(r["completions"]) == 4
    assert all(isinstance(c, str) for c in r["completions"]) and len(set(r["completions"])) == 4
    assert sorted(r["ranks"]) == [0, 1, 2, 3] and all(isinstance(k, int) for k in r["ranks"])
    gold_by_rank = [r["golds"][r["ranks"].index(k)] for k in range(4)]
    assert all(a > b for a, b in zip(gold_by_rank, gold_by_rank[1:])), r  # strict, best first
  with pytest.raises(ValueError, match=r"task 'arithmetic' makes no 'ranked' records"):
    builders.load_split("arithmetic", "ranked", "train", data_dir=str(tmp_path))


def test_ranked_step_loss_is_plackett_luce_of_the_scores():
  """The step's loss is the members' mean of plackett_luce_loss on scores computed here, row by
  row; the padded slot changes nothing; top-1 and pairwise accuracy count as stated."""
  config = configlib.get("configs/reward_model.py:plackett_luce,test")
  mesh = mesh_lib.make_mesh({"data": 2}, jax.devices()[:2])
  rules = tuple(tuple(r) for r in config.logical_axis_rules)
  cfg = models.get_model_config("tiny", vocab_size=TOK.vocab_size)
  tx = optimizer.make_optimizer(config.optimizer, 10)
  graphdef, state, shardings = state_lib.init_ensemble_state(
      lambda r: models.ScalarModel(cfg, rngs=r), tx, mesh, rules, seeds=[0, 1])
  records = [{"prompt": p, "completions": cs, "ranks": list(range(len(cs)))} for p, cs in [
      ("ab", ["c", "dd", "a"]), ("ba", ["", "bcd"]), ("cc", ["ab", "b", "dcb"]),
      ("d", ["a", "aa", "aaa"])]]
  arrays, _ = ranked.prepare_ranked(records, pipeline.Layout(TOK, 4, 4, allow_empty=True))
  batch = rm_stage.with_index(arrays)
  step = loop.jit_train_step(rm_steps.make_ranked_train_step(
      graphdef, tx, loss_name="plackett_luce", ensemble_size=2, data_fraction=1.0, seed=0),
      shardings, batch, mesh)
  params = jax.device_get(state.params)
  _, metrics = step(jax.tree.map(jnp.copy, state), loop.to_global(batch, mesh),
                    jax.random.key(0))

  # Scores slot-major (k, b), an order the step does not use, then back to [E, B, K].
  b, k, s = arrays["tokens"].shape
  flat = lambda x: jnp.asarray(x.transpose(1, 0, 2).reshape(k * b, s))
  score = jax.jit(lambda p, t, m: learned.member_scores(graphdef, p, t, m))
  scores_ExBxK = np.stack([np.asarray(score(
      jax.tree.map(lambda x: x[e], params), flat(arrays["tokens"]),
      flat(arrays["mask"]))).reshape(k, b).T for e in range(2)])
  valid_BxK = arrays["completion_valid"]
  expected = np.mean([losses.plackett_luce_loss(scores_ExBxK[e], valid_BxK).mean()
                      for e in range(2)])
  np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
  # Example 1 has 2 completions and a padded slot: the loss of its 2 valid scores alone.
  np.testing.assert_allclose(losses.plackett_luce_loss(scores_ExBxK[0, 1:2], valid_BxK[1:2]),
                             losses.plackett_luce_loss(scores_ExBxK[0, 1:2, :2]), rtol=1e-6)
  top1 = [(r[0] > r[1:n]).all() for e in range(2) for r, n in zip(scores_ExBxK[e], [3, 2, 3, 3])]
  pairs = [r[i] > r[j] for e in range(2) for r, n in zip(scores_ExBxK[e], [3, 2, 3, 3])
           for i in range(n) for j in range(i + 1, n)]
  np.testing.assert_allclose(metrics["top1_accuracy"], np.mean(top1), rtol=1e-6)
  np.testing.assert_allclose(metrics["pairwise_accuracy"], np.mean(pairs), rtol=1e-6)


def test_plackett_luce_validates_from_the_config_switch():
  validate.validate(configlib.get("configs/reward_model.py", [("loss.name", "plackett_luce")]))
  config = configlib.get("configs/reward_model.py:plackett_luce,test", [("loss.margin", "0.5")])
  validate.validate(config)
  with pytest.raises(ValueError, match=r"loss.margin=0.5 applies to the pairwise losses "
                                       r"\['bradley_terry'\], not to loss.name='plackett_luce'"):
    rm_stage.check_ranked_options(config)


def _evals(workdir):
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return [r for r in rows if any(k.startswith("eval/") for k in r)]


def test_plackett_luce_stage_learns_rankings_and_exports(tmp_path):
  workdir = str(tmp_path / "rm")
  rc = main.main(["--config=configs/reward_model.py:plackett_luce,test", f"--workdir={workdir}",
                  "--config.train.num_steps=60", "--config.train.eval_every=60"])
  assert rc == 0
  first, last = _evals(workdir)[0], _evals(workdir)[-1]
  assert first["step"] == 0 and last["step"] == 60
  # Gains over the measured start, not levels (top-1 0.33 -> 0.58, pairwise 0.51 -> 0.73 on
  # the development CPU; chance is 0.25 and 0.5 with K = 4).
  assert last["eval/top1_accuracy"] > first["eval/top1_accuracy"] + 0.1, (first, last)
  assert last["eval/pairwise_accuracy"] > first["eval/pairwise_accuracy"] + 0.1, (first, last)
  assert last["eval/kendall_tau"] > first["eval/kendall_tau"] and \
      last["eval/loss"] < first["eval/loss"]
  meta = export.load_meta(workdir)
  assert meta["kind"] == "scalar" and meta["extra"]["ensemble_size"] == 1
  assert meta["extra"]["normalization"]["std"] > 0
