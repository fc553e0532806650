"""Entry point: `python -m rlhf_jax.main --config=configs/<name>.py[:variant] --workdir=DIR
[--config.a.b=value ...]` (also installed as the `rlhf-jax` console script)."""

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


def run(config, workdir: str):
  from rlhf_jax import stages  # pylint: disable=g-import-not-at-top
  from rlhf_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  distributed.initialize(config)
  return stages.get_stage(config.stage).run(config, workdir)


def main(argv=None) -> int:
  args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from rlhf_jax import validate  # pylint: disable=g-import-not-at-top
  try:
    config = configlib.get(args.config, overrides)
    validate.validate(config)
  except (KeyError, ValueError, FileNotFoundError, TypeError) as e:
    print(f"rlhf-jax: config error: {e.args[0] if e.args else e}", file=sys.stderr)
    return 2
  run(config, args.workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
