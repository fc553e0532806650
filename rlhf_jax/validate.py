"""Up-front checks of a config's named choices, so a typo fails before any work starts, with a
message listing the valid names."""

from __future__ import annotations

from rlhf_jax import models, stages
from rlhf_jax.data import builders, pipeline
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


def validate(config) -> None:
  """Raises ValueError naming the first field whose value is not among the valid choices."""
  for field, value, valid in _choices(config):
    if value not in valid:
      raise ValueError(f"unknown {field} {value!r}; valid choices: {valid}")
