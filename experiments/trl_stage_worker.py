"""The TRL side of experiments/bench_stages.py: a child process that runs only torch.

Steps mode (`--spec JSON --data NPZ`): builds the Hugging Face model from the parent's weights
(bench_generation.build_hf: LlamaForCausalLM; for `rm` its backbone in a
LlamaForSequenceClassification(num_labels=1) whose `score.weight` is our scalar head's w), the
TRL trainer of the stage on a dataset holding the parent's rows, and one batch made by that
trainer's own data loader (its preprocessing and data collator), reused by every step. One step =
what transformers' Trainer inner loop does for one optimizer step without gradient accumulation:

  n = trainer._get_num_items_in_batch([batch])      (the loop's token count; None for rm / dpo)
  trainer.training_step(model, batch, n)            (compute_loss forward, metrics, backward)
  trainer._clip_grad_norm(model); optimizer.step(); lr_scheduler.step(); model.zero_grad()

(the loop's callbacks, loss/FLOP/token bookkeeping and logging are left out). Prints
`@@{"loss": <the first step's loss, before any update>, ...}` after `warmup` steps, then for
each stdin line {"steps": k} runs k steps and prints `@@{"times": [seconds per step]}`.

For `grpo` the one batch is the trainer's prompts (each repeated num_generations times), and
every training_step generates, scores (reference model), rewards (token_reward) and trains on
new completions, as TRL's loop does with num_iterations = 1 and one generation per step.

Cold-start mode (`--cold-start JSON`): a random-init LlamaForCausalLM of the given shape, SFTTrainer
on a small pre-tokenized dataset, trainer.train() for max_steps, then exit (no saving, no eval).
It imports neither JAX nor rlhf_jax (that would lengthen the TRL process being timed).

Tokens are words "t<id>" of a WordLevel tokenizer (ids 0-3: <pad> <s> </s> <unk>), so text maps
back to exactly the parent's ids (TRL's DPO trainer only takes text).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

import numpy as np

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0-3, as rlhf_jax's tokenizers


def send(obj) -> None:
  print("@@" + json.dumps(obj), flush=True)


def word(i: int) -> str:
  return SPECIALS[i] if i < len(SPECIALS) else f"t{i}"


def token_reward(prompts, completions, **_) -> list[float]:
  """The GRPO row's reward (ours and TRL's): the fraction of a completion's words that are even
  ids. Cheap, and it varies within a group, so advantages are not all zero."""
  del prompts
  out = []
  for text in completions:
    words = text.split()
    even = sum(1 for w in words if w.startswith("t") and int(w[1:]) % 2 == 0)
    out.append(even / max(len(words), 1))
  return out


def word_level(vocab: int):
  """A `tokenizers.Tokenizer` mapping the word "t<id>" (or a special token's name) to id."""
  import tokenizers

  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {word(i): i for i in range(vocab)}, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  return tok


def make_tokenizer(vocab: int):
  import transformers

  tok = word_level(vocab)
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
      unk_token="<unk>")


def train_args(kind: str, spec: dict, out_dir: str, **extra):
  """TRL config of the stage: float32, no checkpointing of activations, no saving/eval/report,
  AdamW (transformers' default implementation) with the parent's hyper-parameters."""
  import trl

  o = spec["optimizer"]
  config = {"sft": trl.SFTConfig, "rm": trl.RewardConfig, "dpo": trl.DPOConfig,
            "grpo": trl.GRPOConfig}[kind]
  return config(
      output_dir=out_dir, per_device_train_batch_size=spec["batch"], max_steps=spec["max_steps"],
      learning_rate=o["lr"], lr_scheduler_type="cosine_with_min_lr",
      lr_scheduler_kwargs={"min_lr_rate": o["end_lr_fraction"]}, warmup_steps=o["warmup_steps"],
      adam_beta1=o["b1"], adam_beta2=o["b2"], adam_epsilon=o["eps"],
      weight_decay=o["weight_decay"], max_grad_norm=o["grad_clip"],
      activation_checkpointing=False, bf16=False, fp16=False, use_cpu=True, report_to="none",
      save_strategy="no", eval_strategy="no", dataloader_num_workers=0, seed=0, **extra)


