"""Loss library of rlhf_jax: pure, jittable functions on arrays (see README.md in this folder).

Conventions: shape-suffixed argument names (`logp_BxT`, `rewards_B`), unreduced per-example or per-token
outputs with explicit masks, keyword-only hyper-parameters, float32 math. Configs choose functions by name
through `get(name)` / `names()`.
"""

from rlhf_jax.losses import advantages
from rlhf_jax.losses import aggregation
from rlhf_jax.losses import kl
from rlhf_jax.losses import logprobs
from rlhf_jax.losses import policy
from rlhf_jax.losses import preference
from rlhf_jax.losses import registry
from rlhf_jax.losses import reward
from rlhf_jax.losses import sft
from rlhf_jax.losses.advantages import GROUP_SCALES
from rlhf_jax.losses.advantages import REINFORCE_BASELINES
from rlhf_jax.losses.advantages import gae
from rlhf_jax.losses.advantages import group_advantages
from rlhf_jax.losses.advantages import reinforce_advantages
from rlhf_jax.losses.advantages import reinforce_pp_advantages
from rlhf_jax.losses.advantages import rloo_advantages
from rlhf_jax.losses.advantages import sequence_to_token
from rlhf_jax.losses.advantages import whiten
from rlhf_jax.losses.aggregation import AGGREGATION_MODES
from rlhf_jax.losses.aggregation import aggregate_loss
from rlhf_jax.losses.aggregation import masked_mean
from rlhf_jax.losses.aggregation import masked_sum
from rlhf_jax.losses.kl import KL_ESTIMATORS
from rlhf_jax.losses.kl import kl_penalty
from rlhf_jax.losses.kl import kl_shaped_rewards
from rlhf_jax.losses.kl import sequence_kl
from rlhf_jax.losses.logprobs import reduce_token_logps
from rlhf_jax.losses.logprobs import sequence_logps
from rlhf_jax.losses.logprobs import token_entropy
from rlhf_jax.losses.logprobs import token_logps
from rlhf_jax.losses.policy import RATIO_LEVELS
from rlhf_jax.losses.policy import cispo_policy_loss
from rlhf_jax.losses.policy import entropy_bonus
from rlhf_jax.losses.policy import ppo_policy_loss
from rlhf_jax.losses.policy import ppo_policy_metrics
from rlhf_jax.losses.policy import ptx_loss
from rlhf_jax.losses.policy import tis_weights
from rlhf_jax.losses.policy import value_loss
from rlhf_jax.losses.preference import DPO_VARIANTS
from rlhf_jax.losses.preference import chosen_nll_loss
from rlhf_jax.losses.preference import dpo_implicit_rewards
from rlhf_jax.losses.preference import dpo_loss
from rlhf_jax.losses.preference import orpo_loss
from rlhf_jax.losses.preference import simpo_loss
from rlhf_jax.losses.registry import FAMILIES
from rlhf_jax.losses.registry import UnknownNameError
from rlhf_jax.losses.registry import family
from rlhf_jax.losses.registry import get
from rlhf_jax.losses.registry import names
from rlhf_jax.losses.registry import register
from rlhf_jax.losses.reward import bradley_terry_loss
from rlhf_jax.losses.reward import pairwise_accuracy
from rlhf_jax.losses.reward import plackett_luce_loss
from rlhf_jax.losses.sft import sft_loss
from rlhf_jax.losses.sft import sft_loss_from_logps
from rlhf_jax.losses.shaping import overlong_penalty

__all__ = [
    "AGGREGATION_MODES", "DPO_VARIANTS", "FAMILIES", "GROUP_SCALES", "KL_ESTIMATORS", "RATIO_LEVELS",
    "REINFORCE_BASELINES", "UnknownNameError",
    "advantages", "aggregation", "kl", "logprobs", "policy", "preference", "registry", "reward", "sft",
    "aggregate_loss", "bradley_terry_loss", "chosen_nll_loss", "cispo_policy_loss",
    "dpo_implicit_rewards", "dpo_loss", "entropy_bonus", "family", "gae", "get", "group_advantages", "kl_penalty", "kl_shaped_rewards",
    "masked_mean", "masked_sum", "names", "orpo_loss", "overlong_penalty", "pairwise_accuracy", "plackett_luce_loss",
    "ppo_policy_loss", "ppo_policy_metrics", "ptx_loss", "tis_weights", "reduce_token_logps", "register",
    "reinforce_advantages", "reinforce_pp_advantages", "rloo_advantages", "sequence_kl",
    "sequence_logps", "sequence_to_token",
    "sft_loss", "sft_loss_from_logps", "simpo_loss", "token_entropy", "token_logps", "value_loss", "whiten",
]
