"""Building blocks of the decoder: parameter init, norms, rotary embeddings, feed-forward.

Every parameter carries logical axis names in its `axes` metadata (`vocab`, `embed`, `heads`,
`kv_heads`, `kv`, `mlp`, `norm`). Norms and the RoPE rotation compute in float32 whatever the
compute dtype; `einsum_f32` gives float32 results of compute-dtype matmuls.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from rlhf_jax.models.lora import project
from rlhf_jax.models.presets import ModelConfig


def param(rngs: nnx.Rngs, shape, axes, scale: float, dtype) -> nnx.Param:
  """A Gaussian-initialised parameter N(0, scale^2) with logical `axes`."""
  value = jax.random.normal(rngs.params(), shape, dtype) * scale
  return nnx.Param(value, axes=axes)


def zeros(shape, axes, dtype) -> nnx.Param:
  """A zero-initialised parameter (biases) with logical `axes`."""
  return nnx.Param(jnp.zeros(shape, dtype), axes=axes)


def einsum_f32(spec: str, x: jax.Array, y: jax.Array) -> jax.Array:
  """einsum(spec, x, y) accumulated and returned in float32 (logits, attention scores).

  With lower-precision operands (bfloat16 compute) the float32 cotangent is cast back to the
  operands' dtype before the backward matmuls, so they run in the compute dtype like every other
  matmul, instead of as mixed float32 x bfloat16 products (which XLA upcasts to float32). The
  forward value is the same either way; float32 operands take the plain einsum.
  """
  if x.dtype == jnp.float32 and y.dtype == jnp.float32:
    return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)
  return _einsum_f32(spec, x, y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_f32(spec, x, y):
  return jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)


def _einsum_f32_fwd(spec, x, y):
  return _einsum_f32(spec, x, y), (x, y)


def _einsum_f32_bwd(spec, residuals, g):
  x, y = residuals
  _, vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), x, y)
  return vjp(g.astype(jnp.result_type(x, y)))


_einsum_f32.defvjp(_einsum_f32_fwd, _einsum_f32_bwd)


def rope_inv_freq(head_dim: int, theta: float, scaling: tuple = ()) -> jax.Array:
  """Inverse frequencies w_i = theta^(-2i/H), i < H/2, optionally rescaled.

  linear (Chen et al. 2023, position interpolation): w_i / factor.
  llama3 (Llama 3.1, Dubey et al. 2024): with wavelength l_i = 2 pi / w_i and the original context
    C, w_i is kept where l_i < C / high_freq_factor, divided by `factor` where
    l_i > C / low_freq_factor, and in between interpolated with
    s = (C / l_i - low) / (high - low):  (1 - s) w_i / factor + s w_i.
  """
  inv_freq_F = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if not scaling:
    return inv_freq_F
  s = dict(scaling)
  kind, factor = s["rope_type"], float(s.get("factor", 1.0))
  if kind == "default":
    return inv_freq_F
  if kind == "linear":
    return inv_freq_F / factor
  if kind != "llama3":
    raise ValueError(f"unsupported rope_type {kind!r}; valid: ['default', 'linear', 'llama3']")
  low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
  context = float(s["original_max_position_embeddings"])
  wavelen_F = 2 * math.pi / inv_freq_F
  scaled_F = jnp.where(wavelen_F > context / low, inv_freq_F / factor, inv_freq_F)
  smooth_F = (context / wavelen_F - low) / (high - low)
  smoothed_F = (1 - smooth_F) * scaled_F / factor + smooth_F * scaled_F
  medium_F = (wavelen_F >= context / high) & (wavelen_F <= context / low)
  return jnp.where(medium_F, smoothed_F, scaled_F)


def apply_rope(x_BxSxNxH: jax.Array, positions_BxS: jax.Array, theta: float,
               scaling: tuple = ()) -> jax.Array:
  """Rotary embedding (Su et al. 2021), half-split convention as in Llama's HF implementation:
  with x = [x1, x2] and angles a = p * w,  rope(x) = [x1 cos a - x2 sin a, x2 cos a + x1 sin a]."""
  h = x_BxSxNxH.shape[-1]
  inv_freq_F = rope_inv_freq(h, theta, scaling)
  angles_BxSxF = positions_BxS.astype(jnp.float32)[..., None] * inv_freq_F
  sin = jnp.sin(angles_BxSxF)[:, :, None, :]
  cos = jnp.cos(angles_BxSxF)[:, :, None, :]
  x = x_BxSxNxH.astype(jnp.float32)
  x1, x2 = x[..., : h // 2], x[..., h // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxSxNxH.dtype)


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * (offset + scale) (Zhang & Sennrich 2019), in float32.

  offset = 0 is Llama's convention (scale starts at 1); Gemma stores the weight with offset 1
  (scale starts at 0).
  """

  def __init__(self, dim: int, eps: float, param_dtype, offset: float = 0.0):
    self.eps = eps
    self.offset = offset
    self.scale = nnx.Param(jnp.full((dim,), 1.0 - offset, param_dtype), axes=("norm",))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * (self.offset + self.scale[...].astype(jnp.float32))).astype(x.dtype)


