"""A latest checkpoint that fails to restore (truncated, partly deleted, bit-flipped, non-finite)
is set aside -- renamed, not deleted -- and the run resumes from the previous good one, ending
exactly where an uninterrupted run does."""

import glob
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.train import checkpoint as ckpt_lib
from tests import toyloop


def _largest_state_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
           if os.path.isfile(f)]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_state_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _delete_state(step_dir):
  shutil.rmtree(os.path.join(step_dir, "state"))


def _flip_bytes(step_dir):
  """XOR 0xFF over (up to) 4 KB in the middle of the largest data file."""
  path = _largest_state_file(step_dir)
  size = os.path.getsize(path)
  start, n = size // 4, min(4096, size // 2)
  with open(path, "r+b") as f:
    f.seek(start)
    data = f.read(n)
    f.seek(start)
    f.write(bytes(b ^ 0xFF for b in data))


def _nonfinite(step_dir):
  """Rewrites the checkpoint with a NaN parameter (through orbax: the files are intact)."""
  directory, step = os.path.dirname(step_dir), int(os.path.basename(step_dir))
  _, state, _ = toyloop.initial_state(np.nan)
  shutil.rmtree(step_dir)
  ckpt = ckpt_lib.Checkpointer(directory, max_to_keep=10)
  ckpt.save(step, state.replace(step=jnp.int32(step)), {"i": step}, {}, force=True)
  ckpt.close()


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  result, _ = toyloop.run(tmp_path_factory.mktemp("straight"), num_steps=6)
  return float(result.state.params["w"])


@pytest.mark.parametrize("damage", [_truncate, _delete_state, _flip_bytes, _nonfinite])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, straight, damage, caplog):
  toyloop.run(tmp_path, num_steps=6, stop_at_step=4)  # checkpoints at steps 2 and 4
  damage(str(tmp_path / "checkpoints" / "4"))
  caplog.set_level("WARNING")
  result, _ = toyloop.run(tmp_path, num_steps=6)
  assert result.start_step == 2  # resumed from the previous checkpoint
  assert float(result.state.params["w"]) == straight  # and ended where a clean run ends
  aside = os.listdir(tmp_path / "checkpoints.set_aside")
  assert len(aside) == 1 and aside[0].startswith("4-")  # renamed, not deleted
  assert "checkpoints/4 failed to restore" in caplog.text


def test_checksums_see_one_bit_and_the_element_order():
  w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
  flipped = (w.view(np.uint32) ^ np.uint32(1 << 7)).view(np.float32)
  assert ckpt_lib.checksums(jnp.asarray(flipped)) != ckpt_lib.checksums(jnp.asarray(w))
  assert ckpt_lib.checksums(jnp.asarray(w.T.copy().T)) == ckpt_lib.checksums(jnp.asarray(w))
  assert ckpt_lib.checksums(jnp.asarray(w[::-1])) != ckpt_lib.checksums(jnp.asarray(w))
  # bfloat16 and integer leaves too; one checksum per leaf.
  tree = {"b": jnp.ones((2, 3), jnp.bfloat16), "i": jnp.arange(4), "s": jnp.float32(2.0)}
  assert len(ckpt_lib.checksums(tree)) == 3


def test_no_restorable_checkpoint_is_an_error(tmp_path):
  toyloop.run(tmp_path, num_steps=4)
  for step in ("2", "4"):
    _delete_state(str(tmp_path / "checkpoints" / step))
  with pytest.raises(ckpt_lib.NoCheckpointError, match="all were set aside"):
    toyloop.run(tmp_path, num_steps=6)
  assert sorted(s.split("-")[0] for s in os.listdir(tmp_path / "checkpoints.set_aside")) == ["2",
                                                                                            "4"]
  result, _ = toyloop.run(tmp_path, num_steps=6)  # rerun: starts from scratch
  assert result.start_step == 0 and result.finished
