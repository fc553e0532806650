"""Recipes: several stages in order, each starting from an earlier one's export.

A recipe config has `stage = "recipe"`, `recipe.steps` (step names in order), one full stage
config per step under `config.<step>` and `recipe.links`, triples (step, field, from_step) that
set `config.<step>.<field>` to `<workdir>/<from_step>` before the step runs, e.g.
  ("ppo", "init.from_workdir", "sft"), ("ppo", "reward.from_workdir", "reward_model").
A recipe may also have `recipe.shared`, dotted fields (e.g. "data.manual_dir") whose value at
the recipe's top level (`config.data.manual_dir`), when set, is copied into every step that has
the field, so one override reaches all steps; and `recipe.required`, fields
("sft.model.hf_path") that must be set, e.g. by a variant that needs a checkpoint.
Step k runs in `<workdir>/<step>`; a step whose export already exists and whose recorded
config equals its config now is skipped, so rerunning the command resumes the recipe (and a step
interrupted mid-way resumes from its checkpoint). Before any step runs, every step's config is
compared with the one recorded in its workdir (train/workdir.py): a changed step stops the
recipe up front with the differing fields (`--config.<step>.train.allow_config_change=True`
accepts the fields safe to change on resume; the step then runs again and resumes).
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax

from rlhf_jax import stages, validate
from rlhf_jax.train import metrics, report, workdir as workdir_lib


def _set(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  if leaf not in node:
    raise KeyError(f"recipe link: {dotted!r} is not a field; valid keys: {sorted(node.keys())}")
  node[leaf] = value


def apply_shared(config) -> None:
  """Copies each set `recipe.shared` field from the recipe's top level into every step."""
  for dotted in config.recipe.get("shared", ()):
    value = _get(config, dotted)
    if value in (None, "", ()):
      continue
    for step in config.recipe.steps:
      try:
        _get(config[step], dotted)
      except KeyError:
        continue
      _set(config[step], dotted, value)


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def check(config) -> None:
  for dotted in config.recipe.get("required", ()):
    if _get(config, dotted) in (None, "", ()):
      raise ValueError(f"recipe: {dotted} must be set (--config.{dotted}=...)")
  steps = list(config.recipe.steps)
  if len(set(steps)) != len(steps):
    raise ValueError(f"recipe.steps has duplicates: {steps}")
  for step in steps:
    if step not in config:
      raise ValueError(f"recipe step {step!r} has no config (config.{step}); steps: {steps}")
    validate.validate(config[step])
  for step, field, source in config.recipe.links:
    if step not in steps or source not in steps or steps.index(source) >= steps.index(step):
      raise ValueError(f"recipe link ({step!r}, {field!r}, {source!r}): both must be steps and "
                       f"{source!r} must come before {step!r}; steps: {steps}")


def _linked(config, workdir: str) -> None:
  """Sets every link's field to its source step's workdir (absolute)."""
  for target, field, source in config.recipe.links:
    _set(config[target], field, os.path.abspath(os.path.join(workdir, source)))


def check_workdirs(config, workdir: str) -> dict[str, bool]:
  """Compares each step's config with the one recorded in its workdir, before any step runs;
  raises one ConfigChangedError listing every changed step. Returns step -> whether the step's
  export exists under an unchanged config (so it is skipped)."""
  done, errors = {}, []
  for step in config.recipe.steps:
    step_dir = os.path.join(workdir, step)
    try:
      recorded = workdir_lib.check_config(config[step], step_dir, name=f"recipe step {step!r}",
                                          override_prefix=f"{step}.")
    except workdir_lib.ConfigChangedError as e:
      errors.append(str(e))
      continue
    unchanged = recorded and not workdir_lib.config_diff(
        workdir_lib.recorded_config(step_dir), config[step].to_dict())
    done[step] = unchanged and os.path.exists(os.path.join(step_dir, "export", "export.json"))
  if errors:
    raise workdir_lib.ConfigChangedError("\n".join(errors))
  return done


def run(config, workdir: str) -> dict:
  apply_shared(config)
  check(config)
  _linked(config, workdir)
  done = check_workdirs(config, workdir)
  summary, table = {}, []
  for step in config.recipe.steps:
    sub = config[step]
    step_dir = os.path.join(workdir, step)
    seconds = None
    if done[step]:
      logging.info("recipe: %s already done (%s), skipping", step, step_dir)
    else:
      logging.info("recipe: running %s (stage %s) in %s", step, sub.stage, step_dir)
      start = time.perf_counter()
      stages.run(sub, step_dir, name=f"recipe step {step!r}", override_prefix=f"{step}.")
      seconds = time.perf_counter() - start
    summary[step] = {"stage": sub.stage, "workdir": os.path.abspath(step_dir)}
    path = os.path.join(step_dir, "metrics.jsonl")
    table.append({"step": step, "stage": sub.stage, "seconds": seconds,
                  "rows": metrics.read_jsonl(path) if os.path.exists(path) else [],
                  "export_dir": report.export_dir(step_dir)})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "recipe.json"), "w") as f:
      json.dump(summary, f, indent=1)
  report.show(f"recipe {os.path.abspath(workdir)} done:\n" + report.recipe_table(table))
  return summary
