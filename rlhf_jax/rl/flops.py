"""Analytic model FLOPs of one online-RL iteration, per part, for train/tflops_per_sec and
train/mfu (models/flops.py's convention: matmuls only, causal-halved attention, padding counts,
a multiply-add is 2 FLOPs). Over the rollout's (global) rows R, prompts [R, P], completions
[R, T] (T = the sampler's max_new_tokens, the padded width every pass computes):

  generation  per round: the policy's prefill of the prompts (the backbone only: decode.py fills
              the cache, no logits), then one token per row per decode step, as many steps as the
              round's longest completion (the loop stops once every row has; at most T), each
              attending to the cache slots filled so far (models/flops.decode_flops)
  scoring     per round, forward passes over the [R, P + T] rows: the old policy (when it is
              re-scored, rl/engine.rescore_policy) and the reference, LM head at the completion
              positions only (models/flops.score_flops); the critic's values (PPO; a backbone of
              the policy's shape, its own or the policy's trunk run again when shared) and each
              learned reward-model member, without LM head
  update      epochs x every rollout row (each minibatch is computed, `stop_kl` only discards
              the later ones): a training step of the policy (3x its scoring pass, 2x with LoRA's
              frozen weights), of the critic (3x; 2x when it shares a LoRA policy's frozen trunk)
              and, with PPO-ptx, of the policy on the ptx rows (their own [R, P' + T'] shape)

Left out: the scalar heads (d_model x 1), the sampler's softmax and top-k/p, the advantages,
losses, optimizer and KL control (elementwise), the reward functions on the host. decode.py
prefills P - 1 prompt slots and feeds the last prompt token as its first step, which
decode_flops counts as a prefill of P (one token per row more than run); a step's attention
reads every cache slot, masked (decode_step.py), counted as the filled ones. Evaluation runs
outside the iteration, outside the loop's throughput window.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from rlhf_jax.models import ModelConfig, flops
from rlhf_jax.rl import learn
from rlhf_jax.train import lora

PARTS = ("generation", "scoring", "update")


@dataclasses.dataclass(frozen=True)
class IterationFlops:
  """What one iteration runs: the policy's shape (also the reference's and critic's) and which
  passes exist."""
  policy: ModelConfig
  frozen: bool = False               # LoRA: the policy's weights are frozen (adapters train)
  rescore_policy: bool = True        # the old-policy scoring pass runs
  critic: bool = False               # PPO's critic scores and trains
  critic_frozen: bool = False        # the critic runs on a LoRA policy's frozen trunk
  reward_model: Optional[ModelConfig] = None
  reward_members: int = 0
  epochs: int = 1

  def generation(self, rows: int, prompt_len: int, steps: int) -> float:
    """One round: R rows, P prompt slots, `steps` decode steps (the longest completion)."""
    return flops.decode_flops(self.policy, rows, prompt_len, steps, prefill_lm_head=False)

  def scoring(self, rows: int, prompt_len: int, completion_len: int) -> float:
    """One round's scoring pass (rollout.make_score_fn)."""
    lm = flops.score_flops(self.policy, rows, prompt_len, completion_len)
    scalar = flops.score_flops(self.policy, rows, prompt_len, completion_len, lm_head=False)
    total = lm * (2 if self.rescore_policy else 1) + (scalar if self.critic else 0.0)
    if self.reward_model is not None:
      total += self.reward_members * flops.score_flops(self.reward_model, rows, prompt_len,
                                                       completion_len, lm_head=False)
    return total

  def update(self, rows: int, prompt_len: int, completion_len: int,
             ptx_shape: Optional[tuple[int, int, int]] = None) -> float:
    """The learn function's epochs over the rollout (rl/learn.py). ptx_shape: (rows, P', T')
    of the PPO-ptx batch, when there is one."""
    policy = flops.backward_factor(self.frozen) * flops.score_flops(
        self.policy, rows, prompt_len, completion_len)
    if self.critic:
      policy += flops.backward_factor(self.critic_frozen) * flops.score_flops(
          self.policy, rows, prompt_len, completion_len, lm_head=False)
    if ptx_shape is not None:
      policy += flops.backward_factor(self.frozen) * flops.score_flops(self.policy, *ptx_shape)
    return self.epochs * policy


def for_run(s, config, *, critic: bool, rescore_policy: bool) -> IterationFlops:
  """The counter of an online-RL run of Setup `s` (rl/setup.py) under `config`; the learned
  reward model counts when `s.rm_config` (its shape) is known."""
  frozen = lora.enabled(config.lora)
  shared = critic and bool(config.critic.get("shared_backbone", False))
  rm_cfg, members = None, 0
  if s.rm is not None and s.rm_config is not None:
    rm_cfg, members = s.rm_config, int(jax.tree.leaves(s.rm.params)[0].shape[0])
  return IterationFlops(policy=s.sft.model_config, frozen=frozen, rescore_policy=rescore_policy,
                        critic=critic, critic_frozen=shared and frozen, reward_model=rm_cfg,
                        reward_members=members, epochs=int(learn.stage_block(config).epochs))
