"""Up-front checks of a config's named choices, so a typo fails before any work starts, with a
message listing the valid names."""

from __future__ import annotations

from rlhf_jax import models, stages
from rlhf_jax.data import builders, pipeline
from rlhf_jax.models import hf
from rlhf_jax.train import optimizer


def _choices(config) -> list[tuple[str, object, list]]:
  checks = [("stage", config.stage, sorted(stages.STAGES))]
  if "optimizer" in config:
    checks += [("optimizer.name", config.optimizer.name, sorted(optimizer.OPTIMIZERS)),
               ("optimizer.schedule", config.optimizer.schedule, list(optimizer.SCHEDULES))]
  if "model" in config:
    checks.append(("model.preset", config.model.preset, sorted(models.PRESETS)))
    checks.append(("model.family", config.model.family, sorted(models.FAMILIES)))
  if "task" in config:
    checks.append(("task.name", config.task.name, sorted(builders.TASKS)))
  if "data" in config:
    checks.append(("data.overlong", config.data.overlong, list(pipeline.OVERLONG_POLICIES)))
  if "loss" in config and "name" in config.loss:
    from rlhf_jax import losses  # pylint: disable=g-import-not-at-top
    checks.append(("loss.name", config.loss.name, sorted(losses.names())))
  return checks


def _check_sft_data_options(config) -> None:
  """data.packing / data.length_buckets: SFT only, buckets within the padded length."""
  data = config.data
  packing, buckets = data.get("packing", False), tuple(data.get("length_buckets", ()))
  if (packing or buckets) and config.stage != "sft":
    raise ValueError(f"data.packing / data.length_buckets are options of the sft stage only, "
                     f"not of stage {config.stage!r}")
  if buckets:
    pipeline.check_length_buckets(buckets, data.prompt_len + data.completion_len)


def check_hf_path(config) -> None:
  """model.hf_path: a stage that reads it, not with init.from_workdir, and a directory with
  config.json, safetensors weights and a tokenizer (file names and config.json only)."""
  path = config.model.get("hf_path", "") if "model" in config else ""
  if not path:
    return
  if config.stage not in stages.HF_PATH_STAGES:
    raise ValueError(f"model.hf_path is read by stages {list(stages.HF_PATH_STAGES)} only, not "
                     f"{config.stage!r}: run sft with it first and start {config.stage!r} from "
                     "that run (init.from_workdir)")
  if "init" in config and config.init.from_workdir:
    raise ValueError(f"model.hf_path={path!r} and init.from_workdir="
                     f"{config.init.from_workdir!r} both name the starting weights; set only one")
  try:
    hf.check_dir(path)
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f"model.hf_path={path!r}: {e}") from None


def validate(config) -> None:
  """Raises ValueError naming the first field whose value is not among the valid choices."""
  for field, value, valid in _choices(config):
    if value not in valid:
      raise ValueError(f"unknown {field} {value!r}; valid choices: {valid}")
  if "data" in config and config.stage != "recipe":
    _check_sft_data_options(config)
  if "model" in config and config.stage != "recipe":
    check_hf_path(config)
