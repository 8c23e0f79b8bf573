"""The synthetic cohort's clinical table and latent image variables, drawn per patient.

This is the ground truth that later experiments are checked against. Every dependency between
the label, the rhpc variables and the images is listed here; nothing else carries signal.

Clinical (rhpc) draw, per patient:

* label: pCR with the paper's rate, 469 of 1,407 (Table 2).
* every categorical rhpc variable: its true category from P(category | label), built from the
  Table 2 counts of ``mrp_jax.schema.VARIABLES`` (``Category.pcr`` / ``.non_pcr``) plus 0.5
  smoothing, so no category has a pCR rate of exactly 0 or 1. Variables are independent given
  the label (naive-Bayes structure: no realism across variables, e.g. age and menopause are
  unrelated).
* label strength (:data:`LABEL_STRENGTH`): molecular subtype keeps Table 2's P(category | label)
  exactly; every other variable's per-label distribution is pulled towards its cohort marginal,
  P = marginal + 0.35 * (Table 2 conditional - marginal). Each category's overall frequency is
  still Table 2's; its pCR rate moves 65% of the way towards the cohort's 33%. Why: drawn
  independently at full strength, 22 variables compound to an AUROC of 0.93 (logistic
  regression, 6,000 draws), far above the 0.75-0.78 of the paper's rhpc model, and leave the
  images no room to add anything; real variables are correlated and carry much of the same
  evidence (BUILD_NOTES.md, "The demo and the paper's ordering"). At 0.35 the table's ceiling is
  0.86 and a logistic model trained on 160 patients reaches 0.78.
* age: the <=50 / >50 split per label of Table 2, then a truncated normal inside the bin
  (N(43, 6) on 24..50, N(59, 7) on 51..82), whole years.
* weight, age at menarche: the declared bin from its counts, then a value inside the bin.
* therapy: each therapy independently with its per-label Table 2 rate; a patient drawn with
  none is written as missing.
* missing values: P(Unknown | label) from Table 2's Unknown rows (:data:`UNKNOWN_COUNTS`), plus
  ``extra_missing`` (default 3%) independent of the label. Missing is a property of the written
  table only: the true category still drives the images (an Unknown laterality still has a side).

Latent image variables (:func:`draw_latent`), the signal the images carry beyond rhpc:

* tumour side = true laterality; tumour position in that breast from the true ICD-O location
  (upper = superior, inner = medial; C50.0 behind the nipple, C50.6 axillary tail; C50.8/9
  anywhere), at most 0.7 of the way from the breast centre to its surface.
* Pre-NAT radius from the true cT (1B 5-6.5 mm, 1C 5-10, 2 10-18, 3 17-25, 4x 15-25, others 5-25),
  times ``radius_scale`` (1.5 at the tiny geometry so 8 mm voxels still show it).
* Pre-NAT enhancement ratio (relative signal increase at peak): pCR N(1.6, 0.35), non-pCR
  N(1.35, 0.35), clipped to 0.6-2.5; heterogeneity (non-enhancing core radius fraction): pCR
  Beta(2, 5), non-pCR Beta(3, 4). Weak signal.
* Mid/Post-NAT radius factor (x Pre radius), strong but overlapping signal. Each patient follows
  one course: pCR 80% typical (Mid U(0.3, 0.7), Post U(0, 0.3)), 20% enhancing scar (Mid
  U(0.6, 0.95), Post U(0.3, 0.7)); non-pCR 75% typical (Mid U(0.7, 1.05), Post U(0.6, 1.0)),
  25% marked partial response (Mid U(0.35, 0.7), Post U(0.15, 0.6)). Enhancement factor
  = clip(0.3 + 0.7 * radius factor + N(0, 0.1), 0.1, 1.1).
* background parenchymal enhancement U(0.05, 0.4), x0.7 at Mid/Post (therapy lowers it),
  independent of the label.
* mammographic density (true category) sets the fibroglandular fraction of both the MRI breast
  and the mammogram: A 8%, B 20%, C 40%, D 60%.
* mammogram mass: spiculated margin with P 0.25 (pCR) vs 0.55 (non-pCR); contrast pCR
  N(1.1, 0.2), non-pCR N(1.0, 0.2). Weak signal.

Geometry (breast size, positioning, scanner, noise) is nuisance, independent of the label.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from input_pipeline import clinical_table, schema

PCR_RATE = 469 / 1407
SMOOTHING = 0.5
# Fraction of Table 2's label dependence each variable keeps (module docstring); default 0.35.
LABEL_STRENGTH: dict[str, float] = {"molecular_subtype": 1.0}
DEFAULT_LABEL_STRENGTH = 0.35
COHORT_COUNTS = (938, 469)  # (non-pCR, pCR) patients of Table 2

# Table 2 Unknown rows as (pCR, non-pCR); location and histology list no Unknown row but their
# categories sum one / two short of the cohort. The genes follow schema's assumed non-carriers
# (300 / 700): the rest of the cohort is untested.
UNKNOWN_COUNTS: dict[str, tuple[float, float]] = {
    "laterality": (0, 2), "focality": (26, 76), "molecular_subtype": (2, 1),
    "differentiation": (25, 88), "in_situ": (7, 2), "menopause": (1, 2), "cm": (4, 3),
    "location": (1, 2), "histology": (1, 2),
    **{gene: (469 - schema.BY_NAME[gene].categories[0].pcr - 300,
              938 - schema.BY_NAME[gene].categories[0].non_pcr - 700)
       for gene in ("brca1", "brca2", "chek2", "tp53")},
}

# Headers of clinical.csv, as a hospital table names them (all recognised by find_columns).
HEADERS: dict[str, str] = {
    "location": "Tumour location", "laterality": "Laterality", "focality": "Focality",
    "density": "Breast density", "molecular_subtype": "Molecular subtype",
    "histology": "Histology", "tumour_type": "Tumour type", "differentiation": "Grade",
    "in_situ": "In situ component", "age": "Age", "sex": "Sex", "weight": "Weight",
    "menarche_age": "Age at menarche", "menopause": "Menopausal status", "brca1": "BRCA1",
    "brca2": "BRCA2", "chek2": "CHEK2", "tp53": "TP53", "ct": "cT", "cn": "cN", "cm": "cM",
    "therapy": "Neoadjuvant therapy",
}
# Blank twice: the most common way a table leaves a value out.
MISSING_SPELLINGS = ("", "", "n/a", "NA", "unknown", "Unknown", "onbekend", "-", "?", "not known")
_AGE_BINS = {0: (43.0, 6.0, 24, 50), 1: (59.0, 7.0, 51, 82)}  # mean, sd, low, high (years)
_OPEN_BIN_RANGE = {"weight": (40.0, 125.0), "menarche_age": (9.0, 17.0)}
DENSITY_FRACTION = {"A": 0.08, "B": 0.20, "C": 0.40, "D": 0.60}


@dataclasses.dataclass(frozen=True)
class ClinicalDraw:
  """One patient's true rhpc values and which of them the table leaves blank.

  Attributes:
    label: 1 pCR, 0 non-pCR.
    codes: int [22] in ``schema.VARIABLES`` order: category index, therapy bit mask (0: none),
      0 for age.
    values: float [22]: years (age, menarche) or kg (weight); NaN elsewhere.
    missing: bool [22]: written as a missing token.
  """
  label: int
  codes: np.ndarray
  values: np.ndarray
  missing: np.ndarray

  def code(self, name: str) -> int:
    return int(self.codes[schema.VARIABLE_NAMES.index(name)])

  def category(self, name: str) -> str:
    return schema.BY_NAME[name].categories[self.code(name)].name


def table2_probabilities(var: schema.Variable) -> np.ndarray:
  """P(category | label) of Table 2, float [2 (non-pCR, pCR), K], smoothed counts.

  For age the two categories are <=50 and >50 years; for therapy (multi-label) each entry is
  the independent probability of receiving that therapy.
  """
  if var.kind == schema.Kind.CONTINUOUS:
    counts = np.array([[511.0, 427.0], [310.0, 159.0]])  # Table 2 age <=50 / >50
  else:
    counts = np.array([[c.non_pcr for c in var.categories], [c.pcr for c in var.categories]])
  if var.kind == schema.Kind.MULTILABEL:
    return (counts + SMOOTHING) / (np.array(COHORT_COUNTS)[:, None] + 2 * SMOOTHING)
  counts = counts + SMOOTHING
  return counts / counts.sum(axis=1, keepdims=True)


def category_probabilities(var: schema.Variable) -> np.ndarray:
  """P(category | label) the generator draws from, float [2 (non-pCR, pCR), K].

  Table 2's conditional pulled towards its marginal by the variable's label strength, so the
  marginal over the cohort is unchanged (see the module docstring).
  """
  table = table2_probabilities(var)
  marginal = PCR_RATE * table[1] + (1 - PCR_RATE) * table[0]
  strength = LABEL_STRENGTH.get(var.name, DEFAULT_LABEL_STRENGTH)
  return marginal + strength * (table - marginal)


def unknown_probability(var: schema.Variable) -> np.ndarray:
  """P(Unknown in Table 2 | label), float [2 (non-pCR, pCR)], before ``extra_missing``."""
  pcr, non_pcr = UNKNOWN_COUNTS.get(var.name, (0.0, 0.0))
  return np.array([non_pcr / COHORT_COUNTS[0], pcr / COHORT_COUNTS[1]])


def _value_in_bin(rng: np.random.Generator, var: schema.Variable, index: int) -> float:
  low, high = var.categories[index].bounds
  low = max(low, _OPEN_BIN_RANGE[var.name][0])
  high = min(high, _OPEN_BIN_RANGE[var.name][1] + 1)
  if var.name == "weight" and rng.random() < 0.4:
    return float(rng.integers(round(low * 10), round(high * 10))) / 10  # one decimal, in bin
  return float(rng.integers(int(low), int(math.ceil(high))))


# Per variable: (kind, binned, P(category | label) [2, K] (cumulative unless multi-label),
# P(Unknown | label) [2]), computed once: drawing runs per patient.
_DRAW_TABLE = tuple(
    (var.kind, var.is_binned,
     category_probabilities(var) if var.kind == schema.Kind.MULTILABEL else np.cumsum(
         category_probabilities(var), axis=1),
     unknown_probability(var))
    for var in schema.VARIABLES)


def draw_clinical(rng: np.random.Generator, extra_missing: float = 0.03) -> ClinicalDraw:
  """Draws one patient's label and true rhpc values (see the module docstring)."""
  label = int(rng.random() < PCR_RATE)
  n = len(schema.VARIABLES)
  codes = np.zeros(n, np.int64)
  values = np.full(n, np.nan)
  missing = np.zeros(n, bool)
  for j, (var, (kind, binned, probs, unknown)) in enumerate(zip(schema.VARIABLES, _DRAW_TABLE)):
    if kind == schema.Kind.MULTILABEL:
      codes[j] = sum(1 << i for i, p in enumerate(probs[label]) if rng.random() < p)
    else:
      index = min(int(np.searchsorted(probs[label], rng.random(), side="right")),
                  probs.shape[1] - 1)
      if kind == schema.Kind.CONTINUOUS:
        mean, sd, low, high = _AGE_BINS[index]
        age = round(rng.normal(mean, sd))
        while not low <= age <= high:  # truncated, not clipped: no pile-up at the bin edge
          age = round(rng.normal(mean, sd))
        values[j] = float(age)
      else:
        codes[j] = index
        if binned:
          values[j] = _value_in_bin(rng, var, index)
    missing[j] = (rng.random() < unknown[label] or rng.random() < extra_missing
                  or (kind == schema.Kind.MULTILABEL and codes[j] == 0))
  return ClinicalDraw(label, codes, values, missing)


