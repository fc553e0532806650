"""Reward functions chosen by config (rewards/registry.py) and the built-ins (rewards/verifiable.py)."""

import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from rlhf_jax.rewards import registry, verifiable
from rlhf_jax.rewards.registry import RewardFunctions

MODULE = "rj_test_user_rewards"
USER_CODE = textwrap.dedent('''
    import math
    SEEN = {}
    CONSTANT = 3.0

    def brevity(prompts, completions):
      return [-float(len(c)) for c in completions]

    def uses_answer(prompts, completions, answer):
      SEEN["uses_answer"] = list(answer)
      return [1.0 if str(a) in c else 0.0 for a, c in zip(answer, completions)]

    def takes_kwargs(prompts, completions, **kwargs):
      SEEN["takes_kwargs"] = sorted(kwargs)
      return [0.0] * len(completions)

    def optional_col(prompts, completions, difficulty=None):
      SEEN["optional_col"] = difficulty
      return [1.0] * len(completions)

    def scaled(prompts, completions, *, factor):
      return [factor * len(p) for p in prompts]

    def wrong_len(prompts, completions):
      return [1.0] * (len(completions) - 1)

    def nan_at_1(prompts, completions):
      return [0.0, math.nan, 0.0]

    def inf_at_2(prompts, completions):
      return [0.0, 0.0, -math.inf]

    def none_at_1(prompts, completions):
      return [0.0, None, 1.0]

    def str_at_0(prompts, completions):
      return ["1.0", 0.0, 1.0]

    def scalar(prompts, completions):
      return 3.0

    def generator(prompts, completions):
      return (1.0 for _ in completions)

    def matrix(prompts, completions):
      import numpy as np
      return np.ones((len(completions), 1))

    def no_args():
      return []

    def raises(prompts, completions):
      raise KeyError("boom")
''')

PROMPTS = ["What is 2+2?", "What is 10-3?", "Half of 1?"]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
  """A user reward module written to tmp_path and importable as MODULE."""
  (tmp_path / f"{MODULE}.py").write_text(USER_CODE)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, MODULE, raising=False)
  yield MODULE
  sys.modules.pop(MODULE, None)


def build(functions, params=None):
  return RewardFunctions.from_config({"functions": functions, "function_params": params or {}})


# ---------------------------------------------------------------------------------- built-ins

def test_last_boxed_balanced_and_last_complete():
  assert verifiable.last_boxed(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
  assert verifiable.last_boxed(r"\boxed{1} then \boxed{ {a}{b} }") == " {a}{b} "
  assert verifiable.last_boxed(r"\boxed{7} and then \boxed{8") == "7"  # truncated last box
  assert verifiable.last_boxed("no box 5") is None


@pytest.mark.parametrize("text,expected", [
    ("it costs -5 dollars", "-5"),
    ("10-3 = 7", "7"),
    ("x-1", "1"),
    ("the total is 1,234.", "1,234"),
    ("1,2,3", "3"),
    ("take 3/4 of it", "3/4"),
    ("pi is 3.14", "3.14"),
    ("about .5 left", ".5"),
    ("no digits here", None),
])
def test_last_number(text, expected):
  assert verifiable.last_number(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("1,000", 1000), ("1000", 1000), ("0.50", 0.5), ("-7", -7), ("3/4", 0.75),
    (r"\frac{1}{2}", 0.5), (r"-\dfrac{3}{4}", -0.75), (r"-\frac{-1}{2}", 0.5), (" $12$ ", 12),
    (5, 5), (0.1, 0.1), ("1/0", None), ("x+1", None), ("12,34", None), (True, None),
])
def test_parse_number(text, expected):
  got = verifiable.parse_number(text)
  assert (got is None) if expected is None else (float(got) == expected)


def test_math_answer_cases():
  cases = [  # (completion, answer, reward)
      (r"so the answer is \boxed{\frac{1}{2}}.", "0.5", 1.0),       # nested braces, numeric
      (r"\boxed{4}, though 5 is close", "4", 1.0),                  # boxed beats a later number
      ("We get 1,000 apples", 1000, 1.0),                           # commas; an int column
      ("the mean is 0.50", "0.5", 1.0),
      ("x = -7", "-7", 1.0),                                        # negative
      ("x = -7", "7", 0.0),
      ("10-3 = 7", "7", 1.0),                                       # '-' between numbers
      (r"\boxed{$x + 1$}", "x+1", 1.0),                             # string fallback
      (r"\boxed{X+1}", "x+1", 0.0),                                 # case-sensitive
      ("I do not know", "3", 0.0),                                  # no answer
      (r"\boxed{12", "12", 1.0),                                    # unclosed box: last number
      ("3 then 4", "3", 0.0),                                       # the last number counts
  ]
  got = verifiable.math_answer([""] * len(cases), [c for c, _, _ in cases],
                               answer=[a for _, a, _ in cases])
  assert got == [r for _, _, r in cases]


def test_math_answer_none_reference_is_an_error():
  with pytest.raises(ValueError, match="answer column is None at row 1"):
    verifiable.math_answer(["", ""], ["1", "2"], answer=["1", None])


