"""The synthetic tumours' subtype phenotypes: drawn as declared, and shown by the mammogram."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import ndimage

from input_pipeline import schema
from input_pipeline.synthetic import cohort, export, images, phenotypes
from input_pipeline.synthetic.images import render_mammogram

SUBTYPES = [c.name for c in schema.BY_NAME["molecular_subtype"].categories]
LUMINAL, TNBC = SUBTYPES.index("Luminal A"), SUBTYPES.index("Triple negative")
SHAPE, SPACING_MM = (416, 320), 0.56  # rendered without the 2x work grid's resampling


def _within(observed: float, expected: float, se: float) -> bool:
  return abs(observed - expected) <= 4.5 * se


@pytest.mark.parametrize("subtype", range(len(SUBTYPES)))
def test_draws_follow_the_declared_distributions(subtype):
  """Margin and calcification frequencies, the core fraction's mean and the log irregularity's
  mean and sd match the subtype's group's parameters, per label, within sampling error."""
  group = phenotypes.GROUP_OF_SUBTYPE[subtype]
  n = 3000
  for label in (0, 1):
    rng = np.random.default_rng([subtype, label])
    drawn = [phenotypes.draw(rng, subtype, label) for _ in range(n)]
    for margin, p in zip(phenotypes.MARGINS, phenotypes.MARGIN_PROBABILITY[group]):
      assert _within(np.mean([d.margin == margin for d in drawn]), p,
                     math.sqrt(p * (1 - p) / n)), margin
    p = phenotypes.CALCIFICATION_PROBABILITY[group]
    assert _within(np.mean([d.calcifications for d in drawn]), p, math.sqrt(p * (1 - p) / n))
    a, b = phenotypes.CORE_BETA[group]
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    assert _within(np.mean([d.core_fraction for d in drawn]), a / (a + b), sd / math.sqrt(n))
    logs = np.log([d.irregularity for d in drawn])
    mean = math.log(phenotypes.IRREGULARITY_MEDIAN[group]) + phenotypes.IRREGULARITY_SHIFT[label]
    assert _within(logs.mean(), mean, phenotypes.IRREGULARITY_SD / math.sqrt(n))
    assert _within(logs.std(), phenotypes.IRREGULARITY_SD,
                   phenotypes.IRREGULARITY_SD / math.sqrt(2 * n))


def test_the_cohort_draws_each_patients_phenotype_from_its_true_subtype():
  """Luminal patients' masses are more often spiculated and more irregular than triple negative
  ones' in the exported latent truth (so the table's subtype is what the image shows)."""
  by_group: dict[int, list[cohort.ImageLatent]] = {0: [], 2: []}
  for index in range(1500):
    clinical, latent, _ = export.draw_patient(3, index)
    group = phenotypes.GROUP_OF_SUBTYPE[clinical.code("molecular_subtype")]
    if group in by_group:
      by_group[group].append(latent)
  spiculated = {g: np.mean([x.margin == "spiculated" for x in v]) for g, v in by_group.items()}
  assert spiculated[0] - spiculated[2] > 0.5 * (phenotypes.MARGIN_PROBABILITY[0, 2]
                                                - phenotypes.MARGIN_PROBABILITY[2, 2])
  medians = {g: np.median([x.irregularity for x in v]) for g, v in by_group.items()}
  # The label shifts both groups' medians by at most exp(0.225); their ratio is 2.5.
  assert medians[0] / medians[2] > phenotypes.IRREGULARITY_MEDIAN[0] / (
      phenotypes.IRREGULARITY_MEDIAN[2] * math.exp(0.45))


def _base_latent() -> cohort.ImageLatent:
  """A 15 mm mass in the middle of a fatty breast, clear of its edge."""
  latent = export.draw_patient(0, 20)[1]
  sign = 1.0 if latent.side == "left" else -1.0
  return dataclasses.replace(
      latent, gland_fraction=0.08, radius_mm=(15.0 / 1.2, 10.0, 5.0), margin="circumscribed",
      calcifications=False, mass_contrast=1.0,
      tumour_centre=(sign * latent.breast_offset, -0.4 * latent.breast_axes[1],
                     latent.breast_z))


def _rendered_irregularity(latent: cohort.ImageLatent, seed: int) -> float:
  """The RMS relative deviation from a circle of the mass outline in the rendered CC view.

  The mass alone is the difference of two renderings with the same draws, with and without
  its brightness; along 360 rays from its centre the outline is where that falls below half
  its plateau (the soft edge's midpoint)."""
  with_mass, truth = render_mammogram(np.random.default_rng(seed), latent, SHAPE, SPACING_MM,
                                      "CC")
  without, _ = render_mammogram(np.random.default_rng(seed),
                                dataclasses.replace(latent, mass_contrast=0.0), SHAPE,
                                SPACING_MM, "CC")
  mass = with_mass.astype(float) - without
  plateau = images.MASS_SIGNAL * latent.mass_contrast
  radius_px = truth["mass_radius_px"]
  # The outline lies within (1 + sqrt(10) x irregularity) radii (Cauchy-Schwarz on 5 harmonics).
  steps = np.arange(0.0, 6.0 * radius_px, 0.05)
  angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
  rows = truth["mass_centre_px"][0] + np.sin(angles)[:, None] * steps
  cols = truth["mass_centre_px"][1] + np.cos(angles)[:, None] * steps
  values = ndimage.map_coordinates(mass, [rows, cols], order=1).reshape(rows.shape)
  outside = np.argmax(values < plateau / 2, axis=1)
  assert np.all(outside > 0)
  radii = steps[outside]
  return float(radii.std() / radii.mean())


def test_the_mass_is_brighter_than_the_densest_gland():
  """A high-density mass: in a breast of density D (60% gland) nearly all of the mass (its
  10th percentile inside 0.8 radii) is brighter than nearly all of the breast away from it
  (its 99th percentile beyond 2.5 radii) by more than half the gland's own signal over fat
  (2,600 at full thickness), so its outline shows against dense tissue. A mass at the gland's
  own signal fails (by 9-890): where it lies over fat it is only as bright as the gland."""
  latent = dataclasses.replace(_base_latent(), gland_fraction=0.6, irregularity=0.05)
  for seed in (0, 1, 2):
    image, truth = render_mammogram(np.random.default_rng(seed), latent, SHAPE, SPACING_MM,
                                    "CC")
    rows, cols = np.indices(image.shape)
    distance = np.hypot(rows - truth["mass_centre_px"][0], cols - truth["mass_centre_px"][1])
    r0, r1, c0, c1 = truth["breast_box_px"]
    in_box = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1) & (image > 1000)
    mass = image[distance < 0.8 * truth["mass_radius_px"]]
    away = image[in_box & (distance > 2.5 * truth["mass_radius_px"])]
    assert np.percentile(mass, 10) - np.percentile(away, 99) > 1300, seed


