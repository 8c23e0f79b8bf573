"""Oracle AUROCs of a large synthetic cohort, drawn without rendering a single image.

    PYTHONPATH=. python docs/experiments/oracle_auroc.py --patients 20000 --seed 0

Draws the patients exactly as an export does (``export.generate_patient(images=False)``: the
table, the image latents, the plan of phases and mammograms), skips the deliberately broken
ones, and prints per model and phase the AUROC of the exact posterior P(pCR | what the model
sees) (input_pipeline/synthetic/oracle.py), with its standard error (Hanley-McNeil); and of
MRP's rule on perfect members ('MRP rule': W1 x P(oracle iMGrhpc) + W2 x P(oracle iMRrhpc),
the MRI's alone without a mammogram; W1 the grid's best on the whole cohort, 0.05 apart, as
the evaluate job's 'oracle MRP rule' chooses it on validation).
``--negative_control`` draws the cohort whose images carry no label evidence.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from sklearn.metrics import roc_auc_score

from input_pipeline import schema
from input_pipeline.synthetic import export, oracle


def draw(patients: int, seed: int, rates: export.Rates) -> list[tuple[int, dict]]:
  """[(label, patient_oracle)] of every usable patient; its 'MRP rule' entry is filled in by
  :func:`add_rule`."""
  out = []
  for index in range(patients):
    _, truth, _ = export.generate_patient("", seed, index, rates=rates, images=False)
    if truth["broken"]:
      continue
    draw_, latent, _ = export.draw_patient(seed, index, rates=rates)
    out.append((truth["label"], oracle.patient_oracle(
        draw_, latent, truth["phases"], truth["has_mammogram"], rates)))
    out[-1][1]["has_mammogram"] = truth["has_mammogram"]
  return out


def add_rule(cohort: list[tuple[int, dict]]) -> float:
  """Adds each patient's 'MRP rule' probability at the W1 whose mean AUROC over the phases is
  highest; returns that W1."""
  def mixed(o, phase, w):
    w = w if o["has_mammogram"] else 0.0
    return w * o["iMGrhpc"][phase] + (1 - w) * o["iMRrhpc"][phase]

  def score(w):
    return np.mean([roc_auc_score(*zip(*[(y, mixed(o, phase, w)) for y, o in cohort
                                         if phase in o["iMRrhpc"]]))
                    for phase in schema.PHASE_NAMES])
  best = max(np.round(np.arange(0, 1.0001, 0.05), 2), key=score)
  for _, o in cohort:
    o["MRP rule"] = {phase: mixed(o, phase, best) for phase in o["iMRrhpc"]}
  return float(best)


def hanley_mcneil(auc: float, positives: int, negatives: int) -> float:
  q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
  return math.sqrt((auc * (1 - auc) + (positives - 1) * (q1 - auc ** 2)
                    + (negatives - 1) * (q2 - auc ** 2)) / (positives * negatives))


def aurocs(cohort: list[tuple[int, dict]]) -> dict[tuple[str, str], tuple[float, float, int]]:
  """{(model, phase): (AUROC, its standard error, patients)}."""
  out = {}
  for model in (*oracle.MODELS, "MRP rule"):
    for phase in schema.PHASE_NAMES:
      pairs = [(y, o[model][phase]) for y, o in cohort if phase in o[model]]
      y, p = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
      auc = float(roc_auc_score(y, p))
      out[model, phase] = (auc, hanley_mcneil(auc, int(y.sum()), int((1 - y).sum())), len(y))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--patients", type=int, default=20_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--negative_control", action="store_true")
  args = parser.parse_args()
  rates = export.Rates(negative_control=args.negative_control)
  cohort = draw(args.patients, args.seed, rates)
  w_mg = add_rule(cohort)
  result = aurocs(cohort)
  print(f"{args.patients} patients, seed {args.seed}, negative control "
        f"{args.negative_control}: oracle AUROC (SE); MRP rule's W1 {w_mg:.2f}")
  print("model    " + "".join(f"{phase:>16}" for phase in schema.PHASE_NAMES))
  for model in (*oracle.MODELS, "MRP rule"):
    print(f"{model:<9}" + "".join(
        f"{result[model, phase][0]:>9.4f} ({result[model, phase][1]:.4f})"
        for phase in schema.PHASE_NAMES))


if __name__ == "__main__":
  main()
