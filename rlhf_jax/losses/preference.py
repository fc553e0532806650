r"""Direct alignment losses on preference pairs: the DPO family, SimPO, ORPO and the RPO/SFT NLL term.

Inputs are per-sequence log-probabilities of the completions (sum over completion tokens, see
`logprobs.sequence_logps`), one entry per pair: `policy_chosen_logps` is log pi_theta(y_w | x), etc.
All losses return one unreduced value per pair, shape [B]; average them (or weight them) in the train step.

Notation: :math:`h_w = \log\pi_\theta(y_w) - \log\pi_{ref}(y_w)`, :math:`h_l` likewise for the rejected
response, :math:`h = h_w - h_l` (the "DPO logit"), :math:`\beta` the inverse temperature.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rlhf_jax.losses import _checks

DPO_VARIANTS = ("sigmoid", "cdpo", "robust", "ipo", "hinge", "sppo_hard", "nca_pair", "bco_pair",
                "apo_zero", "apo_down")
_SMOOTHED_VARIANTS = ("sigmoid", "cdpo", "robust")


def _check_pair(fn: str, **arrays: jax.Array) -> None:
  name, first = next(iter(arrays.items()))
  _checks.check_rank(fn, name, first, 1, "[B]")
  _checks.check_same_shape(fn, **arrays)


def _lengths(fn: str, arg: str, lengths: jax.Array, batch: int, like: jax.Array) -> jax.Array:
  _checks.check_scalar_or_batch(fn, arg, lengths, batch)
  return jnp.maximum(jnp.asarray(lengths).astype(like.dtype), 1.0)


def _maybe_normalize(fn: str, chosen: jax.Array, rejected: jax.Array, chosen_lengths, rejected_lengths,
                     *, required: bool):
  """Divides sequence log-probs by their lengths when lengths are given (or raises if `required`)."""
  if (chosen_lengths is None) != (rejected_lengths is None):
    raise ValueError(f"{fn}: pass both `chosen_lengths` and `rejected_lengths`, or neither.")
  if chosen_lengths is None:
    if required:
      raise ValueError(f"{fn}: length normalisation needs `chosen_lengths` and `rejected_lengths`.")
    return chosen, rejected, None, None
  b = chosen.shape[0]
  n_w = _lengths(fn, "chosen_lengths", chosen_lengths, b, chosen)
  n_l = _lengths(fn, "rejected_lengths", rejected_lengths, b, chosen)
  return chosen / n_w, rejected / n_l, n_w, n_l


def dpo_loss(policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
             ref_chosen_logps: jax.Array, ref_rejected_logps: jax.Array, *,
             beta: float, variant: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_lengths: jax.Array | None = None, rejected_lengths: jax.Array | None = None,
             length_normalize: bool | None = None,
             bco_delta: float | jax.Array | None = None) -> jax.Array:
  r"""Per-pair loss of the DPO family (TRL `DPOTrainer` loss types).

  With :math:`h_w, h_l, h` as in the module docstring and :math:`\epsilon` = `label_smoothing`:

  - ``sigmoid`` -- DPO (Rafailov et al. 2023):
    :math:`-(1-\epsilon)\log\sigma(\beta h) - \epsilon\log\sigma(-\beta h)`; with :math:`\epsilon = 0`
    this is plain DPO.
  - ``cdpo`` -- conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): the same
    label-smoothed formula; a separate name so configs can say what they mean. TRL spells it
    ``sigmoid`` with ``label_smoothing > 0``.
  - ``robust`` -- rDPO (Chowdhury et al. 2024, "Provably Robust DPO"), unbiased under label-flip rate
    :math:`\epsilon < 1/2`: :math:`[-(1-\epsilon)\log\sigma(\beta h) + \epsilon\log\sigma(-\beta h)]
    / (1 - 2\epsilon)`.
  - ``ipo`` -- IPO (Azar et al. 2023, "A General Theoretical Paradigm..."): :math:`(h - 1/(2\beta))^2`,
    with :math:`\beta` playing the role of the paper's :math:`\tau`.
  - ``hinge`` -- SLiC-HF calibration loss (Zhao et al. 2023) in TRL's form :math:`\max(0, 1 - \beta h)`
    (the paper uses a margin :math:`\delta` on raw, reference-free log-likelihoods; here
    :math:`\delta = 1/\beta` and the reference is included).
  - ``sppo_hard`` -- SPPO with hard win probabilities (Wu et al. 2024, "Self-Play Preference
    Optimization"): :math:`(h_w - \tfrac{1}{2\beta})^2 + (h_l + \tfrac{1}{2\beta})^2`.
  - ``nca_pair`` -- NCA (Chen et al. 2024, "Noise Contrastive Alignment"):
    :math:`-\log\sigma(\beta h_w) - \tfrac12\log\sigma(-\beta h_w) - \tfrac12\log\sigma(-\beta h_l)`.
  - ``bco_pair`` -- BCO (Jung et al. 2024, "Binary Classifier Optimization"):
    :math:`-\log\sigma(\beta h_w - \delta) - \log\sigma(-(\beta h_l - \delta))`, where :math:`\delta`
    is a reward baseline. TRL keeps a running mean of the batch-mean implicit reward across steps;
    pass that as `bco_delta`. If `bco_delta` is None, the (stop-gradient) mean of this batch's chosen and
    rejected implicit rewards is used, which couples the rows of the batch.
  - ``apo_zero`` / ``apo_down`` -- Anchored Preference Optimization (D'Oosterlinck et al. 2024), eqs. 7-8:
    zero: :math:`(1 - \sigma(\beta h_w)) + \sigma(\beta h_l)`;
    down: :math:`\sigma(\beta h_w) + (1 - \sigma(\beta (h_w - h_l)))`.

  Length normalisation: when it is on, every log-prob (policy and reference) is divided by its completion
  length before the formula, i.e. average per-token log-probs are used. Following TRL, the default
  (`length_normalize=None`) turns it on for ``ipo`` only, and only when lengths are given; the IPO paper
  itself uses summed log-probs (`length_normalize=False`). `length_normalize=True` applies it to any
  variant (then lengths are required).

  Args:
    policy_chosen_logps: [B] log pi_theta(y_w | x), summed over completion tokens.
    policy_rejected_logps: [B] log pi_theta(y_l | x).
    ref_chosen_logps: [B] log pi_ref(y_w | x) (treated as a constant: no gradient flows into it).
    ref_rejected_logps: [B] log pi_ref(y_l | x).
    beta: inverse temperature / KL strength (> 0), typically 0.1.
    variant: one of `DPO_VARIANTS`.
    label_smoothing: epsilon for ``sigmoid``/``cdpo`` (in [0, 1]) and ``robust`` (in [0, 0.5)); other
      variants reject a non-zero value.
    chosen_lengths: optional [B] number of completion tokens of y_w.
    rejected_lengths: optional [B] number of completion tokens of y_l.
    length_normalize: None (TRL default, see above), True or False.
    bco_delta: reward baseline for ``bco_pair`` (scalar or [B]); ignored by other variants.

  Returns:
    loss_B: [B] per-pair losses. At policy = reference, ``sigmoid`` gives ln 2.
  """
  fn = "dpo_loss"
  _checks.check_choice(fn, "variant", variant, DPO_VARIANTS)
  _check_pair(fn, policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
              ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
  _checks.check_static_range(fn, "beta", beta, low=0.0, low_inclusive=False)
  if variant == "robust":
    _checks.check_static_range(fn, "label_smoothing", label_smoothing, low=0.0, high=0.5,
                               high_inclusive=False)
  elif variant in _SMOOTHED_VARIANTS:
    _checks.check_static_range(fn, "label_smoothing", label_smoothing, low=0.0, high=1.0)
  elif not (isinstance(label_smoothing, (int, float)) and label_smoothing == 0.0):
    raise ValueError(f"{fn}: label_smoothing={label_smoothing!r} has no effect for variant={variant!r}; "
                     f"it is used only by {', '.join(repr(v) for v in _SMOOTHED_VARIANTS)}.")

  pi_w, pi_l = _checks.as_float(policy_chosen_logps), _checks.as_float(policy_rejected_logps)
  ref_w = jax.lax.stop_gradient(_checks.as_float(ref_chosen_logps))
  ref_l = jax.lax.stop_gradient(_checks.as_float(ref_rejected_logps))
  normalize = (variant == "ipo" and chosen_lengths is not None) if length_normalize is None \
      else bool(length_normalize)
  if normalize:
    pi_w, pi_l, n_w, n_l = _maybe_normalize(fn, pi_w, pi_l, chosen_lengths, rejected_lengths,
                                            required=True)
    ref_w, ref_l = ref_w / n_w, ref_l / n_l
  elif (chosen_lengths is None) != (rejected_lengths is None):
    raise ValueError(f"{fn}: pass both `chosen_lengths` and `rejected_lengths`, or neither.")

  h_w = pi_w - ref_w
  h_l = pi_l - ref_l
  h = h_w - h_l
  eps = label_smoothing
  log_sig = jax.nn.log_sigmoid

  if variant in ("sigmoid", "cdpo"):
    return -(1.0 - eps) * log_sig(beta * h) - eps * log_sig(-beta * h)
  if variant == "robust":
    return (-(1.0 - eps) * log_sig(beta * h) + eps * log_sig(-beta * h)) / (1.0 - 2.0 * eps)
  if variant == "ipo":
    return jnp.square(h - 1.0 / (2.0 * beta))
  if variant == "hinge":
    return jax.nn.relu(1.0 - beta * h)
  if variant == "sppo_hard":
    return jnp.square(h_w - 0.5 / beta) + jnp.square(h_l + 0.5 / beta)
  if variant == "nca_pair":
    return -log_sig(beta * h_w) - 0.5 * log_sig(-beta * h_w) - 0.5 * log_sig(-beta * h_l)
  if variant == "bco_pair":
    if bco_delta is None:
      delta = jax.lax.stop_gradient(0.5 * (jnp.mean(beta * h_w) + jnp.mean(beta * h_l)))
    else:
      _checks.check_scalar_or_batch(fn, "bco_delta", bco_delta, h.shape[0])
      delta = jax.lax.stop_gradient(_checks.as_float(bco_delta))
    return -log_sig(beta * h_w - delta) - log_sig(-(beta * h_l - delta))
  if variant == "apo_zero":
    return (1.0 - jax.nn.sigmoid(beta * h_w)) + jax.nn.sigmoid(beta * h_l)
  # apo_down
  return jax.nn.sigmoid(beta * h_w) + (1.0 - jax.nn.sigmoid(beta * (h_w - h_l)))


def dpo_implicit_rewards(policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array,
                         ref_chosen_logps: jax.Array, ref_rejected_logps: jax.Array, *,
                         beta: float) -> tuple[jax.Array, jax.Array]:
  r"""DPO implicit rewards :math:`\beta(\log\pi_\theta(y) - \log\pi_{ref}(y))` for both responses.

  These are the metrics TRL logs as `rewards/chosen` and `rewards/rejected` (no gradient); their margin is
  :math:`\beta h` and `pairwise_accuracy(chosen, rejected)` gives `rewards/accuracies`.

  Args:
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: [B] each.
    beta: the DPO beta.

  Returns:
    (chosen_rewards_B, rejected_rewards_B): [B] each, stop-gradient.
  """
  fn = "dpo_implicit_rewards"
  _check_pair(fn, policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
              ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
  sg, f = jax.lax.stop_gradient, _checks.as_float
  chosen_B = beta * (f(policy_chosen_logps) - f(ref_chosen_logps))
  rejected_B = beta * (f(policy_rejected_logps) - f(ref_rejected_logps))
  return sg(chosen_B), sg(rejected_B)


def simpo_loss(policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array, *,
               beta: float, gamma: float = 0.5,
               chosen_lengths: jax.Array | None = None, rejected_lengths: jax.Array | None = None,
               label_smoothing: float = 0.0) -> jax.Array:
  r"""Per-pair SimPO loss (Meng et al. 2024, "SimPO: Simple Preference Optimization with a
  Reference-Free Reward"), reference-free and length-normalised.

  .. math::
      u = \frac{\beta}{|y_w|}\log\pi_\theta(y_w) - \frac{\beta}{|y_l|}\log\pi_\theta(y_l) - \gamma,
      \qquad \ell = -(1-\epsilon)\log\sigma(u) - \epsilon\log\sigma(-u)

  `gamma` is the target reward margin on the reward scale (TRL `CPOConfig.simpo_gamma`, default 0.5;
  the paper tunes beta in [2, 2.5] and gamma/beta in [0.3, 1.6]).

  Args:
    policy_chosen_logps: [B] summed log pi_theta(y_w | x); or already averaged per token if no lengths.
    policy_rejected_logps: [B] likewise for y_l.
    beta: reward scale (> 0).
    gamma: target margin.
    chosen_lengths, rejected_lengths: [B] completion lengths; None means the inputs are already
      per-token averages.
    label_smoothing: epsilon in [0, 1] (TRL's CPO option; 0 in the paper).

  Returns:
    loss_B: [B] per-pair losses.
  """
  fn = "simpo_loss"
  _check_pair(fn, policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps)
  _checks.check_static_range(fn, "beta", beta, low=0.0, low_inclusive=False)
  _checks.check_static_range(fn, "label_smoothing", label_smoothing, low=0.0, high=1.0)
  avg_w, avg_l, _, _ = _maybe_normalize(fn, _checks.as_float(policy_chosen_logps),
                                        _checks.as_float(policy_rejected_logps),
                                        chosen_lengths, rejected_lengths, required=False)
  u = beta * (avg_w - avg_l) - gamma
  eps = label_smoothing
  return -(1.0 - eps) * jax.nn.log_sigmoid(u) - eps * jax.nn.log_sigmoid(-u)


def _log1mexp(x: jax.Array) -> jax.Array:
  """log(1 - exp(x)) for x < 0, accurate near 0 and for very negative x (Maechler 2012)."""
  x = jnp.minimum(x, -1e-7)
  return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def orpo_loss(policy_chosen_logps: jax.Array, policy_rejected_logps: jax.Array, *,
              beta: float = 0.1,
              chosen_lengths: jax.Array | None = None, rejected_lengths: jax.Array | None = None,
              nll_coef: float = 1.0) -> jax.Array:
  r"""Per-pair ORPO loss (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference
  Model").

  With per-token average log-probs :math:`\bar p_w = \frac{1}{|y_w|}\log\pi_\theta(y_w)` (likewise
  :math:`\bar p_l`) and :math:`\mathrm{logodds}(p) = p - \log(1 - e^{p})`:

  .. math::
      \ell = c_{nll} \cdot (-\bar p_w) - \beta \log\sigma\big(\mathrm{logodds}(\bar p_w)
             - \mathrm{logodds}(\bar p_l)\big)

  `beta` is the paper's :math:`\lambda` (TRL `ORPOConfig.beta`, default 0.1). The NLL term here is the
  chosen response's per-token average NLL for each pair; TRL's is a token-mean over the whole chosen
  batch (the same thing when all chosen completions have equal length). Set `nll_coef=0` to get the
  odds-ratio term alone. Average log-probs are clamped to <= -1e-7 so the odds stay finite.

  Args:
    policy_chosen_logps: [B] summed log pi_theta(y_w | x); or already averaged if no lengths are given.
    policy_rejected_logps: [B] likewise for y_l.
    beta: weight lambda of the odds-ratio term.
    chosen_lengths, rejected_lengths: [B] completion lengths, or None for pre-averaged inputs.
    nll_coef: weight of the chosen NLL term.

  Returns:
    loss_B: [B] per-pair losses.
  """
  fn = "orpo_loss"
  _check_pair(fn, policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps)
  _checks.check_static_range(fn, "beta", beta, low=0.0)
  avg_w, avg_l, _, _ = _maybe_normalize(fn, _checks.as_float(policy_chosen_logps),
                                        _checks.as_float(policy_rejected_logps),
                                        chosen_lengths, rejected_lengths, required=False)
  log_odds = (avg_w - _log1mexp(avg_w)) - (avg_l - _log1mexp(avg_l))
  return nll_coef * (-avg_w) - beta * jax.nn.log_sigmoid(log_odds)


def chosen_nll_loss(policy_chosen_logps: jax.Array, *,
                    chosen_lengths: jax.Array | None = None) -> jax.Array:
  r"""Per-pair negative log-likelihood of the chosen response, the SFT term added to preference losses.

  .. math::
      \ell = -\frac{1}{|y_w|}\log\pi_\theta(y_w \mid x)

  Adding :math:`\alpha \cdot \ell` to `dpo_loss` gives RPO (Pang et al. 2024, "Iterative Reasoning
  Preference Optimization"; TRL `rpo_alpha`); it is also the SFT part of ORPO and can be added to SimPO or
  any other loss here. TRL takes a token-mean over the chosen batch; this per-pair version matches it when
  the chosen lengths are equal.

  Args:
    policy_chosen_logps: [B] summed log pi_theta(y_w | x) (or already averaged if no lengths).
    chosen_lengths: [B] chosen completion lengths; None returns the NLL of the given (summed or averaged)
      log-probs unchanged.

  Returns:
    loss_B: [B].
  """
  fn = "chosen_nll_loss"
  _checks.check_rank(fn, "policy_chosen_logps", policy_chosen_logps, 1, "[B]")
  logp = _checks.as_float(policy_chosen_logps)
  if chosen_lengths is not None:
    logp = logp / _lengths(fn, "chosen_lengths", chosen_lengths, logp.shape[0], logp)
  return -logp
