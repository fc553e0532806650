"""Shared config defaults: every config file in configs/ starts from `base_config()`."""

from __future__ import annotations

import ml_collections

from rlhf_jax.parallel.sharding import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "sft"
  c.seed = 0

  c.task = ml_collections.ConfigDict({"name": "arithmetic",
                                      "params": ml_collections.ConfigDict({"max_operand": 99})})
  # char: one token per character of the task's alphabet (the toy tasks: on arithmetic the model
  # then sees the digits it adds; a subword vocabulary makes most sums single tokens and caps
  # held-out accuracy far lower). sentencepiece: tokenizer.path, or one trained on the task's
  # text (vocab_size) and cached in the workdir.
  c.tokenizer = ml_collections.ConfigDict({"kind": "char", "path": "", "vocab_size": 320})
  # Where records come from (data/sources.py) and how they read (data/formats.py, chat.py):
  # source: task (the toy task.name) | files (JSONL/JSON/Parquet: a file, a glob, or a
  # directory of <split>.* files) | tfds (a registered builder "name[/config]", e.g.
  # hh_rlhf/harmless-base-skip-malformed, with manual_dir). train_split / eval_split: the
  # splits' names; when the source has no eval split, heldout_fraction of the train split is
  # held out (seeded by split_seed). fields: {canonical name: your column}, e.g. {"prompt": "question"}.
  # chat_template: auto (the checkpoint's, else the built-in) | default | none | a .jinja file;
  # last_turn_only: conversational SFT trains on the last assistant turn only.
  c.data = ml_collections.ConfigDict({
      "source": "task", "path": "", "manual_dir": "", "train_split": "train",
      "eval_split": "test",
      "heldout_fraction": 0.1, "split_seed": 0,
      # canonical name -> the user's column ("" = the canonical name itself)
      "fields": ml_collections.ConfigDict({name: "" for name in (
          "prompt", "completion", "messages", "chosen", "rejected", "completions", "ranks",
          "chosen_gold", "rejected_gold")}),
      "chat_template": "auto", "last_turn_only": False,
      "data_dir": "",            # default: <workdir>/data
      "prompt_len": 12,
      "completion_len": 6,
      "batch_size": 64,           # global batch, split over processes and the data axes
      "overlong": "error",        # error | truncate | drop
      "allow_empty_completion": False,  # see data/pipeline.py Layout
      "end_by_length": False,
      # SFT on these JSONL records ({"prompt", "completion"}) instead of the task's
      # demonstrations (rejection sampling writes them).
      "sft_records_path": "",
      # SFT only. packing: several examples per training row of prompt_len + completion_len
      # tokens, attention kept within each (data/packing.py). length_buckets: pad each training
      # batch only to the smallest of these widths that holds it, e.g. (8, 12); () = full width
      # (data/pipeline.py; at most len(buckets) + 1 compiled step shapes).
      "packing": False,
      "length_buckets": (),
  })
  # dtype: compute dtype (params stay float32, train/precision.py); remat: per-block
  # rematerialisation, none | full | dots_saveable | dots_with_no_batch_dims_saveable;
  # attention: auto | xla | cudnn (models/attention.py; auto = cuDNN flash attention on a GPU
  # in bfloat16/float16, XLA otherwise). lm_head_chunk: > 0 computes the SFT loss and completion
  # log-probs that many vocabulary columns at a time, never the whole [B, T, V] logits (large
  # vocabularies; models/lm_head.py); 0 = off. scan_layers: the blocks as one jax.lax.scan in
  # training and scoring (compiles the block once, not once per layer; models/scan.py).
  # hf_path: a Hugging Face checkpoint directory (config.json + *.safetensors + tokenizer.model
  # or tokenizer.json) to start the sft stage (or a reward model's backbone) from: its shape
  # (preset, family and the tokenizer fields are then ignored), its weights (loaded sharded) and
  # its tokenizer (stages/common.py).
  c.model = ml_collections.ConfigDict({"preset": "tiny", "family": "llama", "dtype": "float32",
                                       "remat": "none", "attention": "auto", "lm_head_chunk": 0,
                                       "scan_layers": False, "hf_path": ""})
  # LoRA adapters (train/lora.py): rank 0 = off (full fine-tuning); targets: weight names
  # (wq, wk, wv, wo, w_gate, w_up, w_down) or groups (attn, mlp, all), comma-separated.
  c.lora = ml_collections.ConfigDict({"rank": 0, "alpha": 16.0, "targets": "all"})
  # Start from an earlier stage's export (<workdir>/export): its tokenizer, shape and weights.
  c.init = ml_collections.ConfigDict({"from_workdir": ""})
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # Multi-host: see parallel/distributed.py (environment variables override these).
  c.distributed = ml_collections.ConfigDict({"enabled": False, "coordinator_address": "",
                                             "num_processes": 0, "process_id": -1})
  c.logical_axis_rules = tuple((name, target) for name, target in DEFAULT_RULES)
  # Optional Weights & Biases sink beside metrics.jsonl and TensorBoard (train/wandb_sink.py;
  # pip install -e ".[wandb]"). mode: online | offline (under <workdir>/wandb, `wandb sync`).
  c.logging = ml_collections.ConfigDict({"wandb": ml_collections.ConfigDict({
      "enabled": False, "project": "rlhf-jax", "entity": "", "mode": "online", "name": "",
      "group": ""})})
  c.optimizer = ml_collections.ConfigDict({
      "name": "adamw", "lr": 3e-3, "schedule": "cosine", "warmup_steps": 20,
      "end_lr_fraction": 0.1, "weight_decay": 0.0, "b1": 0.9, "b2": 0.95, "eps": 1e-8,
      "grad_clip": 1.0})
  c.train = ml_collections.ConfigDict({
      "num_steps": 300, "log_every": 25, "eval_every": 100, "eval_examples": 512,
      # Each evaluation of a stage with a policy writes its greedy answers to this many held-out
      # prompts, with their rewards, to <workdir>/samples.jsonl and TensorBoard (0 = off).
      "eval_samples": 4,
      # 0 = a tenth of num_steps (a hard kill loses at most ~10% of the run; SIGTERM/SIGINT
      # checkpoint the current step, train/preemption.py).
      "checkpoint_every": 0, "keep_checkpoints": 2, "tensorboard": True,
      # > 0: stop (checkpointed) after this step, as a preemption would; the schedule still
      # follows num_steps, so a later run resumes exactly where this one stopped.
      "stop_at_step": 0,
      # Gradient accumulation: each step processes the global batch in this many micro-batches.
      "microbatches": 1,
      # Compile the train step ahead of time from abstract shapes and log XLA's memory analysis
      # and the per-role memory estimate (train/aot.py) before the loop starts.
      "aot_memory": False,
      # A non-finite loss, gradient or metric (train/nonfinite.py): stop (exit non-zero, no
      # export) or skip (the step's update is dropped, counted as train/nonfinite_skips) and
      # stop after nonfinite_max_skips consecutive skipped steps.
      "nonfinite": "stop", "nonfinite_max_skips": 10,
      # Resume into a workdir whose recorded config differs in fields that are safe to change
      # (train/workdir.py SAFE_ON_RESUME); other differences always stop the run.
      "allow_config_change": False})
  return c


