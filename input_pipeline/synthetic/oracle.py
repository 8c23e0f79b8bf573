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
* ``iMGrhpc`` adds the mammogram's latent variables: its subtype phenotype (margin, outline
  irregularity, calcifications; input_pipeline/synthetic/phenotypes.py), whose irregularity
  also depends on the label given the subtype (the mammogram's own evidence), and what the
  image reveals of variables the table may leave Unknown: density (the fibroglandular
  fraction), cT (the mass radius) and the subtype (through the phenotype).
* ``iMRrhpc`` adds the MRI's latent variables up to the phase: the Pre-NAT enhancement ratio
  (log-normal, label-dependent); at Mid-NAT the tumour's radius factor Mid / Pre, at Post-NAT
  Post / Pre (each a mixture over response courses of uniform ranges, so the likelihood is a
  sum of box densities); and what the MRI reveals of density, cT (the Pre-NAT radius),
  laterality (the tumour's side), location (the tumour's position in the breast) and the
  subtype (the non-enhancing core fraction of its enhancement pattern). The follow-up's
  enhancement depends on the label only through the radius factor and adds nothing.
* ``MRP`` sees all of it (a latent both images show, e.g. the radius, is counted once; the two
  subtype phenotypes are independent given the subtype and multiply).

A table variable's images enter as P(latent | c, y). When the category c is written it is
that term alone (label-free for all links but the outline irregularity); when the table
leaves it Unknown the images tell it: sum_c P(c | y) P(latent | c, y), beside the table's
own P(missing | y). Under the export's negative control the images belong to another patient:
every model's posterior is the table's. Everything here is exact: no Monte Carlo.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import special

from input_pipeline import schema
from input_pipeline.synthetic import cohort, phenotypes

MODELS = ("rhpc", "iMGrhpc", "iMRrhpc", "MRP")
ORACLE_FILE = "synthetic_oracle.json"  # in a records folder made from a synthetic export
# Table variables each modality shows (density, cT, laterality, location through one latent
# that both modalities share; the subtype through each modality's own phenotype).
REVEALED = {"mammogram": ("density", "ct", "molecular_subtype"),
             "mri": ("density", "ct", "laterality", "location", "molecular_subtype")}
_J = {name: j for j, name in enumerate(schema.VARIABLE_NAMES)}


def table_log_likelihood(draw: cohort.ClinicalDraw, extra_missing: float) -> np.ndarray:
  """log P(the table as written | label), [2] (non-pCR, pCR), up to a label-free constant."""
  total = np.zeros(2)
  for j, var in enumerate(schema.VARIABLES):
    probs = cohort.category_probabilities(var)
    if var.kind == schema.Kind.MULTILABEL:
      written = (1 - cohort.missing_probability(var, extra_missing))
      if draw.missing[j]:
        none = np.prod(1 - probs, axis=1)  # P(no therapy | label): written missing too
        total += np.log(1 - written * (1 - none))
      else:
        bits = (int(draw.codes[j]) >> np.arange(var.num_categories)) & 1
        total += np.log(written) + np.sum(np.log(np.where(bits, probs, 1 - probs)), axis=1)
      continue
    missing = cohort.missing_probability(var, extra_missing)
    if draw.missing[j]:
      total += np.log(missing)
      continue
    category = cohort.age_bin(draw.values[j]) if var.kind == schema.Kind.CONTINUOUS else int(
        draw.codes[j])
    total += np.log(1 - missing) + np.log(probs[:, category])
  return total


def _latent_log_likelihood(name: str, category: int, latent: cohort.ImageLatent,
                           seen: frozenset[str]) -> np.ndarray:
  """log P(the latent variables that ``name`` drives, as the ``seen`` modalities show them |
  true category, label) [2]: a density, or 0 / -inf."""
  var = schema.BY_NAME[name]
  cat = var.categories[category].name
  if name == "molecular_subtype":
    return phenotypes.log_likelihood(latent.phenotype(), category, "mammogram" in seen,
                                     "mri" in seen)
  if name == "density":
    likelihood = float(cohort.DENSITY_FRACTION[cat] == latent.gland_fraction)
  elif name == "laterality":
    likelihood = float(cat == latent.side)
  elif name == "ct":
    low, high = (v * latent.radius_scale for v in cohort.radius_range(cat))
    likelihood = float(low <= latent.radius_mm[0] <= high) / (high - low)
  elif name == "location":
    box = cohort.location_box(cat)
    inside = all(lo <= p <= hi for p, (lo, hi) in zip(latent.tumour_position, box))
    likelihood = float(inside) / math.prod(hi - lo for lo, hi in box)
  else:
    raise ValueError(name)
  return np.full(2, math.log(likelihood) if likelihood > 0 else -math.inf)


def revealed_log_likelihood(name: str, draw: cohort.ClinicalDraw, latent: cohort.ImageLatent,
                            seen: frozenset[str] = frozenset({"mammogram", "mri"})
                            ) -> np.ndarray:
  """What the ``seen`` images add about variable ``name``, [2]: log P(latent | written
  category, label) when the table has it (0 for a label-free link), else
  log sum_c P(c | y) P(latent | c, y) - the table's own term is P(missing | y), kept there."""
  j = _J[name]
  if not draw.missing[j]:
    return _latent_log_likelihood(name, int(draw.codes[j]), latent, seen)
  probs = cohort.category_probabilities(schema.BY_NAME[name])
  terms = np.stack([_latent_log_likelihood(name, c, latent, seen)
                    for c in range(probs.shape[1])], axis=1)  # [2, K]
  with np.errstate(divide="ignore"):
    return special.logsumexp(np.log(probs) + terms, axis=1)


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
  """log P(the MRI's label-dependent latents up to ``phase`` that no table variable drives |
  label) [2]."""
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
                   has_mammogram: bool, rates: Any) -> dict[str, dict[str, float]]:
  """{model: {phase: P(pCR | what that model sees)}} for the phases the patient's MRI allows
  (Mid needs a Mid-NAT study, Post a Post-NAT one; rhpc and iMGrhpc are the same at each).

  ``rates``: the export's ``Rates`` (its ``extra_missing``; under ``negative_control`` the
  images belong to another draw and tell nothing of this patient: every model's posterior is
  the table's)."""
  table = table_log_likelihood(draw, rates.extra_missing)
  seen_by = {"rhpc": (), "iMGrhpc": ("mammogram",), "iMRrhpc": ("mri",),
             "MRP": ("mammogram", "mri")}
  out: dict[str, dict[str, float]] = {model: {} for model in MODELS}
  for phase_index, phase in enumerate(schema.PHASE_NAMES):
    if phase != "pre" and phase not in phases:
      continue
    for model, modalities in seen_by.items():
      seen = frozenset(m for m in modalities if (m == "mri" or has_mammogram)
                       and not rates.negative_control)
      out[model][phase] = posterior(table + image_log_likelihood(draw, latent, seen,
                                                                 phase_index))
  return out


