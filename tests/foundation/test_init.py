"""Random parameter init (train/state.py): created in their shardings by a program compiled once
per model shape (the seed is an argument), with XLA's backend optimisation off on a CPU (it runs
once); the same values as the plain jitted init, up to the last bit of the float transforms."""

import jax
import numpy as np
from flax import nnx

from rlhf_jax.models import Transformer, get_model_config
from rlhf_jax.parallel import mesh as mesh_lib, sharding as sharding_lib
from rlhf_jax.train import state as state_lib


def test_init_params_is_seeded_sharded_and_equals_the_plain_jitted_init():
  cfg = get_model_config("tiny", vocab_size=40)
  make = lambda rngs: Transformer(cfg, rngs=rngs)
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding_lib.DEFAULT_RULES
  _, a = state_lib.init_params(make, mesh, rules, seed=3)
  _, b = state_lib.init_params(make, mesh, rules, seed=3)
  _, c = state_lib.init_params(make, mesh, rules, seed=4)
  plain = jax.jit(lambda key: nnx.to_pure_dict(nnx.state(make(nnx.Rngs(key)), nnx.Param)))(
      jax.random.key(3))
  _, abstract = state_lib.abstract_model(make)
  want_sh = sharding_lib.param_shardings(abstract, mesh, rules)
  for x, y, z, p, sh in zip(*(jax.tree.leaves(t) for t in (a, b, c, plain)),
                            jax.tree.leaves(want_sh, is_leaf=lambda s: hasattr(s, "spec"))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert x.sharding.is_equivalent_to(sh, x.ndim)
    np.testing.assert_allclose(np.asarray(x), np.asarray(p), rtol=1e-6, atol=1e-6)
    if np.asarray(x).std() > 0:  # the norms' scales start at 1 for every seed
      assert not np.array_equal(np.asarray(x), np.asarray(z))
