"""Up-front checks of a config, so that a typo or an impossible setting fails before any data is
prepared or anything compiles, with a message naming the field and listing the valid choices.

`validate(config)` needs no devices. Per stage config it checks
  - every named choice the config has (stage, optimizer, model, task, tokenizer, data, reward,
    KL controller, pg / ppo options, best-of-n options, LoRA targets, logical axis rules)
    against the registry or constant tuple of the code that reads it (`CHOICES`),
  - loss.name against the losses the stage's step can call (a name of another family fails),
  - task.params against the task's constructor, positive counts and group sizes,
  - batch divisibility the config fixes: rollout rows by minibatches, data.batch_size by
    train.microbatches and, where the mesh fixes the data-parallel shards, by those shards,
  - model.hf_path, data.sft_records_path and data.path on disk (file names and config.json
    only), data.fields names, data.chat_template, reward.functions (imported and resolved).
A recipe is checked step by step, each field named as its override key (`ppo.kl.controller`) and
each message prefixed with the step. `check_devices(config, device_count)` runs once the devices
are known: the mesh must fit them and the batches split over its data-parallel shards.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from typing import Any, Callable

from rlhf_jax import losses, stages
from rlhf_jax.data import builders, pipeline
from rlhf_jax.models import hf, lora as lora_lib
from rlhf_jax.parallel import mesh as mesh_lib, sharding
from rlhf_jax.rl import algorithms as rl_algorithms
from rlhf_jax.train import dpo as dpo_steps
from rlhf_jax.train import reward_model as rm_steps
from rlhf_jax.train import wandb_sink

_MISSING = object()

# Field -> (module under rlhf_jax/, its registry or constant of valid names): the code that reads
# the field. A field is checked when the config has it (a stage's config has the groups it
# uses). Modules are imported when needed: the stages import this module, so importing them at
# load time would be circular.
CHOICES: tuple[tuple[str, str, str], ...] = (
    ("stage", "stages", "STAGES"),
    ("optimizer.name", "train.optimizer", "OPTIMIZERS"),
    ("optimizer.schedule", "train.optimizer", "SCHEDULES"),
    ("train.nonfinite", "train.nonfinite", "MODES"),
    ("logging.wandb.mode", "train.wandb_sink", "MODES"),
    ("model.preset", "models", "PRESETS"),
    ("model.family", "models", "FAMILIES"),
    ("model.dtype", "train.precision", "COMPUTE_DTYPES"),
    ("model.remat", "models.remat", "REMAT_POLICIES"),
    ("model.attention", "models.attention", "IMPLEMENTATIONS"),
    ("task.name", "data.builders", "TASKS"),
    ("tokenizer.kind", "data.tokenizer", "CONFIG_KINDS"),
    ("data.overlong", "data.pipeline", "OVERLONG_POLICIES"),
    ("data.source", "data.sources", "SOURCES"),
    ("data.pairs", "stages.dpo", "PAIRS"),
    ("reward.source", "rewards.functions", "SOURCES"),
    ("reward.ensemble_combine", "rewards.learned", "COMBINE_MODES"),
    ("kl.controller", "rl.kl_control", "KINDS"),
    ("kl.placement", "rl.algorithms", "KL_PLACEMENTS"),
    ("pg.scale", "losses", "GROUP_SCALES"),
    ("pg.baseline", "losses", "REINFORCE_BASELINES"),
    ("pg.level", "losses", "RATIO_LEVELS"),
    ("pg.aggregation", "losses", "AGGREGATION_MODES"),
    ("pg.kl_estimator", "losses", "KL_ESTIMATORS"),
    ("ppo.kl_estimator", "losses", "KL_ESTIMATORS"),
    ("bon.mode", "stages.best_of_n", "MODES"),
    ("bon.keep", "stages.best_of_n", "KEEP"),
)


def valid_choices(module: str, name: str) -> list:
  """`rlhf_jax.<module>.<name>` as a list: a registry's names (sorted dict keys) or a constant
  tuple's (in its order)."""
  valid = getattr(importlib.import_module(f"rlhf_jax.{module}"), name)
  return sorted(valid) if isinstance(valid, dict) else list(valid)


