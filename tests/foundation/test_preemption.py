"""SIGINT/SIGTERM stop the loop after the current step with a checkpoint (train/preemption.py);
the rerun resumes exactly. (SIGTERM through `main` in a fresh process, bit-identical resume of
SFT and PPO, and the multi-host agreement are tested in test_sft_stage.py, test_online_rl.py and
test_multihost.py.)"""

import os
import signal

import pytest

from rlhf_jax import configlib, stages
from rlhf_jax.train import preemption
from tests import toyloop


class SignalAt(toyloop.Batches):
  """Batches that send this process `signum` while producing step `at`'s batch."""

  def __init__(self, signum, at):
    super().__init__()
    self.signum, self.at = signum, at

  def __next__(self):
    batch = super().__next__()
    if self.i == self.at:
      os.kill(os.getpid(), self.signum)
    return batch


@pytest.fixture
def handlers():
  preemption.install()
  yield
  preemption.uninstall()


def _run(workdir, batches, **train):
  return toyloop.run(workdir, batches=batches, **train)[0]


def test_sigint_finishes_the_step_checkpoints_and_the_rerun_resumes(tmp_path, handlers):
  straight = _run(tmp_path / "straight", toyloop.Batches())
  with pytest.raises(preemption.Preempted) as e:
    _run(tmp_path / "run", SignalAt(signal.SIGINT, 3), checkpoint_every=100)
  assert e.value.exit_code == 130
  assert str(e.value) == (f"sft: stopped by SIGINT after step 3; checkpoint {tmp_path}/run/"
                          "checkpoints/3 (step 3). Rerun the same command to resume.")
  assert os.listdir(tmp_path / "run" / "checkpoints") == ["3"]  # not a checkpoint step otherwise
  preemption.uninstall()
  preemption.install()
  resumed = _run(tmp_path / "run", toyloop.Batches(), checkpoint_every=100)
  assert resumed.start_step == 3 and resumed.finished
  assert float(resumed.state.params["w"]) == float(straight.state.params["w"])


def test_a_signal_during_setup_stops_before_the_first_step(tmp_path, handlers):
  os.kill(os.getpid(), signal.SIGTERM)  # e.g. while the data was being prepared
  with pytest.raises(preemption.Preempted, match="after step 0; nothing to checkpoint"):
    _run(tmp_path, toyloop.Batches())
  assert not os.listdir(tmp_path / "checkpoints")
  # A stage (a recipe's next one) does not even start.
  with pytest.raises(preemption.Preempted, match="sft: stopped by SIGTERM"):
    stages.run(configlib.get("configs/sft.py:test"), str(tmp_path / "next"))
  assert not os.path.exists(tmp_path / "next")


def test_without_handlers_nothing_stops():
  assert preemption.requested_signal() is None and not preemption.should_stop(1)


def test_uninstall_restores_the_handlers_that_install_replaced():
  def mine(signum, frame):
    del signum, frame
  old_int, old_term = signal.signal(signal.SIGINT, mine), signal.signal(signal.SIGTERM, mine)
  try:
    preemption.install()
    assert signal.getsignal(signal.SIGINT) is not mine
    preemption.uninstall()
    assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
  finally:
    signal.signal(signal.SIGINT, old_int)
    signal.signal(signal.SIGTERM, old_term)
