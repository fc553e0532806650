"""Exact tables on the enumerable world's held-out prompts: π of a policy, gold, proxy scores.

Everything an over-optimisation curve needs is a [P, N] table over the N completions of each of
P held-out prompts (tasks/enumerable.py): the reference log-probs log π_ref (the SFT model's own
exact distribution, renormalised over the enumeration exactly as train/enumerable_eval.py does),
the gold reward (closed form), and a proxy's score of every completion. Expectations and KLs
are then exact sums (tasks/exact.py); no sampling anywhere.

Policy distributions use the prefix trie instead of scoring all N rows: every completion y is
read off ONE row [x | z] where z = the first L−1 letters of y padded with the first letter, since
a causal model's next-token distributions at z's positions 0..L−1 are p(· | x, y_<t) for every
token t of y (letters, then EOS or the L-th letter). That is k^(L−1) rows per prompt (1024 by
default) instead of N = 5461; `tests/experiments` checks it equals EnumerableEvaluator's.
Reward models need the scalar at each completion's own last token, so they score all N rows.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from rlhf_jax.data import pipeline
from rlhf_jax.rewards import learned
from rlhf_jax.stages import common
from rlhf_jax.train import loop
from rlhf_jax.train.enumerable_eval import EnumerableEvaluator


@dataclasses.dataclass
class World:
  """Held-out prompts of the enumerable world and the rows that score every completion."""
  task: object
  layout: pipeline.Layout
  mesh: object
  rules: object
  prompts: list
  gold_PxN: np.ndarray
  rm_rows: dict              # tokens / mask [P*N, S]: the full enumeration (EnumerableEvaluator's)
  trie_rows: dict            # tokens / mask [P*R, S]: R = k^(L-1) prefix rows per prompt
  row_of_N: np.ndarray       # the trie row that carries completion n
  batch_size: int

  @property
  def num_completions(self) -> int:
    return self.gold_PxN.shape[1]


def make_world(config, num_prompts: int, *, batch_size: int = 2048) -> World:
  """`config`: any enumerable-world stage config (task, data layout, mesh)."""
  mesh, rules = common.mesh_and_rules(config)
  task = common.make_task(config)
  tok = task.tokenizer
  layout = common.layout(config, tok)
  ev = EnumerableEvaluator(task, layout, None, mesh, batch_size=batch_size,
                           max_prompts=num_prompts)
  enum = task.enumeration
  k, length = len(task.alphabet), task.max_len
  p = layout.prompt_len
  # Trie rows: every string z of L-1 letters, in base-k order (z = digits, most significant first).
  r = k ** (length - 1)
  digits_RxD = (np.arange(r)[:, None] // k ** np.arange(length - 2, -1, -1)[None, :]) % k
  tokens, masks = [], []
  stats = pipeline.LayoutStats()
  for prompt in ev.prompts:
    row = layout.row(layout.prompt_ids(prompt, f"prompt {prompt!r}", stats), [])
    t = np.repeat(row["tokens"][None], r, 0)
    m = np.repeat(row["mask"][None], r, 0)
    t[:, p:p + length - 1] = digits_RxD + tok.eos_id + 1
    m[:, p:p + length - 1] = 1
    tokens.append(t)
    masks.append(m)
  trie = {"tokens": np.concatenate(tokens).astype(np.int32),
          "mask": np.concatenate(masks).astype(np.int32)}
  letters = np.maximum(enum.letters_NxL[:, :length - 1], 0)
  row_of_N = letters @ (k ** np.arange(length - 2, -1, -1))
  rm_rows = {"tokens": ev.arrays["tokens"], "mask": ev.arrays["mask"]}
  return World(task, layout, mesh, rules, list(ev.prompts), ev.gold_PxN, rm_rows, trie,
               row_of_N.astype(np.int64), batch_size)


def _batched(world: World, rows: dict, fn, params, axis: int = 0) -> np.ndarray:
  """fn(params, batch) over every row in order (padded batches cut off), joined on `axis`."""
  out = [np.asarray(jax.device_get(fn(params, loop.to_global(local, world.mesh))))
         for local in pipeline.eval_batches(rows, global_batch=world.batch_size)]
  joined = np.concatenate(out, axis=axis)
  return np.take(joined, np.arange(len(rows["tokens"])), axis=axis)


class PolicyScorer:
  """Exact log π(y|x) over the enumeration of the world's prompts, [P, N] float64, renormalised
  over the enumeration (the mass on other token strings is reported as `invalid_mass`)."""

  def __init__(self, world: World, graphdef):
    self.world = world
    p, length = world.layout.prompt_len, world.task.max_len

    def logprobs(params, b):
      model = nnx.merge(graphdef, params)
      h, _ = model.hidden(b["tokens"], mask_BxS=b["mask"])
      return jax.nn.log_softmax(model.logits(h[:, p - 1:p + length - 1]).astype(np.float32))

    self._logprobs = jax.jit(logprobs)

  def raw_logp(self, params) -> np.ndarray:
    w = self.world
    lp_RxTxV = _batched(w, w.trie_rows, self._logprobs, params).astype(np.float64)
    enum = w.task.enumeration
    n_prompts, n = len(w.prompts), w.num_completions
    lp_PxRxTxV = lp_RxTxV.reshape(n_prompts, -1, *lp_RxTxV.shape[1:])
    t_idx = np.arange(enum.tokens_NxT.shape[1])[None, :]
    picked_PxNxT = lp_PxRxTxV[:, w.row_of_N[:, None], t_idx, enum.tokens_NxT]
    return np.sum(picked_PxNxT * enum.mask_NxT[None], axis=-1).reshape(n_prompts, n)

  def distribution(self, params) -> tuple[np.ndarray, float]:
    from rlhf_jax.tasks import exact  # pylint: disable=g-import-not-at-top
    raw = self.raw_logp(params)
    log_mass_P = exact.logsumexp(raw)
    return raw - log_mass_P[:, None], float(np.mean(1.0 - np.exp(log_mass_P)))


def proxy_scores(world: World, exported) -> np.ndarray:
  """Every member's (normalised, as online RL sees it) score of every completion, [E, P, N]."""
  graphdef = exported.graphdef
  fn = jax.jit(lambda params, b: learned.ensemble_scores(graphdef, params, b["tokens"], b["mask"]))
  scores_ExM = _batched(world, world.rm_rows, fn, exported.params, axis=1).astype(np.float64)
  norm = exported.extra.get("normalization")
  if norm:
    scores_ExM = (scores_ExM - norm["mean"]) / norm["std"]
  return scores_ExM.reshape(scores_ExM.shape[0], len(world.prompts), -1)


def combine(scores_ExPxN: np.ndarray, mode: str = "mean", lam: float = 0.0) -> np.ndarray:
  """Ensemble combination, numpy twin of rewards/learned.combine (same modes and formula)."""
  if mode == "mean":
    return scores_ExPxN.mean(0)
  if mode == "worst_case":
    return scores_ExPxN.min(0)
  if mode == "mean_minus_var":
    return scores_ExPxN.mean(0) - lam * scores_ExPxN.var(0)
  raise ValueError(f"unknown ensemble combine mode {mode!r}; valid: {list(learned.COMBINE_MODES)}")