# loss.name per stage: (the names its step can call, what the step needs).
LOSS_FAMILIES: dict[str, tuple[Callable[[], list], str]] = {
    "dpo": (dpo_steps.pair_loss_names,
            "a pair loss of policy and reference sequence log-probs (train/dpo.py pair_loss)"),
    "reward_model": (lambda: list(rm_steps.LOSSES),
                     "a reward loss of (chosen, rejected) scores or of rankings of K "
                     "completions' scores (train/reward_model.py LOSSES)"),
}

# Counts that must be >= 1 (or >= 0) when the config has them.
POSITIVE = ("train.num_steps", "train.log_every", "train.keep_checkpoints",
            "train.microbatches", "train.nonfinite_max_skips", "data.batch_size", "data.prompt_len",
            "data.completion_len", "rl.prompts_per_step", "pg.epochs", "pg.minibatches",
            "ppo.epochs", "ppo.minibatches", "bon.n", "bon.top_k", "bon.max_train_prompts",
            "reward.ensemble_size", "eval.exact_batch_size")
NON_NEGATIVE = ("train.eval_every", "train.eval_examples", "train.eval_samples",
                "train.checkpoint_every", "lora.rank", "eval.exact_prompts", "model.lm_head_chunk")

ONLINE_STAGES = ("ppo", "policy_gradient")


def _get(config, dotted: str) -> Any:
  """config.<dotted>, or _MISSING when a group or the field is absent."""
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return _MISSING
    node = node[part]
  return node


def _in_step(e: Exception, step: str, stage: str) -> Exception:
  """`e` re-raised with the recipe step in front (FileNotFoundError kept, otherwise ValueError:
  subclasses such as JSONDecodeError cannot be rebuilt from a message alone)."""
  cls = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
  return cls(f"recipe step {step!r} (stage {stage!r}): {e.args[0] if e.args else e}")


def _each_stage(config, check: Callable[[Any, str], None]) -> None:
  """check(stage_config, prefix) on the config itself, or on every step of a recipe with
  prefix "<step>." and the step named in front of any error."""
  if _get(config, "stage") != "recipe":
    check(config, "")
    return
  for step in config.recipe.steps:
    sub = _get(config, step)
    if sub is _MISSING or not hasattr(sub, "keys"):
      continue  # reported by recipe.check
    try:
      check(sub, f"{step}.")
    except (ValueError, FileNotFoundError) as e:
      raise _in_step(e, step, sub.get("stage", "?")) from None


def _check_choices(config, prefix: str, fields: tuple[str, ...] | None = None) -> None:
  """The CHOICES fields the config has (or those of `fields`) hold one of their valid names."""
  for field, module, name in CHOICES:
    value = _get(config, field)
    if value is _MISSING or (fields is not None and field not in fields):
      continue
    valid = valid_choices(module, name)
    if value not in valid:
      raise ValueError(f"unknown {prefix}{field} {value!r}; valid choices: {valid}")


def _check_loss(config, prefix: str) -> None:
  """loss.name must be a loss the stage's step can call, not just any registry name."""
  name = _get(config, "loss.name")
  if name is _MISSING:
    return
  field = f"{prefix}loss.name"
  if config.stage not in LOSS_FAMILIES:
    valid = losses.names()
    if name not in valid:
      raise ValueError(f"unknown {field} {name!r}; valid choices: {valid}")
    return
  valid_fn, needs = LOSS_FAMILIES[config.stage]
  valid = valid_fn()
  if name in valid:
    return
  if config.stage == "dpo" and name in dpo_steps.TERMS:
    raise ValueError(f"{field} {name!r} is a term that {prefix}loss.sft_coef adds to a pair loss, "
                     f"not a loss of its own; valid choices: {valid}")
  if name in losses.names():
    raise ValueError(f"{field} {name!r} (a loss of the {losses.family(name)!r} family) cannot "
                     f"be used by the {config.stage} stage, which needs {needs}; valid choices: "
                     f"{valid}")
  raise ValueError(f"unknown {field} {name!r}; valid choices: {valid}")