def hf_models(spec: dict, data: dict):
  """(policy, reference or None) with the parent's weights."""
  import torch
  import transformers

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from experiments.bench_generation import build_hf
  from rlhf_jax.models import get_model_config

  cfg = get_model_config(spec["preset"], vocab_size=spec["vocab"])
  weights = lambda p: {k[len(p):]: v for k, v in data.items() if k.startswith(p)}
  if spec["stage"] == "dpo":
    return build_hf(cfg, weights("w:")), build_hf(cfg, weights("r:"))
  if spec["stage"] in ("sft", "grpo"):
    return build_hf(cfg, weights("w:")), None
  w = weights("w:backbone/")  # rm: backbone + scalar head
  lm = build_hf(cfg, {**w, "lm_head": np.zeros((cfg.d_model, cfg.vocab_size), np.float32)})
  rm_cfg = copy.deepcopy(lm.config)
  rm_cfg.num_labels = 1
  rm = transformers.LlamaForSequenceClassification(rm_cfg).to(torch.float32)
  rm.model.load_state_dict(lm.model.state_dict())
  with torch.no_grad():
    rm.score.weight.copy_(torch.from_numpy(data["w:head/w"])[None])
  return rm, None


def make_trainer(spec: dict, data: dict, tok, out_dir: str):
  """(trainer, facts for the parent) for the stage, on a dataset of the parent's rows."""
  import datasets
  import trl

  policy, ref = hf_models(spec, data)
  b = {k[2:]: v for k, v in data.items() if k.startswith("b:")}
  stage, facts = spec["stage"], {}
  if stage == "sft":  # pre-tokenized; TRL turns completion_mask into labels (-100 elsewhere)
    ds = datasets.Dataset.from_dict({"input_ids": b["tokens"].tolist(),
                                     "completion_mask": b["completion_mask"].tolist()})
    args = train_args("sft", spec, out_dir, completion_only_loss=True)
    trainer = trl.SFTTrainer(model=policy, args=args, train_dataset=ds, processing_class=tok)
  elif stage == "rm":  # pre-tokenized pairs
    ds = datasets.Dataset.from_dict({"chosen_ids": b["chosen_tokens"].tolist(),
                                     "rejected_ids": b["rejected_tokens"].tolist()})
    trainer = trl.RewardTrainer(model=policy, args=train_args("rm", spec, out_dir),
                                train_dataset=ds, processing_class=tok)
  elif stage == "grpo":  # prompt text (BOS written out: the tokenizer adds no special tokens)
    g = spec["group"]
    ds = datasets.Dataset.from_dict({"prompt": [" ".join(word(int(i)) for i in [1, *r])
                                                for r in b["prompt_tokens"][:, 1:]]})
    args = train_args(  # spec["batch"]: prompts per step x g rows
        "grpo", spec, out_dir, num_generations=g, max_completion_length=spec["new_tokens"],
        beta=spec["beta"], temperature=1.0, top_p=1.0, top_k=0, num_iterations=1,
        steps_per_generation=1,
        generation_kwargs={"min_new_tokens": spec["new_tokens"]}, log_completions=False)
    # TRL builds the reference model (beta > 0) from the policy's checkpoint path: save it
    policy.save_pretrained(os.path.join(out_dir, "policy"))
    policy.config._name_or_path = os.path.join(out_dir, "policy")
    trainer = trl.GRPOTrainer(model=policy, reward_funcs=[token_reward], args=args,
                              train_dataset=ds, processing_class=tok)
  else:  # dpo: text only; the reference log-probs are precomputed by TRL with `ref`
    p = spec["prompt_len"]
    text = lambda ids: " ".join(word(int(i)) for i in ids)
    ds = datasets.Dataset.from_dict({
        "prompt": [text(r[:p]) for r in b["chosen_tokens"]],
        "chosen": [" " + text(r[p:]) for r in b["chosen_tokens"]],
        "rejected": [" " + text(r[p:]) for r in b["rejected_tokens"]]})
    args = train_args("dpo", spec, out_dir, beta=spec["beta"], loss_type=["sigmoid"],
                      label_smoothing=0.0, precompute_ref_log_probs=True)
    trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds,
                             processing_class=tok)
    got = trainer.train_dataset
    for side in ("chosen", "rejected"):
      ids = [pr + c for pr, c in zip(got["prompt_ids"], got[f"{side}_ids"])]
      if not np.array_equal(np.asarray(ids), b[f"{side}_tokens"]):
        raise RuntimeError(f"TRL tokenized the {side} rows differently from the parent's ids")
      facts[f"ref_{side}_logps"] = [float(x) for x in got[f"ref_{side}_logps"]]
  return trainer, facts


