"""Training runs of the over-optimisation experiment, each a real stage of rlhf_jax.

  train_sft        configs/sft.py:enumerable                  (the policy and π_ref)
  train_proxy      configs/reward_model.py                    (a proxy RM or an ensemble)
  run_ppo          configs/ppo.py[:learned] via stages.online / stages.ppo, with the stage's
                   evaluation replaced by an exact one that also reads the proxies' expected scores
  run_grpo         configs/grpo.py:enumerable via stages.policy_gradient, likewise
  run_dpo          configs/dpo.py via stages.dpo.prepare, exact evaluation likewise

Proxy sizes: the reward-model stage takes its shape from `init.from_workdir`'s export, so a proxy
of any shape is made by first exporting a randomly initialised LM of that shape (`init_export`)
and starting the reward model from it (init "scratch"); init "sft" starts from an SFT model
of that shape instead (trained here, as the policy's SFT is). A run whose export already exists
is not repeated (delete its workdir to redo it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import numpy as np

from rlhf_jax import configlib, models
from rlhf_jax.stages import dpo as dpo_stage, online, policy_gradient, ppo as ppo_stage
from rlhf_jax.stages import common, reward_model as rm_stage, sft as sft_stage
from rlhf_jax.tasks import exact
from rlhf_jax.train import dpo as dpo_steps, export, loop, metrics as metrics_lib
from rlhf_jax.train import state as state_lib

from experiments.overopt import world as world_lib


def _done(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, "export", "export.json"))


def _timed(fn, *args) -> float:
  t0 = time.perf_counter()
  fn(*args)
  return time.perf_counter() - t0


def stage_config(spec: str, overrides, task_params: dict | None = None):
  """configlib.get(spec, overrides), with `task_params` set first: the enumerable configs start
  with an empty (locked) task.params, so `--config.task.params.num_pairs` is not a known key."""
  config = configlib.load_config_file(spec)
  for key, value in (task_params or {}).items():
    config.task.params[key] = value
  for key, value in overrides:
    configlib.apply_override(config, key, value)
  config.lock()
  return config


def base_overrides(c) -> list[tuple[str, str]]:
  """Overrides every stage of the experiment shares: data cache, seed, no TensorBoard."""
  return [("data.data_dir", c.data_dir), ("seed", str(c.seed)), ("train.tensorboard", "False")]


def train_sft(c, workdir: str, shape: str | None = None, root: str = "") -> float:
  """SFT on the enumerable world; `shape` (a name of c.proxy.shapes) trains a model of that shape
  from scratch instead of config's preset. Returns seconds taken (0 if it existed)."""
  if _done(workdir):
    return 0.0
  ov = base_overrides(c) + [("train.num_steps", str(c.sft.steps)), ("train.eval_every", "0"),
                            ("train.checkpoint_every", str(c.sft.steps)),
                            ("data.batch_size", str(c.sft.batch_size))]
  if shape is not None:
    init = os.path.join(root, f"init_{shape}")
    init_export(c, init, shape)
    ov.append(("init.from_workdir", init))
  return _timed(sft_stage.run, stage_config("configs/sft.py:enumerable", ov), workdir)


def model_shape(c, shape: str, vocab_size: int) -> models.ModelConfig:
  if shape not in c.proxy.shapes:
    raise ValueError(f"unknown proxy shape {shape!r}; valid: {sorted(c.proxy.shapes)}")
  return models.ModelConfig(vocab_size=vocab_size, **c.proxy.shapes[shape].to_dict())


def init_export(c, workdir: str, shape: str) -> None:
  """A randomly initialised LM of `shape` exported at workdir (a starting point for stages)."""
  if _done(workdir):
    return
  config = stage_config("configs/sft.py:enumerable", base_overrides(c))
  w_mesh, rules = common.mesh_and_rules(config)
  task = common.make_task(config)
  cfg = model_shape(c, shape, task.tokenizer.vocab_size)
  _, params = state_lib.init_params(lambda r: export.make_model("lm", cfg, r), w_mesh, rules,
                                    c.seed + 17)
  export.save(workdir, params, kind="lm", model_config=cfg,
              tokenizer={"kind": "char", "alphabet": task.alphabet})


