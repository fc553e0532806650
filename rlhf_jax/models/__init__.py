"""Models: the decoder (Llama, Qwen2, Gemma, GPT-2 families), scalar heads, presets and Hugging
Face checkpoint import/export."""

from rlhf_jax.models.heads import ScalarHead, ScalarModel, last_token_values
from rlhf_jax.models.hf import (HFTokenizer, LoadedModel, config_from_hf, config_to_hf, load_hf,
                                load_hf_tokenizer, save_hf)
from rlhf_jax.models.presets import FAMILIES, PRESETS, ModelConfig, get_model_config
from rlhf_jax.models.transformer import Transformer, positions_from_mask
