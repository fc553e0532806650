"""Hugging Face checkpoints: config.json <-> ModelConfig, safetensors import/export, tokenizer."""

from rlhf_jax.models.hf.checkpoint import (LoadedModel, check_dir, load_hf, read_hf_config,
                                           save_hf)
from rlhf_jax.models.hf.config import (SUPPORTED_MODEL_TYPES, config_from_hf, config_to_hf,
                                       family_of)
from rlhf_jax.models.hf.tokenizer import HFTokenizer, load_hf_tokenizer
