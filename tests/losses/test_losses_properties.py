"""Property-based tests (hypothesis) of every registered loss.

1. Finite values and gradients for extreme inputs: log-probs, log-ratios, rewards, values and logits up to
   +-1e4 (a mix of huge positive, huge negative and moderate values), all-masked rows, T = 1 and B = 1 (one
   full group for the group estimators). Gradients are taken w.r.t. every float array input, of the sum
   of the masked output.
2. Padding invariance: garbage in masked positions, appended padded columns and appended padded rows leave
   the valid part of the output, its masked sum (the aggregated loss) and the gradients unchanged; padded
   outputs of masked functions are 0 and padding gets zero gradient. The garbage holds NaN and +-inf for
   functions that take a mask (they document that masked entries are ignored), and huge finite values for
   every function, including the mask-less ones (per pair, per group, `kl_penalty`).

Registered functions with the same kind of inputs form a group (`GROUPS`); one example draws the group's
arrays once, at a shape from a small fixed set, and evaluates every entry of the group in one jitted
function (float hyper-parameters are traced arguments), so the whole file compiles about a dozen times.
Examples are derandomized (the same on every machine and run), and only finiteness and invariances are
asserted, never particular values, so the tests hold on any x86-64 CPU.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rlhf_jax import losses

BIG = 1e4
V = 5          # vocabulary of the logits
G = 2          # group size of the group estimators


def _floats(lo: float, hi: float) -> st.SearchStrategy:
  """Array elements (float32)."""
  return st.floats(lo, hi, width=32)


def _hp(lo: float, hi: float) -> st.SearchStrategy:
  """A float hyper-parameter in [lo, hi] (a Python float, traced under jit)."""
  return st.floats(lo, hi)


# Extreme but finite inputs: exact +-1e4 and 0, anything in [-1e4, 1e4], and moderate values.
EXTREME = st.one_of(st.sampled_from([BIG, -BIG, 0.0]), _floats(-BIG, BIG), _floats(-3.0, 3.0))
FINITE_GARBAGE = st.one_of(st.sampled_from([BIG, -BIG]), _floats(-BIG, BIG))
GARBAGE = st.one_of(st.sampled_from([np.nan, np.inf, -np.inf, BIG, -BIG]), _floats(-BIG, BIG))

BETA = _hp(0.01, 10.0)
CLIP = _hp(0.1, 0.3)
SMOOTHING = _hp(0.0, 0.4)      # label smoothing (robust DPO needs < 0.5)
LENGTHS = {"chosen_lengths": "n0", "rejected_lengths": "n1"}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One call of a registered function on the arrays of its group.

  args: keys of the group's arrays passed positionally; arrays: keyword -> key of a group array.
  static: hyper-parameters fixed at jit time; hp: traced float hyper-parameters (name -> strategy).
  out: "BxT" (per token, masked by the group's `mask`), "B" (per row) or "" (scalar).
  masked: takes a mask and documents that masked entries are ignored (NaN garbage allowed, 0 on padding).
  pad: padding invariant (False where a batch statistic couples the rows by design).
  """
  name: str
  args: tuple[str, ...]
  hp: dict = dataclasses.field(default_factory=dict)
  static: dict = dataclasses.field(default_factory=dict)
  arrays: dict = dataclasses.field(default_factory=dict)
  out: str = "BxT"
  masked: bool = False
  pad: bool = True

  def __str__(self):
    static = [f"{k}={v!r}" for k, v in self.static.items()]
    return f"{self.name}({', '.join(static + [f'traced={sorted(self.hp) + sorted(self.arrays)}'])})"


PAIR4 = ("r0", "r1", "r2", "r3")
_pair = functools.partial(Entry, out="B")
_TOK3 = ("x0", "x1", "x2", "mask")
_SEQ_MODES = ("sequence-mean-token-mean", "sequence-mean-token-sum", "sequence-mean-token-sum-norm")