def image_log_likelihood(draw: cohort.ClinicalDraw, latent: cohort.ImageLatent,
                         seen: frozenset[str], phase: int) -> np.ndarray:
  """log P(what the ``seen`` modalities show up to ``phase`` | the table as written, label)
  [2]: each revealed variable counted once, plus the MRI's own terms. With every table value
  missing in ``draw`` it is what the images alone tell of the label."""
  total = np.zeros(2)
  for name in sorted({v for m in seen for v in REVEALED[m]}):
    total += revealed_log_likelihood(name, draw, latent, seen)
  if "mri" in seen:
    total += mri_log_likelihood(latent, phase)
  return total


def export_oracle(export_dir: str | Path) -> dict[str, dict[str, dict[str, float]]]:
  """{source patient id: patient_oracle(...)} for every labelled patient of a synthetic export
  (redrawn from its seed: the generator is a function of (seed, patient index))."""
  from input_pipeline.synthetic import export  # pydicom and the writers: not for read()'s users

  truth = json.loads((Path(export_dir) / export.TRUTH_FILE).read_text())
  rates = export.Rates(**truth["rates"])
  out = {}
  for patient in truth["patients"]:
    if patient["broken"]:
      continue
    draw, latent, _ = export.draw_patient(truth["seed"], patient["index"], truth["geometry"],
                                          rates)
    out[patient["patient_id"]] = patient_oracle(draw, latent, patient["phases"],
                                                patient["has_mammogram"], rates)
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
