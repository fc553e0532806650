"""Tiny random Hugging Face checkpoints of every supported family, written once per session."""

import pytest

from hf_testlib import HF_CONFIGS, random_hf_model


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
  """variant -> (checkpoint dir, torch model) for every variant in HF_CONFIGS."""
  out = {}
  for variant in HF_CONFIGS:
    model = random_hf_model(variant)
    path = str(tmp_path_factory.mktemp(f"hf_{variant}"))
    model.save_pretrained(path)
    out[variant] = (path, model)
  return out