def train_proxy(c, workdir: str, *, init_dir: str, pairs: int, ensemble_size: int = 1,
                data_fraction: float = 1.0, steps: int | None = None) -> float:
  if _done(workdir):
    return 0.0
  steps = steps or c.proxy.steps
  ov = base_overrides(c) + [
      ("init.from_workdir", init_dir),
      ("train.num_steps", str(steps)), ("train.eval_every", str(steps)),
      ("train.checkpoint_every", str(steps)), ("train.eval_examples", str(c.proxy.test_pairs)),
      ("data.batch_size", str(c.proxy.batch_size)), ("optimizer.lr", str(c.proxy.lr)),
      ("reward.ensemble_size", str(ensemble_size)), ("reward.data_fraction", str(data_fraction)),
      ("reward.normalization_examples", str(c.proxy.normalization_examples))]
  config = stage_config("configs/reward_model.py", ov,
                        {"num_pairs": (pairs, c.proxy.test_pairs)})
  return _timed(rm_stage.run, config, workdir)


def proxy_accuracy(workdir: str) -> dict:
  rows = [r for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if "eval/accuracy" in r]
  return {"test_accuracy": rows[-1]["eval/accuracy"],
          "test_member_accuracy": rows[-1]["eval/member_accuracy"],
          "test_loss": rows[-1]["eval/loss"]}


@dataclasses.dataclass
class ExactEval:
  """Exact eval/* metrics of a policy: gold, KL to the reference and the expected score under
  each named table (proxies), all on the world's held-out prompts."""
  scorer: world_lib.PolicyScorer
  ref_logp_PxN: np.ndarray
  tables: dict              # name -> [P, N] scores

  def __call__(self, policy_params) -> dict:
    logp_PxN, invalid = self.scorer.distribution(policy_params)
    gold = self.scorer.world.gold_PxN
    out = {"gold_reward": float(np.mean(exact.expectation(logp_PxN, gold))),
           "kl": float(np.mean(exact.exact_kl(logp_PxN, self.ref_logp_PxN))),
           "invalid_mass": invalid}
    for name, table in self.tables.items():
      out[f"proxy/{name}"] = float(np.mean(exact.expectation(logp_PxN, table)))
    return out


def _eval_rows(workdir: str) -> list[dict]:
  rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return [{k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("eval/")} | {"step": r["step"]}
          for r in rows if "eval/gold_reward" in r]


def run_ppo(c, workdir: str, *, sft_dir: str, evaluator: ExactEval, reward_dir: str = "",
            beta: float = 0.0, combine: str = "mean", lam: float = 0.0) -> tuple[list[dict], float]:
  """PPO from the SFT model against the gold reward (reward_dir="") or a proxy; returns the
  exact eval rows (step, gold_reward, kl, proxy/<name>, ...) and the seconds taken."""
  pc = c.ppo
  ov = [("ppo.epochs", str(pc.epochs)), ("ppo.minibatches", str(pc.minibatches)),
        ("critic.init_from_reward_model", "False")]
  return _run_online(c, pc, "configs/ppo.py" + (":learned" if reward_dir else ""), ov,
                     lambda config, s: ppo_stage.build(config, s, workdir), workdir,
                     sft_dir=sft_dir, evaluator=evaluator, reward_dir=reward_dir, beta=beta,
                     combine=combine, lam=lam)


