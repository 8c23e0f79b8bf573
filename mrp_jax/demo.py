"""The `demo` job: the whole system on a synthetic cohort, resumable at every stage.

Stages (each skipped when its output is already complete):
  1. export:  a synthetic hospital export (input_pipeline/synthetic.py) in WORKDIR/export;
  2. records: `prepare` into WORKDIR/records (restartable shard by shard), then `verify`.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections
from absl import logging

from input_pipeline import prepare, synthetic, verify
from input_pipeline.geometries import GEOMETRIES
from input_pipeline.mammogram import MammogramOptions
from input_pipeline.mri import MriOptions

TRUTH = "synthetic_truth.json"  # written last by the generator: marks a complete export


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  workdir = Path(workdir)
  demo = config.demo
  export = workdir / "export"
  if (export / TRUTH).exists():
    logging.info("export: reusing %s", export)
  else:
    print(f"demo: generating {demo.patients} synthetic patients ({demo.geometry} geometry) "
          f"in {export}", flush=True)
    summary = synthetic.generate_export(export, demo.patients, seed=config.seed,
                                        geometry=demo.geometry, workers=demo.workers)
    print(f"demo: {summary}", flush=True)

  geometry = GEOMETRIES[demo.geometry]
  options = prepare.PrepareOptions(
      source=export, out=workdir / "records",
      mri=MriOptions(spacing_mm=geometry.mri_spacing_mm, box=geometry.mri_box),
      mammogram=MammogramOptions(size=geometry.mg_size), seed=config.seed,
      shard_size=demo.shard_size, workers=demo.workers)
  manifest = prepare.prepare(options)
  print(f"demo: records in {options.out}\n{prepare.summary(manifest)}", flush=True)
  report = verify.verify_directory(options.out)
  if not report.ok:
    raise RuntimeError(f"demo: the prepared records failed verification:\n{report.summary()}")
  print(f"demo: verify: {report.summary()}", flush=True)
  return manifest
