"""Built-in verifiable reward functions, named in `config.reward.functions` (rewards/registry.py).

Each built-in is a factory: `BUILTINS[name](**params)` validates its parameters (from
`config.reward.function_params[name]`) at config time and returns a reward function with the
user-function contract `fn(prompts, completions, **columns) -> list[float]` of length B. The
columns a function names as parameters (`answer` for math_answer) come from the prompt records.

  math_answer   1.0 if the completion's final answer equals the record's `answer`, else 0.0
  format        1.0 if the whole completion matches the regex `pattern` (re.fullmatch, DOTALL)
  length        -max(0, n - target) / scale, n = the completion's words (or characters)

The answer helpers (`extract_answer`, `parse_number`, `answers_match`) are public, so that other
code (best-of-n filters, evaluation) judges answers exactly as the reward does.
"""

from __future__ import annotations

import fractions
import math
import numbers
import re
from typing import Any, Callable, Optional, Sequence

RewardFn = Callable[..., list]

# A number as written in text: an optional minus (not right after a word character or ')', so
# the '-' of "10-3" or "x-1" is an operator, not a sign), then an integer with or without
# thousands separators ("1234", "1,234", not "12,34"), an optional decimal part, or a bare
# decimal (".5"); an integer fraction "3/4" is one number. No exponents, no percentages.
_NUMBER = (r"(?:(?<![\w)])[-\u2212])?"
           r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|\.\d+)")
_NUMBER_RE = re.compile(_NUMBER)
_WHOLE_NUMBER_RE = re.compile(r"[-\u2212]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|\.\d+)")
_LATEX_FRAC_RE = re.compile(r"([-\u2212]?)\\[dt]?frac\{([-\u2212]?\d+)\}\{(\d+)\}")
_BOXED_RE = re.compile(r"\\boxed\s*\{")


def last_boxed(text: str) -> Optional[str]:
  """The content of the last complete `\\boxed{...}` in `text` (braces balanced, so
  `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`), or None if there is none. An unclosed
  `\\boxed{` (a truncated completion) is not an answer."""
  found = None
  for match in _BOXED_RE.finditer(text):
    depth, start = 1, match.end()
    for i in range(start, len(text)):
      if text[i] == "{":
        depth += 1
      elif text[i] == "}":
        depth -= 1
        if depth == 0:
          found = text[start:i]
          break
  return found


def last_number(text: str) -> Optional[str]:
  """The last number written in `text` (see `_NUMBER`: "-3", "1,234", "0.5", ".5", "3/4"), as
  written, or None."""
  matches = _NUMBER_RE.findall(text)
  return matches[-1] if matches else None


def extract_answer(completion: str) -> Optional[str]:
  """The completion's final answer: the content of the last complete `\\boxed{...}` if there is
  one, else the last number in the text, else None."""
  boxed = last_boxed(completion)
  return boxed if boxed is not None else last_number(completion)


def _strip(text: str) -> str:
  """`text` without any whitespace or `$` (the string form answers are compared in)."""
  return re.sub(r"[\s$]", "", text)


def parse_number(text: Any) -> Optional[fractions.Fraction]:
  """`text` as an exact number, or None if it is not one.

  Accepts ints and finite floats (a float by its shortest repr, so 0.1 is 1/10), and strings
  that, after removing whitespace and `$`, are wholly one number: an optional minus, digits with
  optional thousands separators ("1,000"), an optional decimal part ("0.50"), an integer
  fraction ("3/4") or a LaTeX fraction ("\\frac{3}{4}", "\\dfrac", "\\tfrac"). A zero
  denominator is not a number."""
  if isinstance(text, bool):
    return None
  if isinstance(text, numbers.Integral):
    return fractions.Fraction(int(text))
  if isinstance(text, numbers.Real):
    value = float(text)
    return fractions.Fraction(repr(value)) if math.isfinite(value) else None
  if not isinstance(text, str):
    return None
  s = _strip(text)
  latex = _LATEX_FRAC_RE.fullmatch(s)
  if latex:
    sign, num, den = (g.replace("\u2212", "-") for g in latex.groups())
    negative = (sign == "-") != num.startswith("-")  # "-\frac{-1}{2}" is 1/2
    s = f"{'-' if negative else ''}{num.lstrip('-')}/{den}"
  s = s.replace("\u2212", "-")
  if not _WHOLE_NUMBER_RE.fullmatch(s):
    return None
  num, _, den = s.replace(",", "").partition("/")
  try:
    return fractions.Fraction(num) / fractions.Fraction(den or 1)
  except ZeroDivisionError:
    return None