def test_math_answer_missing_column_names_it_and_the_available_ones():
  rf = build("math_answer")
  assert rf.columns_needed == ("answer",)
  with pytest.raises(ValueError, match=r"'math_answer'.*needs column\(s\) \['answer'\].*"
                                       r"available: \['solution'\]"):
    rf(PROMPTS, ["4", "7", "0.5"], {"solution": ["4", "7", "0.5"]})


def test_format_fullmatch_dotall():
  rf = build("format", {"format": {"pattern": r"<think>.*</think>\s*<answer>.*</answer>"}})
  completions = ["<think>a\nb</think>\n<answer>4</answer>",  # '.' spans the newline
                 "<think>a</think><answer>4</answer> trailing",  # not a full match
                 "<answer>4</answer>"]
  total, per = rf(PROMPTS, completions)
  np.testing.assert_array_equal(per["format"], np.float32([1, 0, 0]))
  np.testing.assert_array_equal(total, np.float32([1, 0, 0]))


def test_format_needs_a_valid_pattern_at_check_time():
  with pytest.raises(ValueError, match=r"'format'.*function_params\['format'\].*pattern"):
    registry.check({"functions": "format"})
  with pytest.raises(ValueError, match=r"'format\*0.2'.*not a valid regex"):
    registry.check({"functions": "format*0.2", "function_params": {"format": {"pattern": "(a"}}})
  with pytest.raises(ValueError, match=r"'format'.*takes \['pattern'\].*given \['patern'\]"):
    registry.check({"functions": "format", "function_params": {"format": {"patern": "a"}}})


def test_length_penalty_words_and_chars():
  words = build("length", {"length": {"target": 3, "scale": 2}})
  _, per = words(PROMPTS, ["a b c d e", "a b", "a b c d"])
  np.testing.assert_array_equal(per["length"], np.float32([-1.0, 0.0, -0.5]))
  chars = build("length", {"length": {"target": 4, "unit": "chars"}})  # scale = target
  _, per = chars(PROMPTS, ["abcdefgh", "abcd", "abcdef"])
  np.testing.assert_array_equal(per["length"], np.float32([-1.0, 0.0, -0.5]))
  with pytest.raises(ValueError, match="unit must be one of"):
    build("length", {"length": {"target": 3, "unit": "tokens"}})
  with pytest.raises(ValueError, match="target must be a finite number >= 0"):
    build("length", {"length": {"target": -1}})


# ------------------------------------------------------------------------------ user functions

def test_user_function_weighted_with_builtin(user_module):
  rf = build(f"math_answer*1.0, {user_module}:brevity*0.5")
  assert rf.names == ("math_answer", "brevity")
  assert rf.weights == {"math_answer": 1.0, "brevity": 0.5}
  completions = [r"\boxed{4}", "it is 6", "0.5"]
  total, per = rf(PROMPTS, completions, {"answer": ["4", "7", "1/2"]})
  np.testing.assert_array_equal(per["math_answer"], np.float32([1, 0, 1]))
  np.testing.assert_array_equal(per["brevity"], np.float32([-9, -7, -3]))
  np.testing.assert_array_equal(total, np.float32([1 - 4.5, -3.5, 1 - 1.5]))
  assert total.dtype == np.float32 and total.shape == (3,)


def test_tuple_config_alias_and_configdict(user_module):
  cfg = ml_collections.ConfigDict({
      "functions": ("tags=format*0.25", "strict=format*-1", f"{user_module}:brevity*0"),
      "function_params": {"tags": {"pattern": ".*<a>.*"}, "strict": {"pattern": r"<a>\d+</a>"}}})
  rf = registry.check(cfg)
  assert rf.names == ("tags", "strict", "brevity")
  total, per = rf(PROMPTS, ["<a>12</a>", "x <a>y", "none"])
  np.testing.assert_array_equal(per["tags"], np.float32([1, 1, 0]))
  np.testing.assert_array_equal(per["strict"], np.float32([1, 0, 0]))
  np.testing.assert_array_equal(total, np.float32([0.25 - 1, 0.25, 0]))


def test_columns_passed_only_where_accepted(user_module):
  rf = build(f"{user_module}:uses_answer, {user_module}:takes_kwargs, "
             f"{user_module}:optional_col, {user_module}:brevity")
  assert rf.columns_needed == ("answer",)
  _, per = rf(PROMPTS, ["4", "3", "no"], {"answer": [4, 7, "1/2"], "level": [1, 2, 3]})
  seen = sys.modules[user_module].SEEN
  assert seen["uses_answer"] == [4, 7, "1/2"]
  assert seen["takes_kwargs"] == ["answer", "level"]
  assert seen["optional_col"] is None  # optional column absent: its default
  np.testing.assert_array_equal(per["uses_answer"], np.float32([1, 0, 0]))
  rf(PROMPTS, ["a", "b", "c"], {"answer": [1, 2, 3], "difficulty": ["e", "m", "h"]})
  assert seen["optional_col"] == ["e", "m", "h"]


