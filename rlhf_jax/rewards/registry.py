"""Reward functions chosen by config: built-ins and user functions, weighted and summed.

Config (`config.reward`):

  functions        the reward functions, as one string of comma-separated entries (the form that
                   `--config.reward.functions=...` overrides on the command line) or a tuple/list
                   of entry strings. The reward is the weighted sum of all of them.
  function_params  {name: {param: value}}: parameters of the entry called `name` (optional).

Entry grammar: `[name=]target[*weight]`

  target   a built-in name (rewards/verifiable.py BUILTINS: math_answer | format | length) or a
           user function `package.module:function` (the attribute may be dotted:
           `pkg.mod:Class.method`); the module must be importable (on sys.path / PYTHONPATH).
  weight   a float literal after the last `*` (`0.5`, `-1`, `1e-3`); default 1.0. A weight of
           0 computes and reports the function without rewarding it.
  name     the short name: the key in `function_params` and the metric name of the function's
           raw score. Default: the built-in's name or the user function's (last) attribute name.
           Give one to use a target twice (two `format` patterns) or to rename it.

Entries hold no parameters, so a regex (with its ':' and '*') never needs escaping: it goes in
`function_params`. Whitespace around the parts is ignored. Examples:

  c.reward.functions = "math_answer, format*0.2, my_pkg.rewards:brevity*0.5"
  c.reward.function_params = {"format": {"pattern": r"<think>.*</think>\\s*<answer>.*</answer>"}}

  c.reward.functions = ("math_answer", "tags=format*0.1", "strict=format*0.1", "length*-0.01")
  c.reward.function_params = {"tags": {"pattern": r".*<answer>.*</answer>"},
                              "strict": {"pattern": r"<answer>-?\\d+</answer>"},
                              "length": {"target": 200, "unit": "words"}}

User-function contract (TRL's reward_funcs convention):
`fn(prompts: list[str], completions: list[str], **columns) -> sequence of B numbers`. Columns are
the prompt records' other fields, each a list of length B. A function receives the columns it
names as parameters (a parameter with no default is a required column: `columns_needed`), or
every column if it takes **kwargs. For a user function, `function_params[name]` are fixed keyword
arguments. Whatever it returns is checked (a sequence, B finite numbers) before training sees it;
a wrong value is a ValueError naming the function, what was wrong and where.

`check(config.reward)` resolves every entry (imports the modules, builds the built-ins, matches
parameters against signatures) so that a typo fails at config time, before data preparation.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import inspect
import math
import numbers
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from rlhf_jax.rewards import verifiable

_ENTRY_RE = re.compile(
    r"\s*(?:(?P<name>[A-Za-z_]\w*)\s*=\s*)?"
    r"(?P<target>[A-Za-z_][\w.]*(?::[A-Za-z_][\w.]*)?)"
    r"\s*(?:\*\s*(?P<weight>[^*]*?))?\s*")
_GRAMMAR = ("entries are '[name=]target[*weight]': a built-in (" + " | ".join(verifiable.BUILTINS)
            + ") or 'package.module:function', e.g. 'math_answer', 'format*0.2', "
            "'my_pkg.rewards:brevity*0.5'; parameters (a format pattern) go in "
            "config.reward.function_params[name]")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parsed entry of `config.reward.functions`."""
  text: str      # as written
  name: str      # short name: function_params key and metric name
  target: str    # a built-in name or 'module:attribute'
  weight: float

  @property
  def is_builtin(self) -> bool:
    return ":" not in self.target


@dataclasses.dataclass(frozen=True)
class RewardFunction:
  """A resolved entry: the callable, its fixed keyword arguments and the columns it reads."""
  entry: Entry
  fn: Callable[..., Any]
  params: Mapping[str, Any]            # fixed keyword arguments (user functions)
  positional: tuple[str, ...]          # parameter names that receive prompts, completions
  columns: Mapping[str, bool]          # column parameter -> required (no default)
  takes_kwargs: bool                   # **kwargs: every column is passed

  @property
  def label(self) -> str:
    """How messages name the function: `'brevity' (my_pkg.rewards:brevity)`."""
    kind = "built-in " if self.entry.is_builtin else ""
    return f"'{self.entry.name}' ({kind}{self.entry.target})"


