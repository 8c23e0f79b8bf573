"""The built-in demo: a synthetic hospital export, end to end on CPU.

Command (what `make demo` runs):
  python -m mrp_jax.main --config configs/demo.py --workdir runs/demo
It writes WORKDIR/export (DICOM studies + clinical.csv of synthetic patients), WORKDIR/records
(verified TFRecord shards + manifest.json), trains rhpc, iMGrhpc and iMRrhpc in WORKDIR/runs,
fits the MRP ensemble and writes the report to WORKDIR/report. Run again, it resumes.
Variants (comma-separated):
  ':tiny'          a smoke run of a few minutes (CI);
  ':paper'         the paper's cohort size and split: 3,352 patients, 80% train and 20%
                   validation + test, test cohort A the complete patients of the test share;
                   training lengths of docs/experiments.md, "The paper-scale run";
  ':no_knowledge'  ablation, the fused models without the cross-modal knowledge predictor
  ':no_time'       ablation, without the time embedding.
An ablation reuses WORKDIR's export, records and rhpc run and writes its fused runs and report
beside the full models' (WORKDIR/<ablation>/runs, WORKDIR/<ablation>/report), so
  python -m mrp_jax.main --config configs/demo.py:paper --workdir runs/paper
  python -m mrp_jax.main --config configs/demo.py:paper,no_knowledge --workdir runs/paper
is the paper's knowledge-predictor ablation (Supplementary Figs. 10-14) on the same patients.
`--config.demo.mri_layout=monai` gives iMRrhpc's encoder the stride-1 stem (below).
"""

from pathlib import Path

import ml_collections

from configs import common

_HERE = Path(__file__).parent
# The paper-scale variant's steps per model (_paper_scale).
PAPER_STEPS = {"rhpc": 1790, "iMGrhpc": 1190, "iMRrhpc": 7150}


def get_config(arg=None):
  config = common.get_config()
  config.job = "demo"
  config.model.name = "iMRrhpc"
  config.demo = d = ml_collections.ConfigDict()
  # Synthetic patients (four are deliberately broken and get skipped). 1,600 so that the
  # mammogram encoder has enough labels to find half of its image's evidence (from 448 it found
  # a third) while the test split (~290 complete patients) can still rank models 0.02-0.05
  # AUROC apart (docs/experiments.md, "The demo's size" and "A test split that can rank the
  # models").
  d.patients = 1600
  d.geometry = "tiny"  # prepare's --geometry: full | demo | tiny (8 mm voxels: CPU minutes)
  d.workers = 2  # processes for generation and preparation
  d.shard_size = 8  # patients per record shard
  # Train, validation (calibration, MRP weights, thresholds), test quota: prepare keeps in
  # test the patients with a mammogram and all three MRI phases (the paper's cohort) and moves
  # the rest to validation: 958 / 350 / 288 patients at seed 0.
  d.split_fractions = (0.6, 0.1, 0.3)
  d.rhpc_init = True  # iMGrhpc / iMRrhpc start their rhpc encoder from the trained rhpc run
  # Per model: steps, global batch size and peak learning rate (docs/experiments.md, "Training
  # lengths of the demo" and "The demo's size": iMGrhpc's image-only AUROC still rose at 430
  # steps, 0.608 -> 0.624 at 900).
  d.train = ml_collections.ConfigDict({
      "rhpc": {"steps": 500, "batch_size": 32, "learning_rate": 3e-3},
      "iMGrhpc": {"steps": 900, "batch_size": 16, "learning_rate": 1e-3},
      "iMRrhpc": {"steps": 1800, "batch_size": 8, "learning_rate": 1e-3},
  })
  # iMRrhpc's encoder layout (models/resnet.py LAYOUTS); '' keeps configs/iMRrhpc.py's
  # ('resnet'). 'monai', the stride-1 stem, found 0.04-0.07 more of the MRI's evidence in the
  # paper-scale run at 8x the encoder's FLOPs (docs/experiments.md, "The paper-scale run").
  d.mri_layout = ""
  # The mammogram encoder's self-supervised start (the pretrain job on every split's
  # mammograms, labels unused); steps 0: iMGrhpc's encoder starts from scratch. Off: the
  # pretrained start found less of the mammogram's evidence than the scratch one, from the 448
  # labelled patients of the earlier 1,000-patient demo (image-only test AUROC 0.558 against
  # 0.582) and from the paper-scale run's 2,678 (0.659 against 0.726), and costs ~100 s
  # (docs/pretraining.md, "What the demo does now").
  d.pretrain = ml_collections.ConfigDict({"steps": 0, "batch_size": 64})
  # '' the full models; 'no_knowledge' or 'no_time': the paper's ablations of the fused models
  # (configs/common.py variants of the same names), in WORKDIR/<ablation>/{runs,report}.
  d.ablation = ""
  # The config file of each stage, loaded as the command line loads it.
  d.configs = ml_collections.ConfigDict(
      {name: str(_HERE / f"{name}.py")
       for name in ("rhpc", "iMGrhpc", "iMRrhpc", "evaluate", "pretrain")})
  # configs/evaluate.py fields for the report.
  d.evaluate = ml_collections.ConfigDict({
      "split": "test", "fit_split": "validation", "bootstrap_replicates": 1000,
      "explain_cases": 32, "explain_steps": 64, "explain_phase": "pre"})
  config.validation.batch_size = 8
  variants = [v.strip() for v in (arg or "").split(",") if v.strip()]
  if "paper" in variants:
    _paper_scale(d)
  for ablation in ("no_knowledge", "no_time"):
    if ablation in variants:
      d.ablation = ablation
  if "tiny" in variants:  # a smoke run: every stage, a few steps each
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
  own = ("tiny", "paper", "no_knowledge", "no_time")
  common.apply_variants(config, ",".join(v for v in variants if v not in own))
  return config


def _paper_scale(d: ml_collections.ConfigDict) -> None:
  """The paper's cohort: 3,352 patients; 80% train, 10% validation, 10% test, of which prepare
  keeps the complete patients in test (the paper's test cohort A) and moves the rest to
  validation. Steps: the measured paper-scale runs' (docs/experiments.md, "The paper-scale
  run"), set as x 5.96 those of the earlier 1,000-patient demo (450 train patients) so each
  model saw its patients as often as there: 21 passes for rhpc and iMRrhpc, 7 for iMGrhpc."""
  d.patients = 3352
  d.split_fractions = (0.8, 0.1, 0.1)
  for name, steps in PAPER_STEPS.items():
    d.train[name].steps = steps

