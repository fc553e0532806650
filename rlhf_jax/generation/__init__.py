"""Generation: KV-cache sampling in one jitted loop, and log-probs / values of given completions.

  sampling.py     SamplingConfig, logit processing (temperature, top-k, top-p, greedy), sampling
  decode.py       generate: prefill + decode over a preallocated KV cache (lax.while_loop)
  decode_step.py  one-token decode step over a head-major KV cache (used by decode.py)
  scoring.py      score_tokens (policy / reference log-probs, entropy), score_values (critic, RM)
  sharded.py      jitted, mesh-sharded wrappers: make_generate_fn, make_score_fn, make_value_fn
"""

from rlhf_jax.generation.decode import Generation, check_prompts, decode_rules, generate
from rlhf_jax.generation.sampling import (SamplingConfig, is_stop_token, process_logits,
                                          sample_tokens)
from rlhf_jax.generation.scoring import (TokenScores, ValueScores, concat_rows, score_tokens,
                                         score_values)
from rlhf_jax.generation.sharded import make_generate_fn, make_score_fn, make_value_fn