def split_entries(functions: Any) -> list[str]:
  """`config.reward.functions` as a list of entry strings: a string is split on commas, a
  tuple/list is taken element by element (each element may itself hold commas); blanks dropped."""
  if functions is None:
    return []
  if isinstance(functions, str):
    parts = functions.split(",")
  elif isinstance(functions, (tuple, list)):
    parts = []
    for item in functions:
      if not isinstance(item, str):
        raise ValueError(f"config.reward.functions: every entry must be a string, got "
                         f"{item!r} ({type(item).__name__}); {_GRAMMAR}")
      parts.extend(item.split(","))
  else:
    raise ValueError(f"config.reward.functions must be a string or a tuple of strings, got "
                     f"{type(functions).__name__} {functions!r}; {_GRAMMAR}")
  return [p.strip() for p in parts if p.strip()]


def parse_entry(text: str) -> Entry:
  """One entry string as an `Entry`; a malformed entry or unknown built-in is a ValueError."""
  where = f"config.reward.functions entry {text!r}"
  m = _ENTRY_RE.fullmatch(text)
  if not m:
    raise ValueError(f"{where}: malformed; {_GRAMMAR}")
  target, weight_text = m.group("target"), m.group("weight")
  weight = 1.0
  if weight_text is not None:
    try:
      weight = float(weight_text)
    except ValueError:
      raise ValueError(f"{where}: weight {weight_text!r} after '*' is not a number; "
                       f"{_GRAMMAR}") from None
    if not math.isfinite(weight):
      raise ValueError(f"{where}: weight must be finite, got {weight_text!r}")
  if ":" not in target and target not in verifiable.BUILTINS:
    hint = ""
    if "." in target:
      module, _, attr = target.rpartition(".")
      hint = f"; a user function is written 'module:function' (did you mean '{module}:{attr}'?)"
    raise ValueError(f"{where}: unknown built-in {target!r}; built-ins: "
                     f"{sorted(verifiable.BUILTINS)}{hint}")
  name = m.group("name") or target.rpartition(":")[2].rpartition(".")[2]
  return Entry(text=text, name=name, target=target, weight=weight)


def _import_target(entry: Entry) -> Callable[..., Any]:
  """The callable a user entry names, or a ValueError saying which part failed."""
  where = f"config.reward.functions entry {entry.text!r}"
  module_name, _, attr_path = entry.target.partition(":")
  try:
    obj = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
      raise ValueError(f"{where}: no module named {module_name!r} (is its directory on "
                       "sys.path / PYTHONPATH?)") from e
    raise ValueError(f"{where}: importing module {module_name!r} failed: {e}") from e
  except Exception as e:  # the user module's own import-time error
    raise ValueError(f"{where}: importing module {module_name!r} raised "
                     f"{type(e).__name__}: {e}") from e
  path = module_name
  for part in attr_path.split("."):
    if not hasattr(obj, part):
      public = sorted(n for n in dir(obj) if not n.startswith("_")
                      and callable(getattr(obj, n, None)))
      raise ValueError(f"{where}: {path!r} has no attribute {part!r}; its public callables: "
                       f"{public[:30]}")
    obj, path = getattr(obj, part), f"{path}.{part}"
  if not callable(obj):
    raise ValueError(f"{where}: {entry.target} is a {type(obj).__name__}, not callable")
  return obj


def _builtin(entry: Entry, params: Mapping[str, Any]) -> Callable[..., Any]:
  """The built-in's reward function, its parameters checked against its factory."""
  factory = verifiable.BUILTINS[entry.target]
  accepted = list(inspect.signature(factory).parameters)
  where = (f"config.reward.functions entry {entry.text!r} (parameters in "
           f"config.reward.function_params[{entry.name!r}])")
  try:
    inspect.signature(factory).bind(**params)
  except TypeError as e:
    raise ValueError(f"{where}: {e}; built-in {entry.target} takes {accepted or 'no parameters'}"
                     f"; given {sorted(params)}") from None
  try:
    return factory(**params)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from e


