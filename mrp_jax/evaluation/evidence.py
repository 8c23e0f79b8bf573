"""What the models found against what the data holds: each model's gap to its oracle, and what
each fused model's image encoder finds on its own."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special

from mrp_jax.evaluation import statistics
from mrp_jax.evaluation.claims import ORDERING, Side, compare
from mrp_jax.evaluation.scores import ORACLE_RULE, Bootstrap, Cell, Scored, Scores

# The fused models and the image each one's encoder sees.
IMAGES = {"iMGrhpc": "mammogram", "iMRrhpc": "MRI"}


def oracle_gaps(reported: dict[Cell, Scores], phases: tuple[str, ...], members: dict[str, str],
                oracle_labels: list[str], bootstrap: Bootstrap) -> dict[str, list[dict[str, Any]]]:
  """Per phase, each trained model's AUROC against its oracle's (the Bayes-optimal P(pCR)
  given what that model sees) on the same patients: how much of what the data holds the
  model found; and MRP's against its rule's on perfect members (scores.ORACLE_RULE), where
  that oracle is present. Empty for real data."""
  out = {}
  for phase in phases:
    out[phase] = []
    for model, target in [(m, f"oracle {m}") for m in ORDERING] + [("MRP", ORACLE_RULE)]:
      label = members.get(model, model)
      if target in oracle_labels and (label, phase) in reported and (target, phase) in reported:
        gap = compare(f"{model} - oracle", phase, Side(label, reported[(label, phase)]),
                      Side(target, reported[(target, phase)]), bootstrap)
        out[phase].append({"model": label, "oracle": target, "n": gap["n"],
                           "auroc": gap["auroc_a"], "auroc_oracle": gap["auroc_b"],
                           "gap": gap["difference"]})
  return out


def _log_odds(p) -> np.ndarray:
  return special.logit(np.clip(np.asarray(p, np.float64), 1e-15, 1 - 1e-15))


def image_evidence(scored: Scored) -> dict[str, list[dict[str, Any]]]:
  """Per phase, what each fused model's image encoder finds on its own: the AUROC of its
  knowledge predictor's image-only P(pCR) on the reported patients who have the image.

  For records of a synthetic export, beside it the AUROC of what the image tells in truth: the
  log-odds the oracle of the fused model adds to the oracle rhpc's (the image's likelihood
  ratio, with what it reveals of variables the table leaves Unknown), on the same patients,
  and the paired bootstrap difference. A fused model's gain over rhpc can only come from its
  encoder's features, and this says how much of the label they carry on their own (through
  the knowledge predictor's head): where a fused model's gap to its oracle lies.
  """
  out: dict[str, list[dict[str, Any]]] = {}
  for phase in scored.phases:
    out[phase] = []
    for model, image in IMAGES.items():
      label = scored.members.get(model)
      p = scored.predictions.get((label, scored.split, phase))
      if p is None or p.image_probability is None:
        continue
      keep = scored.cohort.keep(p.patient_ids) & p.image_present
      alone = Scores(p.patient_ids[keep], p.label[keep], p.image_probability[keep])
      row = {"model": label, "image": image, "n": int(len(alone)),
             "auroc": statistics.auroc(alone.labels, alone.probability)}
      fused = scored.reported.get(Cell(f"oracle {model}", phase))
      table = scored.reported.get(Cell("oracle rhpc", phase))
      if fused is not None and table is not None:
        table_p = dict(zip(table.ids, table.probability))
        truth = fused.where(np.asarray([i in table_p for i in fused.ids], bool))
        evidence = (_log_odds(truth.probability)
                    - _log_odds(np.asarray([table_p[i] for i in truth.ids])))
        compared = compare(f"{model} image-only - oracle image evidence", phase,
                           Side(f"{label} image-only", alone),
                           Side(f"oracle {model} - oracle rhpc",
                                Scores(truth.ids, truth.labels, evidence)),
                           scored.bootstrap)
        row.update(n=compared["n"], auroc=compared["auroc_a"],
                   auroc_oracle_evidence=compared["auroc_b"], gap=compared["difference"])
      out[phase].append(row)
  return out