GROUPS: dict[str, tuple[Entry, ...]] = {
    # [B] per-pair (or per-row) inputs r0..r3 and lengths n0, n1.
    "pairs": (
        _pair("bradley_terry", PAIR4[:2], dict(margin=_hp(0.0, 1.0), centering_coef=_hp(0.0, 0.1))),
        *(_pair(v, PAIR4, dict(beta=BETA)) for v in ("dpo", "hinge", "sppo_hard", "nca_pair", "apo_zero",
                                                      "apo_down")),
        _pair("dpo", PAIR4, dict(beta=BETA), static={"length_normalize": True}, arrays=LENGTHS),
        _pair("cdpo", PAIR4, dict(beta=BETA, label_smoothing=SMOOTHING)),
        _pair("robust", PAIR4, dict(beta=BETA, label_smoothing=SMOOTHING)),
        _pair("ipo", PAIR4, dict(beta=BETA)),
        _pair("ipo", PAIR4, dict(beta=BETA), arrays=LENGTHS),   # TRL: normalised by the lengths
        # The default delta is a batch mean of the implicit rewards: padded rows change it by design.
        _pair("bco_pair", PAIR4, dict(beta=BETA), pad=False),
        _pair("bco_pair", PAIR4, dict(beta=BETA, bco_delta=_hp(-10.0, 10.0))),
        _pair("simpo", PAIR4[:2], dict(beta=BETA, gamma=_hp(0.0, 2.0), label_smoothing=SMOOTHING)),
        _pair("simpo", PAIR4[:2], dict(beta=BETA, gamma=_hp(0.0, 2.0)), arrays=LENGTHS),
        _pair("orpo", PAIR4[:2], dict(beta=BETA, nll_coef=_hp(0.0, 1.0))),
        _pair("orpo", PAIR4[:2], dict(beta=BETA), arrays=LENGTHS),
        _pair("chosen_nll", PAIR4[:1]),
        _pair("chosen_nll", PAIR4[:1], arrays={"chosen_lengths": "n0"}),
        _pair("reinforce", PAIR4[:1], static={"baseline": "none"}),
        _pair("reinforce", PAIR4[:1], arrays={"baseline": "r1"}),
        _pair("reinforce", PAIR4[:1], static={"baseline": "batch_mean"}, pad=False),  # couples the rows
    ),
    # [B] rewards in contiguous groups of G.
    "groups": (
        _pair("grpo", ("r0",), static={"group_size": G}),
        _pair("grpo_batch_std", ("r0",), static={"group_size": G}, pad=False),  # std over the whole batch
        _pair("dr_grpo", ("r0",), static={"group_size": G}),
        _pair("rloo", ("r0",), static={"group_size": G}),
    ),
    # [B, T] floats x0..x2 with a right-padded mask, [B] scores r0 and EOS flags e.
    "tokens": (
        Entry("plackett_luce", ("x0", "mask"), out="B", masked=True),
        *(Entry("kl_penalty", ("x0", "x1"), static={"estimator": e}) for e in losses.KL_ESTIMATORS),
        *(Entry("kl_shaped_rewards", ("r0", "x0", "x1", "mask", "e"),
                dict(beta=BETA, missing_eos_penalty=_hp(0.0, 2.0)), static={"estimator": e}, masked=True)
          for e in ("k1", "k3")),
        Entry("ppo_policy", _TOK3, dict(clip_eps=CLIP), masked=True),
        Entry("ppo_policy", _TOK3, dict(clip_eps=CLIP, clip_eps_high=_hp(0.2, 0.3), dual_clip=_hp(2.0, 5.0)),
              masked=True),
        Entry("gspo_policy", _TOK3, dict(clip_eps=_hp(3e-4, 0.3), clip_eps_high=_hp(3e-4, 0.3)), masked=True),
        Entry("cispo_policy", _TOK3, dict(clip_eps_high=CLIP), masked=True),
        Entry("cispo_policy", _TOK3, dict(clip_eps_high=CLIP, clip_eps_low=CLIP), masked=True),
        # Returns are whitened over the whole batch: padded rows change the statistics by design.
        Entry("reinforce_pp", ("r0", "x0", "mask"), dict(beta=BETA), masked=True, pad=False),
        Entry("ppo_value", _TOK3, static={"clip_eps": None}, masked=True),
        Entry("ppo_value", _TOK3, dict(clip_eps=CLIP), masked=True),
        Entry("gae", ("x0", "x1", "mask"), dict(gamma=_hp(0.9, 1.0), lam=_hp(0.9, 1.0)), masked=True),
        Entry("ptx", ("x0", "mask"), dict(coef=_hp(0.0, 1.0)), masked=True),
        Entry("entropy_bonus", ("x0", "mask"), dict(coef=_hp(0.0, 0.1)), masked=True),
        Entry("aggregate", ("x0", "mask"), static={"mode": "token-mean"}, out="", masked=True),
        Entry("aggregate", ("x0", "mask"), dict(num_tokens=_hp(1.0, 100.0)), static={"mode": "token-mean"},
              out="", masked=True),
        # Sequence modes divide by B: padded rows need `num_sequences` (as documented); a fixed max_len.
        *(Entry("aggregate", ("x0", "mask"), dict(num_sequences=st.just(3.0)),
                static={"mode": m, **({"max_len": 8} if m.endswith("norm") else {})}, out="", masked=True)
          for m in _SEQ_MODES),
    ),
    # [B, T, V] logits z, [B, T] tokens y and an arbitrary mask.
    "logits": (
        Entry("sft", ("z", "y", "mask"), masked=True),
        Entry("sft", ("z", "y", "mask"), dict(label_smoothing=_hp(0.0, 0.3)), masked=True),
    ),
}
# (B, T) of the finite test (B = 1 and T = 1 included; one full group for the group estimators), and
# (B, T) of the padding test before padding, then the padded rows and columns.
FINITE_SHAPES = {"pairs": [(1, 1), (3, 1)], "groups": [(G, 1), (2 * G, 1)],
                 "tokens": [(1, 1), (3, 4)], "logits": [(1, 1), (3, 4)]}
