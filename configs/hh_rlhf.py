"""RLHF on Anthropic's HH-RLHF preferences: SFT → reward model → DPO and PPO, tiny model.

SFT on the chosen dialogues → reward model → DPO and PPO against the reward model, with a tiny
model from scratch and a sentencepiece tokenizer trained on the data. Minutes on 2 CPU cores.

The data is the TFDS builder `hh_rlhf` (rlhf_jax/data/hh_rlhf.py): give the directory holding
`<subset>/<split>.jsonl.gz` (github.com/anthropics/hh-rlhf) with --config.data.manual_dir
(without one, TFDS downloads the files).
  python -m rlhf_jax.main --config=configs/hh_rlhf.py --workdir=runs/hh \\
      --config.data.manual_dir=/path/to/hh-rlhf
`:sample` is for a directory with only the `test` split (e.g. a sample of harmless-base): it
trains on that split with a seeded 10 % held out (data.split_seed). `:hf` starts SFT from a
Hugging Face checkpoint, its tokenizer and chat template: --config.sft.model.hf_path=/path/to/it.
Each step's own fields are overridable as usual (--config.ppo.kl.coef=0.1).
"""

import ml_collections

from rlhf_jax import configlib

SUBSET = "harmless-base"

VARIANTS = {
    "sample": "data.manual_dir holds only the test split: train on it, a seeded 10 % held out",
    "hf": "SFT from a Hugging Face checkpoint and its tokenizer (sft.model.hf_path, required)",
    "test": "seconds-long, for tests",
}


def _data(c, variants) -> None:
  d = c.data
  d.source, d.path = "tfds", f"hh_rlhf/{SUBSET}-skip-malformed"
  d.prompt_len, d.completion_len = 128, 64
  d.overlong = "truncate"   # long dialogues keep their last prompt tokens (counted in the log)
  d.allow_empty_completion, d.end_by_length = False, False
  d.batch_size = 16
  if "sample" in variants:
    d.train_split = d.eval_split = "test"   # the only split: hold out data.heldout_fraction
  if "test" in variants:
    d.prompt_len, d.completion_len = 32, 16
    d.batch_size = 8
  c.tokenizer.kind, c.tokenizer.vocab_size = "sentencepiece", 2000 if "test" not in variants else 400
  c.train.eval_examples = 256 if "test" not in variants else 16
  c.train.tensorboard = "test" not in variants


def _steps(c, num_steps, eval_every, test: bool) -> None:
  c.train.num_steps, c.train.eval_every = num_steps, eval_every
  c.train.log_every = 1 if test else 10
  c.train.checkpoint_every = num_steps if test else 0


def get_config(arg=None):
  variants = configlib.parse_variants(arg, VARIANTS)
  test = "test" in variants
  c = ml_collections.ConfigDict()
  c.stage = "recipe"
  c.recipe = ml_collections.ConfigDict({
      "steps": ("sft", "reward_model", "dpo", "ppo"),
      "links": (("reward_model", "init.from_workdir", "sft"),
                ("dpo", "init.from_workdir", "sft"),
                ("ppo", "init.from_workdir", "sft"),
                ("ppo", "reward.from_workdir", "reward_model")),
      "shared": ("data.manual_dir", "data.data_dir"),
      "required": ("sft.model.hf_path",) if "hf" in variants else ()})
  c.data = ml_collections.ConfigDict({"manual_dir": "", "data_dir": ""})

  c.sft = configlib.sub_config(__file__, "sft.py")
  c.sft.model.preset = "tiny"
  c.sft.optimizer.lr = 1e-3
  _steps(c.sft, 4 if test else 600, 2 if test else 200, test)

  c.reward_model = configlib.sub_config(__file__, "reward_model.py")
  c.reward_model.optimizer.lr = 3e-4
  c.reward_model.reward.normalization_examples = 16 if test else 512
  _steps(c.reward_model, 4 if test else 300, 2 if test else 100, test)

  c.dpo = configlib.sub_config(__file__, "dpo.py")
  c.dpo.optimizer.lr = 3e-4
  c.dpo.loss.beta = 0.1
  c.dpo.eval.exact_prompts = 0
  _steps(c.dpo, 4 if test else 300, 2 if test else 100, test)

  c.ppo = configlib.sub_config(__file__, "ppo.py:learned")
  c.ppo.rl.prompts_per_step = 8 if test else 32
  c.ppo.ppo.epochs, c.ppo.ppo.minibatches = (1, 1) if test else (2, 2)
  c.ppo.kl.coef = 0.05
  c.ppo.eval.exact_prompts = 0
  _steps(c.ppo, 2 if test else 60, 2 if test else 20, test)

  for step in c.recipe.steps:
    _data(c[step], variants)
  return c
