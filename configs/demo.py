"""The built-in demo: a synthetic hospital export, end to end on CPU.

Command (what `make demo` runs):
  python -m mrp_jax.main --config configs/demo.py --workdir runs/demo
It writes WORKDIR/export (DICOM studies + clinical.csv of synthetic patients), WORKDIR/records
(verified TFRecord shards + manifest.json), trains rhpc, iMGrhpc and iMRrhpc in WORKDIR/runs,
fits the MRP ensemble and writes the report to WORKDIR/report. Run again, it resumes.
Variants: ':tiny' for a smoke run of a few minutes (CI).
"""

from pathlib import Path

import ml_collections

from configs import common

_HERE = Path(__file__).parent


def get_config(arg=None):
  config = common.get_config()
  config.job = "demo"
  config.model.name = "iMRrhpc"
  config.demo = d = ml_collections.ConfigDict()
  # Synthetic patients (four are deliberately broken and get skipped). 1,000 so that the test
  # split (~250 complete patients) can rank models 0.02-0.05 AUROC apart: on the 74 test
  # patients of 360 even the oracles' iMGrhpc < iMRrhpc gap (0.006-0.012) was noise
  # (docs/experiments.md, "A test split that can rank the models").
  d.patients = 1000
  d.geometry = "tiny"  # prepare's --geometry: full | demo | tiny (8 mm voxels: CPU minutes)
  d.workers = 2  # processes for generation and preparation
  d.shard_size = 8  # patients per record shard
  # Train, validation (calibration, MRP weights, thresholds), test quota: prepare keeps in
  # test the half with a mammogram and all three MRI phases (the paper's cohort) and moves the
  # rest to validation: 448 / 299 / 249 patients at seed 0.
  d.split_fractions = (0.45, 0.15, 0.4)
  d.rhpc_init = True  # iMGrhpc / iMRrhpc start their rhpc encoder from the trained rhpc run
  # Per model: steps, global batch size and peak learning rate (docs/experiments.md, "Training
  # lengths of the demo": rhpc and iMRrhpc were under-trained at 150 and 300 steps of 1e-3).
  d.train = ml_collections.ConfigDict({
      "rhpc": {"steps": 300, "batch_size": 32, "learning_rate": 3e-3},
      "iMGrhpc": {"steps": 200, "batch_size": 16, "learning_rate": 1e-3},
      "iMRrhpc": {"steps": 1200, "batch_size": 8, "learning_rate": 1e-3},
  })
  # The mammogram encoder's self-supervised start (the pretrain job on every split's
  # mammograms, labels unused); steps 0: iMGrhpc's encoder starts from scratch. Off by default:
  # 2,000 steps of 64 ran at ~1 step/s on 2 shared cores, beyond the demo's 15 minutes; turn it
  # on with --config.demo.pretrain.steps=2000 (docs/pretraining.md, "What the demo does now").
  d.pretrain = ml_collections.ConfigDict({"steps": 0, "batch_size": 64})
  # The config file of each stage, loaded as the command line loads it.
  d.configs = ml_collections.ConfigDict(
      {name: str(_HERE / f"{name}.py")
       for name in ("rhpc", "iMGrhpc", "iMRrhpc", "evaluate", "pretrain")})
  # configs/evaluate.py fields for the report.
  d.evaluate = ml_collections.ConfigDict({
      "split": "test", "fit_split": "validation", "bootstrap_replicates": 1000,
      "explain_cases": 32, "explain_steps": 64, "explain_phase": "pre"})
  config.validation.batch_size = 8
  tiny = arg and "tiny" in arg.split(",")
  if tiny:  # a smoke run: every stage, a few steps each
    d.patients = 24
    d.split_fractions = (0.5, 0.25, 0.25)
    for name in ("rhpc", "iMGrhpc", "iMRrhpc"):
      d.train[name].steps = 6
      d.train[name].batch_size = 4
    d.pretrain.steps = 4  # the smoke run passes through the pretrain stage too
    d.pretrain.batch_size = 4
    d.evaluate.bootstrap_replicates = 100
    d.evaluate.explain_cases = 1
    d.evaluate.explain_steps = 2
  common.apply_variants(config, ",".join(v for v in (arg or "").split(",") if v != "tiny"))
  return config
