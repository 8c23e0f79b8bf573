"""Evaluation of trained runs: every phase, the MRP ensemble, statistics, explanations, report.

Command:
  python -m mrp_jax.main --config configs/evaluate.py --workdir runs/eval \
      --config.data.records=/data/records \
      --config.evaluate.runs=rhpc=runs/rhpc,iMGrhpc=runs/iMGrhpc,iMRrhpc=runs/iMRrhpc
Ablations are more runs with their own labels, e.g. ',iMRrhpc no time=runs/iMRrhpc_no_time'.
Writes WORKDIR/report/: predictions.csv, metrics.json, report.md, calibration.json,
mrp_ensemble.json, attributions.json, attribution_baseline.json, figures.
"""

import ml_collections

from configs import common


def get_config(arg=None):
  config = common.get_config()
  config.job = "evaluate"
  config.evaluate = ev = ml_collections.ConfigDict()
  ev.runs = ""  # LABEL=TRAIN_WORKDIR,... (labels rhpc, iMGrhpc, iMRrhpc; ablations any label)
  ev.split = "test"  # reported split
  # complete: the reported split's patients with every image the records hold (the paper's
  # test cohort: the same patients at every phase); per_phase: whoever has each phase's images
  ev.cohort = "complete"
  ev.phases = ("pre", "mid", "post")  # Pre: Pre data; Mid: Pre+Mid; Post: Pre+Post
  ev.batch_size = 8  # global, for predicting
  ev.fit_split = "validation"  # calibration, MRP weights and thresholds are chosen here
  # What MRP's weights combine: model (the paper's: each model's own probability; MRP's output
  # then calibrated on fit_split like each model's) or calibrated (each model's calibrated
  # probability; MRP's output used as it is). docs/ensemble.md
  ev.mrp_inputs = "model"
  ev.threshold = "youden"  # youden (on fit_split, per model and phase) or a probability
  ev.bootstrap_replicates = 1000
  ev.readers = ""  # optional CSV: case, phase, reader, probability
  ev.explain_cases = 32  # test patients explained by Integrated Gradients (0: none)
  ev.explain_steps = 32  # Integrated Gradients path steps (Gauss-Legendre)
  ev.explain_phase = "pre"  # phase explained (the paper's Fig. 4: Pre-NAT MRI)
  # signed: the paper's Fig. 4 (mean signed contribution, normalised across the attributes);
  # magnitude: mean per-case normalised |attribution|
  ev.explain_ranking = "signed"
  common.apply_variants(config, arg)
  return config
