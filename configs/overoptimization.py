"""Reward-model over-optimisation at toy scale (Gao, Schulman & Hilton 2022), on the enumerable world.

  python experiments/overoptimization.py --config=configs/overoptimization.py \\
      --workdir=runs/overopt --results=experiments/results/overoptimization
Any field can be overridden: --config.ppo.steps=40, --config.proxy.pairs="(512, 4096)".

Proxies: one reward model per (shape, pairs) of the grid (`proxy.grid`: "full" = every shape at
every training-set size; "cross" = every shape at `proxy.default_pairs` and every size at
`proxy.default_shape`), plus an ensemble of `proxy.ensemble.size` members for the mitigations.
Shapes are ModelConfig fields (d_model, n_layers, ...); `proxy.init` = "scratch" (random
initialisation of that shape) or "sft" (an SFT model of that shape, trained first).
"""

import ml_collections

from rlhf_jax import configlib
from rlhf_jax.train import dpo as dpo_steps

VARIANTS = {
    "quick": "a ≤ 10 minute look on 2 CPU cores: every proxy and PPO run of the claims table at "
             "half the PPO iterations, GRPO as in the full run; DPO, IPO and SimPO at one β",
    "test": "a ≤ 3 minute version for tests: fewer proxies, steps and runs",
}

SHAPES = {
    # name: ModelConfig fields (vocab from the tokenizer). Sizes grow ~4x per step.
    "xs": dict(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, d_ff=32),
    "s": dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, d_ff=64),
    "m": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=192),
    "l": dict(d_model=128, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=32, d_ff=384),
}


def get_config(arg=None):
  variants = configlib.parse_variants(arg, VARIANTS)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data_dir = ""                      # default: <workdir>/data (shared by every stage)
  # Exact evaluation: the first `prompts` held-out (test) prompts of the world, every completion.
  c.world = ml_collections.ConfigDict({"prompts": 8, "batch_size": 2048})
  c.sft = ml_collections.ConfigDict({"steps": 400, "batch_size": 64})
  c.proxy = ml_collections.ConfigDict({
      "shapes": ml_collections.ConfigDict({k: ml_collections.ConfigDict(v)
                                           for k, v in SHAPES.items()}),
      "sizes": ("xs", "s", "m"),        # proxy shapes used, smallest first
      "pairs": (256, 1024, 4096),       # training-set sizes (gold-labelled reference pairs)
      "grid": "cross",                  # cross | full
      "default_shape": "s",
      "default_pairs": 4096,
      "test_pairs": 1024,               # held-out pairs (test prompts) for accuracy
      "init": "scratch",                # scratch | sft
      "steps": 300, "batch_size": 64, "lr": 3e-3, "normalization_examples": 1024,
      "ensemble": ml_collections.ConfigDict({"size": 4, "shape": "xs", "pairs": 4096,
                                             "data_fraction": 0.8, "lam": 1.0}),
  })
  # The proxy whose curves the acceptance figures (summary.json) report: the smallest shape at
  # the default training-set size.
  c.acceptance_proxy = ""              # "" = f"{sizes[0]}_p{default_pairs}"
  c.bon = ml_collections.ConfigDict({
      "n_max": 2 ** 20, "points_per_octave": 2, "fit_n_max": 2 ** 20,
      "estimator_ns": (1, 4, 16, 64, 256, 1024), "estimator_samples": 4096,
      "estimator_repeats": 8})
  # The exact optimum of E[r] − β·KL against each proxy (π* ∝ π_ref·exp(r/β)), a β grid.
  c.kl_opt = ml_collections.ConfigDict({"betas": (3.0, 2.0, 1.5, 1.0, 0.7, 0.5, 0.35, 0.25, 0.18,
                                                  0.12, 0.08, 0.05, 0.03, 0.02, 0.01)})
  # PPO evaluated after every iteration (exact, cheap on this world): with 4 epochs x 4
  # minibatches per iteration the policy moves fast, and a sparser schedule left the first point
  # after the start at d = sqrt(KL) ~ 1 (the peak often the second point).
  c.ppo = ml_collections.ConfigDict({
      "steps": 36, "eval_every": 1, "lr": 5e-4, "prompts_per_step": 64, "epochs": 4,
      "minibatches": 4,
      "proxies": "all",                 # all | acceptance: PPO at β = 0 against these proxies
      "gold": True,                     # PPO at β = 0 against the gold reward itself
      "betas": (0.05, 0.15, 0.5),       # KL-penalty sweep against the acceptance proxy
      "ensemble_combines": ("mean", "worst_case", "mean_minus_var"),
  })
  # GRPO (configs/grpo.py:enumerable; β·k3 in the loss) against the gold reward and the
  # acceptance proxy: group_size samples per prompt, `minibatches` optimizer steps per iteration,
  # evaluated after every iteration.
  c.grpo = ml_collections.ConfigDict({
      "steps": 30, "eval_every": 1, "lr": 1e-3, "prompts_per_step": 64, "group_size": 8,
      "minibatches": 4, "gold": True, "betas": (0.0,)})
  c.dpo = ml_collections.ConfigDict({
      # every loss the DPO step can run (train/dpo.pair_loss_names), each at every β
      "losses": tuple(dpo_steps.pair_loss_names()), "betas": (0.02, 0.1, 0.5), "steps": 150,
      "eval_every": 10,
      "lr": 3e-4, "batch_size": 64, "pairs": 4096, "eval_pairs": 256})
  if "quick" in variants:
    # The claims table needs every proxy (sizes, data) and every PPO run (β sweep, ensembles);
    # they keep their settings but the PPO iterations halve (the curves end at a smaller d).
    c.ppo.steps = 18
    c.dpo.losses, c.dpo.betas = ("dpo", "ipo", "simpo"), (0.1,)
  if "test" in variants:
    c.world.prompts = 2
    c.sft.steps, c.sft.batch_size = 60, 32
    c.proxy.sizes = ("xs", "s")
    c.proxy.pairs = (256, 1024)
    c.proxy.default_shape, c.proxy.default_pairs = "s", 1024
    c.proxy.test_pairs = 128
    c.proxy.steps, c.proxy.batch_size = 40, 32
    c.proxy.normalization_examples = 128
    c.proxy.ensemble.size, c.proxy.ensemble.pairs = 2, 1024
    c.bon.n_max, c.bon.points_per_octave = 2 ** 12, 1
    c.bon.estimator_ns, c.bon.estimator_samples, c.bon.estimator_repeats = (1, 16), 256, 2
    c.kl_opt.betas = (1.0, 0.3, 0.1)
    c.ppo.steps, c.ppo.eval_every, c.ppo.lr = 4, 2, 1e-3
    c.ppo.prompts_per_step, c.ppo.epochs, c.ppo.minibatches = 16, 1, 2
    c.ppo.proxies = "acceptance"
    c.ppo.betas = (0.1,)
    c.ppo.ensemble_combines = ("worst_case",)
    c.grpo.steps, c.grpo.eval_every, c.grpo.prompts_per_step = 4, 2, 8
    c.grpo.group_size, c.grpo.minibatches = 4, 2
    c.dpo.losses, c.dpo.betas = ("dpo", "ipo"), (0.5,)
    c.dpo.steps, c.dpo.eval_every, c.dpo.batch_size, c.dpo.lr = 6, 3, 16, 1e-3
    c.dpo.pairs, c.dpo.eval_pairs = 256, 32
  return c
