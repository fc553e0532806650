"""Name -> function registry, so that configs pick losses and estimators by string.

    fn = losses.get(config.loss.name)          # e.g. "dpo", "ipo", "simpo", "ppo_policy", "grpo"
    loss_B = fn(pc, pr, rc, rr, beta=config.loss.beta)

Entries that fix a variant of a more general function (e.g. "ipo" = `dpo_loss` with `variant="ipo"`) are
`functools.partial` objects; the remaining keyword arguments are passed as usual. `names()` lists every
entry, `names(family)` those of one family (see `FAMILIES`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from rlhf_jax.losses import advantages
from rlhf_jax.losses import aggregation
from rlhf_jax.losses import kl
from rlhf_jax.losses import policy
from rlhf_jax.losses import preference
from rlhf_jax.losses import reward
from rlhf_jax.losses import sft

FAMILIES = ("reward", "preference", "sft", "kl", "policy", "advantages", "aggregation")


class UnknownNameError(ValueError, KeyError):
  """Unknown registry name. Subclasses both ValueError and KeyError so either `except` works."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


_REGISTRY: dict[str, tuple[str, Callable]] = {}


def register(name: str, fn: Callable, *, family: str) -> Callable:
  """Adds `fn` under `name`; raises ValueError if the name is taken or the family unknown."""
  if family not in FAMILIES:
    raise ValueError(f"register: unknown family={family!r}; valid choices are: {', '.join(FAMILIES)}.")
  if name in _REGISTRY:
    raise ValueError(f"register: name {name!r} is already registered.")
  _REGISTRY[name] = (family, fn)
  return fn


def get(name: str) -> Callable:
  """Returns the function registered as `name`; unknown names raise `UnknownNameError` listing the valid
  names."""
  try:
    return _REGISTRY[name][1]
  except (KeyError, TypeError):
    raise UnknownNameError(
        f"Unknown loss name {name!r}; valid names are: {', '.join(names())}.") from None


def family(name: str) -> str:
  """Returns the family of a registered name."""
  get(name)
  return _REGISTRY[name][0]


def names(family: str | None = None) -> list[str]:
  """Sorted registered names, optionally only those of one family."""
  if family is not None and family not in FAMILIES:
    raise ValueError(f"names: unknown family={family!r}; valid choices are: {', '.join(FAMILIES)}.")
  return sorted(n for n, (f, _) in _REGISTRY.items() if family is None or f == family)


def _partial(fn: Callable, **kwargs) -> Callable:
  p = functools.partial(fn, **kwargs)
  p.__doc__ = fn.__doc__
  return p


# Reward models.
register("bradley_terry", reward.bradley_terry_loss, family="reward")
register("plackett_luce", reward.plackett_luce_loss, family="reward")

# Direct alignment. DPO variants use TRL's `loss_type` names, except that "sigmoid" is called "dpo".
register("dpo", _partial(preference.dpo_loss, variant="sigmoid"), family="preference")
for _variant in preference.DPO_VARIANTS[1:]:
  register(_variant, _partial(preference.dpo_loss, variant=_variant), family="preference")
register("simpo", preference.simpo_loss, family="preference")
register("orpo", preference.orpo_loss, family="preference")
register("chosen_nll", preference.chosen_nll_loss, family="preference")

register("sft", sft.sft_loss, family="sft")

register("kl_penalty", kl.kl_penalty, family="kl")
register("kl_shaped_rewards", kl.kl_shaped_rewards, family="kl")

register("ppo_policy", policy.ppo_policy_loss, family="policy")
register("gspo_policy", _partial(policy.ppo_policy_loss, level="sequence"), family="policy")
register("cispo_policy", policy.cispo_policy_loss, family="policy")
register("ppo_value", policy.value_loss, family="policy")
register("entropy_bonus", policy.entropy_bonus, family="policy")
register("ptx", policy.ptx_loss, family="policy")

register("gae", advantages.gae, family="advantages")
register("grpo", _partial(advantages.group_advantages, scale="group"), family="advantages")
register("grpo_batch_std", _partial(advantages.group_advantages, scale="batch"), family="advantages")
register("dr_grpo", _partial(advantages.group_advantages, scale="none"), family="advantages")
register("rloo", advantages.rloo_advantages, family="advantages")
register("reinforce", advantages.reinforce_advantages, family="advantages")
register("reinforce_pp", advantages.reinforce_pp_advantages, family="advantages")

register("aggregate", aggregation.aggregate_loss, family="aggregation")