PADDING = {"pairs": ((3, 1), 1, 0), "groups": ((2 * G, 1), G, 0), "tokens": ((3, 4), 1, 2),
           "logits": ((3, 4), 1, 2)}


def test_groups_cover_registry():
  assert sorted({e.name for entries in GROUPS.values() for e in entries}) == losses.names()


def _evaluate_entry(entry: Entry, arrays: dict, hp: dict):
  fn = functools.partial(losses.get(entry.name), **entry.static)
  keys = list(dict.fromkeys(entry.args + tuple(entry.arrays.values())))
  float_keys = [k for k in keys if jnp.issubdtype(arrays[k].dtype, jnp.floating)]
  out_mask = {"BxT": arrays["mask"], "B": arrays["rows"], "": True}[entry.out]

  def objective(floats):
    a = {**arrays, **dict(zip(float_keys, floats))}
    out = fn(*(a[k] for k in entry.args), **{kw: a[k] for kw, k in entry.arrays.items()}, **hp)
    total = sum(jnp.sum(jnp.where(out_mask, o, 0.0)) for o in jax.tree_util.tree_leaves(out))
    return total, out

  (total, out), grads = jax.value_and_grad(objective, has_aux=True)([arrays[k] for k in float_keys])
  return jax.tree_util.tree_leaves(out), total, dict(zip(float_keys, grads))


def _evaluate(arrays, hps, *, group):
  """Outputs, masked sum of the outputs and gradients w.r.t. every float array input, per entry."""
  return [_evaluate_entry(entry, arrays, hp) for entry, hp in zip(GROUPS[group], hps)]


