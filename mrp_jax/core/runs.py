"""A finished training run, loaded for evaluation or prediction.

A train workdir holds config.json (the config it trained with), preprocessing.json (the
geometry and intensity of its records), best/ and checkpoints/. :func:`load_run` rebuilds the
model from the saved config, restores the best checkpoint (else the latest; each checked against
its digest, a damaged one passed over with a warning: checkpoint.restore_state_only) and
compiles the eval step, so evaluation never depends on the config of the evaluating command.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import ml_collections

from mrp_jax.core import checkpoint, inference, train_step
from mrp_jax.core import state as state_lib


@dataclasses.dataclass
class Run:
  """label: how reports name it ('iMRrhpc', 'iMRrhpc no time'); model_name: 'iMRrhpc'...;
  step: the restored checkpoint's step."""
  label: str
  workdir: Path
  config: ml_collections.ConfigDict
  preprocessing: dict[str, Any]
  model: nn.Module
  state: train_step.TrainState
  step: int
  eval_step: Callable[..., Any]

  @property
  def model_name(self) -> str:
    return self.config.model.name


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
  path = Path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{workdir}: no config.json; is this a train workdir?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_run(workdir: str | Path, mesh, label: str | None = None) -> Run:
  workdir = Path(workdir)
  config = load_config(workdir)
  recipe = state_lib.build_state(config, mesh)
  state, step = checkpoint.restore_state_only(workdir, recipe.abstract_sharded)
  preprocessing = json.loads((workdir / "preprocessing.json").read_text())
  return Run(label=label or config.model.name, workdir=workdir,
             config=config, preprocessing=preprocessing, model=recipe.model, state=state,
             step=step, eval_step=inference.jit_eval_step(recipe.model))


def parse_runs(text: str) -> list[tuple[str, str]]:
  """'rhpc=runs/rhpc,iMRrhpc=runs/iMRrhpc' -> [(label, workdir), ...]; a clear error otherwise."""
  out = []
  for item in filter(None, (t.strip() for t in text.split(","))):
    label, sep, path = item.partition("=")
    if not sep or not label or not path:
      raise ValueError(f"config.evaluate.runs: expected LABEL=WORKDIR items separated by "
                       f"commas, got {item!r}")
    out.append((label.strip(), path.strip()))
  labels = [label for label, _ in out]
  if len(set(labels)) != len(labels):
    raise ValueError(f"config.evaluate.runs: labels must be unique, got {labels}")
  return out