def _round_trip_spellings() -> dict[str, list[list[str]]]:
  """Per variable and category, the canonical name and aliases that parse back to it."""
  table = {}
  for var in schema.VARIABLES:
    table[var.name] = [
        [s for s in (cat.name, *cat.aliases) if clinical_table.parse_value(var, s)[0] == (
            1 << i if var.kind == schema.Kind.MULTILABEL else i)]
        for i, cat in enumerate(var.categories)]
  return table


_SPELLINGS = _round_trip_spellings()
_THERAPY_JOINS = (" + ", "+", ", ", "; ", " and ", "/")


def _messy(rng: np.random.Generator, text: str) -> str:
  """Case and stray whitespace as typed by hand (normalisation makes them equivalent)."""
  case = rng.random()
  if case < 0.2:
    text = text.upper()
  elif case < 0.4:
    text = text.lower()
  elif case < 0.5:
    text = text.title()
  space = rng.random()
  if space < 0.05:
    text = " " + text
  elif space < 0.1:
    text = text + " "
  elif space < 0.13:
    text = text.replace(" ", "  ", 1)
  return text


def _spelling(rng: np.random.Generator, var_name: str, index: int) -> str:
  options = _SPELLINGS[var_name][index]
  # The canonical name 40% of the time, else any alias that parses back.
  text = options[0] if rng.random() < 0.4 or len(options) == 1 else options[
      int(rng.integers(1, len(options)))]
  return _messy(rng, text)


