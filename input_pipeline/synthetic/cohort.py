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
* label strength (:data:`LABEL_STRENGTH`): each variable's per-label distribution is pulled
  towards its cohort marginal, P = marginal + strength * (Table 2 conditional - marginal):
  molecular subtype 0.7, every other variable 0.3. Each category's overall frequency stays
  Table 2's exactly; its pCR rate moves towards the cohort's 33%. Why: drawn independently at
  full strength, 22 variables compound to an AUROC of 0.93, far above the 0.75-0.78 of the
  paper's rhpc model, and leave the images no room; real variables are correlated and carry
  much of the same evidence. At these strengths the table's Bayes-optimal AUROC is 0.78.
* age: the <=50 / >50 split per label of Table 2, then a truncated normal inside the bin
  (N(43, 6) on 24..50, N(59, 7) on 51..82), whole years.
* weight, age at menarche: the declared bin from its counts, then a value inside the bin.
* therapy: each therapy independently with its per-label Table 2 rate; a patient drawn with
  none is written as missing.
* missing values: P(Unknown | label) from Table 2's Unknown rows (:data:`UNKNOWN_COUNTS`), plus
  ``extra_missing`` (default 3%) and, for variables a hospital's table often lacks and an
  image shows, :data:`EXTRA_UNKNOWN` (density 15%, molecular subtype 2%, cT 5%), both
  independent of the label. Missing is a property of the written table only: the true category
  still drives the images (an Unknown laterality still has a side, an Unknown subtype its
  phenotype).

Latent image variables (:func:`draw_latent`). Each modality carries evidence of its own,
independent of the table's and of the other modality's given the label:

* mammogram: the mass's outline irregularity (RMS relative deviation of its outline from a
  circle), log-normal around its subtype group's median, times exp(-0.225) for a pCR and
  exp(+0.225) for a non-pCR, log-sd 0.5 (d' = 0.9 given the subtype) (:mod:`phenotypes`): a
  shape, which per-image min-max scaling and brightness / contrast augmentation keep. The mass's
  brightness (log-normal, median 1, log-sd 0.2) carries no label.
* Pre-NAT MRI: the enhancement ratio (relative signal increase at peak), log-normal with median
  1.21 (non-pCR) or 1.74 (pCR), log-sd 0.3 (d' = 1.2) (:data:`PRE_ENHANCEMENT`).
* Mid / Post-NAT MRI: the tumour's radius factor (x Pre-NAT radius). Each patient follows one
  response course (:data:`RESPONSE_COURSES`): pCR 70% shrinking (Mid U(0.4, 0.8), Post
  U(0.15, 0.6)), 30% slower (Mid U(0.6, 1.0), Post U(0.4, 0.9)); non-pCR the same two courses
  the other way round. The follow-up's enhancement = Pre x clip(0.3 + 0.7 x radius factor +
  N(0, 0.1), 0.1, 1.1): it depends on the label only through the radius.

What the images show of the true rhpc values (the table may leave them Unknown, the image
still shows them):

* tumour side = true laterality; tumour position uniform in a box of the breast given by the
  true ICD-O location (:func:`location_box`: upper = superior, inner = medial; C50.0 behind the
  nipple, C50.6 the axillary tail; C50.8 / 9 anywhere), within 0.7 of the breast's semi-axes.
* Pre-NAT radius uniform in the true cT's range (:func:`radius_range`: 1B 5-6.5 mm, 1C 5-10,
  2 10-18, 3 17-25, 4x 15-25, others 5-25), times ``radius_scale`` (1.5 at the tiny geometry so
  8 mm voxels still show it); the mammogram's mass has 1.2 x that radius.
* mammographic density (true category) sets the fibroglandular fraction of both the MRI breast
  and the mammogram: A 8%, B 20%, C 40%, D 60% (the texture of the breast).
* molecular subtype (true category), through its phenotype group (luminal, HER2-positive,
  triple negative; :mod:`phenotypes`): the mammogram's margin (circumscribed / indistinct /
  spiculated), outline irregularity and calcifications, the MRI's non-enhancing core fraction
  (rim enhancement).

