"""The `describe` job: what a config builds, before any data is touched.

Prints the model's parameter count per top-level module, the batch-statistics count and the
output shapes of one forward pass on a zero batch of the configured geometry, and writes the same
to WORKDIR/describe.json. Runs in seconds (jax.eval_shape: nothing is allocated).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from input_pipeline.geometries import preset
from mrp_jax import models


def _count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def describe(config: ml_collections.ConfigDict, workdir: str) -> dict:
  model = models.create_model(config.model)
  geometry = preset(config.data.geometry)
  batch = models.dummy_batch(config.model.name, config.train.batch_size,
                             mri_shape=geometry.mri_box, mg_shape=geometry.mg_size)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))
  outputs = jax.eval_shape(lambda v: model.apply(v, batch, train=False), variables)
  params = variables["params"]
  summary = {
      "model": config.model.name,
      "parameters": _count(params),
      "parameters_by_module": {name: _count(sub) for name, sub in params.items()},
      "batch_stats": _count(variables.get("batch_stats", {})),
      "outputs": {k: [list(v.shape), str(v.dtype)] for k, v in outputs.items()},
      "batch": {k: [list(v.shape), str(v.dtype)] for k, v in batch.items()},
  }
  lines = [f"{summary['model']}: {summary['parameters']:,} parameters"]
  lines += [f"  {name:<24} {n:>12,}" for name, n in summary["parameters_by_module"].items()]
  lines += [f"  output {k:<17} {v[0]} {v[1]}" for k, v in summary["outputs"].items()]
  print("\n".join(lines))
  Path(workdir).mkdir(parents=True, exist_ok=True)
  (Path(workdir) / "describe.json").write_text(json.dumps(summary, indent=1))
  return summary