def _check_counts(config, prefix: str) -> None:
  for fields, minimum in ((POSITIVE, 1), (NON_NEGATIVE, 0)):
    for field in fields:
      value = _get(config, field)
      if value is not _MISSING and (not isinstance(value, int) or value < minimum):
        raise ValueError(f"{prefix}{field}={value!r}: must be an integer >= {minimum}")
  algorithm = _get(config, "pg.algorithm")
  if algorithm is not _MISSING:
    rl_algorithms.load_modules(config.rl.get("algorithm_modules", ""))
    valid = rl_algorithms.names(critic=False)
    if algorithm not in valid:
      raise ValueError(f"unknown {prefix}pg.algorithm {algorithm!r}; valid choices: {valid} "
                       "(more register from modules named in rl.algorithm_modules)")
    g, minimum = config.pg.group_size, rl_algorithms.get(algorithm).min_group_size
    if not isinstance(g, int) or g < minimum:
      raise ValueError(f"{prefix}pg.group_size={g!r}: pg.algorithm={algorithm!r} needs at least "
                       f"{minimum} samples per prompt (its advantages use group statistics)")
  if _get(config, "rl.dynamic_sampling") is True:
    g = config.pg.group_size if config.stage == "policy_gradient" else 1
    if g < 2:
      raise ValueError(f"{prefix}rl.dynamic_sampling drops groups whose rewards are all equal: "
                       f"it needs pg.group_size >= 2 (the policy_gradient stage), got {g}")
    rounds = _get(config, "rl.max_sampling_rounds")
    if not (isinstance(rounds, int) and rounds >= 1):
      raise ValueError(f"{prefix}rl.max_sampling_rounds={rounds!r}: must be an integer >= 1")
  cap = _get(config, "rl.tis_cap")
  if cap is not _MISSING and not (cap == 0 or cap >= 1):
    raise ValueError(f"{prefix}rl.tis_cap={cap!r}: the truncated importance weight's cap must be "
                     ">= 1 (0 = off)")
  pass_n = _get(config, "eval.pass_n")
  if pass_n is not _MISSING and pass_n:
    bad = [k for k in config.eval.pass_k if not (isinstance(k, int) and 1 <= k <= pass_n)]
    if bad or not isinstance(pass_n, int) or pass_n < 1:
      raise ValueError(f"{prefix}eval.pass_k={tuple(config.eval.pass_k)}: each k must be an "
                       f"integer in [1, eval.pass_n={pass_n!r}]")
  buffer = _get(config, "pg.overlong_buffer")
  if buffer is not _MISSING and not (isinstance(buffer, int)
                                     and 0 <= buffer <= config.data.completion_len):
    raise ValueError(f"{prefix}pg.overlong_buffer={buffer!r}: must be an integer in [0, "
                     f"data.completion_len={config.data.completion_len}] (0 = off)")
  if config.stage == "dpo" and _get(config, "data.pairs") == "on_policy" and config.bon.n < 2:
    raise ValueError(f"{prefix}bon.n={config.bon.n}: on-policy pairs (data.pairs='on_policy') "
                     "take the best and worst of bon.n >= 2 samples per prompt")
  fraction = _get(config, "reward.data_fraction")
  if fraction is not _MISSING and not 0.0 < fraction <= 1.0:
    raise ValueError(f"{prefix}reward.data_fraction={fraction!r}: must be in (0, 1]")
  if _get(config, "kl.controller") == "adaptive":
    for field in ("kl.target", "kl.horizon"):
      value = _get(config, field)
      if value is not _MISSING and not value > 0:
        raise ValueError(f"{prefix}{field}={value!r}: the adaptive KL controller divides by it; "
                         "it must be > 0")


def _check_task(config, prefix: str) -> None:
  """task.params are keyword arguments of the task's constructor, which checks their values."""
  if "task" not in config:
    return
  name = config.task.name
  params = config.task.params.to_dict() if "params" in config.task else {}
  factory = builders.TASKS[name]
  if dataclasses.is_dataclass(factory):
    valid = [f.name for f in dataclasses.fields(factory) if f.init]
    unknown = sorted(set(params) - set(valid))
    if unknown:
      raise ValueError(f"unknown {prefix}task.params {unknown} for task {name!r}; valid keys: "
                       f"{valid}")
  try:
    builders.make_task(name, **params)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{prefix}task.params of task {name!r}: {e}") from None


