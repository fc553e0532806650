"""The DeepSeek-R1 recipe (DeepSeek-AI 2025) at toy scale, on the arithmetic task.

SFT (cold start) → GRPO with a verifier → rejection sampling (keep verified-correct samples,
SFT on them) → a final round of RL. The paper's last stage mixes rule-based and model rewards
over many prompt types; this toy world has one task, so the final round is GRPO with the verifier
starting from the rejection-sampling model.

  python -m rlhf_jax.main --config=configs/r1.py --workdir=runs/r1
Each stage shows its effect on held-out greedy verifier accuracy. Measured on a 2-core AMD EPYC
(Zen 3) from a 900-step SFT policy (the test's, tests/stages/test_arithmetic_rl.py): 0.350 →
GRPO 0.576 (pass@8 0.758 → 0.782) → rejection sampling 0.674 → final RL 0.714; the three stages
after SFT took 8 min 29 s wall while another recipe ran beside them.
"""

import ml_collections

from rlhf_jax import configlib

VARIANTS = {"test": "seconds-long run of every stage, for tests"}


def get_config(arg=None):
  variants = configlib.parse_variants(arg, VARIANTS)
  test = ":test" if "test" in variants else ""
  c = ml_collections.ConfigDict()
  c.stage = "recipe"
  c.recipe = ml_collections.ConfigDict({
      "steps": ("sft", "grpo", "rejection_sampling", "final_rl"),
      "links": (("grpo", "init.from_workdir", "sft"),
                ("rejection_sampling", "init.from_workdir", "grpo"),
                ("final_rl", "init.from_workdir", "rejection_sampling"))})
  c.sft = configlib.sub_config(__file__, "sft.py" + test)
  c.grpo = configlib.sub_config(__file__, "grpo.py" + test)
  c.rejection_sampling = configlib.sub_config(
      __file__, "best_of_n.py:rejection_sampling" + (",test" if test else ""))
  c.rejection_sampling.bon.min_reward = 0.0 if test else 1.0  # keep verified-correct samples
  c.final_rl = configlib.sub_config(__file__, "grpo.py" + test)
  if not test:
    c.sft.train.num_steps = 1000
    # Two RL rounds of 200 iterations (grpo.py alone runs 600): enough for each stage's effect
    # to show (the module docstring's figures), in minutes.
    c.grpo.train.num_steps = c.final_rl.train.num_steps = 200
  return c
