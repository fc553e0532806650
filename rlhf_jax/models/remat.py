"""Rematerialisation (gradient checkpointing) of the decoder blocks, chosen by name.

Training keeps every block's activations for the backward pass: memory O(L B S (D + F)). With
remat the forward of each block runs again during the backward pass and only what the policy
allows is kept (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"):

  none                              keep everything (no recomputation)
  full                              keep only the block inputs; recompute the whole block
  dots_saveable                     keep the outputs of every matmul, recompute the elementwise ops
  dots_with_no_batch_dims_saveable  keep the weight matmuls' outputs (not q k^T or probs v)

`ModelConfig.remat` picks the policy; `Transformer.hidden` applies it to each `Block` with
`jax.checkpoint` when there is no KV cache (training and scoring; generation never remats).
"""

from __future__ import annotations

from typing import Callable

import jax
from flax import nnx

REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(name: str) -> None:
  if name not in REMAT_POLICIES:
    raise ValueError(f"unknown ModelConfig.remat {name!r}; valid: {list(REMAT_POLICIES)}")


def remat_block(block: nnx.Module, name: str, x, positions_BxS, kv_mask_BxL, cache_index,
                segment_ids_BxS=None):
  """`block(x, ...)` without a cache, its activations recomputed in the backward pass as policy
  `name` says. The block's state (parameters, LoRA adapters) is an explicit input, so gradients
  flow to it exactly as without remat."""
  check_remat(name)
  graphdef, state = nnx.split(block)

  def forward(state, x, positions_BxS, kv_mask_BxL, cache_index, segment_ids_BxS):
    y, _ = nnx.merge(graphdef, state)(x, positions_BxS, kv_mask_BxL, None, cache_index,
                                      segment_ids_BxS)
    return y

  return jax.checkpoint(forward, policy=REMAT_POLICIES[name])(state, x, positions_BxS,
                                                               kv_mask_BxL, cache_index,
                                                               segment_ids_BxS)