def _check_lora_and_rules(config, prefix: str) -> None:
  if "lora" in config:
    try:
      lora_lib.resolve_targets(config.lora.targets)
    except ValueError as e:
      raise ValueError(f"{prefix}lora.targets={config.lora.targets!r}: {e}") from None
  logical = [name for name, _ in sharding.DEFAULT_RULES]
  for rule in _get(config, "logical_axis_rules") if "logical_axis_rules" in config else ():
    if len(rule) != 2 or rule[0] not in logical:
      raise ValueError(f"{prefix}logical_axis_rules: {tuple(rule)!r} is not a (logical axis, "
                       f"mesh axes) rule of a logical axis in {logical}")
    targets = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
    for target in targets:
      if target is not None and target not in mesh_lib.MESH_AXES:
        raise ValueError(f"{prefix}logical_axis_rules: unknown mesh axis {target!r} in rule "
                         f"{tuple(rule)!r}; valid choices: {list(mesh_lib.MESH_AXES)} or None")


def _uses_microbatches(config) -> bool:
  """Stages whose train step accumulates train.microbatches over data.batch_size rows."""
  return (config.stage in ("sft", "reward_model", "dpo")
          or (config.stage == "best_of_n" and config.bon.mode == "rejection_sampling"))


def _global_batches(config) -> list[str]:
  """Fields whose value is the global batch of rows the stage shards over the data axes."""
  stage, fields = config.stage, []
  if _uses_microbatches(config):
    fields.append("data.batch_size")
  if stage in ONLINE_STAGES + ("best_of_n",) or _get(config, "data.pairs") == "on_policy":
    fields.append("rl.prompts_per_step")
  if _get(config, "task.name") == "enumerable":  # exact evaluation (train/enumerable_eval.py)
    fields.append("eval.exact_batch_size")
  return [f for f in fields if _get(config, f) is not _MISSING]


def _mesh_sizes(config, prefix: str) -> dict[str, int]:
  """mesh.data / fsdp / tensor, checked as far as no device count is needed (positive or one
  -1; parallel/mesh.py resolves them against the product of the fixed ones)."""
  sizes = {a: _get(config, f"mesh.{a}") for a in mesh_lib.MESH_AXES}
  sizes = {a: 1 if s is _MISSING else s for a, s in sizes.items()}
  if not all(isinstance(s, int) for s in sizes.values()):
    raise ValueError(f"{prefix}mesh {sizes}: sizes must be integers (or -1 for one axis)")
  try:
    mesh_lib.resolve_mesh_shape(sizes, math.prod(s for s in sizes.values() if s > 0))
  except ValueError as e:
    raise ValueError(f"{prefix}{e}") from None
  return sizes


