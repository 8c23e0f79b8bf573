"""The synthetic cohort's truth: the Bayes-optimal pCR probability given what each model sees.

The generator (:mod:`input_pipeline.synthetic.cohort`) draws the label first and everything else
given it, so the posterior of each patient's label is exact: the prior odds times the
likelihood ratio of every piece of evidence a model has.

* ``rhpc`` sees the table as written: per variable its category (or bin) or Unknown. Variables
  are independent given the label, and missingness is drawn independently of the category, so
  the likelihood of a written category c is P(not missing | y) P(c | y), of Unknown
  P(missing | y) (therapy, multi-label: a patient with no therapy is written missing too).
  Values inside a bin (age in years, weight, menarche) are drawn independently of the label
  given the bin and add nothing.
* ``iMGrhpc`` adds the mammogram's latent variables: the mass contrast (log-normal, its median
  set by the label: the mammogram's own evidence) and what the image reveals of variables the
  table may leave Unknown: density (the fibroglandular fraction) and cT (the mass radius).
* ``iMRrhpc`` adds the MRI's latent variables up to the phase: the Pre-NAT enhancement ratio
  (log-normal, label-dependent); at Mid-NAT the tumour's radius factor Mid / Pre, at Post-NAT
  Post / Pre (each a mixture over response courses of uniform ranges, so the likelihood is a
  sum of box densities); and what the MRI reveals of density, cT (the Pre-NAT radius),
  laterality (the tumour's side) and location (the tumour's position in the breast). The
  follow-up's enhancement depends on the label only through the radius factor and adds
  nothing.
* ``MRP`` sees all of it (a revealed variable is counted once).

A revealed variable matters only when the table leaves it Unknown: then its likelihood is
P(missing | y) sum_c P(c | y) P(latent | c); when the category is written, P(latent | c) does
not depend on the label. Everything here is exact: no Monte Carlo.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from input_pipeline import schema
from input_pipeline.synthetic import cohort

MODELS = ("rhpc", "iMGrhpc", "iMRrhpc", "MRP")
ORACLE_FILE = "synthetic_oracle.json"  # in a records folder made from a synthetic export
_REVEALED = {"mammogram": ("density", "ct"), "mri": ("density", "ct", "laterality", "location")}
_J = {name: j for j, name in enumerate(schema.VARIABLE_NAMES)}


def _missing_probability(var: schema.Variable, extra_missing: float) -> np.ndarray:
  """P(written Unknown | label) [2] for a variable other than therapy."""
  unknown = cohort.unknown_probability(var)
  return 1 - (1 - unknown) * (1 - extra_missing)


def table_log_likelihood(draw: cohort.ClinicalDraw, extra_missing: float) -> np.ndarray:
  """log P(the table as written | label), [2] (non-pCR, pCR), up to a label-free constant."""
  total = np.zeros(2)
  for j, var in enumerate(schema.VARIABLES):
    probs = cohort.category_probabilities(var)
    if var.kind == schema.Kind.MULTILABEL:
      written = (1 - cohort.unknown_probability(var)) * (1 - extra_missing)
      if draw.missing[j]:
        none = np.prod(1 - probs, axis=1)  # P(no therapy | label): written missing too
        total += np.log(1 - written * (1 - none))
      else:
        bits = (int(draw.codes[j]) >> np.arange(var.num_categories)) & 1
        total += np.log(written) + np.sum(np.log(np.where(bits, probs, 1 - probs)), axis=1)
      continue
    missing = _missing_probability(var, extra_missing)
    if draw.missing[j]:
      total += np.log(missing)
      continue
    category = cohort.age_bin(draw.values[j]) if var.kind == schema.Kind.CONTINUOUS else int(
        draw.codes[j])
    total += np.log(1 - missing) + np.log(probs[:, category])
  return total


def _latent_likelihood(name: str, category: int, latent: cohort.ImageLatent) -> float:
  """P(the latent variable that ``name`` drives | true category), a density or 0/1."""
  var = schema.BY_NAME[name]
  cat = var.categories[category].name
  if name == "density":
    return float(cohort.DENSITY_FRACTION[cat] == latent.gland_fraction)
  if name == "laterality":
    return float(cat == latent.side)
  if name == "ct":
    low, high = (v * latent.radius_scale for v in cohort.radius_range(cat))
    return float(low <= latent.radius_mm[0] <= high) / (high - low)
  if name == "location":
    box = cohort.location_box(cat)
    inside = all(lo <= p <= hi for p, (lo, hi) in zip(latent.tumour_position, box))
    return float(inside) / math.prod(hi - lo for lo, hi in box)
  raise ValueError(name)


def revealed_log_likelihood(name: str, draw: cohort.ClinicalDraw, latent: cohort.ImageLatent
                            ) -> np.ndarray:
  """What an image adds about variable ``name``: 0 when the table has its category, else
  log sum_c P(c | y) P(latent | c) - the table's own term is P(missing | y), kept there."""
  j = _J[name]
  if not draw.missing[j]:
    return np.zeros(2)
  probs = cohort.category_probabilities(schema.BY_NAME[name])
  likelihood = np.array([_latent_likelihood(name, c, latent) for c in range(probs.shape[1])])
  return np.log(probs @ likelihood)


