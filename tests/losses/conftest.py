"""Shared fixtures of the loss tests."""

import functools

import jax
import pytest


@functools.lru_cache(maxsize=None)
def _jitted(fn, hparams):
  return jax.jit(functools.partial(fn, **dict(hparams)))


def _call(fn, *arrays, **hparams):
  """Runs `fn(*arrays, **hparams)` under `jax.jit`, hyper-parameters fixed.

  Calling through jit checks that every function jits, and is much faster on CPU than eager mode (one
  compilation per function instead of one per primitive). Jitted functions are cached per
  (function, hyper-parameters) so that repeated calls reuse compilations.
  """
  key = tuple(sorted(hparams.items()))
  try:
    hash(key)
  except TypeError:  # an array-valued hyper-parameter: no caching
    return jax.jit(functools.partial(fn, **hparams))(*arrays)
  return _jitted(fn, key)(*arrays)


@pytest.fixture
def call():
  return _call
