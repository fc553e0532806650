"""Load and save Hugging Face safetensors checkpoints (Llama, Qwen2, Gemma, GPT-2).

Loading reads one tensor at a time (`safetensors.safe_open`, following
`model.safetensors.index.json` for sharded checkpoints), converts it to our layout on the host and
places it straight into its final sharding with `jax.make_array_from_callback`: each process only
copies its addressable shards to devices, and no host ever holds more than one (fused) tensor of
the model besides what the devices hold. Saving writes shards of at most `max_shard_bytes`, one
shard in host memory at a time, and a config.json `transformers.AutoModelForCausalLM` loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlhf_jax.models.hf.config import config_from_hf, config_to_hf
from rlhf_jax.models.hf.names import TensorRule, resolve_name, tensor_rules
from rlhf_jax.models.presets import ModelConfig
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.parallel import sharding as sharding_lib

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A loaded checkpoint. Unpacks as `cfg, graphdef, params = load_hf(path)`.

  hf_config is the raw config.json (special token ids and other fields we do not model).
  """
  cfg: ModelConfig
  graphdef: Any
  params: dict
  hf_config: dict

  def __iter__(self) -> Iterator:
    return iter((self.cfg, self.graphdef, self.params))

  def model(self) -> Transformer:
    """The NNX model: `nnx.merge(graphdef, params)`."""
    return nnx.merge(self.graphdef, self.params)


def safe_open(file: str, framework: str = "numpy"):
  """`safetensors.safe_open`, imported on first use so `rlhf_jax.models` imports without it."""
  import safetensors

  return safetensors.safe_open(file, framework=framework)


def read_hf_config(path: str) -> dict:
  """The config.json of checkpoint directory `path` as a dict.

  Raises FileNotFoundError when it is missing and ValueError naming the file (and the line and
  column of a JSON syntax error) when it is not UTF-8 JSON text holding an object."""
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(file):
    raise FileNotFoundError(f"no {CONFIG_FILE} in Hugging Face checkpoint directory {path!r}")
  with open(file, "rb") as f:
    raw = f.read()
  try:
    hf_config = json.loads(raw.decode("utf-8").removeprefix("\ufeff"))  # a BOM is allowed
  except UnicodeDecodeError as e:
    raise ValueError(f"{file}: not UTF-8 text (byte offset {e.start}: {e.reason})") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{file}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
                     ) from None
  if not isinstance(hf_config, dict):
    raise ValueError(f"{file}: expected a JSON object of model settings, got "
                     f"{type(hf_config).__name__}")
  return hf_config


TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


def check_dir(path: str, *, tokenizer: bool = True) -> dict:
  """Cheap checks that `path` is a checkpoint `load_hf` (and `load_hf_tokenizer`) can read.

  Reads only config.json and the file names: the directory exists, config.json names a supported
  family (`config_from_hf`), safetensors weights are there and, with `tokenizer`, so is a
  tokenizer.model or tokenizer.json. Raises FileNotFoundError / ValueError naming what is
  missing; returns the config.json dict.
  """
  if not path or not os.path.exists(path):
    raise FileNotFoundError(f"Hugging Face checkpoint directory {path!r} does not exist")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is a file, not a Hugging Face checkpoint directory "
                            f"(one holding {CONFIG_FILE}, *.safetensors and a tokenizer)")
  hf_config = read_hf_config(path)
  config_from_hf(hf_config)  # unsupported families / options fail here, before any loading
  names = sorted(os.listdir(path))
  if INDEX_FILE not in names and not any(n.endswith(".safetensors") for n in names):
    raise FileNotFoundError(f"no *.safetensors weights in Hugging Face checkpoint directory "
                            f"{path!r} (found {names})")
  if tokenizer and not any(n in names for n in TOKENIZER_FILES):
    raise FileNotFoundError(f"no tokenizer beside the weights in {path!r}: expected one of "
                            f"{list(TOKENIZER_FILES)} (found {names})")
  return hf_config


def _weight_files(path: str) -> dict[str, str]:
  """tensor name -> safetensors file holding it."""
  index = os.path.join(path, INDEX_FILE)
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return {name: os.path.join(path, file) for name, file in weight_map.items()}
  files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(
        f"no *.safetensors weights in {path!r} (found {sorted(os.listdir(path))}); only "
        "safetensors checkpoints are supported")
  out = {}
  for file in files:
    with safe_open(os.path.join(path, file), framework="numpy") as f:
      out.update({name: os.path.join(path, file) for name in f.keys()})
  return out


def abstract_model(cfg: ModelConfig, lm_head: bool = True):
  """(graphdef, abstract Param state) of Transformer(cfg) without allocating it."""
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), lm_head=lm_head))
  graphdef, params, _ = nnx.split(model, nnx.Param, ...)
  return graphdef, params


def _dtype_name(dtype) -> str:
  """'bfloat16' for 'bfloat16', jnp.bfloat16 or np.dtype(bfloat16) alike."""
  return jnp.dtype(dtype).name


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _leaf_paths(tree, prefix=()) -> set:
  if isinstance(tree, Mapping):
    return set().union(*[_leaf_paths(v, prefix + (k,)) for k, v in tree.items()])
  return {prefix}


def _check_coverage(rules: list[TensorRule], abstract: dict) -> None:
  covered = {p for r in rules for p in r.paths}
  expected = _leaf_paths(abstract)
  if covered != expected:
    raise AssertionError(f"tensor rules and model parameters disagree: only in rules "
                         f"{sorted(covered - expected)}, only in the model "
                         f"{sorted(expected - covered)}")


