"""Orbax checkpoints holding the train state, the data-iterator state and the config together.

Resume is exact: the state (sharded arrays restored into their shardings), the iterator's
position and the per-step rng (folded from the seed and the step) reproduce an uninterrupted run.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, directory: str, *, max_to_keep: int = 2, save_interval_steps: int = 1):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           save_interval_steps=save_interval_steps)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict, config: dict, *, force: bool = False) -> bool:
    saved = self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)), force=force)
    return saved

  def restore(self, step: int, abstract_state) -> tuple[Any, dict, dict]:
    """Restores into `abstract_state` (ShapeDtypeStructs carrying shardings)."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore()))
    return out.state, out.data, out.config

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(state, shardings):
  """ShapeDtypeStructs with the given shardings, the restore target for `state`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)
