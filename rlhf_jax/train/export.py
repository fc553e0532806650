"""A stage's product: final parameters + what is needed to use them, read by later stages.

`<workdir>/export/params` (orbax) and `<workdir>/export/export.json`:
  {"kind": "lm" | "scalar", "model": ModelConfig fields, "tokenizer": {...}, "extra": {...}}
Loading restores the parameters straight into the shardings of the target mesh.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from rlhf_jax import models
from rlhf_jax.parallel import distributed, sharding as sharding_lib
from rlhf_jax.train import checkpoint, nonfinite, state as state_lib

KINDS = ("lm", "scalar")


@dataclasses.dataclass
class Exported:
  kind: str
  model_config: models.ModelConfig
  params: Any
  tokenizer: dict
  extra: dict
  graphdef: Any = None


def make_model(kind: str, cfg: models.ModelConfig, rngs: nnx.Rngs):
  if kind == "lm":
    return models.Transformer(cfg, rngs=rngs)
  if kind == "scalar":
    return models.ScalarModel(cfg, rngs=rngs)
  raise ValueError(f"unknown export kind {kind!r}; valid: {list(KINDS)}")


def save(workdir: str, params, *, kind: str, model_config: models.ModelConfig,
         tokenizer: dict, extra: dict | None = None) -> str:
  directory = os.path.abspath(os.path.join(workdir, "export"))
  checkpoint.configure_orbax()
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(directory, "params"), params, force=True)
  ckptr.wait_until_finished()
  if jax.process_index() == 0:
    meta = {"kind": kind, "model": dataclasses.asdict(model_config), "tokenizer": tokenizer,
            "extra": extra or {}}
    with open(os.path.join(directory, "export.json"), "w") as f:
      json.dump(meta, f, indent=1, sort_keys=True)
  distributed.barrier("export")
  return directory


def load_meta(workdir: str) -> dict:
  meta_path = os.path.join(os.path.abspath(workdir), "export", "export.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{workdir!r} has no exported model ({meta_path} missing): run the "
                            "stage that produces it first")
  with open(meta_path) as f:
    return json.load(f)


def load_meta_model(workdir: str) -> models.ModelConfig:
  return models.ModelConfig(**load_meta(workdir)["model"])


def load(workdir: str, mesh, rules, *, kind: str | None = None) -> Exported:
  """Restores `<workdir>/export` into shardings on `mesh` under `rules` (checking its kind)."""
  directory = os.path.abspath(os.path.join(workdir, "export"))
  meta = load_meta(workdir)
  if kind is not None and kind != meta["kind"]:
    raise ValueError(f"{workdir!r} exports a {meta['kind']!r} model, not {kind!r}")
  cfg = models.ModelConfig(**meta["model"])
  graphdef, abstract = state_lib.abstract_model(lambda r: make_model(meta["kind"], cfg, r))
  shardings = sharding_lib.param_shardings(abstract, mesh, rules)
  lead = ()
  ensemble_size = meta["extra"].get("ensemble_size")
  if ensemble_size:  # members stacked on a leading axis (rewards/learned.py)
    shardings, lead = state_lib.stacked(shardings, mesh), (int(ensemble_size),)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(lead + a.shape, a.dtype, sharding=s),
                        nnx.to_pure_dict(abstract), shardings)
  params = ocp.StandardCheckpointer().restore(os.path.join(directory, "params"), target)
  nonfinite.check_finite(params, f"export {directory}")
  return Exported(kind=meta["kind"], model_config=cfg, params=params, tokenizer=meta["tokenizer"],
                  extra=meta["extra"], graphdef=graphdef)
