"""Optional Weights & Biases sink: every row written to metrics.jsonl is logged to a W&B run too,
with the same keys (`step` included) — TensorBoard stays the default sink; W&B is never required.

Config (`config.logging.wandb`): enabled (default False), project, entity ("" = the account's
default), mode ("online", or "offline": written under <workdir>/wandb, uploaded later with
`wandb sync`), name ("" = the workdir's name), group ("" = none; e.g. one name for a recipe's
stages). Install it with `pip install -e ".[wandb]"`.

Steps: each row is logged with W&B's own step counter and our `step` as a metric, and every
other key is plotted against it (`define_metric("*", step_metric="step")`). A resumed run logs
the steps after its checkpoint again (metrics.jsonl drops the first copies); W&B would refuse a
step below its counter, so keying on our `step` keeps every row. The W&B run id is kept in
<workdir>/wandb_run_id, so a rerun of the same command resumes the same W&B run.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from typing import Mapping

MODES = ("online", "offline")
RUN_ID_FILE = "wandb_run_id"
INSTALL_HINT = 'pip install -e ".[wandb]" (or pip install wandb)'


def settings(config):
  """config.logging.wandb if the config has it and it is enabled, else None."""
  if "logging" not in config or "wandb" not in config.logging:
    return None
  w = config.logging.wandb
  return w if w.enabled else None


def check(config) -> None:
  """Raises ValueError if W&B logging is enabled but cannot work (package missing, bad mode);
  called by validate.validate before anything runs."""
  w = settings(config)
  if w is None:
    return
  if w.mode not in MODES:
    raise ValueError(f"unknown logging.wandb.mode {w.mode!r}; valid: {list(MODES)}")
  if importlib.util.find_spec("wandb") is None:
    raise ValueError(f"logging.wandb.enabled=True but the wandb package is not installed: "
                     f"{INSTALL_HINT}")


class WandbSink:
  """One W&B run per stage workdir (process 0 only: the caller decides)."""

  def __init__(self, workdir: str, w, *, run_config: dict, stage: str):
    import wandb  # pylint: disable=g-import-not-at-top  (optional dependency)
    id_path = os.path.join(workdir, RUN_ID_FILE)
    if os.path.exists(id_path):
      with open(id_path) as f:
        run_id = f.read().strip()
    else:
      run_id = uuid.uuid4().hex[:12]  # W&B run ids: lowercase letters and digits
      with open(id_path, "w") as f:
        f.write(run_id + "\n")
    self.run = wandb.init(
        project=w.project, entity=w.entity or None, mode=w.mode, dir=workdir, id=run_id,
        resume="allow", name=w.name or os.path.basename(os.path.abspath(workdir)),
        group=w.group or None, job_type=stage, config=run_config, reinit="create_new")
    self.run.define_metric("step")
    self.run.define_metric("*", step_metric="step")

  def log(self, row: Mapping[str, object]) -> None:
    self.run.log(dict(row))

  def close(self) -> None:
    self.run.finish()