def _run(call, group, arrays, hps):
  results = call(_evaluate, arrays, hps, group=group)
  return [([np.asarray(o) for o in outs], float(total), {k: np.asarray(g) for k, g in grads.items()})
          for outs, total, grads in results]


def _draw_arrays(data, group: str, b: int, t: int) -> dict:
  """The group's arrays at shape [b, t] with extreme float values; `rows` marks the valid rows."""
  def arr(shape, dtype=np.float32, elements=EXTREME, label=""):
    return data.draw(hnp.arrays(dtype, shape, elements=elements), label=label)

  if group == "logits":
    mask = arr((b, t), np.bool_, None, "mask")
  else:  # right-padded (gae and kl_shaped_rewards need it; completions are right-padded)
    mask = np.arange(t)[None, :] < arr((b,), np.int32, st.integers(0, t), "lengths")[:, None]
  arrays = dict(mask=mask, rows=np.ones(b, bool))
  if group == "pairs":
    arrays.update({k: arr((b,), label=k) for k in PAIR4})
    arrays.update({k: arr((b,), np.int32, st.integers(0, 8), k) for k in ("n0", "n1")})
  elif group == "groups":
    arrays["r0"] = arr((b,), label="r0")
  elif group == "tokens":
    arrays.update({k: arr((b, t), label=k) for k in ("x0", "x1", "x2")})
    arrays.update(r0=arr((b,), label="r0"), e=arr((b,), np.bool_, None, "e"))
  else:
    arrays.update(z=arr((b, t, V), label="z"), y=arr((b, t), np.int32, st.integers(0, V - 1), "y"))
  return arrays


def _draw_hps(data, group: str) -> tuple[dict, ...]:
  return tuple(data.draw(st.fixed_dictionaries(e.hp), label=str(e)) for e in GROUPS[group])


_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                        HealthCheck.data_too_large])


@pytest.mark.parametrize("group", sorted(GROUPS))
@settings(max_examples=30, **_SETTINGS)
@given(data=st.data())
def test_finite_values_and_gradients(group, data, call):
  b, t = data.draw(st.sampled_from(FINITE_SHAPES[group]), label="(B, T)")
  arrays = _draw_arrays(data, group, b, t)
  for entry, (outs, total, grads) in zip(GROUPS[group], _run(call, group, arrays, _draw_hps(data, group))):
    for i, o in enumerate(outs):
      assert np.all(np.isfinite(o)), (str(entry), f"output {i}", o)
    assert np.isfinite(total), (str(entry), "masked sum", total)
    for k, g in grads.items():
      assert np.all(np.isfinite(g)), (str(entry), f"gradient w.r.t. {k}", g)


def _pad(data, arrays: dict, rows: int, cols: int, elements) -> dict:
  """Garbage in the masked positions of every [B, T, ...] array, then `rows` padded rows and `cols`
  padded columns of garbage (mask 0)."""
  def garbage(key, shape, dtype):
    if dtype == np.bool_:
      return data.draw(hnp.arrays(np.bool_, shape), label=f"{key} garbage")
    if dtype == np.int32:  # out-of-range token ids, huge lengths
      ints = st.integers(-3, V + 3) if key == "y" else st.integers(0, 10**6)
      return data.draw(hnp.arrays(np.int32, shape, elements=ints), label=f"{key} garbage")
    return data.draw(hnp.arrays(np.float32, shape, elements=elements), label=f"{key} garbage")

  mask = arrays["mask"]
  out = dict(mask=np.pad(mask, ((0, rows), (0, cols))), rows=np.pad(arrays["rows"], (0, rows)))
  for key, x in arrays.items():
    if key in out:
      continue
    if x.ndim >= 2:
      valid = mask.reshape(mask.shape + (1,) * (x.ndim - 2))
      x = np.where(valid, x, garbage(key, x.shape, x.dtype))
      x = np.concatenate([x, garbage(key, (x.shape[0], cols) + x.shape[2:], x.dtype)], axis=1)
    out[key] = np.concatenate([x, garbage(key, (rows,) + x.shape[1:], x.dtype)], axis=0)
  return out


