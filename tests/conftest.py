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
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import xla  # noqa: E402  pylint: disable=wrong-import-position

for key, value in xla.env(8).items():
  if key == "XLA_FLAGS":  # after any flags of the caller's
    os.environ[key] = f"{os.environ.get(key, '')} {value}".strip()
  else:
    os.environ.setdefault(key, value)

