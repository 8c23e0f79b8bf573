"""Evaluation of trained runs: every phase, the MRP ensemble, statistics, explanations, report.

Command:
  python -m mrp_jax.main --config configs/evaluate.py --workdir runs/eval \
      --config.data.records=/data/records \
      --config.evaluate.runs=rhpc=runs/rhpc,iMGrhpc=runs/iMGrhpc,iMRrhpc=runs/iMRrhpc
Ablations are more runs with their own labels, e.g. ',iMRrhpc no time=runs/iMRrhpc_no_time'.
Writes WORKDIR/report/: predictions.csv, metrics.json, report.md, mrp_ensemble.json, figures.
"""

import ml_collections

from configs import common


def get_config(arg=None):
  config = common.get_config()
  config.job = "evaluate"
  config.evaluate = ev = ml_collections.ConfigDict()
  ev.runs = ""  # LABEL=TRAIN_WORKDIR,... (labels rhpc, iMGrhpc, iMRrhpc; ablations any label)
  ev.split = "test"  # reported split
  ev.phases = ("pre", "mid", "post")  # Pre: Pre data; Mid: Pre+Mid; Post: Pre+Post
  ev.batch_size = 8  # global, for predicting
  ev.fit_split = "validation"  # MRP weights and the operating threshold are chosen here
  ev.threshold = "youden"  # youden (on fit_split, per model and phase) or a probability
  ev.bootstrap_replicates = 1000
  ev.readers = ""  # optional CSV: case, phase, reader, probability
  ev.explain_cases = 32  # test patients explained by Integrated Gradients (0: none)
  ev.explain_steps = 32  # Integrated Gradients path steps (Gauss-Legendre)
  ev.explain_phase = "post"  # phase at which attributions are computed
  common.apply_variants(config, arg)
  return config
