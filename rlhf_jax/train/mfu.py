"""The peak FLOP/s of the devices a run computes on: the denominator of MFU.

  MFU = (model FLOPs per second, models/flops.py) / (peak FLOP/s of all the job's devices)

(model FLOPs utilisation, Chowdhery et al. 2022, App. B, "PaLM"). The peak of a device comes
from the vendor's spec sheet, dense (no 2:4 sparsity), for the rate at which XLA runs the
compute dtype's matmuls:

  bfloat16, float16  the tensor-core / MXU bf16 rate
  float32            depends on jax_default_matmul_precision (no matmul of the model sets its
                     own precision):
                       GPU  'highest' / 'float32': the plain FP32 rate (no TF32); otherwise
                            XLA runs float32 matmuls as TF32 on Ampere and later
                            (jax-ml/jax#4873, #12008), so the dense TF32 rate (seen on an
                            H200: 8192^3 float32 matmuls at 405 TFLOP/s by default, far
                            above the plain FP32 peak of 67; 51 at 'highest')
                       TPU  otherwise one bfloat16 pass (jax-ml/jax#1856): the bf16 rate; 'high'
                            three passes (bf16 / 3); 'highest' six (bf16 / 6)

Per device, from `jax.devices()[0].device_kind`, times `jax.device_count()`. An unknown
accelerator has no peak (None: MFU is not logged; logged once why). On a CPU the peak is
measured once per process and dtype: the best of a few jitted [1024 x 1024] matmuls. With
several simulated devices (--xla_force_host_platform_device_count) every device shares the
process's cores, so the process's peak is that one rate (not times the device count); times
jax.process_count() for several processes.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Optional

import jax
import jax.numpy as jnp

# (device_kind substrings, lower-case; {rate: FLOP/s per device}), the first match wins, so a
# more specific name comes before the name it contains. Rates: "bf16" (bfloat16 and float16
# tensor cores), "tf32" (float32 matmuls at XLA's default precision on GPUs), "fp32" (plain).
# Sources: NVIDIA's datasheets (A100: 312 bf16, 156 TF32, 19.5 FP32; H100 SXM and H200 SXM:
# 989 bf16, 494.7 TF32, 67 FP32; H100 PCIe: 756 / 378 / 51; H100 NVL and H200 NVL:
# 835 / 417.5 / 60 — each TFLOP/s, half the "with sparsity" figure where only that one is
# printed; GH200 matches "h200" and has the H200 SXM's rates) and Google Cloud's TPU system
# architecture pages (per chip, bf16: v4 275, v5e 197, v5p 459, v6e Trillium 918; one JAX
# device per chip on these).
_GPU_PEAKS: tuple[tuple[tuple[str, ...], dict[str, float]], ...] = (
    (("h200 nvl",), {"bf16": 835e12, "tf32": 417.5e12, "fp32": 60e12}),
    (("h200",), {"bf16": 989e12, "tf32": 494.7e12, "fp32": 67e12}),
    (("h100 pcie",), {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    (("h100 nvl",), {"bf16": 835e12, "tf32": 417.5e12, "fp32": 60e12}),
    (("h100",), {"bf16": 989e12, "tf32": 494.7e12, "fp32": 67e12}),
    (("a100",), {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
)
_TPU_PEAKS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("v6 lite", "v6e"), 918e12),
    (("v5 lite", "v5e"), 197e12),
    (("v5p", "v5"), 459e12),
    (("v4",), 275e12),
)
_HIGHEST = ("highest", "float32")
_HIGH = ("high", "bfloat16_3x", "tensorfloat32")


def _matmul_precision() -> str:
  value = jax.config.jax_default_matmul_precision
  return "default" if value is None else str(value).lower()


def device_peak(platform: str, device_kind: str, dtype: str,
                precision: str = "default") -> tuple[Optional[float], str]:
  """(peak FLOP/s of one `platform` ('gpu' | 'tpu') device of `device_kind` computing in
  `dtype`, or None; the reason when None) from the spec-sheet tables."""
  kind = device_kind.lower()
  if dtype not in ("bfloat16", "float16", "float32"):
    return None, f"no peak for compute dtype {dtype!r}"
  if platform == "gpu":
    for names, rates in _GPU_PEAKS:
      if any(n in kind for n in names):
        if dtype != "float32":
          return rates["bf16"], ""
        return (rates["fp32"] if precision in _HIGHEST else rates["tf32"]), ""
  elif platform == "tpu":
    for names, rate in _TPU_PEAKS:
      if any(n in kind for n in names):
        if dtype == "float16":
          return None, "no float16 matmul rate for TPUs in the table"
        passes = 1 if dtype != "float32" else 6 if precision in _HIGHEST else (
            3 if precision in _HIGH else 1)
        return rate / passes, ""
  return None, (f"device kind {device_kind!r} ({platform}) is not in rlhf_jax/train/mfu.py's "
                "table of peak FLOP/s")


def cpu_matmul_flops_per_sec(dtype: str = "float32", *, n: int = 1024, repeats: int = 3) -> float:
  """Measured FLOP/s of a jitted [n x n] @ [n x n] matmul in `dtype` on the default device:
  2 n^3 over the best of `repeats` timed calls (after a warm-up call)."""
  a = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / max(best, 1e-9)


@functools.lru_cache(maxsize=None)
def _peak(dtype: str, precision: str) -> Optional[float]:
  device = jax.devices()[0]
  if device.platform == "cpu":
    peak = cpu_matmul_flops_per_sec(dtype) * jax.process_count()
    logging.info("mfu: measured CPU peak %.3g FLOP/s (%s matmul, whole process)", peak, dtype)
    return peak
  per_device, why = device_peak(device.platform, device.device_kind, dtype, precision)
  if per_device is None:
    logging.warning("mfu: %s; train/mfu is not logged", why)
    return None
  return per_device * jax.device_count()


def peak_flops_per_sec(dtype: str = "float32") -> Optional[float]:
  """The whole job's peak FLOP/s computing in `dtype` (module docstring), or None when unknown.
  Cached per dtype and matmul precision (a CPU is measured once per process)."""
  return _peak(str(jnp.dtype(dtype)), _matmul_precision())


def mfu(flops: float, seconds: float, peak: Optional[float]) -> Optional[float]:
  """flops / seconds / peak: the fraction of the peak the model's FLOPs used (None without a
  peak or a positive time)."""
  if peak is None or peak <= 0 or seconds <= 0:
    return None
  return flops / seconds / peak
