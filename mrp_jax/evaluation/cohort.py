"""The patients of an evaluation: every split's records, the reported cohort, the reference.

* :func:`patient_table`: one row per patient of every split (pseudonym -> split, label, the
  images it has, its decoded rhpc values and the report's derived groups). The odds ratios
  (the paper's Table 2) use every split; the subgroup tables the reported one.
* :func:`reported_cohort`: the paper's test cohort (``"complete"``, the default): the reported
  split's patients that have every image the records hold at all (mammogram and Pre-, Mid-,
  Post-NAT MRI where the collection has them), so every phase and every model is measured on
  the same patients; or ``"per_phase"``: at each phase whoever has that phase's images.
* :func:`reference_patient`: the training split's most common value of every rhpc variable,
  the Integrated Gradients baseline (docs/design.md, "Explanations").
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from input_pipeline import clinical_table, records, schema
from input_pipeline.feed import pipeline
from input_pipeline.records import tfrecord
from input_pipeline.schema import UNKNOWN, Kind

COHORTS = ("complete", "per_phase")
IMAGES = ("mg", *schema.PHASE_NAMES)
GENES = ("brca1", "brca2", "chek2", "tp53")
DENSE, NON_DENSE = "dense (C, D)", "non-dense (A, B)"


def _derived(values: dict[str, Any]) -> dict[str, Any]:
  """The report's grouped variables from a patient's decoded rhpc values.

  age_group: <=50 / >50 (Table 2). mutation: the paper's gene-mutation subgroup: 'carrier' with
  any of BRCA1, BRCA2, CHEK2, TP53 mutated, 'none' with at least one known and none mutated,
  None (Unknown) when no gene was tested. density_group: dense (C, D) / non-dense (A, B), the
  contrast the paper draws. therapy: the received therapies joined by '+'.
  """
  age = values.get("age")
  genes = [values.get(gene) for gene in GENES]
  density = values.get("density")
  return {
      "age_group": None if age is None else ("<=50" if age <= 50 else ">50"),
      "mutation": ("carrier" if "mutated" in genes else
                   "none" if any(g is not None for g in genes) else None),
      "density_group": None if density is None else (DENSE if density in "CD" else NON_DENSE),
      "therapy": "+".join(values["therapy"]) if values.get("therapy") else None,
  }


def patient_table(records_dir: str | Path) -> dict[str, dict[str, Any]]:
  """Pseudonym -> {'split', 'label', 'images' (frozenset of IMAGES), 'codes' int32 [22],
  'values' float32 [22], every rhpc variable's decoded value and the derived groups}, for the
  patients of every split that has records, in manifest order."""
  manifest = records.read_manifest(records_dir)
  present = {shard["split"] for shard in manifest["shards"] if shard["records"] > 0}
  table = {}
  for split in (s for s in records.SPLITS if s in present):
    for path in pipeline.split_paths(records_dir, split):
      for _, data in tfrecord.iter_records(path):
        record = records.decode(data)
        parsed = clinical_table.ParsedRhpc(record.rhpc_codes[None], record.rhpc_values[None])
        values = parsed.decode(0)
        values.update(_derived(values))
        images = frozenset(record.mri) | ({"mg"} if record.mammograms else frozenset())
        table[record.patient_id] = {
            "split": split, "label": int(record.label), "images": frozenset(images),
            "codes": np.array(record.rhpc_codes), "values": np.array(record.rhpc_values),
            **values}
  return table


@dataclasses.dataclass(frozen=True)
class Cohort:
  """The reported patients.

  Attributes:
    kind: 'complete' or 'per_phase' (what was used; see ``note`` when it differs from asked).
    patients: the pseudonyms of a complete cohort (None for per_phase).
    images: the images a complete patient has.
    note: why 'per_phase' was used where 'complete' was asked ('' otherwise).
  """
  kind: str
  patients: frozenset[str] | None
  images: tuple[str, ...]
  note: str = ""

  def describe(self) -> str:
    if self.kind == "per_phase":
      return "per phase: at each phase every patient with that phase's images" + (
          f" ({self.note})" if self.note else "")
    return (f"complete: the {len(self.patients)} patients with "
            f"{' + '.join(_IMAGE_LABELS[i] for i in self.images)}, the same at every phase")

  def keep(self, patient_ids: np.ndarray) -> np.ndarray:
    """bool [N]: which of ``patient_ids`` belong to the cohort."""
    if self.patients is None:
      return np.ones(len(patient_ids), bool)
    return np.asarray([i in self.patients for i in patient_ids], bool)


_IMAGE_LABELS = {"mg": "mammogram", "pre": "Pre-NAT MRI", "mid": "Mid-NAT MRI",
                 "post": "Post-NAT MRI"}


def reported_cohort(table: Mapping[str, Mapping[str, Any]], split: str, kind: str) -> Cohort:
  """The cohort of ``split`` (see the module docstring). 'complete' falls back to 'per_phase'
  when fewer than one complete patient of each label would remain."""
  if kind not in COHORTS:
    raise ValueError(f"cohort must be one of {COHORTS}, got {kind!r}")
  collection = frozenset().union(*(row["images"] for row in table.values()))
  images = tuple(i for i in IMAGES if i in collection)
  if kind == "per_phase":
    return Cohort("per_phase", None, images)
  members = frozenset(pid for pid, row in table.items()
                      if row["split"] == split and row["label"] in (0, 1)
                      and collection <= row["images"])
  labels = {table[pid]["label"] for pid in members}
  if labels != {0, 1}:
    return Cohort("per_phase", None, images, note=(
        f"the {split} split has no complete patient of each label"))
  return Cohort("complete", members, images)


def reference_patient(table: Mapping[str, Mapping[str, Any]], split: str = "train"
                      ) -> clinical_table.ParsedRhpc:
  """One patient [1, 22] with every rhpc variable at its most common known value among the
  labelled patients of ``split``: the category (ties: the first declared), therapy's most
  common combination, age's median. A variable never known there stays Unknown."""
  rows = [row for row in table.values() if row["split"] == split and row["label"] in (0, 1)]
  if not rows:
    raise ValueError(f"no labelled {split} patient to take the reference values from")
  codes = np.stack([row["codes"] for row in rows])
  values = np.stack([row["values"] for row in rows])
  reference_codes = np.full((1, len(schema.VARIABLES)), UNKNOWN, np.int32)
  reference_values = np.full((1, len(schema.VARIABLES)), np.nan, np.float32)
  for j, var in enumerate(schema.VARIABLES):
    known = codes[:, j] != UNKNOWN
    if not known.any():
      continue
    if var.kind == Kind.CONTINUOUS:
      reference_codes[0, j] = 0
      reference_values[0, j] = np.median(values[known, j])
      continue
    counts = collections.Counter(int(c) for c in codes[known, j])
    reference_codes[0, j] = max(sorted(counts), key=lambda c: counts[c])
  return clinical_table.ParsedRhpc(reference_codes, reference_values)
