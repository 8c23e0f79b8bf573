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

from input_pipeline import records
from input_pipeline.feed import batching
from input_pipeline.geometries import GeometryMismatch
from input_pipeline.records import preprocessing as preprocessing_lib
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
  """The run in ``workdir`` at its best checkpoint (else its latest).

  Raises:
    GeometryMismatch: its config.json names another geometry than its preprocessing.json (the
      records it trained on).
  """
  workdir = Path(workdir)
  config = load_config(workdir)
  preprocessing = json.loads((workdir / "preprocessing.json").read_text())
  problem = preprocessing_lib.config_disagreement(config.data, preprocessing)
  if problem:
    raise GeometryMismatch(f"{workdir / 'config.json'}: {problem} "
                           f"({workdir / 'preprocessing.json'}); retrain it on those records")
  recipe = state_lib.build_state(config, mesh, batching.BatchSpec.of(preprocessing))
  state, step = checkpoint.restore_state_only(workdir, recipe.abstract_sharded)
  return Run(label=label or config.model.name, workdir=workdir,
             config=config, preprocessing=preprocessing, model=recipe.model, state=state,
             step=step, eval_step=inference.jit_eval_step(recipe.model))


def check_records(loaded: list[Run], records_dir: str | Path) -> None:
  """Each run must be evaluated on records preprocessed as its own were (the image sections
  its model reads).

  Raises:
    GeometryMismatch: naming the run, the field and both values.
  """
  manifest = records.read_manifest(records_dir)
  for run in loaded:
    problem = preprocessing_lib.disagreement(run.preprocessing, manifest,
                                             preprocessing_lib.SECTIONS[run.model_name])
    if problem:
      raise GeometryMismatch(
          f"run {run.label} ({run.workdir / 'preprocessing.json'}) vs the records "
          f"({Path(records_dir) / records.MANIFEST}): {problem}; evaluate a run on records "
          "prepared as its own were")


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
