"""Tests of rlhf_jax.losses.preference (DPO family, SimPO, ORPO, chosen NLL)."""

import math

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax.losses import preference

LN2 = math.log(2.0)



def sp(x):
  """-log sigmoid(x), by hand."""
  return math.log1p(math.exp(-x))


def sig(x):
  return 1.0 / (1.0 + math.exp(-x))


# One pair with h_w = log pi(y_w) - log ref(y_w) = 1, h_l = -1, h = 2.
PAIR = tuple(np.array([v]) for v in (-10.0, -12.0, -11.0, -11.0))

# (variant, hparams, expected loss for PAIR), computed by hand from the papers' formulas.
HAND_CASES = [
    ("sigmoid", dict(beta=0.5), sp(1.0)),                                           # 0.3132617
    ("cdpo", dict(beta=0.5, label_smoothing=0.1), 0.9 * sp(1.0) + 0.1 * sp(-1.0)),  # 0.4132617
    ("sigmoid", dict(beta=0.5, label_smoothing=0.1), 0.9 * sp(1.0) + 0.1 * sp(-1.0)),
    ("robust", dict(beta=0.5, label_smoothing=0.1), (0.9 * sp(1.0) - 0.1 * sp(-1.0)) / 0.8),  # 0.1882617
    ("ipo", dict(beta=0.25), (2.0 - 2.0) ** 2),
    ("ipo", dict(beta=1.0), (2.0 - 0.5) ** 2),
    ("hinge", dict(beta=0.25), 0.5),                                                # relu(1 - 0.25 * 2)
    ("sppo_hard", dict(beta=0.25), (1 - 2) ** 2 + (-1 + 2) ** 2),
    ("nca_pair", dict(beta=0.5), sp(0.5) + 0.5 * sp(-0.5) + 0.5 * sp(0.5)),       # 1.1981540
    ("bco_pair", dict(beta=0.5, bco_delta=0.1), sp(0.4) + sp(0.6)),
    ("bco_pair", dict(beta=0.5), 2 * sp(0.5)),             # delta = mean(0.5, -0.5) = 0
    ("apo_zero", dict(beta=0.5), (1 - sig(0.5)) + sig(-0.5)),                       # 0.7550813
    ("apo_down", dict(beta=0.5), sig(0.5) + (1 - sig(1.0))),                        # 0.8914008
]


def test_hand_constants():
  np.testing.assert_allclose(
      [sp(1.0), 0.9 * sp(1.0) + 0.1 * sp(-1.0), (0.9 * sp(1.0) - 0.1 * sp(-1.0)) / 0.8],
      [0.31326169, 0.41326169, 0.18826169], rtol=1e-7)
  np.testing.assert_allclose([sp(0.5) + 0.5 * sp(-0.5) + 0.5 * sp(0.5), 2 - 2 * sig(0.5), 1 + sig(0.5) - sig(1)],
                             [1.19815397, 0.75508134, 0.89140075], rtol=1e-7)


@pytest.mark.parametrize("variant,hparams,expected", HAND_CASES)
def test_dpo_hand_values(variant, hparams, expected, call):
  got = call(preference.dpo_loss, *PAIR, variant=variant, **hparams)
  np.testing.assert_allclose(got, [expected], rtol=1e-5, atol=1e-7)


def test_dpo_at_reference_is_ln2_and_other_fixed_points():
  rng = np.random.default_rng(0)
  pc, pr = rng.normal(size=6) - 20, rng.normal(size=6) - 20
  at_ref = (pc, pr, pc, pr)
  beta = 0.1
  expected = {
      "sigmoid": LN2, "cdpo": LN2, "robust": LN2, "ipo": 1 / (4 * beta**2), "hinge": 1.0,
      "sppo_hard": 2 * (0.5 / beta) ** 2, "nca_pair": 2 * LN2, "bco_pair": 2 * LN2, "apo_zero": 1.0,
      "apo_down": 1.0,
  }
  assert set(expected) == set(preference.DPO_VARIANTS)

  @jax.jit
  def all_variants(*arrays):  # one compilation for all variants
    return {v: preference.dpo_loss(*arrays, beta=beta, variant=v,
                                   label_smoothing=0.2 if v in ("cdpo", "robust") else 0.0)
            for v in preference.DPO_VARIANTS}

  got = all_variants(*at_ref)
  for variant, value in expected.items():
    np.testing.assert_allclose(got[variant], np.full(6, value), rtol=1e-5, err_msg=variant)


