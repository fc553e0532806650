"""Training steps, rlhf_jax vs TRL on CPU: SFT, reward model (Bradley-Terry), DPO and a GRPO
iteration.

Both sides train the same Llama shape (`--presets`, models/presets.py, vocabulary `--vocab`) from
the SAME initial weights on the SAME batch, in float32, with AdamW (lr 1e-5, cosine with 10
warm-up steps to 0.1 lr over 1000 steps, betas 0.9 / 0.95, eps 1e-8, no weight decay, global-norm
clip 1.0). Before timing, the loss of the first step (computed before any update) must agree
between the sides to `--loss-rtol` (both printed): the proof that they compute the same thing.

Batches (synthetic ids in [3, V), every token real; experiments/bench_accelerator.py's builders):
  sft  B rows of S tokens, the first S/4 a prompt without loss (sft_batch)
  rm   B pairs of S-token rows, the score at the last token (chosen / rejected rows of dpo_batch)
  dpo  B pairs of [prompt P | completion S - P] (dpo_batch; each completion ends with EOS, as
       TRL's text pipeline makes it). The reference is a second random init (seed 1) of the same
       shape, its sequence log-probs precomputed once on both sides (ours: dpo.make_reference_step;
       TRL: precompute_ref_log_probs=True with that ref_model; compared too): the timed step of
       either side runs no reference forward. Loss: sigmoid DPO, beta 0.1.

  grpo `--grpo-prompts-per-step` prompts of P ids (BOS and P - 1 words) x `--grpo-group`
       samples of exactly `--grpo-new-tokens` T tokens (stop tokens suppressed before T on both
       sides), reward trl_stage_worker.token_reward, KL β·k3 in the loss (β `--grpo-beta`) against
       the initial weights, one optimizer step. Ours: the policy-gradient stage's own iteration
       (experiments/bench_grpo.py); TRL: GRPOTrainer (num_iterations 1, one generation per step,
       transformers generate; its reference model loaded from the policy's saved weights). The
       first loss depends on the samples (about 0 on both sides), so instead of the losses the
       completion lengths are checked equal: the same work.

Ours (this process): the project's train steps, jitted as train/loop.py and bench_accelerator.py
do (explicit in/out shardings on a 1-device mesh, the state donated, compiled ahead of time):
sft.make_train_step; reward_model.make_train_step (loss "bradley_terry", one member, scalar
model from train/export.make_model("scalar")); dpo.make_train_step (loss "dpo"). One step = one
call of the compiled step on the device-resident batch, waited for with jax.block_until_ready.

TRL (a child process running experiments/trl_stage_worker.py, torch only, `--threads` intra-op
threads, 1 inter-op): SFTTrainer (pre-tokenized input_ids + completion_mask,
completion_only_loss), RewardTrainer (pre-tokenized chosen_ids / rejected_ids,
LlamaForSequenceClassification(num_labels=1), score.weight = our head's w; our head's bias b
starts at 0 and gets no gradient from the Bradley-Terry loss, so it stays 0), DPOTrainer (text
made of one word per id). Gradient checkpointing, bf16 and fp16 off. One step = what
transformers' Trainer loop does per optimizer step (training_step, gradient clipping,
optimizer.step, lr_scheduler.step, zero_grad) on one batch made by the trainer's own data loader
and collator, reused every step; see trl_stage_worker.py. It runs in its own process because
torch's OpenMP threads keep spinning after each call and would steal cores from XLA.

Timing: after warm-up (`--warmup` steps per side; ours compiled before), `--rounds` rounds each
time `--steps` steps of ours, then (after a 50 ms pause) the same number of TRL steps. Reported
per stage and preset: the median step time of each side over all timed steps, the median over
rounds of the ratio TRL / ours of the rounds' median step times (> 1: ours faster) with its
min-max, tokens/s (sft: B S; rm and dpo: 2 B S) and MFU = model FLOPs (models/flops.py) / step
time / peak (train/mfu.py peak_flops_per_sec: measured float32 matmul rate on a CPU):
  sft  train_flops(cfg, B, S)    rm  2 train_flops(cfg, B, S, lm_head=False)
  dpo  bench_accelerator.dpo_flops (LM head at the completion positions only)

`--cold-start`: instead, a 20-step SFT run from process start to exit, alternated rounds
(default 3) after one untimed run of each: ours `python -m rlhf_jax.main --config=configs/sft.py`
(tiny, batch 16, rows of 32 + 96 tokens, no eval, no TensorBoard, a checkpoint and the export at
the end, which the stage always writes) and a TRL process building a random-init
LlamaForCausalLM of the same shape and vocabulary and running SFTTrainer.train() on 64
pre-tokenized 128-token rows, same optimizer settings (configs' defaults), no saving, no eval.

`--ours-only`: only our steps, on whatever JAX backend is present (CPU, GPU, TPU), `--dtype`
allowed; step time, tokens/s, MFU.

Output: a plain-text table, then one JSON line with every figure (`--out PATH` also writes it).
Needs `pip install -r requirements-bench.txt` (TRL and its dependencies) except with --ours-only.

  python experiments/bench_stages.py                   # every stage at tiny and small, 5 rounds
  python experiments/bench_stages.py --cold-start
  python experiments/bench_stages.py --ours-only --presets small --dtype bfloat16
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings

START = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rlhf_jax import defaults  # noqa: E402
from rlhf_jax.models import Transformer, flops, get_model_config  # noqa: E402
from rlhf_jax.train import dpo as dpo_steps, export, mfu as mfu_lib  # noqa: E402
from rlhf_jax.train import optimizer as optimizer_lib, reward_model as rm_steps  # noqa: E402
from rlhf_jax.train import sft as sft_steps, state as state_lib  # noqa: E402
from experiments.accelerator_lib import Bench, finite, median_time  # noqa: E402
from experiments.bench_accelerator import (  # noqa: E402
    ShapeState, compile_step, compile_train_step, dpo_batch, dpo_flops, put, sft_batch)
from experiments.bench_generation import PAUSE_S, flat_weights  # noqa: E402
from experiments import bench_grpo  # noqa: E402

WORKER = os.path.join(ROOT, "experiments", "trl_stage_worker.py")
STAGES = ("sft", "rm", "dpo", "grpo")
EOS_ID = 2
# bench_accelerator.py's optimizer (defaults.py's, smaller lr); both sides use these values.
OPTIMIZER = dict(name="adamw", lr=1e-5, schedule="cosine", warmup_steps=10, end_lr_fraction=0.1,
                 weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0)
SCHEDULE_STEPS = 1000
DPO_LOSS = types.SimpleNamespace(name="dpo", beta=0.1, label_smoothing=0.0, sft_coef=0.0,
                                 simpo_gamma=0.0)


def child_env(quiet: bool) -> dict:
  env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
             TRANSFORMERS_VERBOSITY="error")
  if quiet:  # progress bars of dataset preparation and TRL's reference precompute
    env.update(HF_DATASETS_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
  return env


# ------------------------------------------------------------------------------ our steps


def setup_ours(bench: Bench, stage: str, cfg, a) -> types.SimpleNamespace:
  """Our compiled step of `stage` with its state and batch, the initial weights (and, for the
  TRL worker, the batch) as npz arrays, the step's tokens and model FLOPs, and setup_s (state
  init, dpo's reference pass and compilation)."""
  rng = np.random.default_rng(0)
  b, s, p = a.batch, a.seq, a.prompt_len
  tx = optimizer_lib.make_optimizer(types.SimpleNamespace(**OPTIMIZER), SCHEDULE_STEPS)
  start = time.perf_counter()
  if stage == "rm":
    make_model = lambda rngs: export.make_model("scalar", cfg, rngs)
    graphdef, state, shardings = state_lib.init_ensemble_state(make_model, tx, bench.mesh,
                                                               bench.rules, [0])
    data = flat_weights(jax.tree.map(lambda x: x[0], state.params), "w:")  # the one member
    pairs = dpo_batch(cfg, b, p, s - p, rng)
    batch = {k: pairs[k] for k in ("chosen_tokens", "chosen_mask", "rejected_tokens",
                                   "rejected_mask")}
    batch["index"] = np.arange(b, dtype=np.int32)
    placed = put(bench, batch)
    step = rm_steps.make_train_step(graphdef, tx, loss_name="bradley_terry", loss_kwargs={},
                                    ensemble_size=1, data_fraction=1.0, seed=0)
    compiled, _, _ = compile_train_step(bench, step, shardings, state, placed)
    tokens, model_flops = 2 * b * s, 2 * flops.train_flops(cfg, b, s, lm_head=False)
  else:
    holder = ShapeState(bench, cfg)
    holder.tx = tx
    state = holder.get()
    data = flat_weights(state.params, "w:")
    if stage == "sft":
      batch = sft_batch(cfg, b, s, rng)
      make = lambda g: sft_steps.make_train_step(g, tx)
      tokens, model_flops = b * s, flops.train_flops(cfg, b, s)
    else:
      batch = dpo_batch(cfg, b, p, s - p, rng)
      for side in ("chosen", "rejected"):
        batch[f"{side}_tokens"][:, -1] = EOS_ID  # TRL appends EOS to a completion lacking it
      graphdef, ref = state_lib.init_params(lambda rngs: Transformer(cfg, rngs=rngs),
                                            bench.mesh, bench.rules, seed=1)
      ref_c, ref_r = jax.jit(dpo_steps.make_reference_step(graphdef, p))(ref, put(bench, batch))
      batch.update(ref_chosen_logps=np.asarray(ref_c), ref_rejected_logps=np.asarray(ref_r))
      data.update(flat_weights(ref, "r:"))
      make = lambda g: dpo_steps.make_train_step(g, tx, DPO_LOSS, p)
      tokens, model_flops = 2 * b * s, dpo_flops(cfg, b, p, s - p)
    placed = put(bench, batch)
    compiled, _, _ = compile_step(bench, holder, make, cfg, placed)
  setup_s = time.perf_counter() - start
  data.update({f"b:{k}": v for k, v in batch.items()})
  box, key = [state], jax.random.key(0)

  def call():
    box[0], metrics = compiled(box[0], placed, key)
    return box[0], metrics

  _, metrics = jax.block_until_ready(call())
  loss = float(metrics["loss"])  # the first step's loss: computed before its update
  for _ in range(a.warmup - 1):
    jax.block_until_ready(call())
  return types.SimpleNamespace(call=call, loss=loss, data=data, batch=batch, rows=b, seq=s,
                               tokens=tokens, flops=model_flops, setup_s=setup_s)