def _magnitude(*arrays) -> float:
  """1 + the sum of |finite entries|: bounds every partial sum of a reduction over these values."""
  return 1.0 + sum(float(np.sum(np.abs(a[np.isfinite(a)]), dtype=np.float64)) for a in arrays)


def _close(actual, desired, scale, what):
  """Equal up to float32 rounding of the largest partial sum involved (`scale`): XLA may order a
  reduction differently for the padded shape."""
  np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(desired, np.float64), rtol=1e-6,
                             atol=1e-6 * scale, err_msg=what)


def _check_padded(entry: Entry, arrays, padded, base, result):
  outs, total, grads = base
  p_outs, p_total, p_grads = result
  valid = {"BxT": arrays["mask"], "B": arrays["rows"], "": np.array(True)}[entry.out]
  p_valid = {"BxT": padded["mask"], "B": padded["rows"], "": np.array(True)}[entry.out]
  crop = lambda x: x[tuple(slice(0, n) for n in valid.shape)]  # noqa: E731
  inputs = [np.where(arrays["mask"].reshape(arrays["mask"].shape + (1,) * (x.ndim - 2)), x, 0.0)
            if x.ndim >= 2 else x for k, x in arrays.items() if k in grads]
  scale = _magnitude(*inputs) + max((np.max(np.abs(o)) for o in outs), default=0.0)
  for i, (o, p) in enumerate(zip(outs, p_outs)):
    _close(crop(p)[valid], o[valid], scale, f"{entry}: output {i} on valid entries")
    if entry.masked:
      assert np.all(p[~p_valid] == 0.0), (str(entry), f"output {i} on padding", p)
  _close(p_total, total, scale + _magnitude(*(o[valid] for o in outs)), f"{entry}: masked sum")
  for k, g in grads.items():
    p = p_grads[k]
    assert np.all(np.isfinite(p)), (str(entry), f"gradient w.r.t. {k}", p)
    _close(p[tuple(slice(0, n) for n in g.shape)], g, scale + np.max(np.abs(g)),
           f"{entry}: gradient w.r.t. {k}")
    appended = np.ones(p.shape, bool)
    appended[tuple(slice(0, n) for n in g.shape)] = False
    assert np.all(p[appended] == 0.0), (str(entry), f"gradient w.r.t. {k} on appended padding", p)
    if entry.masked and p.ndim >= 2:  # exactly 0 on every masked position
      masked_pos = ~padded["mask"].reshape(padded["mask"].shape + (1,) * (p.ndim - 2))
      assert np.all(np.where(masked_pos, p, 0.0) == 0.0), (str(entry), f"gradient w.r.t. {k} on padding", p)


@pytest.mark.parametrize("group", sorted(GROUPS))
@settings(max_examples=20, **_SETTINGS)
@given(data=st.data())
def test_padding_invariance(group, data, call):
  (b, t), rows, cols = PADDING[group]
  arrays = _draw_arrays(data, group, b, t)
  hps = _draw_hps(data, group)
  base = _run(call, group, arrays, hps)
  # Huge finite garbage for every entry; all-NaN and mixed NaN / +-inf / huge garbage for the masked ones.
  masked = [e for e in GROUPS[group] if e.masked]
  for elements, entries in ((FINITE_GARBAGE, GROUPS[group]), (st.just(np.nan), masked), (GARBAGE, masked)):
    if not entries:
      continue
    padded = _pad(data, arrays, rows, cols, elements)
    results = _run(call, group, padded, hps)
    for entry, base_result, result in zip(GROUPS[group], base, results):
      if entry in entries and entry.pad:
        _check_padded(entry, arrays, padded, base_result, result)
