"""Every registered function jits on example inputs; registry lookups and errors."""

import functools

import jax
import numpy as np
import pytest

from rlhf_jax import losses

B, T, V = 4, 5, 7
_rng = np.random.default_rng(0)
R_B = _rng.normal(size=B)
LOGP_B = -np.abs(_rng.normal(size=(4, B))) * 5 - 1
X_BxT = _rng.normal(size=(4, B, T)) * 0.1
LOGITS = _rng.normal(size=(B, T, V))
TOKENS = _rng.integers(0, V, size=(B, T))
MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
PAIR = tuple(LOGP_B)
LENGTHS = dict(chosen_lengths=np.array([3, 4, 5, 6]), rejected_lengths=np.array([2, 2, 7, 1]))

# name -> (positional arrays, keyword hyper-parameters, expected output shape)
EXAMPLES = {
    "bradley_terry": ((R_B, R_B[::-1]), dict(margin=0.1), (B,)),
    "plackett_luce": ((X_BxT[0], MASK), {}, (B,)),
    "dpo": (PAIR, dict(beta=0.1), (B,)),
    "cdpo": (PAIR, dict(beta=0.1, label_smoothing=0.1), (B,)),
    "robust": (PAIR, dict(beta=0.1, label_smoothing=0.1), (B,)),
    "ipo": (PAIR, dict(beta=0.1, **LENGTHS), (B,)),
    "hinge": (PAIR, dict(beta=0.1), (B,)),
    "sppo_hard": (PAIR, dict(beta=0.1), (B,)),
    "nca_pair": (PAIR, dict(beta=0.1), (B,)),
    "bco_pair": (PAIR, dict(beta=0.1), (B,)),
    "apo_zero": (PAIR, dict(beta=0.1), (B,)),
    "apo_down": (PAIR, dict(beta=0.1), (B,)),
    "simpo": (PAIR[:2], dict(beta=2.0, gamma=0.5, **LENGTHS), (B,)),
    "orpo": (PAIR[:2], dict(beta=0.1, **LENGTHS), (B,)),
    "chosen_nll": (PAIR[:1], dict(chosen_lengths=LENGTHS["chosen_lengths"]), (B,)),
    "sft": ((LOGITS, TOKENS, MASK), dict(label_smoothing=0.1), (B, T)),
    "kl_penalty": ((X_BxT[0], X_BxT[1]), dict(estimator="k3"), (B, T)),
    "kl_shaped_rewards": ((R_B, X_BxT[0], X_BxT[1], MASK, R_B > 0), dict(beta=0.05, missing_eos_penalty=1.0),
                          (B, T)),
    "ppo_policy": ((X_BxT[0], X_BxT[1], X_BxT[2], MASK), dict(clip_eps=0.2, clip_eps_high=0.28, dual_clip=3.0),
                   (B, T)),
    "gspo_policy": ((X_BxT[0], X_BxT[1], X_BxT[2], MASK), dict(clip_eps=3e-4, clip_eps_high=4e-4), (B, T)),
    "cispo_policy": ((X_BxT[0], X_BxT[1], X_BxT[2], MASK), dict(clip_eps_high=0.28), (B, T)),
    "ppo_value": ((X_BxT[0], X_BxT[1], X_BxT[2], MASK), dict(clip_eps=0.2), (B, T)),
    "entropy_bonus": ((X_BxT[0], MASK), dict(coef=0.01), (B, T)),
    "ptx": ((X_BxT[0], MASK), dict(coef=0.5), (B, T)),
    "gae": ((X_BxT[0], X_BxT[1], MASK), dict(gamma=1.0, lam=0.95), ((B, T), (B, T))),
    "grpo": ((R_B,), dict(group_size=2), (B,)),
    "grpo_batch_std": ((R_B,), dict(group_size=2), (B,)),
    "dr_grpo": ((R_B,), dict(group_size=2), (B,)),
    "rloo": ((R_B,), dict(group_size=2), (B,)),
    "reinforce": ((R_B,), dict(baseline="batch_mean"), (B,)),
    "reinforce_pp": ((R_B, X_BxT[0], MASK), dict(beta=0.05), (B, T)),
    "aggregate": ((X_BxT[0], MASK), dict(mode="sequence-mean-token-mean"), ()),
}


def test_examples_cover_registry():
  assert sorted(EXAMPLES) == losses.names()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_registered_function_jits(name):
  arrays, hparams, shape = EXAMPLES[name]
  out = jax.jit(functools.partial(losses.get(name), **hparams))(*arrays)
  shapes = jax.tree_util.tree_map(lambda x: x.shape, out)
  assert shapes == shape
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(out))


def test_registry_lookups():
  assert losses.get("ipo").keywords == {"variant": "ipo"}
  assert losses.get("dpo").func is losses.dpo_loss
  assert losses.get("simpo") is losses.simpo_loss
  assert losses.family("ipo") == "preference"
  assert "dpo" in losses.names("preference") and "gae" not in losses.names("preference")
  assert set(losses.names("advantages")) == {"gae", "grpo", "grpo_batch_std", "dr_grpo", "rloo", "reinforce",
                                             "reinforce_pp"}
  # The partial entries keep the docstring of the underlying function.
  assert "Per-pair loss of the DPO family" in losses.get("ipo").__doc__


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match=r"Unknown loss name 'dpoo'; valid names are: .*dpo.*ipo"):
    losses.get("dpoo")
  with pytest.raises(KeyError):
    losses.get("dpoo")
  with pytest.raises(ValueError, match="family"):
    losses.names("nope")


def test_register_rejects_duplicates():
  with pytest.raises(ValueError, match="already registered"):
    losses.register("dpo", losses.dpo_loss, family="preference")
