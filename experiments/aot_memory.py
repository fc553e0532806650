"""Ahead-of-time memory of a (1B-class) SFT step, from abstract shapes only.

Builds the config's model under `nnx.eval_shape` (no parameter is ever allocated), lowers and
compiles the SFT train step exactly as the stage jits it (bfloat16 compute, float32 master
weights, remat, micro-batches, LoRA if configured) on the config's mesh, and prints XLA's memory
analysis next to an estimate of device memory per role of an RLHF run (policy, reference, critic,
reward model, optimizer states) from parameter counts, dtypes and shard shapes.

  python experiments/aot_memory.py                                   # configs/sft_1b.py
  python experiments/aot_memory.py --config=configs/sft_1b.py:lora --out=/tmp/aot_1b_lora.json
  python experiments/aot_memory.py --config=configs/sft.py --config.model.preset=small

The 8 CPU devices are simulated (XLA_FLAGS=--xla_force_host_platform_device_count=8, set here
unless XLA_FLAGS already asks for a device count). The vocabulary is the preset's unless
--vocab_size says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlhf_jax import configlib, models  # noqa: E402
from rlhf_jax.stages import common  # noqa: E402
from rlhf_jax.train import aot, precision  # noqa: E402


def main(argv=None) -> int:
  rest, overrides = configlib.split_overrides(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/sft_1b.py")
  parser.add_argument("--vocab_size", type=int, default=0, help="0: the preset's")
  parser.add_argument("--out", default="", help="also write the figures to this JSON file")
  args = parser.parse_args(rest)
  config = configlib.get(args.config, overrides)
  extra = {"vocab_size": args.vocab_size} if args.vocab_size else {}
  model_cfg = precision.apply_model_options(  # + the run's remat, attention, lm_head_chunk
      models.get_model_config(config.model.preset, family=config.model.family,
                              dtype=config.model.dtype, **extra), config)
  mesh, rules = common.mesh_and_rules(config)
  print(f"model {config.model.preset}: {model_cfg.num_params():,} parameters, compute "
        f"{model_cfg.dtype}, params {model_cfg.param_dtype}, remat {model_cfg.remat}, "
        f"lm_head_chunk {model_cfg.lm_head_chunk}, "
        f"lora rank {config.lora.rank}; mesh {dict(mesh.shape)}; batch {config.data.batch_size} x "
        f"{config.data.prompt_len + config.data.completion_len} in "
        f"{config.train.microbatches} micro-batches")
  report = aot.sft_report(config, model_cfg, mesh, rules)
  print(f"\ncompiled in {report.compile_seconds:.1f} s; memory analysis (bytes per device):")
  print(aot.format_memory(report.memory))
  print(f"\ntrain state per device {report.state_per_device_bytes:,} B + batch "
        f"{report.batch_per_device_bytes:,} B vs compiled arguments "
        f"{report.memory['argument_size_in_bytes']:,} B")
  print("\nestimated memory per role of an RLHF run on this mesh:")
  print(aot.format_roles(report.roles))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"config": args.config, "overrides": overrides,
                 "model": dataclasses.asdict(model_cfg),
                 "mesh": dict(mesh.shape), "memory": report.memory,
                 "roles": [dataclasses.asdict(r) for r in report.roles],
                 "state_per_device_bytes": report.state_per_device_bytes,
                 "batch_per_device_bytes": report.batch_per_device_bytes,
                 "compile_seconds": report.compile_seconds}, f, indent=1, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
