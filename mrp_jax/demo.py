"""The `demo` job: the whole system on a synthetic cohort, resumable at every stage.

Stages (each skipped or resumed when its output already exists):
  1. export:   a synthetic hospital export (input_pipeline/synthetic.py) in WORKDIR/export;
  2. records:  `prepare` into WORKDIR/records (restartable shard by shard; a finished manifest
               is reused without rescanning the export), then `verify`;
  3. train:    rhpc, iMGrhpc and iMRrhpc in WORKDIR/runs/{rhpc,img,imr} (each resumes from its
               checkpoints; a run with final.json is done). The fused models start their rhpc
               encoder from the rhpc run (config.demo.rhpc_init);
  4. evaluate: the MRP ensemble and the report in WORKDIR/report (the evaluate job), then the
               paper's result checked claim by claim (metrics.json "paper_shape").
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ml_collections
from absl import logging

from input_pipeline import prepare, synthetic, verify
from input_pipeline.geometries import GEOMETRIES
from input_pipeline.mammogram import MammogramOptions
from input_pipeline.mri import MriOptions

TRUTH = "synthetic_truth.json"  # written last by the generator: marks a complete export
RUNS = (("rhpc", "rhpc", "rhpc"), ("img_rhpc", "iMGrhpc", "img"), ("imr_rhpc", "iMRrhpc", "imr"))


def _stage(text: str, start: float) -> None:
  print(f"demo [{time.time() - start:6.0f} s] {text}", flush=True)


def train_config(config: ml_collections.ConfigDict, model_name: str, records: Path,
                 rhpc_run: Path | None) -> ml_collections.ConfigDict:
  """The train config of one demo model: its configs/<model>.py at the demo's geometry, with
  the demo's steps, batch size and learning rate."""
  from configs import img_rhpc, imr_rhpc, rhpc

  module = {"rhpc": rhpc, "img_rhpc": img_rhpc, "imr_rhpc": imr_rhpc}[model_name]
  demo = config.demo
  out = module.get_config("tiny")
  out.seed = config.seed
  out.data.records = str(records)
  out.data.mri_shape, out.data.mri_spacing_mm = config.data.mri_shape, config.data.mri_spacing_mm
  out.data.mg_shape = config.data.mg_shape
  settings = demo.train[model_name]
  out.train.num_steps = settings.steps
  out.train.batch_size = settings.batch_size
  out.train.learning_rate = demo.learning_rate
  out.train.warmup_steps = max(1, settings.steps // 15)
  out.train.log_every_steps = max(1, settings.steps // 6)
  out.train.eval_every_steps = max(1, settings.steps // 3)
  out.train.checkpoint_every_steps = max(1, settings.steps // 3)
  if model_name != "rhpc":
    out.model.modality_dropout = config.model.modality_dropout
    if rhpc_run is not None and demo.rhpc_init:
      out.model.rhpc_init = str(rhpc_run)
  return out


def evaluate_config(config: ml_collections.ConfigDict, records: Path,
                    workdirs: dict[str, Path]) -> ml_collections.ConfigDict:
  from configs import evaluate

  out = evaluate.get_config()
  out.seed = config.seed
  out.data.records = str(records)
  out.evaluate.runs = ",".join(f"{label}={path}" for label, path in workdirs.items())
  for key, value in config.demo.evaluate.items():
    out.evaluate[key] = value
  out.eval.batch_size = config.eval.batch_size
  return out


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  from mrp_jax import config_validation, evaluate, report, train

  start = time.time()
  workdir = Path(workdir)
  demo = config.demo
  export = workdir / "export"
  if (export / TRUTH).exists():
    logging.info("export: reusing %s", export)
    _stage(f"export: reusing {export}", start)
  else:
    _stage(f"export: generating {demo.patients} synthetic patients ({demo.geometry} "
           f"geometry) in {export}", start)
    summary = synthetic.generate_export(export, demo.patients, seed=config.seed,
                                        geometry=demo.geometry, workers=demo.workers)
    _stage(f"export: {summary}", start)

  geometry = GEOMETRIES[demo.geometry]
  options = prepare.PrepareOptions(
      source=export, out=workdir / "records",
      mri=MriOptions(spacing_mm=geometry.mri_spacing_mm, box=geometry.mri_box),
      mammogram=MammogramOptions(size=geometry.mg_size), seed=config.seed,
      shard_size=demo.shard_size, workers=demo.workers,
      split_fractions=tuple(demo.split_fractions))
  manifest_path = options.out / prepare.MANIFEST
  if manifest_path.exists():  # prepare writes the manifest last, once every shard is complete
    manifest = json.loads(manifest_path.read_text())
    _stage(f"records: reusing {options.out}", start)
  else:
    manifest = prepare.prepare(options)
    _stage(f"records in {options.out}\n{prepare.summary(manifest)}", start)
  verified = verify.verify_directory(options.out)
  if not verified.ok:
    raise RuntimeError(f"demo: the prepared records failed verification:\n{verified.summary()}")
  _stage(f"verify: {verified.summary()}", start)

  workdirs: dict[str, Path] = {}
  for model_name, label, folder in RUNS:
    run_dir = workdir / "runs" / folder
    workdirs[label] = run_dir
    if (run_dir / "final.json").exists():
      _stage(f"train {label}: done before, reusing {run_dir}", start)
      continue
    settings = demo.train[model_name]
    _stage(f"train {label}: {settings.steps} steps of {settings.batch_size} in {run_dir}",
           start)
    cfg = train_config(config, model_name, options.out, workdirs.get("rhpc"))
    config_validation.validate(cfg)
    train.train_and_evaluate(cfg, run_dir)

  report_dir = workdir / "report"
  if (report_dir / "report.md").exists():
    _stage(f"evaluate: done before, see {report_dir / 'report.md'}", start)
    result = json.loads((report_dir / "metrics.json").read_text())
  else:
    _stage(f"evaluate: MRP ensemble, metrics with {demo.evaluate.bootstrap_replicates} "
           f"bootstrap replicates, explanations -> {report_dir}", start)
    cfg = evaluate_config(config, options.out, workdirs)
    config_validation.validate(cfg)
    result = evaluate.run(cfg, workdir)
  if result.get("paper_shape"):  # absent in reports of older versions
    _stage(report.shape_summary(result["paper_shape"]), start)
  _stage(f"done: {report_dir / 'report.md'}", start)
  return manifest