class LayerNorm(nnx.Module):
  """y = (x - mean(x)) / sqrt(var(x) + eps) * scale + bias (Ba et al. 2016), in float32."""

  def __init__(self, dim: int, eps: float, param_dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), axes=("norm",))
    self.bias = zeros((dim,), ("norm",), param_dtype)

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)
            + self.bias[...].astype(jnp.float32)).astype(x.dtype)


def make_norm(cfg: ModelConfig) -> nnx.Module:
  """The family's norm over d_model: RMSNorm (with the configured offset) or LayerNorm."""
  pd = jnp.dtype(cfg.param_dtype)
  if cfg.norm == "layer":
    return LayerNorm(cfg.d_model, cfg.norm_eps, pd)
  return RMSNorm(cfg.d_model, cfg.norm_eps, pd, offset=cfg.norm_scale_offset)


def activation(name: str, x: jax.Array) -> jax.Array:
  """silu(x) = x sigmoid(x); gelu(x) = x Phi(x) (Hendrycks & Gimpel 2016); gelu_tanh is its
  approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
  if name == "silu":
    return jax.nn.silu(x)
  if name == "gelu":
    return jax.nn.gelu(x, approximate=False)
  if name == "gelu_tanh":
    return jax.nn.gelu(x, approximate=True)
  raise ValueError(f"unknown activation {name!r}; valid: ['silu', 'gelu', 'gelu_tanh']")


class MLP(nnx.Module):
  """Feed-forward block.

  gated (Shazeer 2020, SwiGLU / GeGLU):  down(act(x W_gate + b_gate) * (x W_up + b_up)) + b_down
  plain (GPT-2):                          down(act(x W_up + b_up)) + b_down
  Biases exist only with cfg.mlp_bias. Each x W also adds its LoRA adapter when one is attached.
  """

  LORA_TARGETS = {"w_gate": 1, "w_up": 1, "w_down": 1}  # weight -> leading input dims (lora.py)

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, f = cfg.d_model, cfg.d_ff
    pd = jnp.dtype(cfg.param_dtype)
    self.activation = cfg.mlp_activation
    self.gated = cfg.mlp_gated
    self.use_bias = cfg.mlp_bias
    if self.gated:
      self.w_gate = param(rngs, (d, f), ("embed", "mlp"), d ** -0.5, pd)
    self.w_up = param(rngs, (d, f), ("embed", "mlp"), d ** -0.5, pd)
    self.w_down = param(rngs, (f, d), ("mlp", "embed"), f ** -0.5 / math.sqrt(2 * cfg.n_layers),
                        pd)
    if self.use_bias:
      if self.gated:
        self.b_gate = zeros((f,), ("mlp",), pd)
      self.b_up = zeros((f,), ("mlp",), pd)
      self.b_down = zeros((d,), ("embed",), pd)

  def __call__(self, x_BxSxD):
    dt = x_BxSxD.dtype

    def proj(name, bias_name, x, spec):
      y = project(self, name, spec, x)
      return y + getattr(self, bias_name)[...].astype(dt) if self.use_bias else y

    up_BxSxF = proj("w_up", "b_up", x_BxSxD, "bsd,df->bsf")
    if self.gated:
      gate_BxSxF = proj("w_gate", "b_gate", x_BxSxD, "bsd,df->bsf")
      act_BxSxF = activation(self.activation, gate_BxSxF) * up_BxSxF
    else:
      act_BxSxF = activation(self.activation, up_BxSxF)
    return proj("w_down", "b_down", act_BxSxF, "bsf,fd->bsd")