def _format_number(rng: np.random.Generator, var_name: str, value: float) -> str:
  style = rng.random()
  if var_name == "weight":
    text = f"{value:g}" if value.is_integer() else f"{value:.1f}"
    if style < 0.2:
      return text.replace(".", ",") + " kg"
    return text
  if style < 0.1:
    return f"{value:.0f} {'y' if var_name == 'age' else 'yrs'}"
  if style < 0.2:
    return f"{value:.1f}"
  return f"{value:.0f}"


def format_label(rng: np.random.Generator, label: int) -> str:
  """The pCR column as tables write it: mostly 1/0, sometimes yes/no or 1.0/0.0."""
  style = rng.random()
  if style < 0.1:
    return ("no", "yes")[label]
  if style < 0.15:
    return f"{label:.1f}"
  return str(label)


def format_clinical_row(rng: np.random.Generator, draw: ClinicalDraw,
                        patient_id: str) -> dict[str, str]:
  """The patient's clinical.csv row: patient_id, pCR and the 22 variables, written messily."""
  row = {"patient_id": patient_id, "pCR": format_label(rng, draw.label)}
  for j, var in enumerate(schema.VARIABLES):
    header = HEADERS[var.name]
    if draw.missing[j]:
      row[header] = MISSING_SPELLINGS[int(rng.integers(len(MISSING_SPELLINGS)))]
    elif var.kind == schema.Kind.CONTINUOUS or var.is_binned:
      row[header] = _format_number(rng, var.name, float(draw.values[j]))
    elif var.kind == schema.Kind.MULTILABEL:
      parts = [_spelling(rng, var.name, i) for i in range(var.num_categories)
               if draw.codes[j] >> i & 1]
      row[header] = _THERAPY_JOINS[int(rng.integers(len(_THERAPY_JOINS)))].join(parts)
    else:
      row[header] = _spelling(rng, var.name, int(draw.codes[j]))
  return row


