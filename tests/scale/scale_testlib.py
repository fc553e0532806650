"""Helpers for the scale tests: random parameters without the jitted initialiser.

Compiling the initialiser (one threefry sampler per parameter) costs seconds on a CPU; numpy
draws cost nothing, and these tests only need *some* parameters of the right shapes.
"""

import jax
import numpy as np
from flax import nnx

from rlhf_jax.parallel import sharding as sharding_lib
from rlhf_jax.train import state as state_lib


def random_params(make_model, seed=0, *, mesh=None, rules=None):
  """(graphdef, pure params): N(0, 1/fan_in) weights, unit norm scales, zero biases and zero
  LoRA B factors (as the real initialiser), placed in their shardings when `mesh` is given."""
  graphdef, abstract = state_lib.abstract_model(make_model)
  rng = np.random.default_rng(seed)

  def draw(path, a):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale":
      return np.ones(a.shape, a.dtype)
    if name.startswith("b"):  # biases (bq, b_up, ...), LayerNorm bias, LoRA B, scalar head b
      return np.zeros(a.shape, a.dtype)
    return (rng.standard_normal(a.shape) / np.sqrt(a.shape[0])).astype(a.dtype)

  params = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(abstract))
  if mesh is not None:
    params = jax.device_put(params, sharding_lib.param_shardings(abstract, mesh, rules))
  return graphdef, params