def use_enumerable_world(c: ml_collections.ConfigDict, **params) -> None:
  """Points a config at the enumerable preference world (tasks/enumerable.py): char tokenizer,
  rows of [BOS + 3 prompt letters | up to 6 letters (+ EOS)], empty completions valid and
  6-letter completions ended by length, as generation with max_new_tokens = 6 makes them."""
  c.task.name = "enumerable"
  c.task.params = ml_collections.ConfigDict(params)
  c.tokenizer.kind = "char"
  c.data.prompt_len = 4
  c.data.completion_len = 6
  c.data.allow_empty_completion = True
  c.data.end_by_length = True


def online_rl(c: ml_collections.ConfigDict) -> None:
  """Fields shared by the online-RL stages (ppo, policy_gradient)."""
  c.rl = ml_collections.ConfigDict({
      "prompts_per_step": 16,     # prompts per iteration (each sampled pg.group_size times)
      "temperature": 1.0, "top_k": 0, "top_p": 1.0,
      # False: old-policy log-probs come from generation when it samples the float32 policy
      # itself (rl/rollout.py sampler_is_policy); True: always a separate forward pass.
      "rescore_policy": False,
      # Truncated importance sampling (Yao et al. 2025): the policy loss per token weighted by
      # min(pi_old / pi_sampler, tis_cap) when the sampler's log-probs differ from the trainer's
      # (tempered or bfloat16 sampling); 0 = off. The gap is logged as sampler_logp_gap.
      "tis_cap": 0.0,
      # DAPO's dynamic sampling: drop groups whose rewards are all equal and sample more prompts
      # until the batch is full, in at most max_sampling_rounds generation rounds (then the
      # batch is topped up with dropped groups, counted as dynamic_sampling/filled_groups).
      "dynamic_sampling": False, "max_sampling_rounds": 4,
      # Modules imported before pg.algorithm is looked up: they register more algorithms
      # (rl/algorithms.py `register`), comma-separated.
      "algorithm_modules": ""})
  c.reward = ml_collections.ConfigDict({
      # gold (the toy task's closed form / verifier) | learned (a reward model) | functions
      # (reward.functions alone); with source = learned, reward.functions are added to the RM's
      # reward. functions: "[name=]builtin_or_module:function[*weight], ..." (rewards/registry.py;
      # built-ins math_answer | format | length); function_params: {name: {param: value}}.
      "source": "gold",
      "functions": "", "function_params": ml_collections.ConfigDict(),
      "from_workdir": "",         # reward_model run, for source = learned
      "normalize": True,
      "ensemble_combine": "mean",  # mean | worst_case | mean_minus_var
      "ensemble_lambda": 0.0})
  c.kl = ml_collections.ConfigDict({
      "coef": 0.05, "controller": "fixed",  # fixed | adaptive (Ziegler et al. 2019)
      "target": 1.0, "horizon": 10_000.0,
      # where beta * KL goes: reward (shaped into the rewards at rollout time) | loss (a per-token
      # term with gradients) | auto (the algorithm's own: GRPO and CISPO loss, the others reward);
      # the estimator is pg.kl_estimator / ppo.kl_estimator (k1 | k2 | k3).
      "placement": "auto"})
  # pass_n > 0 (verifiable tasks): eval/pass@k and eval/maj@k for k in pass_k from pass_n
  # untempered samples per held-out prompt (train/passk.py).
  c.eval = ml_collections.ConfigDict({"exact_prompts": 8, "exact_batch_size": 4096,
                                      "pass_n": 0, "pass_k": (1,)})


def shrink_for_test(c: ml_collections.ConfigDict, *, num_steps: int, eval_every: int,
                    log_every: int, eval_examples: int = 64) -> None:
  """The `:test` variant shared by the configs: a small task and a seconds-long run."""
  if c.task.name == "enumerable":
    c.task.params.num_sft = (2048, 256)
    c.task.params.num_pairs = (512, 128)
    if "eval" in c:
      c.eval.exact_prompts = 2
  else:
    c.task.params.max_operand = 19
  c.data.batch_size = 16
  c.train.num_steps = num_steps
  c.train.log_every = log_every
  c.train.eval_every = eval_every
  c.train.eval_examples = eval_examples
  c.train.checkpoint_every = num_steps
  c.train.tensorboard = False
  c.train.eval_samples = 0  # a generation program less to compile per test run