def break_clinical_row(row: dict[str, str]) -> dict[str, str]:
  """The deliberately unusable row: a label that is not yet known and a spreadsheet error."""
  return {**row, "pCR": "pending", HEADERS["weight"]: "#VALUE!"}


# --------------------------------------------------------------------------------------------
# Latent image variables
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImageLatent:
  """The image-side truth of one patient, in the patient frame (mm).

  Patient frame: LPS axes, origin on the midline at the chest wall, at nipple height; y > 0 is
  the body, the breasts hang at y < 0. A study places it in scanner LPS with a shift.

  Attributes:
    side: 'left' or 'right' breast (x > 0 is the patient's left).
    breast_axes: semi-axes (x, y, z) of each half-ellipsoidal breast, mm.
    breast_offset: |x| of each breast centre, mm.
    breast_z: z of both breast centres, mm.
    gland_fraction: fibroglandular fraction of the breast volume.
    tumour_centre: (x, y, z) mm in the patient frame.
    radius_mm: per phase (pre, mid, post).
    enhancement: per phase, relative signal increase of the tumour at peak.
    heterogeneity: non-enhancing core radius / radius.
    bpe: per phase, background parenchymal enhancement at peak.
    spiculated: mammogram mass margin.
    mass_contrast: mammogram mass brightness factor.
  """
  side: str
  breast_axes: tuple[float, float, float]
  breast_offset: float
  breast_z: float
  gland_fraction: float
  tumour_centre: tuple[float, float, float]
  radius_mm: tuple[float, float, float]
  enhancement: tuple[float, float, float]
  heterogeneity: float
  bpe: tuple[float, float, float]
  spiculated: bool
  mass_contrast: float

  def to_json(self) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()}