# ------------------------------------------------------------------------------ TRL worker


class Worker:
  """The TRL child process. Its protocol lines start with '@@'; other output goes to stderr."""

  def __init__(self, spec: dict, data_path: str):
    cmd = [sys.executable, WORKER, "--spec", json.dumps(spec), "--data", data_path]
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env=child_env(quiet=True))

  def recv(self) -> dict:
    for line in self.proc.stdout:
      if line.startswith("@@"):
        return json.loads(line[2:])
      sys.stderr.write(line)
    raise RuntimeError(f"the TRL worker exited with status {self.proc.wait()} (error above)")

  def steps(self, k: int) -> list[float]:
    self.proc.stdin.write(json.dumps({"steps": k}) + "\n")
    self.proc.stdin.flush()
    return self.recv()["times"]

  def close(self) -> None:
    self.proc.stdin.close()
    self.proc.wait()


def close_enough(x: float, y: float, rtol: float) -> bool:
  return abs(x - y) <= rtol * max(abs(x), abs(y), 1e-12)


def bench_stage(bench: Bench, stage: str, preset: str, a, peak) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    return _bench_stage(bench, stage, preset, a, peak, tmp)


def _bench_stage(bench: Bench, stage: str, preset: str, a, peak, tmp: str) -> dict:
  cfg = get_model_config(preset, vocab_size=a.vocab, dtype=a.dtype)
  ours = (bench_grpo.setup(bench, cfg, a, tmp, OPTIMIZER) if stage == "grpo"
          else setup_ours(bench, stage, cfg, a))
  row = dict(stage=stage, preset=preset, B=ours.rows, S=ours.seq, tokens=ours.tokens,
             flops=ours.flops, setup_s=ours.setup_s, loss_ours=ours.loss)
  ours_t, trl_t, ratios = [], [], []
  if a.ours_only:
    for _ in range(a.rounds):
      ours_t += median_time(ours.call, a.steps)[1]
  else:
    spec = dict(stage=stage, preset=preset, vocab=a.vocab, threads=a.threads, warmup=a.warmup,
                batch=ours.rows, prompt_len=a.prompt_len, max_steps=SCHEDULE_STEPS,
                optimizer=OPTIMIZER, beta=a.grpo_beta if stage == "grpo" else DPO_LOSS.beta,
                group=a.grpo_group, new_tokens=a.grpo_new_tokens)
    # the worker's files live in `tmp` beside ours
    np.savez(os.path.join(tmp, "in.npz"), **ours.data)
    worker = Worker(spec, os.path.join(tmp, "in.npz"))
    try:
      ready = worker.recv()
      info = ("optimizer", "fused", "attention", "checkpointing", "batch_shape", "torch",
              "transformers", "trl")
      row.update(loss_trl=ready["loss"], trl_info={k: ready[k] for k in info})
      print(f"  {stage} {preset}: initial loss ours {ours.loss:.6f}, TRL {ready['loss']:.6f}",
            flush=True)
      if stage == "dpo":
        ref_ours = np.concatenate([ours.batch["ref_chosen_logps"],
                                   ours.batch["ref_rejected_logps"]])
        ref_trl = np.asarray(ready["ref_chosen_logps"] + ready["ref_rejected_logps"])
        row["ref_logps_max_abs_diff"] = float(np.max(np.abs(ref_ours - ref_trl)))
        print(f"  dpo {preset}: reference log-probs (about {ref_ours.mean():.1f}) differ by "
              f"at most {row['ref_logps_max_abs_diff']:.2e}")
        if not all(close_enough(x, y, a.loss_rtol) for x, y in zip(ref_ours, ref_trl)):
          raise RuntimeError(f"dpo {preset}: reference log-probs differ beyond {a.loss_rtol}")
      if stage == "grpo":  # the first loss depends on the samples: the work is compared
        row["trl_completion_length"] = ready["completion_length"]
        if ready["completion_length"] != a.grpo_new_tokens:
          raise RuntimeError(f"grpo {preset}: TRL's completions have {ready['completion_length']} "
                             f"tokens, ours {a.grpo_new_tokens}")
      elif not close_enough(ours.loss, ready["loss"], a.loss_rtol):
        raise RuntimeError(f"{stage} {preset}: initial losses differ beyond --loss-rtol "
                           f"{a.loss_rtol}: ours {ours.loss} vs TRL {ready['loss']}")
      for _ in range(a.rounds):
        o = median_time(ours.call, a.steps)[1]
        time.sleep(PAUSE_S)
        t = worker.steps(a.steps)
        time.sleep(PAUSE_S)
        ours_t, trl_t = ours_t + o, trl_t + t
        ratios.append(statistics.median(t) / statistics.median(o))
    finally:
      worker.close()
  step = statistics.median(ours_t)
  mfu = lambda s: ours.flops / s / peak if peak else None
  row.update(ours_step_s=step, ours_times_s=ours_t, ours_tokens_per_s=ours.tokens / step,
             ours_tflops_per_s=ours.flops / step / 1e12, ours_mfu=mfu(step))
  if trl_t:
    trl = statistics.median(trl_t)
    row.update(trl_step_s=trl, trl_times_s=trl_t, trl_tokens_per_s=ours.tokens / trl,
               trl_mfu=mfu(trl), ratio=statistics.median(ratios), ratio_min=min(ratios),
               ratio_max=max(ratios), round_ratios=ratios)
  return row