def test_user_function_params_are_fixed_keywords(user_module):
  rf = build(f"{user_module}:scaled*2", {"scaled": {"factor": 0.5}})
  total, per = rf(["ab", "abcd", ""], ["x", "y", "z"])
  np.testing.assert_array_equal(per["scaled"], np.float32([1, 2, 0]))
  np.testing.assert_array_equal(total, np.float32([2, 4, 0]))
  with pytest.raises(ValueError, match=r"scaled.*takes no keyword parameter 'scale'"):
    registry.check({"functions": f"{user_module}:scaled",
                    "function_params": {"scaled": {"scale": 0.5}}})


@pytest.mark.parametrize("fn,message", [
    ("wrong_len", r"returned 2 values; expected 3"),
    ("nan_at_1", r"returned nan at index 1"),
    ("inf_at_2", r"returned -inf at index 2"),
    ("none_at_1", r"returned None \(NoneType\) at index 1, not a number"),
    ("str_at_0", r"returned '1.0' \(str\) at index 0, not a number"),
    ("scalar", r"returned a float, not a sequence of 3 numbers"),
    ("generator", r"returned a generator, not a sequence"),
    ("matrix", r"returned an array of shape \(3, 1\); expected shape \(3,\)"),
])
def test_bad_returns_name_the_function(user_module, fn, message):
  rf = build(f"math_answer, {user_module}:{fn}*0.5")
  with pytest.raises(ValueError, match=rf"reward function '{fn}' \({user_module}:{fn}\) "
                                       + message):
    rf(PROMPTS, ["4", "7", "1"], {"answer": ["4", "7", "1"]})


def test_exception_inside_a_function_is_annotated(user_module):
  rf = build(f"{user_module}:raises")
  with pytest.raises(KeyError) as info:
    rf(PROMPTS, ["a", "b", "c"])
  assert f"(in reward function 'raises' ({user_module}:raises))" in info.value.__notes__


# ----------------------------------------------------------------------- config-time errors

@pytest.mark.parametrize("functions,message", [
    ("no_such_pkg_xyz.rewards:fn*0.5", r"entry 'no_such_pkg_xyz.rewards:fn\*0.5': no module "
                                        r"named 'no_such_pkg_xyz.rewards'"),
    ("{m}:missing", r"entry '{m}:missing': '{m}' has no attribute 'missing'; its public "
                    r"callables: \['brevity'"),
    ("{m}:CONSTANT", r"entry '{m}:CONSTANT': {m}:CONSTANT is a float, not callable"),
    ("{m}:no_args", r"entry '{m}:no_args'.*must accept \(prompts, completions\)"),
    ("math_answr", r"entry 'math_answr': unknown built-in 'math_answr'; built-ins: "
                   r"\['format', 'length', 'math_answer'\]"),
    ("{m}.brevity", r"did you mean '{m}:brevity'\?"),
    ("format:^<answer>.*</answer>$*0.2", r"entry 'format:\^<answer>.*malformed.*"
                                         r"function_params\[name\]"),
    ("math_answer*abc", r"weight 'abc' after '\*' is not a number"),
    ("math_answer*nan", r"weight must be finite"),
    ("format, format", r"both named 'format'; name one, e.g. 'format_2=format'"),
    ((), r"config.reward.functions is empty"),
    (3, r"must be a string or a tuple of strings, got int"),
])
def test_config_errors_name_the_entry(user_module, functions, message):
  if isinstance(functions, str):
    functions = functions.replace("{m}", user_module)
  params = {"format": {"pattern": "a"}} if functions == "format, format" else {}
  with pytest.raises(ValueError, match=message.replace("{m}", user_module)):
    RewardFunctions.from_config({"functions": functions, "function_params": params})


def test_check_unused_params_and_no_functions():
  assert registry.check({"functions": ""}) is None
  assert registry.check(ml_collections.ConfigDict({"source": "gold"})) is None
  with pytest.raises(ValueError, match=r"function_params has \['fromat'\], which name no entry.*"
                                       r"entry names: \['format'\]"):
    registry.check({"functions": "format", "function_params": {"fromat": {"pattern": "a"},
                                                               "format": {"pattern": "a"}}})
  with pytest.raises(ValueError, match=r"function_params has \['format'\] but "
                                       "config.reward.functions names no function"):
    registry.check({"functions": "", "function_params": {"format": {"pattern": "a"}}})


def test_call_checks_batch_shapes():
  rf = build("math_answer")
  with pytest.raises(ValueError, match="2 prompts for 3 completions"):
    rf(PROMPTS[:2], ["1", "2", "3"], {"answer": ["1", "2", "3"]})
  with pytest.raises(ValueError, match=r"column 'answer' has 2 values; expected 3"):
    rf(PROMPTS, ["1", "2", "3"], {"answer": ["1", "2"]})


def test_repr_lists_weighted_terms():
  assert repr(build("math_answer*2, length*-0.5", {"length": {"target": 1}})) == (
      "RewardFunctions(2*math_answer + -0.5*length)")