def test_ipo_length_normalisation_follows_trl(call):
  lengths = dict(chosen_lengths=np.array([2]), rejected_lengths=np.array([4]))
  # Averages: h_w = -10/2 - (-11/2) = 0.5, h_l = -12/4 - (-11/4) = -0.25, h = 0.75; (0.75 - 1)^2.
  got = call(preference.dpo_loss, *PAIR, beta=0.5, variant="ipo", **lengths)
  np.testing.assert_allclose(got, [0.0625], rtol=1e-6)
  # Paper convention (summed log-probs): (2 - 1)^2.
  got = call(preference.dpo_loss, *PAIR, beta=0.5, variant="ipo", length_normalize=False, **lengths)
  np.testing.assert_allclose(got, [1.0], rtol=1e-6)
  # Other variants ignore lengths by default and normalise on request: beta * h = 0.5 * 0.75.
  np.testing.assert_allclose(call(preference.dpo_loss, *PAIR, beta=0.5, **lengths), [sp(1.0)], rtol=1e-6)
  got = call(preference.dpo_loss, *PAIR, beta=0.5, length_normalize=True, **lengths)
  np.testing.assert_allclose(got, [sp(0.375)], rtol=1e-6)


def test_implicit_rewards(call):
  chosen, rejected = call(preference.dpo_implicit_rewards, *PAIR, beta=0.5)
  np.testing.assert_allclose(chosen, [0.5])
  np.testing.assert_allclose(rejected, [-0.5])


def test_simpo_orpo_nll_hand_values(call):
  pc, pr = np.array([-10.0]), np.array([-12.0])
  lengths = dict(chosen_lengths=np.array([5]), rejected_lengths=np.array([4]))
  # u = 2 * (-2 - (-3)) - 0.5 = 1.5.
  np.testing.assert_allclose(call(preference.simpo_loss, pc, pr, beta=2.0, gamma=0.5, **lengths),
                             [sp(1.5)], rtol=1e-6)
  np.testing.assert_allclose(sp(1.5), 0.20141328, rtol=1e-7)
  # Pre-averaged inputs without lengths give the same.
  np.testing.assert_allclose(call(preference.simpo_loss, pc / 5, pr / 4, beta=2.0, gamma=0.5), [sp(1.5)],
                             rtol=1e-6)
  # ORPO: averages -0.5 and -1; log-odds p - log(1 - e^p).
  lo_w = -0.5 - math.log(1 - math.exp(-0.5))
  lo_l = -1.0 - math.log(1 - math.exp(-1.0))
  expected = 0.5 + 0.1 * sp(lo_w - lo_l)
  np.testing.assert_allclose(expected, 0.53202998, rtol=1e-7)
  got = call(preference.orpo_loss, np.array([-1.0]), np.array([-3.0]), beta=0.1,
             chosen_lengths=np.array([2]), rejected_lengths=np.array([3]))
  np.testing.assert_allclose(got, [expected], rtol=1e-6)
  got = call(preference.orpo_loss, np.array([-0.5]), np.array([-1.0]), beta=0.1, nll_coef=0.0)
  np.testing.assert_allclose(got, [0.1 * sp(lo_w - lo_l)], rtol=1e-5)
  # Odds stay finite for near-certain completions.
  assert np.isfinite(call(preference.orpo_loss, np.array([0.0]), np.array([-1e-9]))).all()
  np.testing.assert_allclose(call(preference.chosen_nll_loss, pc, chosen_lengths=np.array([5])), [2.0])
  np.testing.assert_allclose(call(preference.chosen_nll_loss, pc), [10.0])