HEADER = (f"{'stage':5} {'preset':6} {'B':>3} {'S':>4} {'tokens':>6} {'ours ms':>8} "
          f"{'TRL ms':>8} {'TRL/ours':>8} {'min-max':>11} {'ours tok/s':>10} "
          f"{'TRL tok/s':>10} {'ours MFU':>8} {'TRL MFU':>8} {'loss ours':>10} {'loss TRL':>10}")
OURS_HEADER = (f"{'stage':5} {'preset':6} {'B':>3} {'S':>4} {'tokens':>6} {'setup s':>9} "
               f"{'step ms':>8} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>7} {'loss':>10}")
pct = lambda x: f"{x:.2%}" if x is not None else "?"


def line(r: dict, ours_only: bool) -> str:
  head = f"{r['stage']:5} {r['preset']:6} {r['B']:>3} {r['S']:>4} {r['tokens']:>6} "
  if ours_only:
    return head + (f"{r['setup_s']:9.1f} {r['ours_step_s'] * 1e3:8.2f} "
                   f"{r['ours_tokens_per_s']:10,.0f} {r['ours_tflops_per_s']:8.4f} "
                   f"{pct(r['ours_mfu']):>7} {r['loss_ours']:10.5f}")
  span = f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}"
  return head + (f"{r['ours_step_s'] * 1e3:8.2f} {r['trl_step_s'] * 1e3:8.2f} "
                 f"{r['ratio']:7.2f}x {span:>11} {r['ours_tokens_per_s']:10,.0f} "
                 f"{r['trl_tokens_per_s']:10,.0f} {pct(r['ours_mfu']):>8} "
                 f"{pct(r['trl_mfu']):>8} {r['loss_ours']:10.5f} {r['loss_trl']:10.5f}")