def answers_match(predicted: Optional[str], answer: Any) -> bool:
  """Whether an extracted answer equals the reference: numerically (exactly, as fractions) when
  both parse as numbers (`parse_number`: "1,000" == "1000" == 1000, "0.50" == "0.5" == "1/2");
  otherwise as strings with all whitespace and `$` removed (case-sensitive). No prediction
  (None) never matches."""
  if predicted is None:
    return False
  p, a = parse_number(predicted), parse_number(answer)
  if p is not None and a is not None:
    return p == a
  return _strip(predicted) == _strip(str(answer))


def _math_answer_factory() -> RewardFn:
  """math_answer takes no parameters; the reference comes from the `answer` column."""
  return math_answer


def math_answer(prompts: Sequence[str], completions: Sequence[str],
                answer: Sequence[Any]) -> list[float]:
  """1.0 where the completion's final answer equals the record's `answer`, else 0.0.

  Final answer (`extract_answer`): the content of the last complete `\\boxed{...}` (balanced
  braces), else the last number in the completion (ints, negatives, "1,234", decimals, "3/4";
  no exponents or percentages), else none (0.0). Comparison (`answers_match`): exact numeric
  equality when both sides are numbers ("1,000" == "1000", "0.50" == "0.5", "\\frac{1}{2}" ==
  "0.5"), else string equality after removing whitespace and `$`. An answer of None is an error
  (a record without a reference), not a 0."""
  del prompts
  out = []
  for i, (completion, ref) in enumerate(zip(completions, answer)):
    if ref is None:
      raise ValueError(f"math_answer: the answer column is None at row {i}: every prompt record "
                       "needs a reference answer")
    out.append(1.0 if answers_match(extract_answer(completion), ref) else 0.0)
  return out


def _format_factory(pattern: str) -> RewardFn:
  """The `format` reward for `pattern`, compiled (and so checked) once, at config time."""
  if not isinstance(pattern, str) or not pattern:
    raise ValueError(f"format: pattern must be a non-empty regex string, got {pattern!r}")
  try:
    regex = re.compile(pattern, re.DOTALL)
  except re.error as e:
    raise ValueError(f"format: pattern {pattern!r} is not a valid regex: {e}") from e

  def format_match(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """1.0 where the whole completion, as generated (not stripped), matches `pattern`
    (re.fullmatch with re.DOTALL, so '.' also matches newlines), else 0.0."""
    del prompts
    return [1.0 if regex.fullmatch(c) else 0.0 for c in completions]

  return format_match


LENGTH_UNITS = ("words", "chars")


def _length_factory(target: float, unit: str = "words", scale: Optional[float] = None) -> RewardFn:
  """The `length` penalty: `target` (>= 0, required), `unit` (words | chars), `scale` (> 0,
  default max(target, 1))."""
  if isinstance(target, bool) or not isinstance(target, numbers.Real) or not (
      math.isfinite(target) and target >= 0):
    raise ValueError(f"length: target must be a finite number >= 0, got {target!r}")
  if unit not in LENGTH_UNITS:
    raise ValueError(f"length: unit must be one of {list(LENGTH_UNITS)}, got {unit!r}")
  if scale is None:
    scale = max(float(target), 1.0)
  if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not (
      math.isfinite(scale) and scale > 0):
    raise ValueError(f"length: scale must be a finite number > 0, got {scale!r}")
  target, scale = float(target), float(scale)

  def length_penalty(prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """-max(0, n - target) / scale per completion, n = its whitespace-separated words (unit
    'words') or its characters (unit 'chars'): 0 up to the target, then linearly negative
    without bound (at n = target + scale it is -1)."""
    del prompts
    sizes = [len(c.split()) if unit == "words" else len(c) for c in completions]
    return [-max(0.0, n - target) / scale for n in sizes]

  return length_penalty


# Built-in name -> factory(**params) -> reward function (module docstring).
BUILTINS: dict[str, Callable[..., RewardFn]] = {
    "math_answer": _math_answer_factory,
    "format": _format_factory,
    "length": _length_factory,
}