def steps_mode(spec: dict, data_path: str) -> None:
  import torch
  import transformers
  import trl

  torch.set_num_interop_threads(1)
  torch.set_num_threads(spec["threads"])
  transformers.logging.set_verbosity_error()
  data = dict(np.load(data_path))
  stage = spec["stage"]
  with tempfile.TemporaryDirectory() as out_dir:
    trainer, facts = make_trainer(spec, data, make_tokenizer(spec["vocab"]), out_dir)
    model, loader = trainer._prepare_for_training(spec["max_steps"], trainer.get_train_dataloader(),
                                                  None)
    batch = next(iter(loader))  # the trainer's collator over its processed dataset
    trainer.current_gradient_accumulation_steps = 1
    device = trainer.args.device

    def step():
      n = trainer._get_num_items_in_batch([batch], device)
      loss = trainer.training_step(model, batch, n)
      if trainer.args.max_grad_norm > 0:
        trainer._clip_grad_norm(model)
      trainer.optimizer.step()
      trainer.lr_scheduler.step()
      model.zero_grad()
      return loss

    loss = float(step())  # computed before the update
    for _ in range(spec["warmup"] - 1):
      step()
    if stage == "grpo":  # every completion min_new_tokens long: the same work as ours
      facts["completion_length"] = trainer._metrics["train"]["completions/mean_length"][-1]
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    send({"loss": loss, **facts, "optimizer": type(opt).__name__,
          "fused": bool(opt.defaults.get("fused")), "attention": model.config._attn_implementation,
          "checkpointing": bool(model.is_activation_checkpointing),
          "batch_shape": (list(batch["input_ids"].shape) if isinstance(batch, dict)
                          else [len(batch)]), "torch": torch.__version__,
          "transformers": transformers.__version__, "trl": trl.__version__})
    for line in sys.stdin:
      times = []
      for _ in range(json.loads(line)["steps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
      send({"times": times})


def cold_start(spec: dict) -> None:
  """20 SFT steps from process start: model, tokenizer, dataset, SFTTrainer, train()."""
  import torch
  import datasets
  import transformers
  import trl

  torch.set_num_interop_threads(1)
  torch.set_num_threads(spec["threads"])
  s = spec["shape"]
  hf_cfg = transformers.LlamaConfig(
      vocab_size=spec["vocab"], hidden_size=s["d_model"], intermediate_size=s["d_ff"],
      num_hidden_layers=s["n_layers"], num_attention_heads=s["n_heads"],
      num_key_value_heads=s["n_kv_heads"], head_dim=s["head_dim"], rms_norm_eps=s["norm_eps"],
      rope_parameters={"rope_type": "default", "rope_theta": s["rope_theta"]},
      tie_word_embeddings=False, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
      pad_token_id=0)
  model = transformers.LlamaForCausalLM(hf_cfg)
  rng = np.random.default_rng(0)
  rows, seq, p = spec["rows"], spec["seq"], spec["prompt_len"]
  ds = datasets.Dataset.from_dict({
      "input_ids": rng.integers(4, spec["vocab"], (rows, seq)).tolist(),
      "completion_mask": [[0] * p + [1] * (seq - p)] * rows})
  with tempfile.TemporaryDirectory() as out_dir:
    args = train_args("sft", spec, out_dir, completion_only_loss=True)
    trl.SFTTrainer(model=model, args=args, train_dataset=ds,
                   processing_class=make_tokenizer(spec["vocab"])).train()


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--spec", help="JSON: the steps-mode settings (bench_stages.py)")
  ap.add_argument("--data", help="npz: w:/r: weights and b: batch arrays")
  ap.add_argument("--cold-start", help="JSON: the cold-start settings")
  a = ap.parse_args()
  if a.cold_start:
    cold_start(json.loads(a.cold_start))
  else:
    steps_mode(json.loads(a.spec), a.data)


if __name__ == "__main__":
  main()