@pytest.mark.parametrize("irregularity", [0.05, 0.12, 0.2])
def test_the_rendered_outline_shows_the_irregularity(irregularity):
  """The mass outline's RMS relative deviation from a circle is the latent irregularity: the
  half-plateau crossing sits on the outline to within a quarter of a pixel, 0.008 of a 32-pixel
  radius, so the statistic agrees to 0.015."""
  latent = dataclasses.replace(_base_latent(), irregularity=irregularity)
  for seed in (0, 1):
    assert _rendered_irregularity(latent, seed) == pytest.approx(irregularity, abs=0.015)


def test_luminal_masses_render_more_irregular_than_triple_negative():
  """Rendered outlines of masses drawn for the two groups (non-pCR, 25 each): the log ratio of
  the median statistics is the groups' log ratio of median irregularities, log 2.5, less at
  most 4 standard errors of a difference of two sample medians of log-normals (each
  1.2533 sd / sqrt(n))."""
  base = _base_latent()
  rng = np.random.default_rng(5)
  n = 25
  measured = {}
  for subtype in (LUMINAL, TNBC):
    measured[subtype] = np.median([_rendered_irregularity(dataclasses.replace(
        base, irregularity=phenotypes.draw(rng, subtype, 0).irregularity), seed)
        for seed in range(n)])
  expected = math.log(phenotypes.IRREGULARITY_MEDIAN[0] / phenotypes.IRREGULARITY_MEDIAN[2])
  se = math.sqrt(2) * 1.2533 * phenotypes.IRREGULARITY_SD / math.sqrt(n)
  assert math.log(measured[LUMINAL] / measured[TNBC]) > expected - 4 * se, measured