def _response_course_log_likelihood(factor: float, phase: int) -> np.ndarray:
  """log P(radius factor at ``phase`` (1 Mid, 2 Post) | label) [2]: a mixture of boxes."""
  out = np.zeros(2)
  for label in (0, 1):
    density = sum(p * float(r[phase - 1][0] <= factor <= r[phase - 1][1]) /
                  (r[phase - 1][1] - r[phase - 1][0])
                  for p, *r in cohort.RESPONSE_COURSES[label])
    out[label] = math.log(density) if density > 0 else -math.inf
  return out


def mri_log_likelihood(latent: cohort.ImageLatent, phase: int) -> np.ndarray:
  """log P(the MRI's label-dependent latents up to ``phase`` | label) [2]."""
  total = cohort.PRE_ENHANCEMENT.log_likelihood(latent.enhancement[0])
  if phase > 0:
    total = total + _response_course_log_likelihood(
        latent.radius_mm[phase] / latent.radius_mm[0], phase)
  return total


def posterior(log_likelihood: np.ndarray) -> float:
  """P(pCR) from the label's prior and log P(evidence | label) [2]."""
  logit = math.log(cohort.PCR_RATE / (1 - cohort.PCR_RATE)) + log_likelihood[1] - log_likelihood[0]
  return float(1 / (1 + math.exp(-logit))) if logit > -700 else 0.0


def patient_oracle(draw: cohort.ClinicalDraw, latent: cohort.ImageLatent, phases: list[str],
                   has_mammogram: bool, extra_missing: float) -> dict[str, dict[str, float]]:
  """{model: {phase: P(pCR | what that model sees)}} for the phases the patient's MRI allows
  (Mid needs a Mid-NAT study, Post a Post-NAT one; rhpc and iMGrhpc are the same at each)."""
  table = table_log_likelihood(draw, extra_missing)
  seen_by = {"rhpc": (), "iMGrhpc": ("mammogram",), "iMRrhpc": ("mri",),
             "MRP": ("mammogram", "mri")}
  out: dict[str, dict[str, float]] = {model: {} for model in MODELS}
  for phase_index, phase in enumerate(schema.PHASE_NAMES):
    if phase != "pre" and phase not in phases:
      continue
    for model, modalities in seen_by.items():
      available = [m for m in modalities if m == "mri" or has_mammogram]
      total = table.copy()
      for name in sorted({v for m in available for v in _REVEALED[m]}):
        total += revealed_log_likelihood(name, draw, latent)
      if "mammogram" in available:
        total += cohort.MG_CONTRAST.log_likelihood(latent.mass_contrast)
      if "mri" in available:
        total += mri_log_likelihood(latent, phase_index)
      out[model][phase] = posterior(total)
  return out


def export_oracle(export_dir: str | Path) -> dict[str, dict[str, dict[str, float]]]:
  """{source patient id: patient_oracle(...)} for every labelled patient of a synthetic export
  (redrawn from its seed: the generator is a function of (seed, patient index))."""
  from input_pipeline.synthetic import export

  truth = json.loads((Path(export_dir) / export.TRUTH_FILE).read_text())
  rates = export.Rates(**truth["rates"])
  out = {}
  for patient in truth["patients"]:
    if patient["broken"]:
      continue
    draw, latent, _ = export.draw_patient(truth["seed"], patient["index"], truth["geometry"],
                                          rates)
    out[patient["patient_id"]] = patient_oracle(draw, latent, patient["phases"],
                                                patient["has_mammogram"], rates.extra_missing)
  return out


def write_for_records(export_dir: str | Path, records_dir: str | Path,
                      pseudonym: Any) -> Path:
  """Writes ``records_dir/ORACLE_FILE``: the oracle keyed by each patient's pseudonym (through
  ``pseudonym(source id)``, the function prepare used), so no identifier is written."""
  oracle = export_oracle(export_dir)
  keyed = {pseudonym(source_id): value for source_id, value in oracle.items()}
  path = Path(records_dir) / ORACLE_FILE
  path.write_text(json.dumps(dict(sorted(keyed.items())), indent=1, sort_keys=True))
  return path


def read(records_dir: str | Path) -> dict[str, dict[str, dict[str, float]]] | None:
  """The oracle of a records folder made from a synthetic export, else None (real data)."""
  path = Path(records_dir) / ORACLE_FILE
  return json.loads(path.read_text()) if path.exists() else None