Label-free: background parenchymal enhancement U(0.05, 0.4) (x0.7 at Mid/Post).

The Bayes-optimal AUROC of what each model sees (input_pipeline/synthetic/oracle.py, exact
posteriors; mean of seeds 0-2, 20,000 patients each, docs/experiments/oracle_auroc.py): rhpc
0.77; iMGrhpc 0.825; iMRrhpc 0.871 / 0.885 / 0.888 (Pre / Mid / Post); MRP 0.898 / 0.908 /
0.911: the paper's ordering (table 0.77; + mammogram +0.05; + MRI +0.10 to +0.12; all +0.13 to
+0.14). docs/cohort.md has them per seed, beside the cohort without phenotypes.

Geometry (breast size, positioning, scanner, noise) is nuisance, independent of the label.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from input_pipeline import clinical_table, schema
from input_pipeline.synthetic import phenotypes

PCR_RATE = 469 / 1407
SMOOTHING = 0.5
# Fraction of Table 2's label dependence each variable keeps (module docstring); default 0.35.
LABEL_STRENGTH: dict[str, float] = {"molecular_subtype": 0.7}
DEFAULT_LABEL_STRENGTH = 0.3
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
# Extra Unknown rates of variables a hospital's table often lacks and an image shows (a design
# choice, independent of the label; docs/cohort.md): density is a radiology report's field.
EXTRA_UNKNOWN: dict[str, float] = {"density": 0.15, "molecular_subtype": 0.02, "ct": 0.05}
_AGE_BINS = {0: (43.0, 6.0, 24, 50), 1: (59.0, 7.0, 51, 82)}  # mean, sd, low, high (years)


def age_bin(years: float) -> int:
  """The Table 2 age group of an age: 0 for <= 50 years, 1 for older."""
  return int(years > _AGE_BINS[0][3])
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


def missing_probability(var: schema.Variable, extra_missing: float) -> np.ndarray:
  """P(written Unknown | label) [2] of a variable other than therapy: Table 2's Unknown rate,
  ``extra_missing`` and the variable's :data:`EXTRA_UNKNOWN`, each drawn independently."""
  return 1 - (1 - unknown_probability(var)) * (1 - extra_missing) * (
      1 - EXTRA_UNKNOWN.get(var.name, 0.0))


def _value_in_bin(rng: np.random.Generator, var: schema.Variable, index: int) -> float:
  low, high = var.categories[index].bounds
  low = max(low, _OPEN_BIN_RANGE[var.name][0])
  high = min(high, _OPEN_BIN_RANGE[var.name][1] + 1)
  if var.name == "weight" and rng.random() < 0.4:
    return float(rng.integers(round(low * 10), round(high * 10))) / 10  # one decimal, in bin
  return float(rng.integers(int(low), int(math.ceil(high))))


# Per variable: (kind, binned, P(category | label) [2, K] (cumulative unless multi-label),
# P(Unknown | label) [2], extra Unknown rate), computed once: drawing runs per patient.
_DRAW_TABLE = tuple(
    (var.kind, var.is_binned,
     category_probabilities(var) if var.kind == schema.Kind.MULTILABEL else np.cumsum(
         category_probabilities(var), axis=1),
     unknown_probability(var), EXTRA_UNKNOWN.get(var.name, 0.0))
    for var in schema.VARIABLES)


