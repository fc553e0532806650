"""Entry point: `python -m rlhf_jax.main --config=configs/<name>.py[:variant] --workdir=DIR
[--config.a.b=value ...]` (also installed as the `rlhf-jax` console script).

`rlhf-jax export --workdir=RUN --hf=OUT [...]` writes a run's export as a Hugging Face
checkpoint instead (rlhf_jax/export_hf.py)."""

from __future__ import annotations

import argparse
import logging
import sys

from rlhf_jax import configlib


def parse_args(argv):
  rest, overrides = configlib.split_overrides(argv)
  parser = argparse.ArgumentParser(prog="rlhf-jax", description=__doc__)
  parser.add_argument("--config", required=True, help="configs/<name>.py[:variant,...]")
  parser.add_argument("--workdir", required=True, help="checkpoints, metrics and caches go here")
  parser.add_argument("--log_level", default="INFO")
  args = parser.parse_args(rest)
  return args, overrides


def setup(config) -> None:
  """Joins the processes of a multi-host run and checks the mesh against the devices."""
  import jax  # pylint: disable=g-import-not-at-top
  from rlhf_jax import validate  # pylint: disable=g-import-not-at-top
  from rlhf_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(config)
  validate.check_devices(config, jax.device_count())


def run(config, workdir: str):
  """Installs the SIGTERM/SIGINT handlers (train/preemption.py) and runs the stage
  (stages.run: the workdir's lock and config fingerprint first)."""
  from rlhf_jax import stages  # pylint: disable=g-import-not-at-top
  from rlhf_jax.train import preemption  # pylint: disable=g-import-not-at-top
  preemption.install()
  return stages.run(config, workdir)


def _fail(kind: str, error: BaseException, code: int) -> int:
  print(f"rlhf-jax: {kind}: {error}", file=sys.stderr)
  return code


def main(argv=None) -> int:
  """Exit status: 0 done; 2 config error (nothing ran); 3 the run went wrong (non-finite values,
  no restorable checkpoint) and stopped without an export; 4 the workdir is in use or holds
  another config; 128 + N stopped by signal N after checkpointing (rerun to resume)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["export"]:
    from rlhf_jax import export_hf  # pylint: disable=g-import-not-at-top
    return export_hf.main(argv[1:])
  args, overrides = parse_args(argv)
  logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from rlhf_jax import validate  # pylint: disable=g-import-not-at-top
  from rlhf_jax.train import checkpoint, nonfinite, preemption, workdir  # pylint: disable=g-import-not-at-top
  try:
    config = configlib.get(args.config, overrides)
    validate.validate(config)
    setup(config)
  except (KeyError, ValueError, FileNotFoundError, TypeError) as e:
    return _fail("config error", e.args[0] if e.args else e, 2)
  try:
    run(config, args.workdir)
  except (workdir.ConfigChangedError, workdir.WorkdirBusyError) as e:
    return _fail("workdir", e, 4)
  except (nonfinite.NonFiniteError, checkpoint.NoCheckpointError) as e:
    return _fail("run stopped", e, 3)
  except preemption.Preempted as e:
    return _fail("preempted", e, e.exit_code)
  return 0


if __name__ == "__main__":
  sys.exit(main())