# ------------------------------------------------------------------------------ cold start


def run_process(cmd: list[str], env: dict) -> float:
  """Wall time of the process, start to exit; raises with its output when it fails."""
  start = time.perf_counter()
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if done.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
  return seconds


def cold_start(a) -> dict:
  """Alternated wall times of our SFT run and TRL's, after one untimed run of each."""
  c = defaults.base_config()
  n, b, s, p = a.cold_steps, a.batch, a.seq, a.prompt_len
  tmp = tempfile.mkdtemp(prefix="bench_stages_")
  runs = itertools.count()

  def ours() -> float:  # a fresh workdir each time: a used one would resume
    return run_process([
        sys.executable, "-m", "rlhf_jax.main", "--config=configs/sft.py",
        f"--workdir={os.path.join(tmp, f'run{next(runs)}')}", f"--config.train.num_steps={n}",
        "--config.train.eval_every=0", "--config.train.eval_samples=0",
        f"--config.data.batch_size={b}", f"--config.data.prompt_len={p}",
        f"--config.data.completion_len={s - p}", f"--config.train.checkpoint_every={n}",
        "--config.train.tensorboard=False", "--config.train.log_every=10"], os.environ)

  first_ours = ours()
  meta = export.load_meta(os.path.join(tmp, "run0"))["model"]  # the char vocabulary's size
  spec = dict(shape={k: meta[k] for k in ("d_model", "d_ff", "n_layers", "n_heads", "n_kv_heads",
                                          "head_dim", "norm_eps", "rope_theta")},
              vocab=meta["vocab_size"], threads=a.threads, batch=b, seq=s, prompt_len=p,
              rows=4 * b, max_steps=n, optimizer=c.optimizer.to_dict())
  trl_cmd = [sys.executable, WORKER, "--cold-start", json.dumps(spec)]
  first_trl = run_process(trl_cmd, child_env(quiet=False))
  ours_s, trl_s = [], []
  for _ in range(a.rounds):
    ours_s.append(ours())
    time.sleep(PAUSE_S)
    trl_s.append(run_process(trl_cmd, child_env(quiet=False)))
    time.sleep(PAUSE_S)
  shutil.rmtree(tmp)
  ratios = [t / o for t, o in zip(trl_s, ours_s)]
  return dict(steps=n, batch=b, seq=s, preset=c.model.preset, vocab=meta["vocab_size"],
              first_ours_s=first_ours, first_trl_s=first_trl, ours_s=statistics.median(ours_s),
              trl_s=statistics.median(trl_s), ratio=statistics.median(ratios),
              ratio_min=min(ratios), ratio_max=max(ratios), ours_runs_s=ours_s,
              trl_runs_s=trl_s)


