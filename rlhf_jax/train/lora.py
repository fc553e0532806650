"""LoRA fine-tuning: train low-rank adapters (models/lora.py) on a frozen base, for the policy or
a reward model.

config.lora fields:
  rank     r; 0 turns LoRA off (full fine-tuning)
  alpha    the update is (alpha / r) A B
  targets  which weights get adapters: comma-separated names (wq, wk, wv, wo, w_gate, w_up,
           w_down) or groups (attn, mlp, all)

The parameters stay one pure dict: the base model's paths unchanged, plus `.../<w>_lora/{a, b}`.
Only adapter leaves (and the subtrees named in `also_train`, e.g. a reward model's fresh "head")
are trainable: the optimizer is an `optax.multi_transform` whose frozen part is `set_to_zero`
(no optimizer state, base weights bitwise unchanged), and the train step stops gradients at
frozen leaves (`freeze`), so no weight gradient of the base is ever computed. A stage exports
`merge`d parameters, i.e. the plain model (W + (alpha / r) A B): later stages need no LoRA code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional

import jax
import optax
from flax import nnx

from rlhf_jax.models import lora as lora_lib
from rlhf_jax.parallel import sharding as sharding_lib
from rlhf_jax.train import state as state_lib

TRAINABLE, FROZEN = "trainable", "frozen"


def enabled(lora_cfg) -> bool:
  return lora_cfg is not None and int(lora_cfg.rank) > 0


def with_adapters(make_model: Callable, *, rank: int, alpha: float, targets) -> Callable:
  """`make_model(rngs)` followed by `models.lora.attach` (adapter A drawn from the same rngs)."""
  targets = lora_lib.resolve_targets(targets)

  def make(rngs: nnx.Rngs):
    return lora_lib.attach(make_model(rngs), rank=rank, alpha=alpha, targets=targets, rngs=rngs)
  return make


def _key(k) -> str:
  return str(getattr(k, "key", getattr(k, "idx", k)))


def is_trainable(path: tuple, also_train: Iterable[str] = ()) -> bool:
  """Adapter leaves, and leaves under a top-level key listed in `also_train`."""
  return lora_lib.is_adapter_path(path) or (bool(path) and _key(path[0]) in set(also_train))


def trainable_mask(params: Any, also_train: Iterable[str] = ()) -> Any:
  """A pytree of bools like `params` (any leaves: arrays, ShapeDtypeStructs, shardings)."""
  also_train = tuple(also_train)
  return jax.tree_util.tree_map_with_path(lambda p, _: is_trainable(p, also_train), params)


def freeze_optimizer(tx: optax.GradientTransformation, also_train: Iterable[str] = ()
                     ) -> optax.GradientTransformation:
  """`tx` on the trainable leaves; zero updates and no state for the frozen ones."""
  also_train = tuple(also_train)

  def labels(params):
    return jax.tree_util.tree_map_with_path(
        lambda p, _: TRAINABLE if is_trainable(p, also_train) else FROZEN, params)
  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


def freeze(params: Any, trainable: Optional[Any]) -> Any:
  """params with stop_gradient on every leaf whose `trainable` entry is False (None: all train)."""
  if trainable is None:
    return params
  return jax.tree.map(lambda x, t: x if t else jax.lax.stop_gradient(x), params, trainable)


def _select(tree: dict, keep: Callable[[tuple], bool], prefix: tuple = ()) -> dict:
  """The nested-dict subtree of leaves whose path satisfies `keep` (empty dicts dropped)."""
  out = {}
  for k, v in tree.items():
    path = prefix + (jax.tree_util.DictKey(k),)
    if isinstance(v, dict):
      sub = _select(v, keep, path)
      if sub:
        out[k] = sub
    elif keep(path):
      out[k] = v
  return out


def _union(a: dict, b: dict) -> dict:
  out = dict(a)
  for k, v in b.items():
    out[k] = _union(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out


def init_params(make_adapted: Callable, base_params: Optional[dict], mesh, rules,
                seed: int) -> dict:
  """Sharded parameters of the adapted model: `base_params` (a pure dict of the plain model, e.g.
  restored from an export) plus freshly initialised adapters; all fresh when base_params is None.
  Only the adapters are computed (the base's initialisation is dead code under jit)."""
  if base_params is None:
    return state_lib.init_params(make_adapted, mesh, rules, seed)[1]
  _, abstract = state_lib.abstract_model(make_adapted)
  shardings = _select(sharding_lib.param_shardings(abstract, mesh, rules),
                      lora_lib.is_adapter_path)
  adapters = jax.jit(
      lambda: _select(nnx.to_pure_dict(nnx.state(make_adapted(nnx.Rngs(seed)), nnx.Param)),
                      lora_lib.is_adapter_path), out_shardings=shardings)()
  return _union(base_params, adapters)


@dataclasses.dataclass
class Adapted:
  """A stage's model / optimizer / parameters with LoRA applied (unchanged when it is off)."""
  make_model: Callable
  tx: optax.GradientTransformation
  params: Optional[dict]            # initial parameters for state.init_state (None: fresh)
  trainable: Optional[Any]          # mask for the train step's `trainable`, None: all
  export: Callable[[Any], Any]      # train-state params -> the plain model's params


def pieces(lora_cfg, make_model: Callable, tx: optax.GradientTransformation, *,
           also_train: Iterable[str] = ()) -> tuple[Callable, optax.GradientTransformation, Any]:
  """(adapted make_model, frozen-base optimizer, trainable mask) from config.lora, allocating
  nothing (the mask comes from abstract shapes); the inputs unchanged and None when LoRA is off."""
  if not enabled(lora_cfg):
    return make_model, tx, None
  make_adapted = with_adapters(make_model, rank=int(lora_cfg.rank), alpha=float(lora_cfg.alpha),
                               targets=lora_cfg.targets)
  _, abstract = state_lib.abstract_model(make_adapted)
  return (make_adapted, freeze_optimizer(tx, also_train),
          trainable_mask(nnx.to_pure_dict(abstract), also_train))


def make_merge(lora_cfg, make_model: Callable, mesh, rules, *, stacked: bool = False
               ) -> Callable[[Any], Any]:
  """Jitted `adapted params -> the plain model's params` (models/lora.py `merge`), laid out in
  the plain model's shardings; the identity when LoRA is off. `stacked`: parameters of an
  ensemble stacked on a leading axis [E, ...] (rewards/learned.py), merged member by member."""
  if not enabled(lora_cfg):
    return lambda p: p
  _, plain = state_lib.abstract_model(make_model)
  plain_sh = sharding_lib.param_shardings(plain, mesh, rules)
  alpha = float(lora_cfg.alpha)
  merge = lambda p: lora_lib.merge(p, alpha=alpha)
  if stacked:
    return jax.jit(jax.vmap(merge), out_shardings=state_lib.stacked(plain_sh, mesh))
  return jax.jit(merge, out_shardings=plain_sh)


def adapt(lora_cfg, make_model: Callable, tx: optax.GradientTransformation,
          params: Optional[dict], mesh, rules, seed: int, *, also_train: Iterable[str] = ()
          ) -> Adapted:
  """Applies config.lora (see the module docstring) to a stage's pieces and parameters."""
  if not enabled(lora_cfg):
    return Adapted(make_model, tx, params, None, lambda p: p)
  make_adapted, frozen_tx, mask = pieces(lora_cfg, make_model, tx, also_train=also_train)
  return Adapted(make_adapted, frozen_tx, init_params(make_adapted, params, mesh, rules, seed),
                 mask, make_merge(lora_cfg, make_model, mesh, rules))