def _check_batches(config, prefix: str, mesh: dict[str, int]) -> None:
  """Batch divisibility: rollout rows by minibatches, data.batch_size by train.microbatches,
  every global batch by the data-parallel shards (mesh data x fsdp: by the fixed one's size
  while the other is -1) and, once both are known, each shard's rows by train.microbatches
  (train/microbatch.py splits each device's rows)."""
  p = prefix
  if config.stage in ONLINE_STAGES:
    from rlhf_jax.stages import online  # pylint: disable=g-import-not-at-top
    group = config.pg.group_size if config.stage == "policy_gradient" else 1
    field = "pg.minibatches" if config.stage == "policy_gradient" else "ppo.minibatches"
    online.check_no_microbatches(config, p + field)
    rows, k = config.rl.prompts_per_step * group, _get(config, field)
    if rows % k:
      raise ValueError(f"{p}{field}={k} does not divide the rollout's {rows} rows "
                       f"({p}rl.prompts_per_step={config.rl.prompts_per_step}"
                       f"{f' x {p}pg.group_size={group}' if group > 1 else ''})")
  k = config.train.microbatches if _uses_microbatches(config) else 1
  if k > 1 and config.data.batch_size % k:
    raise ValueError(f"{p}data.batch_size={config.data.batch_size} is not divisible by "
                     f"{p}train.microbatches={k}")
  axes = {a: mesh[a] for a in mesh_lib.BATCH_AXES}
  shards = math.prod(s for s in axes.values() if s > 0)
  exact = all(s > 0 for s in axes.values())
  mesh_text = " x ".join(f"{a}={s}" for a, s in axes.items())
  where = (f"the {shards} data-parallel shards (mesh {mesh_text})" if exact else
           f"the data-parallel shards, a multiple of {shards} (mesh {mesh_text})")
  for field in _global_batches(config):
    if _get(config, field) % shards:
      raise ValueError(f"{p}{field}={_get(config, field)} is not divisible by {where}")
  if exact and k > 1 and (config.data.batch_size // shards) % k:
    raise ValueError(f"{p}data.batch_size={config.data.batch_size} leaves "
                     f"{config.data.batch_size // shards} rows on each of {where}, not divisible "
                     f"by {p}train.microbatches={k} (each shard splits its own rows)")


def _check_sft_data_options(config, prefix: str) -> None:
  """data.packing / data.length_buckets: SFT only, buckets within the padded length;
  data.sft_records_path: an existing file."""
  data = config.data
  packing, buckets = data.get("packing", False), tuple(data.get("length_buckets", ()))
  if (packing or buckets) and config.stage != "sft":
    raise ValueError(f"{prefix}data.packing / {prefix}data.length_buckets are options of the sft "
                     f"stage only, not of stage {config.stage!r}")
  if buckets:
    try:
      pipeline.check_length_buckets(buckets, data.prompt_len + data.completion_len)
    except ValueError as e:
      raise ValueError(f"{prefix}{e}") from None
  path = data.get("sft_records_path", "")
  if path and config.stage == "sft" and not os.path.isfile(path):
    raise FileNotFoundError(f"{prefix}data.sft_records_path={path!r}: no such file (expected "
                            "JSONL records with text fields prompt and completion)")


def _check_data_source(config, prefix: str) -> None:
  """data.path for the files / tfds sources (the train split must exist), data.fields names,
  data.chat_template (a choice or an existing file), the held-out fraction."""
  from rlhf_jax.data import chat, formats, sources  # pylint: disable=g-import-not-at-top
  data = config.data
  kind, path = data.get("source", "task"), data.get("path", "")
  if kind != "task" and not path:
    raise ValueError(f"{prefix}data.source={kind!r} needs {prefix}data.path ("
                     f"{'a file, glob or directory' if kind == 'files' else 'a TFDS builder name'})")
  if kind == "files":
    try:
      split = data.get("train_split", "train") if os.path.isdir(path) else "train"
      sources.split_files(path, split) or sources.read_files(path, split)
    except FileNotFoundError as e:
      raise FileNotFoundError(f"{prefix}{e}") from None
  if kind == "tfds":
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from rlhf_jax.data import hh_rlhf  # pylint: disable=g-import-not-at-top,unused-import
    try:
      tfds.builder_cls(path.split("/")[0].split(":")[0])
    except tfds.core.registered.DatasetNotFoundError:
      raise ValueError(f"{prefix}data.path={path!r} is not a registered TFDS builder; e.g. "
                       f"hh_rlhf/harmless-base-skip-malformed") from None
  unknown = set(data.get("fields", {})) - set(formats.CANONICAL_FIELDS)
  if unknown:
    raise ValueError(f"{prefix}data.fields: unknown canonical names {sorted(unknown)}; valid: "
                     f"{list(formats.CANONICAL_FIELDS)} (map each to your column name)")
  template = data.get("chat_template", "auto")
  if template not in chat.CHOICES and not os.path.isfile(template):
    raise FileNotFoundError(f"{prefix}data.chat_template={template!r}: neither one of "
                            f"{list(chat.CHOICES)} nor an existing .jinja file")
  fraction = data.get("heldout_fraction", 0.0)
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"{prefix}data.heldout_fraction={fraction} must be in [0, 1)")


def _check_reward_functions(config, prefix: str) -> None:
  """reward.functions: each entry imported and resolved (rewards/registry.py)."""
  from rlhf_jax.rewards import registry  # pylint: disable=g-import-not-at-top
  try:
    functions = registry.check(config.reward)
  except (ValueError, TypeError, ImportError) as e:
    raise ValueError(f"{prefix}reward.functions: {e}") from None
  if config.reward.source == "functions" and functions is None:
    raise ValueError(f"{prefix}reward.source='functions' needs {prefix}reward.functions, e.g. "
                     "'math_answer' or 'my_module:my_reward*0.5'")


