"""The PPO critic's values V(x, y_<t) (Ziegler et al. 2019; Ouyang et al. 2022): a scalar model on
its own backbone (params {"backbone", "head"}) or a head on the policy's (params {"head"}, the
trunk read from the policy's params, `shared_backbone`)."""

from __future__ import annotations

from rlhf_jax.generation import score_values


def make_value_fn(critic_graphdef, *, shared_backbone: bool):
  """values_BxT from (critic_params, policy_params, prompt_tokens, prompt_mask, tokens, mask)."""
  def value_fn(critic_params, policy_params, prompt_tokens, prompt_mask, tokens, mask):
    if shared_backbone:
      trunk = {k: v for k, v in policy_params.items() if k != "lm_head"}
      params = {"backbone": trunk, "head": critic_params["head"]}
    else:
      params = critic_params
    return score_values(critic_graphdef, params, prompt_tokens, prompt_mask, tokens,
                        mask).values_BxT
  return value_fn