def resolve(entry: Entry, params: Optional[Mapping[str, Any]] = None) -> RewardFunction:
  """An entry as a `RewardFunction`: imported or built, its signature matched against the call
  `fn(prompts, completions, **params, **columns)`."""
  params = dict(params or {})
  where = f"config.reward.functions entry {entry.text!r}"
  if entry.is_builtin:
    fn, fixed = _builtin(entry, params), {}
  else:
    fn, fixed = _import_target(entry), params
  try:
    sig = inspect.signature(fn)
  except (TypeError, ValueError):  # no introspectable signature: pass every column
    return RewardFunction(entry, fn, fixed, (), {}, True)
  try:
    bound = sig.bind_partial(None, None)
  except TypeError:
    raise ValueError(f"{where}: {entry.target}{sig} must accept (prompts, completions) as its "
                     "first two positional arguments") from None
  positional = tuple(bound.arguments)
  params_by_name = sig.parameters
  takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params_by_name.values())
  for key in fixed:
    p = params_by_name.get(key)
    ok = (p is not None and key not in positional
          and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) or (p is None and takes_kwargs)
    if not ok:
      raise ValueError(f"{where}: {entry.target}{sig} takes no keyword parameter {key!r} (from "
                       f"config.reward.function_params[{entry.name!r}])")
  columns = {}
  for pname, p in params_by_name.items():
    if pname in positional or pname in fixed or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
      continue
    required = p.default is p.empty
    if p.kind is p.POSITIONAL_ONLY:
      if required:
        raise ValueError(f"{where}: {entry.target}{sig}: parameter {pname!r} is positional-only; "
                         "columns are passed by keyword")
      continue
    columns[pname] = required
  return RewardFunction(entry, fn, fixed, positional, columns, takes_kwargs)


def _field(config: Any, key: str, default: Any) -> Any:
  if config is None:
    return default
  if isinstance(config, Mapping):
    return config.get(key, default)
  return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


def _plain(value: Any) -> Any:
  return value.to_dict() if hasattr(value, "to_dict") else value


def _check_output(fn: RewardFunction, out: Any, batch: int) -> np.ndarray:
  """`out` as float32 [B], or a ValueError naming the function and the fault."""
  who = f"reward function {fn.label}"
  if isinstance(out, (str, bytes, Mapping, collections.abc.Set)) or out is None:
    raise ValueError(f"{who} returned {type(out).__name__} {str(out)[:80]!r}, not a sequence "
                     f"of {batch} numbers (one per completion)")
  if isinstance(out, np.ndarray) or (hasattr(out, "__array__")
                                     and not isinstance(out, (list, tuple))):
    arr = np.asarray(out)
    if arr.ndim != 1:
      raise ValueError(f"{who} returned an array of shape {arr.shape}; expected shape "
                       f"({batch},), one number per completion")
    values = arr.tolist()
  elif isinstance(out, collections.abc.Sequence):
    values = list(out)
  else:
    raise ValueError(f"{who} returned a {type(out).__name__}, not a sequence of {batch} numbers "
                     "(return a list)")
  if len(values) != batch:
    raise ValueError(f"{who} returned {len(values)} values; expected {batch} (one per "
                     "completion)")
  for i, v in enumerate(values):
    if isinstance(v, (numbers.Real, np.bool_)):
      continue
    if hasattr(v, "__array__") and np.ndim(v) == 0 and np.asarray(v).dtype.kind in "biuf":
      continue
    raise ValueError(f"{who} returned {v!r} ({type(v).__name__}) at index {i}, not a number")
  arr64 = np.asarray([float(v) for v in values], np.float64)
  bad = np.flatnonzero(~np.isfinite(arr64))
  if bad.size:
    raise ValueError(f"{who} returned {arr64[bad[0]]} at index {bad[0]} ({bad.size} non-finite "
                     "values in all); rewards must be finite")
  arr32 = arr64.astype(np.float32)
  bad = np.flatnonzero(~np.isfinite(arr32))
  if bad.size:
    raise ValueError(f"{who} returned {arr64[bad[0]]} at index {bad[0]}, beyond float32's range")
  return arr32


