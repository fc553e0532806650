"""Recipes: several stages in order, each starting from an earlier one's export.

A recipe config has `stage = "recipe"`, `recipe.steps` (step names in order), one full stage
config per step under `config.<step>` and `recipe.links`, triples (step, field, from_step) that
set `config.<step>.<field>` to `<workdir>/<from_step>` before the step runs, e.g.
  ("ppo", "init.from_workdir", "sft"), ("ppo", "reward.from_workdir", "reward_model").
Step k runs in `<workdir>/<step>`; a step whose export already exists is skipped, so rerunning
the command resumes the recipe (and a step interrupted mid-way resumes from its checkpoint).
"""

from __future__ import annotations

import json
import logging
import os

import jax

from rlhf_jax import stages, validate


def _set(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  if leaf not in node:
    raise KeyError(f"recipe link: {dotted!r} is not a field; valid keys: {sorted(node.keys())}")
  node[leaf] = value


def check(config) -> None:
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


def run(config, workdir: str) -> dict:
  check(config)
  summary = {}
  for step in config.recipe.steps:
    sub = config[step]
    step_dir = os.path.join(workdir, step)
    for target, field, source in config.recipe.links:
      if target == step:
        _set(sub, field, os.path.abspath(os.path.join(workdir, source)))
    if os.path.exists(os.path.join(step_dir, "export", "export.json")):
      logging.info("recipe: %s already done (%s), skipping", step, step_dir)
    else:
      logging.info("recipe: running %s (stage %s) in %s", step, sub.stage, step_dir)
      stages.get_stage(sub.stage).run(sub, step_dir)
    summary[step] = {"stage": sub.stage, "workdir": os.path.abspath(step_dir)}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "recipe.json"), "w") as f:
      json.dump(summary, f, indent=1)
  return summary