def load_hf(path: str, *, dtype: Optional[str] = None, mesh: Optional[jax.sharding.Mesh] = None,
            rules=None, lm_head: bool = True,
            overrides: Optional[Mapping[str, Any]] = None) -> LoadedModel:
  """Loads a Hugging Face checkpoint directory (config.json + safetensors) into our Transformer.

  Args:
    path: directory with config.json and model.safetensors or a sharded
      model.safetensors.index.json.
    dtype: parameter and compute dtype (default float32, the checkpoint is upcast); use
      `overrides={"dtype": "bfloat16"}` for bfloat16 compute over float32 weights.
    mesh, rules: with a mesh, every parameter is placed directly into the NamedSharding its
      logical axes get under `rules` (default `parallel.sharding.DEFAULT_RULES`).
    lm_head: False leaves out an untied output projection (a backbone for scalar heads).
    overrides: further ModelConfig fields (numerics only: shapes come from config.json).
  Returns:
    LoadedModel(cfg, graphdef, params) with params a pure dict of jax arrays.
  """
  hf_config = read_hf_config(path)
  dt = _dtype_name(dtype or "float32")
  cfg = config_from_hf(hf_config, dtype=dt, param_dtype=dt)
  if overrides:
    cfg = dataclasses.replace(cfg, **overrides)
  graphdef, abstract_state = abstract_model(cfg, lm_head)
  abstract = nnx.to_pure_dict(abstract_state)
  shardings = None
  if mesh is not None:
    shardings = sharding_lib.param_shardings(abstract_state, mesh,
                                             sharding_lib.DEFAULT_RULES if rules is None else rules)
  rules_ = tensor_rules(cfg, lm_head=lm_head)
  _check_coverage(rules_, abstract)

  files = _weight_files(path)
  by_file: dict[str, list[tuple[str, TensorRule]]] = {}
  missing = []
  for rule in rules_:
    name = resolve_name(rule.hf_name, cfg.family, files)
    if name is None:
      missing.append(rule.hf_name)
    else:
      by_file.setdefault(files[name], []).append((name, rule))
  if missing:
    raise ValueError(f"Hugging Face checkpoint {path!r} ({cfg.family}) lacks tensors "
                     f"{missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)} in all)")

  params: dict = {}
  for file, entries in by_file.items():
    with safe_open(file, framework="numpy") as f:
      for name, rule in entries:
        tensor = f.get_tensor(name)
        if tuple(tensor.shape) != rule.hf_shape:
          raise ValueError(f"{file}: tensor {name} has shape {tuple(tensor.shape)}, but "
                           f"config.json implies {rule.hf_shape}")
        for p, host in zip(rule.paths, rule.to_ours(tensor)):
          host = np.ascontiguousarray(host.astype(_get(abstract, p).dtype))
          if shardings is None:
            _set(params, p, jax.device_put(host))
          else:
            _set(params, p, jax.make_array_from_callback(host.shape, _get(shardings, p),
                                                         lambda idx, h=host: h[idx]))
        del tensor
  return LoadedModel(cfg, graphdef, params, hf_config)


def _host(x) -> np.ndarray:
  """A full host copy of one parameter, gathering across processes when needed."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def save_hf(path: str, cfg: ModelConfig, params: Mapping, *, dtype: Optional[str] = None,
            extra_config: Optional[Mapping[str, Any]] = None,
            max_shard_bytes: int = 5 * 2 ** 30) -> None:
  """Writes `params` of Transformer(cfg) as a Hugging Face checkpoint of family `cfg.family`.

  Args:
    dtype: storage dtype of the tensors and config.json's "dtype" (default cfg.param_dtype).
    extra_config: more config.json fields, e.g. bos_token_id / eos_token_id / pad_token_id.
    max_shard_bytes: above this, tensors are split over model-0000i-of-0000n.safetensors files
      with a model.safetensors.index.json, as transformers does.
  In multi-process runs every process must call this (parameters are gathered); process 0 writes.
  """
  dtype = _dtype_name(dtype or cfg.param_dtype)
  hf = {**config_to_hf(cfg, dtype=dtype), **(extra_config or {})}
  has_lm_head = "lm_head" in params
  if not cfg.tie_embeddings and not has_lm_head:
    raise ValueError("save_hf: params have no 'lm_head' but cfg.tie_embeddings is False")
  rules = tensor_rules(cfg, lm_head=has_lm_head)
  _check_coverage(rules, params)
  itemsize = jnp.dtype(dtype).itemsize
  shards: list[list[TensorRule]] = [[]]
  size = 0
  for rule in rules:
    nbytes = int(np.prod(rule.hf_shape)) * itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(rule)
    size += nbytes
  names = ([SINGLE_FILE] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  write = jax.process_index() == 0
  if write:
    os.makedirs(path, exist_ok=True)
  weight_map = {}
  for file, shard in zip(names, shards):
    tensors = {}
    for rule in shard:
      arrays = [_host(_get(params, p)) for p in rule.paths]
      tensors[rule.hf_name] = np.ascontiguousarray(rule.to_hf(*arrays).astype(dtype))
      weight_map[rule.hf_name] = file
    if write:
      from safetensors.numpy import save_file
      save_file(tensors, os.path.join(path, file), metadata={"format": "pt"})
    del tensors
  if not write:
    return
  stale_index = os.path.join(path, INDEX_FILE)
  if len(shards) == 1 and os.path.exists(stale_index):
    os.remove(stale_index)  # transformers would prefer it over the new single file
  if len(shards) > 1:
    total = sum(int(np.prod(r.hf_shape)) * itemsize for r in rules)
    with open(os.path.join(path, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