# ------------------------------------------------------------------------------------ main


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--presets", default="tiny,small")
  ap.add_argument("--stages", default=",".join(STAGES))
  ap.add_argument("--vocab", type=int, default=512, help="vocabulary size (the presets' default)")
  ap.add_argument("--batch", type=int, default=16, help="rows (sft) or pairs (rm, dpo)")
  ap.add_argument("--seq", type=int, default=128, help="tokens per row S")
  ap.add_argument("--prompt-len", type=int, default=32, help="P: dpo prompt; sft has S/4")
  ap.add_argument("--grpo-prompts-per-step", type=int, default=2)
  ap.add_argument("--grpo-group", type=int, default=8, help="GRPO samples per prompt")
  ap.add_argument("--grpo-new-tokens", type=int, default=64, help="GRPO completion tokens T")
  ap.add_argument("--grpo-beta", type=float, default=0.04, help="GRPO's KL coefficient")
  ap.add_argument("--grpo-prompts", type=int, default=64, help="GRPO prompt records written")
  ap.add_argument("--rounds", type=int, help="timed rounds (default 5; --cold-start 3)")
  ap.add_argument("--steps", type=int, default=5, help="steps per side per round")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side (>= 1)")
  ap.add_argument("--threads", type=int, default=os.cpu_count(),
                  help="torch intra-op threads (on a machine shared with other jobs torch's "
                       "OpenMP threads can lose an order of magnitude: compare with 1)")
  ap.add_argument("--loss-rtol", type=float, default=1e-3)
  ap.add_argument("--dtype", default="float32", help="our compute dtype (--ours-only)")
  ap.add_argument("--ours-only", action="store_true", help="our steps only, any JAX backend")
  ap.add_argument("--cold-start", action="store_true", help="the cold-start section only")
  ap.add_argument("--cold-steps", type=int, default=20)
  ap.add_argument("--out", default="", help="also write the JSON here")
  a = ap.parse_args(argv)
  a.rounds = a.rounds or (3 if a.cold_start else 5)
  a.presets = [x for x in a.presets.split(",") if x]
  a.stages = [x for x in a.stages.split(",") if x]
  if set(a.stages) - set(STAGES) or a.warmup < 1:
    ap.error(f"--stages: a subset of {STAGES}; --warmup >= 1")
  if a.dtype != "float32" and not a.ours_only:
    ap.error("TRL runs float32: --dtype applies to --ours-only")
  return a