class RewardFunctions:
  """The configured reward functions: `__call__` gives the weighted total and each raw score."""

  def __init__(self, functions: Sequence[RewardFunction]):
    if not functions:
      raise ValueError(f"config.reward.functions is empty: name at least one; {_GRAMMAR}")
    seen: dict[str, str] = {}
    for f in functions:
      if f.entry.name in seen:
        raise ValueError(f"config.reward.functions: entries {seen[f.entry.name]!r} and "
                         f"{f.entry.text!r} are both named {f.entry.name!r}; name one, e.g. "
                         f"'{f.entry.name}_2={f.entry.text.strip()}'")
      seen[f.entry.name] = f.entry.text
    self.functions = tuple(functions)

  @classmethod
  def from_config(cls, reward_config: Any) -> "RewardFunctions":
    """Parses and resolves `reward_config.functions` with `reward_config.function_params`
    (either may be absent; no functions at all is an error)."""
    entries = [parse_entry(t) for t in split_entries(_field(reward_config, "functions", None))]
    all_params = _plain(_field(reward_config, "function_params", None)) or {}
    if not isinstance(all_params, Mapping):
      raise ValueError("config.reward.function_params must map entry names to parameter dicts, "
                       f"got {type(all_params).__name__}")
    names = [e.name for e in entries]
    unused = sorted(set(all_params) - set(names))
    if unused:
      raise ValueError(f"config.reward.function_params has {unused}, which name no entry of "
                       f"config.reward.functions; entry names: {names}")
    functions = []
    for e in entries:
      params = _plain(all_params.get(e.name)) or {}
      if not isinstance(params, Mapping):
        raise ValueError(f"config.reward.function_params[{e.name!r}] must be a dict of "
                         f"parameters, got {type(params).__name__} {params!r}")
      functions.append(resolve(e, params))
    return cls(functions)

  @property
  def names(self) -> tuple[str, ...]:
    """Short names, in config order: the keys of `__call__`'s per-function scores."""
    return tuple(f.entry.name for f in self.functions)

  @property
  def weights(self) -> dict[str, float]:
    return {f.entry.name: f.entry.weight for f in self.functions}

  @property
  def columns_needed(self) -> tuple[str, ...]:
    """Columns some function requires (a parameter without default), sorted. A **kwargs
    function may read more; it gets every column."""
    return tuple(sorted({c for f in self.functions for c, req in f.columns.items() if req}))

  def __repr__(self) -> str:
    terms = " + ".join(f"{f.entry.weight:g}*{f.entry.name}" for f in self.functions)
    return f"RewardFunctions({terms})"

  def _columns_for(self, fn: RewardFunction, columns: Mapping[str, list]) -> dict[str, list]:
    if fn.takes_kwargs:
      clash = sorted(set(columns) & (set(fn.params) | set(fn.positional)))
      if clash:
        raise ValueError(f"reward function {fn.label}: columns {clash} clash with its "
                         f"parameters {list(fn.positional)} / function_params "
                         f"{sorted(fn.params)}; rename the columns")
      return dict(columns)
    missing = [c for c, req in fn.columns.items() if req and c not in columns]
    if missing:
      raise ValueError(f"reward function {fn.label} needs column(s) {missing}, which the prompt "
                       f"records lack; columns available: {sorted(columns) or '(none)'}")
    return {c: columns[c] for c in fn.columns if c in columns}

  def __call__(self, prompts: Sequence[str], completions: Sequence[str],
               columns: Optional[Mapping[str, Sequence[Any]]] = None
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(total_B float32 = Σ weight · score, {name: raw score_B float32}) for B completions.

    `prompts[i]` is the prompt of `completions[i]` (a prompt sampled G times appears G times);
    `columns` maps each other record field to its B values, in the same order."""
    prompts, completions = list(prompts), list(completions)
    batch = len(completions)
    if len(prompts) != batch:
      raise ValueError(f"reward functions: {len(prompts)} prompts for {batch} completions; "
                       "repeat each prompt once per completion")
    cols: dict[str, list] = {}
    for key, values in (columns or {}).items():
      if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"reward functions: column {key!r} must be a list of {batch} values, "
                         f"got {type(values).__name__}")
      if len(values) != batch:
        raise ValueError(f"reward functions: column {key!r} has {len(values)} values; expected "
                         f"{batch} (one per completion)")
      cols[key] = list(values)
    total = np.zeros(batch, np.float64)
    scores: dict[str, np.ndarray] = {}
    for fn in self.functions:
      kwargs = {**fn.params, **self._columns_for(fn, cols)}
      try:
        out = fn.fn(prompts, completions, **kwargs)
      except Exception as e:
        e.add_note(f"(in reward function {fn.label})")
        raise
      scores[fn.entry.name] = _check_output(fn, out, batch)
      total += fn.entry.weight * scores[fn.entry.name].astype(np.float64)
    return total.astype(np.float32), scores


def check(reward_config: Any) -> Optional[RewardFunctions]:
  """Config-time check of `reward_config.functions` (resolves every entry: imports, built-in
  parameters, signatures); None when the config names no functions (`functions` absent or
  empty), else the resolved `RewardFunctions`."""
  all_params = _plain(_field(reward_config, "function_params", None)) or {}
  if not split_entries(_field(reward_config, "functions", None)):
    if all_params:
      raise ValueError(f"config.reward.function_params has {sorted(all_params)} but "
                       "config.reward.functions names no function")
    return None
  return RewardFunctions.from_config(reward_config)
