"""Test-process settings, made before JAX loads (subprocesses the tests start get them through
`tests.xla.env`):

- a real 8-device CPU mesh (`--xla_force_host_platform_device_count=8`), so sharded code runs
  sharded;
- XLA's CPU backend at optimisation level 0: on 2 cores the suite is mostly compilation of tiny
  models, which -O0 halves, and the programs are the same (the tests assert what the methods
  guarantee, not float32 digits); Eigen single-threaded (both cores are busy with the two
  pytest-xdist workers);
- collectives wait up to 10 minutes for a late device thread (the default aborts after 40 s, which
  8 device threads on 2 busy cores can exceed);
- a persistent XLA cache shared by the test processes: many tests compile the same steps.
  RLHF_JAX_TEST_XLA_CACHE="" turns it off.

It also orders the test files for the two pytest-xdist workers: the files that take minutes
first, slowest first, then the rest in collection order (longest-processing-time-first, so that
no long file starts last and keeps one worker busy alone; pyproject's --no-loadscope-reorder
keeps this order instead of xdist's default, most tests first, which put the single-test files
that take minutes at the end).
"""

import os

from tests import xla  # the repository root is on sys.path (pyproject: pythonpath)

for key, value in xla.env(8).items():
  if key == "XLA_FLAGS":  # after any flags of the caller's
    os.environ[key] = f"{os.environ.get(key, '')} {value}".strip()
  else:
    os.environ.setdefault(key, value)


# Worker-seconds per file on a 2-core Zen 3 (pytest --durations=0; about half that on a Zen 4),
# slowest first.
SLOWEST_FIRST = (
    "stages/test_arithmetic_rl.py",           # ~920 s (15 min: the suite's critical path)
    "experiments/test_overoptimization.py",   # ~220 s
    "stages/test_offline_stages.py",          # ~200 s
    "stages/test_recipes.py",                 # ~195 s
    "stages/test_online_rl.py",               # ~195 s
    "foundation/test_multihost.py",           # ~185 s
    "scale/test_lora_stages.py",              # ~150 s
    "foundation/test_sft_stage.py",           # ~100 s
    "experiments/test_bench_accelerator.py",  # ~90 s (a subprocess compiling every path)
    "generation/test_generation.py",          # ~60 s
)


def pytest_collection_modifyitems(items):
  def rank(item):
    path = item.nodeid.split("::")[0].removeprefix("tests/")
    return SLOWEST_FIRST.index(path) if path in SLOWEST_FIRST else len(SLOWEST_FIRST)
  items.sort(key=rank)  # stable: each file's tests keep their order


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_signal_handlers():
  """Tests that call `rlhf_jax.main.main` in-process install its SIGINT/SIGTERM handlers; put the
  previous ones back after each test so a later signal (xdist's shutdown) is not taken for a
  preemption."""
  yield
  from rlhf_jax.train import preemption
  preemption.uninstall()