def main(argv=None) -> int:
  a = parse_args(argv)
  warnings.filterwarnings("ignore", message=".*donated buffers.*")
  dev = jax.devices()[0]
  results = dict(config=vars(a), device=dict(kind=dev.device_kind, platform=dev.platform,
                                              jax=jax.__version__, cores=os.cpu_count()))
  print(f"jax {jax.__version__} on {dev.device_kind} ({dev.platform}), {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}", flush=True)
  if a.cold_start:
    r = results["cold_start"] = cold_start(a)
    print(f"\ncold start: {r['steps']} SFT steps ({r['preset']}, vocab {r['vocab']}, {r['batch']} "
          f"x {r['seq']} tokens), process start to exit, median of {a.rounds} alternated rounds "
          f"(first untimed runs: ours {r['first_ours_s']:.1f} s, TRL {r['first_trl_s']:.1f} s)")
    print(f"  ours {r['ours_s']:.2f} s   TRL {r['trl_s']:.2f} s   TRL/ours {r['ratio']:.2f}x "
          f"(min-max {r['ratio_min']:.2f}-{r['ratio_max']:.2f})")
  else:
    peak = mfu_lib.peak_flops_per_sec(a.dtype)
    results["device"]["peak_flops"] = peak
    bench = Bench(a, START)
    rows = results["stages"] = []
    for preset in a.presets:
      for stage in a.stages:
        rows.append(bench_stage(bench, stage, preset, a, peak))
    src = "measured float32 matmul" if dev.platform == "cpu" else "spec"
    print(f"\n{a.dtype}, AdamW; median of {a.rounds} rounds x {a.steps} steps after {a.warmup} "
          f"warm-up; MFU of {(peak or 0) / 1e9:.1f} GFLOP/s ({src}); tokens: sft B S, rm/dpo "
          f"2 B S, grpo B (P + T)"
          + ("" if a.ours_only else f"; TRL/ours > 1: ours faster; torch {a.threads} threads"))
    print(OURS_HEADER if a.ours_only else HEADER)
    for r in rows:
      print(line(r, a.ours_only))
    if rows and "trl_info" in rows[0]:
      print("TRL: " + ", ".join(f"{k} {v}" for k, v in rows[0]["trl_info"].items()))
  results["total_s"] = time.perf_counter() - START
  text = json.dumps(finite(results))
  if a.out:
    with open(a.out, "w") as f:
      f.write(text + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
