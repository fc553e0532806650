"""Config discovery on the command line: `rlhf-jax configs` lists the config files and their
variants; `rlhf-jax show` prints a resolved config as nested, sorted `key: value` lines.

The listing reads each `configs/<name>.py` as a module without calling its get_config: the first
line of its docstring (the summary) and its `VARIANTS: dict[str, str]` (variant name -> one-line
description; configlib.parse_variants checks the arg string against it). A file without
VARIANTS lists "no variants"; one that does not load lists its error.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import ml_collections

from rlhf_jax import configlib

INDENT = "  "


def default_configs_dir() -> str:
  """`configs` in the current directory when there is one (a checkout's root, as the README
  runs), else the configs/ of the checkout this package was imported from."""
  if os.path.isdir("configs"):
    return "configs"
  here = os.path.dirname(os.path.abspath(__file__))
  return os.path.join(os.path.dirname(here), "configs")


def config_files(configs_dir: str) -> list[str]:
  if not os.path.isdir(configs_dir):
    raise FileNotFoundError(f"configs directory {configs_dir!r} not found; pass "
                            f"--configs_dir=DIR (a directory of <name>.py config files)")
  names = sorted(n for n in os.listdir(configs_dir)
                 if n.endswith(".py") and not n.startswith("_"))
  return [os.path.join(configs_dir, n) for n in names]


def describe(path: str) -> tuple[str, dict[str, str] | None]:
  """(summary, variants) of a config file: its docstring's first line and its VARIANTS (None
  when it defines none). Raises TypeError when VARIANTS is not a dict of str -> str."""
  module = configlib.load_module(path)
  doc = inspect.cleandoc(module.__doc__ or "")
  summary = doc.splitlines()[0] if doc else "(no docstring)"
  variants = getattr(module, "VARIANTS", None)
  if variants is not None and not (
      isinstance(variants, dict)
      and all(isinstance(k, str) and isinstance(v, str) for k, v in variants.items())):
    raise TypeError(f"{path}: VARIANTS must be a dict of variant name -> one-line description, "
                    f"got {type(variants).__name__}")
  return summary, variants


def listing(configs_dir: str) -> str:
  """One line per config file (`path  summary`), then one indented line per variant."""
  rows: list[tuple[str, str]] = []
  for path in config_files(configs_dir):
    try:
      summary, variants = describe(path)
    except Exception as e:  # pylint: disable=broad-except  (one bad file must not hide the rest)
      rows.append((path, f"(cannot load: {type(e).__name__}: {e})"))
      continue
    rows.append((path, summary))
    if not variants:
      rows.append((INDENT + "(no variants)", ""))
    for name, text in (variants or {}).items():
      rows.append((f"{INDENT}:{name}", text))
  width = max((len(left) for left, _ in rows), default=0) + 2
  return "\n".join(f"{left:<{width}}{right}".rstrip() for left, right in rows)


def _lines(config: ml_collections.ConfigDict, depth: int) -> list[str]:
  out = []
  for key in sorted(config.keys()):
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out.append(f"{INDENT * depth}{key}:")
      out += _lines(value, depth + 1) if value.keys() else [f"{INDENT * (depth + 1)}{{}}"]
    else:
      out.append(f"{INDENT * depth}{key}: {value!r}")
  return out


def format_config(config: ml_collections.ConfigDict) -> str:
  """Nested, sorted `key: value` lines, a group's fields indented under it; values as Python
  literals, as `--config.a.b=value` takes them."""
  return "\n".join(_lines(config, 0))


def parse_configs_args(argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="rlhf-jax configs",
      description="Lists every config file with its one-line description and its variants "
                  "(`--config=FILE:variant,...`).")
  parser.add_argument(
      "--configs_dir", default=None,
      help="directory of <name>.py config files; default: ./configs when the current directory "
           "has one (a checkout's root), else the configs/ of the checkout rlhf_jax was "
           "imported from")
  return parser.parse_args(argv)


def parse_show_args(argv) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="rlhf-jax show",
      description="Prints the resolved config (variants and --config.a.b=value overrides "
                  "applied, validated as a run validates it) and exits; runs nothing.",
      usage="rlhf-jax show --config=configs/<name>.py[:variant,...] [--config.a.b=value ...]")
  parser.add_argument("--config", required=True, help="configs/<name>.py[:variant,...]")
  return parser.parse_args(argv)


def configs_main(argv) -> int:
  """`rlhf-jax configs [--configs_dir=DIR]`: prints the listing; 2 when DIR does not exist."""
  args = parse_configs_args(argv)
  configs_dir = args.configs_dir or default_configs_dir()
  try:
    text = listing(configs_dir)
  except FileNotFoundError as e:
    print(f"rlhf-jax: config error: {e}", file=sys.stderr)
    return 2
  print(text)
  return 0
