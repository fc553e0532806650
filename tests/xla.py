"""The XLA settings of the test processes (see conftest.py), for subprocesses too."""

import os
import tempfile

# XLA's compile-time optimisation off (compilation dominates the suite on 2 cores), Eigen's
# matmuls on the calling thread (two pytest workers already keep both cores busy: a thread pool
# per process only adds spinning, about 10% of the CPU time), and a long collective timeout
# (8 device threads on 2 busy cores can be late by more than the default 40 s).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_multi_thread_eigen=false"
PATIENT_COLLECTIVES = ("--xla_cpu_collective_call_terminate_timeout_seconds=600 "
                       "--xla_cpu_collective_timeout_seconds=600")
CACHE = os.environ.get("RLHF_JAX_TEST_XLA_CACHE",
                       os.path.join(tempfile.gettempdir(), "rlhf_jax_test_xla_cache"))


def env(devices: int, *, fast_compile: bool = True) -> dict[str, str]:
  """Environment variables for a JAX process of the tests with `devices` CPU devices.

  fast_compile=False keeps XLA's defaults (optimisation, Eigen threads), for runs dominated by
  execution."""
  flags = [f"--xla_force_host_platform_device_count={devices}", PATIENT_COLLECTIVES]
  if fast_compile:
    flags.append(FAST_COMPILE)
  out = {"XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}
  if CACHE:
    out.update(JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  return out


def subprocess_env(devices: int, **kwargs) -> dict[str, str]:
  """os.environ without RLHF_JAX_* variables, with env(devices, ...)."""
  out = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_JAX_")}
  out.update(env(devices, **kwargs))
  return out
