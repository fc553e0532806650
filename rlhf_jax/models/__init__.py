"""Models: the Llama-style decoder, scalar heads and presets."""

from rlhf_jax.models.heads import ScalarHead, ScalarModel, last_token_values
from rlhf_jax.models.presets import PRESETS, ModelConfig, get_model_config
from rlhf_jax.models.transformer import Transformer, positions_from_mask
