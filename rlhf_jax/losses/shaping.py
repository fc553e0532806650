r"""Reward shaping by completion length: DAPO's soft overlong punishment (Yu et al. 2025, "DAPO: an
open-source LLM reinforcement learning system at scale", eq. 13).

With a budget of :math:`L_{max}` generated tokens and a buffer of the last :math:`L_{buf}` of them:

.. math::
    R_{len}(y) = \begin{cases}
      0 & |y| \le L_{max} - L_{buf} \\
      \dfrac{(L_{max} - L_{buf}) - |y|}{L_{buf}} & L_{max} - L_{buf} < |y| \le L_{max} \\
      -1 & |y| > L_{max}
    \end{cases}

scaled by `factor` and added to the task reward: a completion is penalised linearly as it runs into the
buffer, by `factor` at the budget. (DAPO also masks truncated completions out of the loss, "overlong
filtering"; that is a mask, applied by the caller.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses import _checks


def overlong_penalty(lengths_B: jax.Array, *, max_len: int, buffer: int,
                     factor: float = 1.0) -> jax.Array:
  """`factor` * R_len of each completion length (module docstring); [B] float32, <= 0.

  Args:
    lengths_B: [B] generated tokens per completion.
    max_len: L_max, the generation budget.
    buffer: L_buf in [1, max_len], the soft band before the budget.
    factor: scale of the penalty (1 in DAPO).
  """
  fn = "overlong_penalty"
  _checks.check_rank(fn, "lengths_B", lengths_B, 1, "[B]")
  if not 1 <= buffer <= max_len:
    raise ValueError(f"{fn}: buffer must be in [1, max_len={max_len}], got {buffer}")
  length = _checks.as_float(lengths_B)
  start = float(max_len - buffer)
  soft = jnp.minimum(0.0, (start - length) / float(buffer))
  return factor * jnp.where(length > max_len, -1.0, soft)