def run_grpo(c, workdir: str, *, sft_dir: str, evaluator: ExactEval, reward_dir: str = "",
             beta: float = 0.0) -> tuple[list[dict], float]:
  """GRPO (configs/grpo.py:enumerable, its KL term β·k3 in the loss) from the SFT model against
  the gold reward (reward_dir="") or a proxy; returns what run_ppo does."""
  gc = c.grpo
  ov = [("pg.group_size", str(gc.group_size)), ("pg.minibatches", str(gc.minibatches)),
        ("pg.epochs", "1")]
  if reward_dir:
    ov.append(("reward.source", "learned"))
  return _run_online(c, gc, "configs/grpo.py:enumerable", ov, policy_gradient.build, workdir,
                     sft_dir=sft_dir, evaluator=evaluator, reward_dir=reward_dir, beta=beta)


def _run_online(c, rc, spec: str, stage_overrides, build, workdir: str, *, sft_dir: str,
                evaluator: ExactEval, reward_dir: str, beta: float, combine: str = "mean",
                lam: float = 0.0) -> tuple[list[dict], float]:
  """An online-RL stage (`build(config, setup)`) run with `rc` (c.ppo or c.grpo: steps,
  eval_every, lr, prompts_per_step), the stage's evaluation replaced by the exact one."""
  seconds = 0.0
  if not _done(workdir):
    ov = base_overrides(c) + [
        ("init.from_workdir", sft_dir), ("kl.coef", str(beta)),
        ("train.num_steps", str(rc.steps)), ("train.eval_every", str(rc.eval_every)),
        ("train.log_every", str(rc.eval_every)), ("train.checkpoint_every", str(rc.steps)),
        ("optimizer.lr", str(rc.lr)), ("rl.prompts_per_step", str(rc.prompts_per_step)),
        *stage_overrides,
        ("eval.exact_prompts", "1")]   # the stage's own evaluator is replaced below
    if reward_dir:
      ov += [("reward.from_workdir", reward_dir), ("reward.ensemble_combine", combine),
             ("reward.ensemble_lambda", str(lam))]
    config = stage_config(spec, ov)
    t0 = time.perf_counter()
    s = online.setup(config, workdir)
    built = build(config, s)
    built = dataclasses.replace(built,
                                evaluate=lambda st: evaluator(built.export_params(st.params)))
    online.run(config, workdir, s, built)
    seconds = time.perf_counter() - t0
  return _eval_rows(workdir), seconds


def run_dpo(c, workdir: str, *, sft_dir: str, evaluator: ExactEval, loss: str,
            beta: float) -> tuple[list[dict], float]:
  """A DPO-family run (loss.name = loss) from the SFT model on the gold-labelled train pairs."""
  seconds = 0.0
  if not _done(workdir):
    dc = c.dpo
    ov = base_overrides(c) + [
        ("init.from_workdir", sft_dir), ("loss.name", loss), ("loss.beta", str(beta)),
        ("train.num_steps", str(dc.steps)), ("train.eval_every", str(dc.eval_every)),
        ("train.log_every", str(dc.eval_every)), ("train.checkpoint_every", str(dc.steps)),
        ("train.eval_examples", str(dc.eval_pairs)), ("optimizer.lr", str(dc.lr)),
        ("data.batch_size", str(dc.batch_size)), ("eval.exact_prompts", "0")]
    config = stage_config("configs/dpo.py", ov, {"num_pairs": (dc.pairs, c.proxy.test_pairs)})
    t0 = time.perf_counter()
    s = dpo_stage.prepare(config, workdir)
    pairs_eval = dpo_stage.make_evaluator(s.graphdef, s.arrays["test"], s.mesh, config, None)
    result = loop.run(
        config=config, workdir=workdir, mesh=s.mesh, state=s.state, state_shardings=s.shardings,
        train_step=dpo_steps.make_train_step(s.graphdef, s.tx, config.loss,
                                                       config.data.prompt_len),
        train_iter=dpo_stage.train_iterator(config, s.arrays["train"]),
        evaluate=lambda st: {**pairs_eval(st), **evaluator(st.params)})
    if result.finished:
      export.save(workdir, result.state.params, kind="lm", model_config=s.sft.model_config,
                  tokenizer=s.tok_spec)
    seconds = time.perf_counter() - t0
  return _eval_rows(workdir), seconds


def write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  logging.info("wrote %s", path)