def draw_clinical(rng: np.random.Generator, extra_missing: float = 0.03) -> ClinicalDraw:
  """Draws one patient's label and true rhpc values (see the module docstring)."""
  label = int(rng.random() < PCR_RATE)
  n = len(schema.VARIABLES)
  codes = np.zeros(n, np.int64)
  values = np.full(n, np.nan)
  missing = np.zeros(n, bool)
  for j, (var, (kind, binned, probs, unknown, extra)) in enumerate(
      zip(schema.VARIABLES, _DRAW_TABLE)):
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
                  or (extra > 0 and rng.random() < extra)
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
class LabelledLogNormal:
  """A positive latent whose logarithm is Gaussian given the label: log x ~ N(log median, sd).

  Its evidence about the label is exact: the log likelihood ratio is that of two Gaussians in
  log x (the Jacobian 1/x is the same for both labels). Separation d' = |log ratio of the
  medians| / sd.
  """
  median: tuple[float, float]  # (non-pCR, pCR)
  sd: float

  def draw(self, rng: np.random.Generator, label: int) -> float:
    return float(math.exp(rng.normal(math.log(self.median[label]), self.sd)))

  def log_likelihood(self, x: float) -> np.ndarray:
    """log p(x | label) [2] (non-pCR, pCR), up to a label-free constant."""
    z = (math.log(x) - np.log(np.asarray(self.median))) / self.sd
    return -0.5 * z ** 2


# The images' own evidence (module docstring; strengths chosen from the oracle's AUROCs,
# input_pipeline/synthetic/oracle.py): the mammogram's outline irregularity (phenotypes.py),
# d' = 0.9 given the subtype; the Pre-NAT enhancement ratio, d' = 1.2.
PRE_ENHANCEMENT = LabelledLogNormal(median=(1.45 * math.exp(-0.18), 1.45 * math.exp(0.18)),
                                    sd=0.3)
