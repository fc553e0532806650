"""Entry point, installed as the `rlhf-jax` console script (or `python -m rlhf_jax.main ...`):

  rlhf-jax --config=configs/<name>.py[:variant,...] --workdir=DIR [--config.a.b=value ...]
      runs the config; the same command into the same workdir resumes
  rlhf-jax configs [--configs_dir=DIR]
      lists the config files, each with its description and variants (rlhf_jax/configlist.py)
  rlhf-jax show --config=configs/<name>.py[:variant,...] [--config.a.b=value ...]
      prints the resolved config (overrides applied, validated as a run would) and exits
  rlhf-jax export --workdir=RUN --hf=OUT [...]
      writes a run's export as a Hugging Face checkpoint (rlhf_jax/export_hf.py)

`rlhf-jax configs --help`, `rlhf-jax show --help`, `rlhf-jax export --help` for their options.
"""

from __future__ import annotations

import argparse
import logging
import sys

from rlhf_jax import configlib, configlist

# What a bad config, variant or override raises while loading and validating: exit status 2.
CONFIG_ERRORS = (KeyError, ValueError, FileNotFoundError, TypeError)


def parse_args(argv):
  rest, overrides = configlib.split_overrides(argv)
  parser = argparse.ArgumentParser(
      prog="rlhf-jax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
      usage="rlhf-jax --config=FILE[:variant,...] --workdir=DIR [--config.a.b=value ...]\n"
            "       rlhf-jax {configs,show,export} ...")
  parser.add_argument("--config", required=True, help="configs/<name>.py[:variant,...]")
  parser.add_argument("--workdir", required=True, help="checkpoints, metrics and caches go here")
  parser.add_argument("--log_level", default="INFO")
  args = parser.parse_args(rest)
  return args, overrides


def load_config(spec: str, overrides, *, stageless_ok: bool = False):
  """The config a run gets: loaded, variants and overrides applied, locked, validated.
  `stageless_ok`: a config without a `stage` field (read by a script in experiments/, e.g.
  configs/overoptimization.py) is returned unvalidated instead of failing validation."""
  from rlhf_jax import validate  # pylint: disable=g-import-not-at-top
  config = configlib.get(spec, overrides)
  if "stage" in config or not stageless_ok:
    validate.validate(config)
  return config


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


def _config_error(e: BaseException) -> int:
  return _fail("config error", e.args[0] if e.args else e, 2)


def show(argv) -> int:
  """`rlhf-jax show --config=FILE[:variants] [--config.a.b=v ...]`: prints the resolved config
  (rlhf_jax/configlist.py's format) and exits 0, or 2 with the run's config error; runs nothing
  (the mesh is not checked against devices)."""
  try:
    rest, overrides = configlib.split_overrides(argv)
    args = configlist.parse_show_args(rest)
    config = load_config(args.config, overrides, stageless_ok=True)
  except CONFIG_ERRORS as e:
    return _config_error(e)
  given = " ".join([args.config] + [f"--config.{k}={v}" for k, v in overrides])
  print(f"# {given}")
  if "stage" not in config:
    print("# not validated: no `stage` field (a script in experiments/ reads this config; "
          "rlhf-jax does not run it)")
  print(configlist.format_config(config))
  return 0


def main(argv=None) -> int:
  """Exit status: 0 done; 2 config error (nothing ran); 3 the run went wrong (non-finite values,
  no restorable checkpoint) and stopped without an export; 4 the workdir is in use or holds
  another config; 128 + N stopped by signal N after checkpointing (rerun to resume)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["export"]:
    from rlhf_jax import export_hf  # pylint: disable=g-import-not-at-top
    return export_hf.main(argv[1:])
  if argv[:1] == ["configs"]:
    return configlist.configs_main(argv[1:])
  if argv[:1] == ["show"]:
    return show(argv[1:])
  try:
    args, overrides = parse_args(argv)
  except ValueError as e:  # an override without a value
    return _config_error(e)
  logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
  for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from rlhf_jax.train import checkpoint, nonfinite, preemption, workdir  # pylint: disable=g-import-not-at-top
  logging.info("config %s%s", args.config, "".join(f" --config.{k}={v}" for k, v in overrides))
  try:
    config = load_config(args.config, overrides)
    setup(config)
  except CONFIG_ERRORS as e:
    return _config_error(e)
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
