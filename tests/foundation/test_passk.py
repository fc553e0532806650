"""pass@k and maj@k estimators (train/passk.py) against hand-computed values."""

import itertools

import pytest

from rlhf_jax.train import passk


def test_pass_at_k_is_the_unbiased_estimator():
  assert passk.pass_at_k(4, 0, 2) == 0.0
  assert passk.pass_at_k(4, 1, 1) == pytest.approx(0.25)
  assert passk.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)   # C(3,2)/C(4,2) fail
  assert passk.pass_at_k(4, 3, 2) == 1.0                        # any 2 of 4 hold a correct one
  # Brute force: the fraction of k-subsets holding a correct sample.
  flags = [1, 0, 0, 1, 0]
  subsets = list(itertools.combinations(flags, 3))
  assert passk.pass_at_k(5, 2, 3) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
  with pytest.raises(ValueError, match="1 <= k <= n"):
    passk.pass_at_k(2, 1, 3)


def test_maj_at_k_votes_over_every_subset():
  answers = ["7", "7", "8", "9"]
  correct = [True, True, False, False]
  assert passk.maj_at_k(answers, correct, 1) == pytest.approx(0.5)
  # k = 4: "7" wins 2 to 1 to 1.
  assert passk.maj_at_k(answers, correct, 4) == 1.0
  # k = 2: {7,7} right; {7,8}, {7,9} (4 subsets) ties half right; {8,9} wrong -> (1 + 4 * 0.5) / 6.
  assert passk.maj_at_k(answers, correct, 2) == pytest.approx(3 / 6)
  with pytest.raises(ValueError, match="both correct and wrong"):
    passk.maj_at_k(["7", "7"], [True, False], 1)
