"""A rollout: what one RL iteration sampled and measured, and the sharded device work that makes it.

  Rollout (a pytree; every array has the B = prompts x group_size rows first, in contiguous
  groups of group_size rows per prompt):
    prompt_tokens_BxP, prompt_mask_BxP  left-padded prompts (repeated group_size times)
    tokens_BxT, mask_BxT, stopped_B     right-padded completions; stopped = ended by EOS
    sampler_logp_BxT  log-probs under the sampling distribution (tempered / top-k / bfloat16)
    old_logp_BxT      log π_θ_old(y_t | x, y_<t): the trainer's policy, the ratio's denominator
                      (= sampler_logp when the sampler is the float32 policy itself)
    ref_logp_BxT      log π_ref(y_t | x, y_<t): the frozen reference
    values_BxT        V(x, y_<t) of the critic (zeros without one)
    scores_B          the reward of each completion (gold, verifier, reward functions, learned RM)
    group_B           the row's prompt within the rollout (0 .. prompts-1)
    rewards           {reward function name: raw score_B}, the reward's parts (logged)
    extra             {name: array}: further per-row inputs of a loss (the PPO-ptx SFT batch)

Every jitted piece (prompt repetition, generation, scoring) has explicit input and output
shardings: batch rows over the data-parallel axes, parameters as the train state or the loaded
export lays them out (`shardings_of`). Generation goes through generation/sharded.py, the one
generation API.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from rlhf_jax.generation import SamplingConfig, score_tokens, score_values
from rlhf_jax.generation import sharded as sharded_gen
from rlhf_jax.parallel import sharding as sharding_lib
from rlhf_jax.rewards import learned


@flax.struct.dataclass
class Rollout:
  prompt_tokens_BxP: jax.Array
  prompt_mask_BxP: jax.Array
  tokens_BxT: jax.Array
  mask_BxT: jax.Array
  stopped_B: jax.Array
  sampler_logp_BxT: jax.Array
  old_logp_BxT: jax.Array
  ref_logp_BxT: jax.Array
  values_BxT: jax.Array
  scores_B: jax.Array
  group_B: jax.Array
  rewards: dict = flax.struct.field(default_factory=dict)
  extra: dict = flax.struct.field(default_factory=dict)

  @property
  def rows(self):
    """(prompt_tokens, prompt_mask, tokens, mask): what a scoring pass reads."""
    return self.prompt_tokens_BxP, self.prompt_mask_BxP, self.tokens_BxT, self.mask_BxT


@flax.struct.dataclass
class RewardModel:
  """A learned reward model for rollouts: stacked ensemble params + how to combine them."""
  params: Any
  normalization: Optional[dict] = None


def shardings_of(tree, mesh):
  """The shardings of a pytree's arrays (replicated for host values), for jit's in_shardings."""
  repl = sharding_lib.replicated(mesh)
  on_mesh = lambda x: (isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding)
                       and x.sharding.mesh == mesh)
  return jax.tree.map(lambda x: x.sharding if on_mesh(x) else repl, tree)


def _batch(mesh, ndim):
  return sharding_lib.batch_sharding(mesh, ndim)


def make_repeat_fn(mesh, group_size: int) -> Callable:
  """Jitted `(prompt_tokens_BxP, prompt_mask_BxP) -> the same rows repeated group_size times
  (contiguous groups)`, batch-sharded in and out."""
  b2 = _batch(mesh, 2)
  return jax.jit(lambda t, m: (jnp.repeat(t, group_size, axis=0), jnp.repeat(m, group_size, axis=0)),
                 in_shardings=(b2, b2), out_shardings=(b2, b2))


def make_generate_fn(graphdef, sampling: SamplingConfig, *, mesh, param_shardings,
                     group_size: int = 1) -> Callable:
  """`(params, prompt_tokens_BxP, prompt_mask_BxP, rng) -> (prompt rows repeated group_size
  times, Generation)`: generation/sharded.py's sharded sampler on repeated prompts. Prompts come
  from the project's own pipeline (checked there), so they are not re-validated per call."""
  generate = sharded_gen.make_generate_fn(graphdef, sampling, mesh=mesh,
                                          param_shardings=param_shardings, validate=False)
  repeat = make_repeat_fn(mesh, group_size) if group_size > 1 else (lambda t, m: (t, m))

  def fn(params, prompt_tokens_BxP, prompt_mask_BxP, rng):
    pt, pm = repeat(prompt_tokens_BxP, prompt_mask_BxP)
    return pt, pm, generate(params, pt, pm, rng)

  fn.jitted = generate.jitted
  return fn


