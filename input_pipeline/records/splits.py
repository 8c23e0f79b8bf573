"""Train / validation / test by patient: stratified by label, seeded, and the paper's test cohort.

The paper (Methods, "Cohorts construction") split its patients at random 80 / 10 / 10 and then
kept as test cohort A only the test patients with a Pre-NAT mammogram and MRI at all three
phases, moving the rest of the test quota to validation, so that Pre-, Mid- and Post-NAT and
the mammogram and MRI models are compared on the same patients. :func:`assign_splits` does the
same (``test_cohort="complete"``, the default of ``prepare``):

1. a stratified random split of the source ids by label (:func:`stratified_split`);
2. a test patient stays in test only if it is *complete*: it has every image the collection
   has at all (mammogram, Pre-, Mid-, Post-NAT MRI; on I-SPY2, without mammograms, the three
   MRI phases; on Duke, Pre-NAT only, every patient with its MRI); the others go to
   validation. Train is exactly the random split's train.

Where the records do not allow it (no complete patient of one label among the test quota),
the random split is kept and :class:`Split` says so. The assignment is a function of the
source ids, the labels, the images each patient has and the seed only, never of input order,
pseudonyms or the machine.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from input_pipeline.ingestion.patient import PatientSource
from input_pipeline.records import SPLITS
from input_pipeline.schema import PHASE_NAMES

# The test cohort designs: the paper's (complete patients) and a plain stratified split.
TEST_COHORTS = ("complete", "random")
# Image names of a patient: the mammogram and the MRI phases.
IMAGES = ("mg", *PHASE_NAMES)


def images_of(source: PatientSource) -> frozenset[str]:
  """The images discovery found for a patient: 'mg' and the MRI phase names."""
  return frozenset({"mg"} if source.mammograms else set()) | frozenset(
      PHASE_NAMES[phase] for phase in source.mri)


def stratified_split(ids: Sequence[str], labels: Sequence[int], fractions: Sequence[float],
                     seed: int) -> dict[str, str]:
  """patient id -> split, by patient, per label, seeded (independent of input order)."""
  rng = np.random.default_rng(seed)
  out = {}
  for label in sorted(set(labels)):
    group = sorted(i for i, lab in zip(ids, labels) if lab == label)
    order = [group[k] for k in rng.permutation(len(group))]
    n_train = round(fractions[0] * len(order))
    n_val = round(fractions[1] * len(order))
    for k, pid in enumerate(order):
      out[pid] = SPLITS[0 if k < n_train else 1 if k < n_train + n_val else 2]
  return out


@dataclasses.dataclass(frozen=True)
class Split:
  """A split assignment and how its test cohort was made.

  Attributes:
    of: patient id -> 'train' / 'validation' / 'test'.
    test_cohort: 'complete' (test = the complete patients of the test quota) or 'random'.
    complete_images: the images a complete patient has (those the collection has at all).
    moved_to_validation: test-quota patients moved to validation for not being complete.
    note: why the random split was kept where 'complete' was asked for ('' otherwise).
  """
  of: dict[str, str]
  test_cohort: str
  complete_images: tuple[str, ...]
  moved_to_validation: int
  note: str = ""


def assign_splits(ids: Sequence[str], labels: Sequence[int],
                  images: Sequence[frozenset[str]], fractions: Sequence[float], seed: int,
                  test_cohort: str = "complete") -> Split:
  """Splits patients as the paper did (see the module docstring).

  Args:
    ids: source patient ids (unique).
    labels: 1 pCR / 0 non-pCR per patient.
    images: per patient the images it has (:data:`IMAGES` names, e.g. images_of(source)).
    fractions: train, validation, test quotas.
    seed: of the random split.
    test_cohort: 'complete' or 'random'.
  """
  if test_cohort not in TEST_COHORTS:
    raise ValueError(f"test_cohort must be one of {TEST_COHORTS}, got {test_cohort!r}")
  of = stratified_split(ids, labels, fractions, seed)
  collection = frozenset().union(*images) if images else frozenset()
  wanted = tuple(name for name in IMAGES if name in collection)
  if test_cohort == "random":
    return Split(of, "random", wanted, 0)
  has = dict(zip(ids, images))
  label_of = dict(zip(ids, labels))
  quota = sorted(i for i in ids if of[i] == "test")
  incomplete = [i for i in quota if not collection <= has[i]]
  labels_in_quota = {label_of[i] for i in quota}
  labels_lost = labels_in_quota - {label_of[i] for i in quota if i not in set(incomplete)}
  if labels_lost:  # a label would have no test patient left
    return Split(of, "random", wanted, 0, note=(
        f"no complete ({'+'.join(wanted)}) test patient with label {sorted(labels_lost)}; "
        "kept the random test split"))
  for i in incomplete:
    of[i] = "validation"
  return Split(of, "complete", wanted, len(incomplete))