MASS_CONTRAST_SD = 0.2  # log-sd of the mammogram mass's brightness factor (median 1, no label)
# Response courses per label: (probability, Mid/Pre radius range, Post/Pre radius range). Each
# label mostly follows its own course and sometimes the other's, so the ranges overlap.
RESPONSE_COURSES: dict[int, tuple[tuple[float, tuple[float, float], tuple[float, float]], ...]] = {
    1: ((0.7, (0.4, 0.8), (0.15, 0.6)), (0.3, (0.6, 1.0), (0.4, 0.9))),
    0: ((0.7, (0.6, 1.0), (0.4, 0.9)), (0.3, (0.4, 0.8), (0.15, 0.6))),
}


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
    tumour_position: (lateral, anterior, superior) inside the breast, in units of its semi-axes
      (lateral > 0 away from the midline).
    tumour_centre: (x, y, z) mm in the patient frame.
    radius_scale: the geometry's factor on every tumour radius.
    radius_mm: per phase (pre, mid, post).
    enhancement: per phase, relative signal increase of the tumour at peak.
    heterogeneity: non-enhancing core radius / radius (the phenotype's core fraction).
    bpe: per phase, background parenchymal enhancement at peak.
    margin: mammogram mass margin (phenotypes.MARGINS).
    irregularity: RMS relative deviation of the mammogram mass's outline from a circle.
    calcifications: the mammogram shows calcifications around the mass.
    mass_contrast: mammogram mass brightness factor (no label evidence).
  """
  side: str
  breast_axes: tuple[float, float, float]
  breast_offset: float
  breast_z: float
  gland_fraction: float
  tumour_position: tuple[float, float, float]
  tumour_centre: tuple[float, float, float]
  radius_scale: float
  radius_mm: tuple[float, float, float]
  enhancement: tuple[float, float, float]
  heterogeneity: float
  bpe: tuple[float, float, float]
  margin: str
  irregularity: float
  calcifications: bool
  mass_contrast: float

  def phenotype(self) -> phenotypes.Phenotype:
    return phenotypes.Phenotype(self.margin, self.irregularity, self.calcifications,
                                self.heterogeneity)

  def to_json(self) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in dataclasses.asdict(self).items()}


# Normalised position (lateral, anterior, superior) ranges inside the breast per ICD-O code
# (upper = superior, inner = medial; C50.0 behind the nipple, C50.6 the axillary tail; C50.8 / 9
# anywhere). Every box lies inside the normalised radius 0.7, well within the breast, so the
# position is uniform in its box and the box's volume is its density's normaliser.
_LOCATION_BOX = {
    "C50.0": ((-0.07, 0.07), (0.45, 0.55), (-0.07, 0.07)),
    "C50.1": ((-0.1, 0.1), (0.15, 0.38), (-0.1, 0.1)),
    "C50.2": ((-0.4, -0.07), (0.07, 0.4), (0.07, 0.4)),
    "C50.3": ((-0.4, -0.07), (0.07, 0.4), (-0.4, -0.07)),
    "C50.4": ((0.07, 0.4), (0.07, 0.4), (0.07, 0.4)),
    "C50.5": ((0.07, 0.4), (0.07, 0.4), (-0.4, -0.07)),
    "C50.6": ((0.45, 0.55), (0.07, 0.2), (0.2, 0.35)),
}
_ANYWHERE = ((-0.38, 0.38), (0.07, 0.4), (-0.38, 0.38))
_RADIUS_BY_CT = {"1B": (5.0, 6.5), "1C": (5.0, 10.0), "2": (10.0, 18.0), "3": (17.0, 25.0),
                 "4A": (15.0, 25.0), "4B": (15.0, 25.0), "4D": (15.0, 25.0)}


def location_box(location: str) -> tuple[tuple[float, float], ...]:
  """The normalised box a tumour of ICD-O ``location`` lies in (uniformly)."""
  return _LOCATION_BOX.get(location, _ANYWHERE)


def radius_range(ct: str) -> tuple[float, float]:
  """Pre-NAT tumour radius range (mm, before the geometry's scale) of clinical stage ``ct``."""
  return _RADIUS_BY_CT.get(ct, (5.0, 25.0))


def draw_latent(rng: np.random.Generator, clinical: ClinicalDraw,
                radius_scale: float = 1.0) -> ImageLatent:
  """Draws the image truth of one patient from its true rhpc values and label."""
  label = clinical.label
  phenotype = phenotypes.draw(rng, clinical.code("molecular_subtype"), label)
  axes = (float(rng.uniform(55, 75)), float(rng.uniform(70, 120)), float(rng.uniform(55, 75)))
  offset = axes[0] + float(rng.uniform(10, 25))
  breast_z = float(rng.uniform(-10, 10))
  side = clinical.category("laterality")
  position = tuple(float(rng.uniform(*r)) for r in location_box(clinical.category("location")))
  lateral, anterior, superior = position
  sign = 1.0 if side == "left" else -1.0
  centre = (sign * (offset + lateral * axes[0]), -anterior * axes[1],
            breast_z + superior * axes[2])

  radius = float(rng.uniform(*radius_range(clinical.category("ct")))) * radius_scale
  courses = RESPONSE_COURSES[label]
  _, mid_range, post_range = courses[int(rng.choice(len(courses), p=[c[0] for c in courses]))]
  mid, post = float(rng.uniform(*mid_range)), float(rng.uniform(*post_range))
  enhancement = PRE_ENHANCEMENT.draw(rng, label)
  # The follow-up's enhancement follows its size (the label acts through the radius factor).
  factors = [float(np.clip(0.3 + 0.7 * f + rng.normal(0, 0.1), 0.1, 1.1)) for f in (mid, post)]
  bpe = float(rng.uniform(0.05, 0.4))
  return ImageLatent(
      side=side,
      breast_axes=axes,
      breast_offset=offset,
      breast_z=breast_z,
      gland_fraction=DENSITY_FRACTION[clinical.category("density")],
      tumour_position=position,
      tumour_centre=centre,
      radius_scale=radius_scale,
      radius_mm=(radius, radius * mid, radius * post),
      enhancement=(enhancement, enhancement * factors[0], enhancement * factors[1]),
      heterogeneity=phenotype.core_fraction,
      bpe=(bpe, 0.7 * bpe, 0.7 * bpe),
      margin=phenotype.margin,
      irregularity=phenotype.irregularity,
      calcifications=phenotype.calcifications,
      mass_contrast=float(math.exp(rng.normal(0.0, MASS_CONTRAST_SD))),
  )
