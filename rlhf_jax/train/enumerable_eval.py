"""Exact evaluation of a policy on the enumerable world (tasks/enumerable.py), no sampling.

For each held-out prompt x the policy's log-prob of every completion y (N of them) is computed
by one scoring pass over all [x | y] rows; the distribution is renormalised over the enumeration
(the mass the model puts on tokens outside it, e.g. PAD, is reported as `invalid_mass`). Then,
averaged over prompts, with π_ref the frozen reference model (not the world's data policy):

  gold_reward     = E_π[gold(x, y)]
  kl              = KL(π ‖ π_ref)
  kl_to_optimum   = KL(π ‖ π*_β),  π*_β ∝ π_ref · exp(gold / β)   (when β is given)
"""

from __future__ import annotations

import jax
import numpy as np

from rlhf_jax.data import pipeline
from rlhf_jax.tasks import exact
from rlhf_jax.train import dpo as dpo_steps
from rlhf_jax.train import loop


class EnumerableEvaluator:

  def __init__(self, task, layout: pipeline.Layout, graphdef, mesh, *, batch_size: int,
               split: str = "test", max_prompts: int = 8):
    self.task, self.mesh, self.batch_size = task, mesh, batch_size
    self.prompts = list(task.prompts(split))[:max_prompts]
    enum = task.enumeration
    n, t = enum.tokens_NxT.shape
    if t > layout.completion_len:
      raise ValueError(f"enumerable eval: completions need {t} tokens but data.completion_len is "
                       f"{layout.completion_len}")
    rows = {"tokens": [], "mask": [], "completion_mask": []}
    stats = pipeline.LayoutStats()
    for prompt in self.prompts:
      row = layout.row(layout.prompt_ids(prompt, f"prompt {prompt!r}", stats), [0])
      tokens = np.repeat(row["tokens"][None], n, 0)
      mask = np.repeat(row["mask"][None], n, 0)
      p = layout.prompt_len
      tokens[:, p:p + t] = enum.tokens_NxT
      completion_mask = np.zeros_like(mask)
      completion_mask[:, p:p + t] = enum.mask_NxT
      mask[:, p:] = completion_mask[:, p:]
      for k, v in (("tokens", tokens), ("mask", mask), ("completion_mask", completion_mask)):
        rows[k].append(v)
    self.arrays = {k: np.concatenate(v).astype(np.int32) for k, v in rows.items()}
    self.num_completions = n
    self.gold_PxN = np.stack([task.gold_rewards_N(x) for x in self.prompts])
    prompt_len = layout.prompt_len
    self._score = jax.jit(lambda params, b: dpo_steps.sequence_logps(
        graphdef, params, b["tokens"], b["mask"], b["completion_mask"], prompt_len)[0])
    self.ref_logp_PxN = None

  def raw_logp(self, params) -> np.ndarray:
    """Unnormalised log π(y|x) of every completion, [P, N] float64."""
    out = []
    for local in pipeline.eval_batches(self.arrays, global_batch=self.batch_size):
      out.append(np.asarray(jax.device_get(self._score(params, loop.to_global(local, self.mesh)))))
    total = len(self.prompts) * self.num_completions
    return np.concatenate(out)[:total].astype(np.float64).reshape(len(self.prompts), -1)

  def distribution(self, params) -> tuple[np.ndarray, float]:
    raw = self.raw_logp(params)
    log_mass_P = exact.logsumexp(raw)
    return raw - log_mass_P[:, None], float(np.mean(1.0 - np.exp(log_mass_P)))

  def set_reference(self, params) -> None:
    self.ref_logp_PxN, _ = self.distribution(params)

  def metrics(self, params, *, beta: float | None = None) -> dict:
    logp_PxN, invalid = self.distribution(params)
    out = {"gold_reward": float(np.mean(exact.expectation(logp_PxN, self.gold_PxN))),
           "invalid_mass": invalid}
    if self.ref_logp_PxN is not None:
      out["kl"] = float(np.mean(exact.exact_kl(logp_PxN, self.ref_logp_PxN)))
      if beta:
        optimum = exact.optimal_policy(self.ref_logp_PxN, self.gold_PxN, beta)
        out["kl_to_optimum"] = float(np.mean(exact.exact_kl(logp_PxN, optimum)))
        out["optimum_gold_reward"] = float(np.mean(exact.expectation(optimum, self.gold_PxN)))
    return out