def check_hf_path(config, prefix: str = "") -> None:
  """model.hf_path: a stage that reads it, not with init.from_workdir, and a directory with
  config.json, safetensors weights and a tokenizer (file names and config.json only)."""
  path = config.model.get("hf_path", "") if "model" in config else ""
  if not path:
    return
  field = f"{prefix}model.hf_path"
  if config.stage not in stages.HF_PATH_STAGES:
    raise ValueError(f"{field} is read by stages {list(stages.HF_PATH_STAGES)} only, not "
                     f"{config.stage!r}: run sft with it first and start {config.stage!r} from "
                     "that run (init.from_workdir)")
  if "init" in config and config.init.from_workdir:
    raise ValueError(f"{field}={path!r} and {prefix}init.from_workdir="
                     f"{config.init.from_workdir!r} both name the starting weights; set only one")
  try:
    hf.check_dir(path)
  except (FileNotFoundError, ValueError) as e:
    cls = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
    raise cls(f"{field}={path!r}: {e}") from None


def _check_stage(config, prefix: str) -> None:
  """Every check that needs no devices, on one stage's config."""
  if "stage" not in config:
    raise ValueError(f"the config has no {prefix}stage field; valid choices: "
                     f"{valid_choices('stages', 'STAGES')}")
  _check_choices(config, prefix, fields=("stage",))
  if config.stage == "recipe":  # its other fields are steps, checked one by one (validate)
    return
  _check_choices(config, prefix)
  _check_loss(config, prefix)
  _check_counts(config, prefix)
  _check_task(config, prefix)
  _check_lora_and_rules(config, prefix)
  _check_batches(config, prefix, _mesh_sizes(config, prefix))
  if "data" in config:
    _check_sft_data_options(config, prefix)
    _check_data_source(config, prefix)
  if "reward" in config and "functions" in config.reward:
    _check_reward_functions(config, prefix)
  if "model" in config:
    check_hf_path(config, prefix)
  wandb_sink.check(config)


def validate(config) -> None:
  """Raises ValueError (FileNotFoundError for paths) naming the first field that is invalid:
  an unknown name (with the valid choices), a loss of another family, a count or batch split
  that cannot work. A recipe is checked step by step, then as a recipe (stages/recipe.py)."""
  _check_stage(config, "")
  if config.stage == "recipe":
    from rlhf_jax.stages import recipe  # pylint: disable=g-import-not-at-top
    recipe.apply_shared(config)
    _each_stage(config, _check_stage)
    recipe.check(config)


def _device_hint(need: int, platform: str | None) -> str:
  if platform is None:
    import jax  # pylint: disable=g-import-not-at-top
    platform = jax.default_backend()
  if platform != "cpu":
    return ""
  return (f"; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count={need} (set before JAX "
          f"starts) simulates {need} devices")


def check_devices(config, device_count: int, *, platform: str | None = None) -> None:
  """The mesh (config.mesh; one axis may be -1) fits `device_count` devices and every global
  batch splits over its data-parallel shards; for a recipe, every step's. `platform` (default:
  JAX's backend) adds, on "cpu", how to simulate more devices. Call after `validate` and
  jax.distributed's initialisation, with jax.device_count()."""
  def check(sub, prefix: str) -> None:
    sizes = _mesh_sizes(sub, prefix)
    fixed = {a: s for a, s in sizes.items() if s != -1}
    need = math.prod(fixed.values())
    try:
      resolved = mesh_lib.resolve_mesh_shape(sizes, device_count)
    except ValueError:
      axes = " x ".join(f"{a}={s}" for a, s in sizes.items())
      if len(fixed) < len(sizes):
        free = next(a for a, s in sizes.items() if s == -1)
        needs = (f"a multiple of {need} devices ({axes}: {prefix}mesh.{free}=-1 takes what "
                 "the fixed axes leave)")
      else:
        needs = f"{need} devices ({axes})"
      available = f"{device_count} {'is' if device_count == 1 else 'are'} available"
      raise ValueError(f"{prefix}mesh needs {needs}, but {available}: set {prefix}mesh.data / "
                       f"fsdp / tensor to fit{_device_hint(need, platform)}") from None
    _check_batches(sub, prefix, dict(zip(mesh_lib.MESH_AXES, resolved)))
  _each_stage(config, check)
