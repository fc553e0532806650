"""PPO from an SFT export against the enumerable world's gold reward (or a learned RM).

  python -m rlhf_jax.main --config=configs/sft.py:enumerable --workdir=runs/sft_enum
  python -m rlhf_jax.main --config=configs/ppo.py --workdir=runs/ppo --config.init.from_workdir=runs/sft_enum
"""

import ml_collections

from rlhf_jax import configlib, defaults

VARIANTS = {
    "adaptive": "adaptive KL controller toward kl.target (Ziegler et al. 2019)",
    "learned": "reward from the reward model in reward.from_workdir instead of gold",
    "shared": "value head on the policy's backbone instead of a separate critic",
    "arithmetic": "the arithmetic task and its verifier instead of the enumerable world",
    "test": "seconds-long, for tests",
}


def get_config(arg=None):
  variants = configlib.parse_variants(arg, VARIANTS)
  c = defaults.base_config()
  c.stage = "ppo"
  if "arithmetic" not in variants:
    defaults.use_enumerable_world(c)
  defaults.online_rl(c)
  c.rl.prompts_per_step = 64
  c.ppo = ml_collections.ConfigDict({
      "epochs": 4, "minibatches": 4, "clip_eps": 0.2, "value_clip_eps": 0.2, "value_coef": 0.5,
      "entropy_coef": 0.0, "gamma": 1.0, "lam": 0.95, "kl_estimator": "k1",
      "kl_value_clamp": 0.0,  # > 0: the per-token KL estimate clipped to [-c, c] (verl: 10)
      "whiten_rewards": False, "missing_eos_penalty": 0.0, "ptx_coef": 0.0, "stop_kl": 0.0})
  c.critic = ml_collections.ConfigDict({"shared_backbone": False, "init_from_reward_model": True})
  c.kl.coef = 0.2
  c.optimizer.lr = 3e-4
  c.optimizer.warmup_steps = 5
  c.optimizer.schedule = "constant"
  c.train.num_steps = 100
  c.train.log_every = 5
  c.train.eval_every = 25
  if "adaptive" in variants:
    # horizon 500 samples: β moves by up to 0.2 · 64 / 500 ≈ 2.6 % per 64-prompt iteration.
    # Measured (enumerable world, gold reward, 200 iterations from the 400-step SFT): β 0.20 →
    # 0.42, exact KL 2.84 at iteration 25, then 1.78-2.10 from iteration 75 on; gold 0.73 → 2.62.
    c.kl.controller, c.kl.target, c.kl.horizon = "adaptive", 2.0, 500.0
  if "learned" in variants:
    c.reward.source = "learned"
  if "shared" in variants:
    c.critic.shared_backbone = True
  if "test" in variants:
    defaults.shrink_for_test(c, num_steps=4, eval_every=4, log_every=1, eval_examples=32)
    c.rl.prompts_per_step = 16
    c.ppo.epochs, c.ppo.minibatches = 2, 2
  return c