def sampler_is_policy(sampling: SamplingConfig, model_dtype) -> bool:
  """Whether generation's log-probs are the policy's own, so the old-policy pass can reuse them.

  They are when the sampler draws from pi_theta unchanged (temperature 1, no top-k / top-p, no
  min_new_tokens, not greedy) and the model computes in float32: decoding then reproduces the
  full forward pass's log-probs to float rounding (tests/generation: allclose 2e-5). In bfloat16
  the cached decode and the full forward round differently, so the policy is re-scored (as PPO
  implementations do to keep the first ratio at exactly 1).
  """
  untempered = (not sampling.greedy and sampling.temperature == 1.0 and sampling.top_k == 0
                and sampling.top_p == 1.0 and sampling.min_new_tokens == 0)
  return untempered and jnp.dtype(model_dtype) == jnp.float32


def make_score_fn(policy_graphdef, *, mesh, shardings: dict, ref_graphdef=None,
                  value_fn: Optional[Callable] = None, rm_graphdef=None,
                  rm_combine: str = "mean", rm_lambda: float = 0.0,
                  rescore_policy: bool = True) -> Callable:
  """Jitted `(params: dict, prompt_tokens, prompt_mask, tokens, mask, sampler_logp) ->
  dict(old_logp, ref_logp, values, rm_scores)`.

  params / shardings: {"policy", "ref"} and, when used, "critic" (value_fn(critic_params,
  policy_params, *rows) -> values_BxT) and "rm" (a RewardModel). ref_graphdef: the reference's
  model when it differs from the policy's (a LoRA policy has adapters, its frozen reference
  none); default policy_graphdef. rescore_policy: False takes old_logp = sampler_logp
  (generation's log-probs) instead of a policy forward pass; valid when `sampler_is_policy`.
  """
  ref_graphdef = policy_graphdef if ref_graphdef is None else ref_graphdef

  def score(params, *rows_and_sampler_logp):
    *rows, sampler_logp = rows_and_sampler_logp
    if rescore_policy:
      old = score_tokens(policy_graphdef, params["policy"], *rows).logp_BxT
    else:
      old = sampler_logp.astype(jnp.float32)
    ref = score_tokens(ref_graphdef, params["ref"], *rows).logp_BxT
    values = (value_fn(params["critic"], params["policy"], *rows) if value_fn is not None
              else jnp.zeros_like(old))
    if "rm" in params:
      rm_scores = _rm_scores(rm_graphdef, params["rm"], rows, rm_combine, rm_lambda)
    else:
      rm_scores = jnp.zeros(old.shape[:1], jnp.float32)
    return {"old_logp": old, "ref_logp": ref, "values": values, "rm_scores": rm_scores}

  b1, b2 = _batch(mesh, 1), _batch(mesh, 2)
  out = {"old_logp": b2, "ref_logp": b2, "values": b2, "rm_scores": b1}
  return jax.jit(score, in_shardings=(shardings, b2, b2, b2, b2, b2), out_shardings=out)


def _rm_scores(rm_graphdef, rm, rows, combine: str, lam: float):
  """[B] scores of the rows by a learned RM: each member's last-token value, normalised, then
  the members combined (rewards/learned.py)."""
  scores_ExB = jax.vmap(lambda p: score_values(rm_graphdef, p, *rows).last_B)(rm.params)
  return learned.combine(learned.normalize(scores_ExB, rm.normalization), mode=combine, lam=lam)


def make_rm_score_fn(rm_graphdef, *, mesh, rm_sharding, combine: str = "mean",
                     lam: float = 0.0) -> Callable:
  """Jitted `(rm, prompt_tokens, prompt_mask, tokens, mask) -> rm_scores_B`: the learned reward
  model alone, as make_score_fn scores it (for rows that need no log-probs, e.g. samples)."""
  b1, b2 = _batch(mesh, 1), _batch(mesh, 2)
  return jax.jit(lambda rm, *rows: _rm_scores(rm_graphdef, rm, rows, combine, lam),
                 in_shardings=(rm_sharding, b2, b2, b2, b2), out_shardings=b1)


host_array = sharding_lib.host_array  # the full value of a sharded array on every host
to_device = sharding_lib.to_device    # a host array placed batch-sharded over the data axes


def select_rows(rollouts: list[Rollout], rows: np.ndarray, mesh) -> Rollout:
  """Rows `rows` (host indices into the rollouts' rows, concatenated in order) of several
  generation rounds as one rollout, batch-sharded: each field fetched once, uploaded once."""
  return jax.tree.map(
      lambda *xs: to_device(np.concatenate([host_array(x) for x in xs])[rows], mesh), *rollouts)