# Normalised position (lateral, anterior, superior) ranges inside the breast per ICD-O code.
_LOCATION_BOX = {
    "C50.0": ((-0.1, 0.1), (0.6, 0.72), (-0.1, 0.1)),
    "C50.1": ((-0.15, 0.15), (0.2, 0.5), (-0.15, 0.15)),
    "C50.2": ((-0.55, -0.1), (0.1, 0.55), (0.1, 0.55)),
    "C50.3": ((-0.55, -0.1), (0.1, 0.55), (-0.55, -0.1)),
    "C50.4": ((0.1, 0.55), (0.1, 0.55), (0.1, 0.55)),
    "C50.5": ((0.1, 0.55), (0.1, 0.55), (-0.55, -0.1)),
    "C50.6": ((0.5, 0.65), (0.1, 0.3), (0.3, 0.5)),
}
_ANYWHERE = ((-0.5, 0.5), (0.1, 0.55), (-0.5, 0.5))
_RADIUS_BY_CT = {"1B": (5.0, 6.5), "1C": (5.0, 10.0), "2": (10.0, 18.0), "3": (17.0, 25.0),
                 "4A": (15.0, 25.0), "4B": (15.0, 25.0), "4D": (15.0, 25.0)}


def draw_latent(rng: np.random.Generator, clinical: ClinicalDraw,
                radius_scale: float = 1.0) -> ImageLatent:
  """Draws the image truth of one patient from its true rhpc values and label."""
  pcr = clinical.label == 1
  axes = (float(rng.uniform(55, 75)), float(rng.uniform(70, 120)), float(rng.uniform(55, 75)))
  offset = axes[0] + float(rng.uniform(10, 25))
  breast_z = float(rng.uniform(-10, 10))
  side = clinical.category("laterality")
  box = _LOCATION_BOX.get(clinical.category("location"), _ANYWHERE)
  position = np.array([rng.uniform(*r) for r in box])
  # Keep the centre well inside the half-ellipsoid (normalised radius <= 0.7).
  lateral, anterior, superior = (float(v) for v in position * min(
      1.0, 0.7 / np.linalg.norm(position)))
  sign = 1.0 if side == "left" else -1.0
  centre = (sign * (offset + lateral * axes[0]), -anterior * axes[1],
            breast_z + superior * axes[2])

  low, high = _RADIUS_BY_CT.get(clinical.category("ct"), (5.0, 25.0))
  radius = float(rng.uniform(low, high)) * radius_scale
  # One response course per patient: the typical one for its label, or the overlapping one.
  typical = rng.random() < (0.8 if pcr else 0.75)
  (mid_range, post_range) = {
      (True, True): ((0.3, 0.7), (0.0, 0.3)), (True, False): ((0.6, 0.95), (0.3, 0.7)),
      (False, True): ((0.7, 1.05), (0.6, 1.0)), (False, False): ((0.35, 0.7), (0.15, 0.6)),
  }[(pcr, typical)]
  mid, post = float(rng.uniform(*mid_range)), float(rng.uniform(*post_range))
  enhancement = float(np.clip(rng.normal(1.6 if pcr else 1.35, 0.35), 0.6, 2.5))
  factors = [float(np.clip(0.3 + 0.7 * f + rng.normal(0, 0.1), 0.1, 1.1)) for f in (mid, post)]
  bpe = float(rng.uniform(0.05, 0.4))
  return ImageLatent(
      side=side,
      breast_axes=axes,
      breast_offset=offset,
      breast_z=breast_z,
      gland_fraction=DENSITY_FRACTION[clinical.category("density")],
      tumour_centre=centre,
      radius_mm=(radius, radius * mid, radius * post),
      enhancement=(enhancement, enhancement * factors[0], enhancement * factors[1]),
      heterogeneity=float(rng.beta(2, 5) if pcr else rng.beta(3, 4)),
      bpe=(bpe, 0.7 * bpe, 0.7 * bpe),
      spiculated=bool(rng.random() < (0.25 if pcr else 0.55)),
      mass_contrast=float(np.clip(rng.normal(1.1 if pcr else 1.0, 0.2), 0.5, 1.6)),
  )
