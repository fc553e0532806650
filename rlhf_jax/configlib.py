"""Loading experiment configs: `configs/<name>.py[:arg]`, `--config.a.b=value` overrides, locking.

A config file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`; the arg string
selects variants (`:test`, `:tiny,runlocal`). Its variants are a module-level
`VARIANTS: dict[str, str]` (name -> one-line description) that get_config checks the arg
against with `parse_variants(arg, VARIANTS)`; `rlhf-jax configs` lists them with the first line
of the module docstring (rlhf_jax/configlist.py). Overrides are parsed according to the type of
the field they replace; an unknown key fails with the list of valid keys at that level.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import types
from typing import Any, Iterable, Sequence

import ml_collections


def load_module(path: str) -> types.ModuleType:
  """Executes the config file `path` as a module (defining get_config, VARIANTS, ...) without
  calling get_config."""
  name = "rlhf_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]` and calls its `get_config(arg)`."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found (from --config={spec})")
  module = load_module(path)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path!r} defines no get_config(arg)")
  config = module.get_config(arg or None)
  if not isinstance(config, ml_collections.ConfigDict):
    raise TypeError(f"{path}: get_config must return a ConfigDict, got {type(config).__name__}")
  return config


def sub_config(recipe_file: str, spec: str) -> ml_collections.ConfigDict:
  """Loads `spec` (e.g. "sft.py:enumerable") from the folder of the recipe file `recipe_file`."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(recipe_file)), spec))


def parse_variants(arg: str | None, valid: Iterable[str]) -> set[str]:
  """Splits a comma-separated arg string into variant names, rejecting unknown ones. `valid`: the
  names, e.g. the config file's VARIANTS dict (its keys)."""
  valid = set(valid)
  got = {a.strip() for a in (arg or "").split(",") if a.strip()}
  unknown = got - valid
  if unknown:
    raise ValueError(f"unknown config variant(s) {sorted(unknown)}; valid variants: {sorted(valid)}")
  return got


def _parse_value(text: str, current: Any, key: str) -> Any:
  if isinstance(current, str):
    return text
  if isinstance(current, bool):
    low = text.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise ValueError(f"--config.{key}={text}: expected a boolean (true/false)")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text  # a None field takes a string as given
    raise ValueError(f"--config.{key}={text}: cannot parse as {type(current).__name__}") from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if current is not None and not isinstance(value, type(current)):
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
      return type(current)(value)
    raise ValueError(f"--config.{key}={text}: expected {type(current).__name__}, "
                     f"got {type(value).__name__}")
  return value


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return None


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Sets dotted `key` to the parsed `text`; unknown keys list the valid ones."""
  parts = key.split(".")
  node = config
  for depth, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = ".".join(parts[:depth]) or "<root>"
      valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise KeyError(f"unknown config key {key!r}: {part!r} is not a field of {where}; "
                     f"valid keys: {valid}")
    if depth < len(parts) - 1:
      node = node[part]
  leaf = parts[-1]
  current = node[leaf]
  if isinstance(current, ml_collections.ConfigDict):
    value = _literal(text)
    if isinstance(value, dict):  # a whole group as a dict, e.g. reward.function_params
      with node.unlocked():
        node[leaf] = ml_collections.ConfigDict(value)
      return
    raise KeyError(f"config key {key!r} is a group, not a value; set one of "
                   f"{sorted(current.keys())}, or the whole group as a dict literal")
  with node.unlocked():
    node[leaf] = _parse_value(text, current, key)


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Separates `--config.a.b=v` / `--config.a.b v` overrides from the other arguments."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      body = arg[len("--config."):]
      if "=" in body:
        key, value = body.split("=", 1)
      elif i + 1 < len(argv):
        key, value = body, argv[i + 1]
        i += 1
      else:
        raise ValueError(f"{arg}: missing value")
      overrides.append((key, value))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def get(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
  """Loads the config, applies overrides in order and locks it (no new keys afterwards)."""
  config = load_config_file(spec)
  for key, value in overrides:
    apply_override(config, key, value)
  config.lock()
  return config