def test_preference_gradients():
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    pc, pr = rng.normal(size=3) - 5, rng.normal(size=3) - 5
    rc, rr = rng.normal(size=3) - 5, rng.normal(size=3) - 5
    n_w, n_l = np.array([3.0, 4.0, 5.0]), np.array([2.0, 6.0, 3.0])

    @jax.jit
    def all_losses(a, b):  # one check, one compilation
      out = [preference.simpo_loss(a, b, beta=2.0, chosen_lengths=n_w, rejected_lengths=n_l),
             preference.orpo_loss(a, b, chosen_lengths=n_w, rejected_lengths=n_l),
             preference.chosen_nll_loss(a, chosen_lengths=n_w)]
      for variant in preference.DPO_VARIANTS:
        kw = dict(label_smoothing=0.1) if variant in ("cdpo", "robust") else {}
        if variant == "hinge":  # stay on the smooth side of the hinge
          kw = dict(beta=0.01)
        if variant == "bco_pair":  # the default delta is a stop-gradient batch statistic
          kw = dict(bco_delta=0.2)
        out.append(preference.dpo_loss(a, b, rc, rr, **{"beta": 0.3, "variant": variant, **kw}))
      return out

    check_grads(all_losses, (pc, pr), order=1, modes=("rev",))
    # d/d log pi(y_w) of the DPO loss is -beta * sigma(-beta h); the reference gets no gradient.
    grads = jax.grad(lambda a, r: preference.dpo_loss(a, pr, r, rr, beta=0.3).sum(), argnums=(0, 1))
    g_pc, g_rc = jax.jit(grads)(pc, rc)
    h = (pc - rc) - (pr - rr)
    np.testing.assert_allclose(g_pc, -0.3 / (1 + np.exp(0.3 * h)), rtol=1e-10)
    np.testing.assert_array_equal(g_rc, 0.0)
    # Implicit rewards are metrics: no gradient.
    g = jax.jit(jax.grad(lambda a: preference.dpo_implicit_rewards(a, pr, rc, rr, beta=0.1)[0].sum()))(pc)
    np.testing.assert_array_equal(g, 0.0)


def test_preference_errors():
  z = np.zeros(3)
  with pytest.raises(ValueError, match=r"variant='dpo'.*'sigmoid', 'cdpo', 'robust', 'ipo'"):
    preference.dpo_loss(z, z, z, z, beta=0.1, variant="dpo")
  with pytest.raises(ValueError, match="ref_rejected_logps"):
    preference.dpo_loss(z, z, z, np.zeros(4), beta=0.1)
  with pytest.raises(ValueError, match=r"policy_chosen_logps.*\[B\]"):
    preference.dpo_loss(*(np.zeros((3, 2)),) * 4, beta=0.1)
  with pytest.raises(ValueError, match="label_smoothing"):
    preference.dpo_loss(z, z, z, z, beta=0.1, variant="ipo", label_smoothing=0.1)
  with pytest.raises(ValueError, match="label_smoothing"):
    preference.dpo_loss(z, z, z, z, beta=0.1, variant="robust", label_smoothing=0.5)
  with pytest.raises(ValueError, match="beta"):
    preference.dpo_loss(z, z, z, z, beta=0.0)
  with pytest.raises(ValueError, match="rejected_lengths"):
    preference.dpo_loss(z, z, z, z, beta=0.1, variant="ipo", chosen_lengths=z)
  with pytest.raises(ValueError, match="length normalisation"):
    preference.dpo_loss(z, z, z, z, beta=0.1, length_normalize=True)
  with pytest.raises(TypeError):
    preference.dpo_loss(z, z, z, z, 0.1)  # hyper-parameters are keyword-only
