"""Image phenotypes of the synthetic cohort's tumours, tied to molecular subtype and to pCR.

Each subtype belongs to one phenotype group (:data:`GROUP_OF_SUBTYPE`): luminal (ER+/HER2-),
HER2-positive, triple negative. The group sets, per patient:

* mammogram margin (:data:`MARGINS`): circumscribed, indistinct or spiculated, drawn from
  :data:`MARGIN_PROBABILITY` (triple negative mostly circumscribed, luminal mostly spiculated);
* mammogram outline irregularity: the RMS relative deviation of the mass's outline from a circle
  (lobulation), log-normal; its median is the group's (:data:`IRREGULARITY_MEDIAN`: luminal most
  irregular, triple negative round) times exp(-0.225) for a pCR and exp(+0.225) for a non-pCR,
  log-sd 0.5 (:data:`IRREGULARITY_SD`). This is the mammogram's own pCR evidence: given the
  subtype, d' = 0.9, the strength the mass brightness had before; a shape statistic, which the
  per-image min-max scaling and the brightness / contrast augmentation leave as it is;
* mammogram calcifications (present or not) with the group's probability
  (:data:`CALCIFICATION_PROBABILITY`: HER2-positive most often);
* MRI enhancement pattern: the non-enhancing core's radius as a fraction of the tumour's
  (necrosis; a large core shows as rim enhancement), Beta-distributed with the group's
  parameters (:data:`CORE_BETA`: triple negative largest).

Margin, calcifications and the core depend on the label only through the subtype; the outline
irregularity depends on both. Where each comes from in the literature: docs/cohort.md.

:func:`log_likelihood` gives the exact log P(phenotype | subtype, label) the oracle needs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

from input_pipeline import schema

GROUPS = ("luminal", "HER2", "TNBC")
# Subtype category index (schema order) -> group index.
GROUP_OF_SUBTYPE = tuple(
    0 if name.startswith("Luminal") else 2 if name == "Triple negative" else 1
    for name in (c.name for c in schema.BY_NAME["molecular_subtype"].categories))
MARGINS = ("circumscribed", "indistinct", "spiculated")
MARGIN_PROBABILITY = np.array([[0.10, 0.30, 0.60],   # luminal
                               [0.25, 0.50, 0.25],   # HER2
                               [0.60, 0.35, 0.05]])  # TNBC
IRREGULARITY_MEDIAN = (0.25, 0.17, 0.10)
IRREGULARITY_SD = 0.5
IRREGULARITY_SHIFT = (0.225, -0.225)  # log shift for (non-pCR, pCR): pCR tumours are rounder
CALCIFICATION_PROBABILITY = (0.25, 0.60, 0.05)
CORE_BETA = ((2.0, 6.0), (3.0, 5.0), (5.0, 4.0))


@dataclasses.dataclass(frozen=True)
class Phenotype:
  """One tumour's subtype-linked appearance (module docstring)."""
  margin: str
  irregularity: float
  calcifications: bool
  core_fraction: float


def draw(rng: np.random.Generator, subtype: int, label: int) -> Phenotype:
  """Draws the phenotype of a tumour of subtype category ``subtype`` and pCR ``label``."""
  group = GROUP_OF_SUBTYPE[subtype]
  margin = MARGINS[int(rng.choice(len(MARGINS), p=MARGIN_PROBABILITY[group]))]
  log_irregularity = rng.normal(
      math.log(IRREGULARITY_MEDIAN[group]) + IRREGULARITY_SHIFT[label], IRREGULARITY_SD)
  return Phenotype(margin=margin, irregularity=float(math.exp(log_irregularity)),
                   calcifications=bool(rng.random() < CALCIFICATION_PROBABILITY[group]),
                   core_fraction=float(rng.beta(*CORE_BETA[group])))


def log_likelihood(phenotype: Phenotype, subtype: int, mammogram: bool, mri: bool
                   ) -> np.ndarray:
  """log P(what the seen modalities show of the phenotype | subtype, label) [2] (non-pCR,
  pCR), exact; the same label-free Jacobian 1 / irregularity is left out of both."""
  group = GROUP_OF_SUBTYPE[subtype]
  total = np.zeros(2)
  if mammogram:
    z = (math.log(phenotype.irregularity) - math.log(IRREGULARITY_MEDIAN[group])
         - np.asarray(IRREGULARITY_SHIFT)) / IRREGULARITY_SD
    calcified = CALCIFICATION_PROBABILITY[group]
    total += (-0.5 * z ** 2 - math.log(IRREGULARITY_SD)
              + math.log(MARGIN_PROBABILITY[group, MARGINS.index(phenotype.margin)])
              + math.log(calcified if phenotype.calcifications else 1 - calcified))
  if mri:
    total += float(stats.beta.logpdf(phenotype.core_fraction, *CORE_BETA[group]))
  return total
