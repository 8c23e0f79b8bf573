"""Readers' probabilities (config.evaluate.readers): the CSV, and their scores beside the
models' (each reader, and their mean: the paper's '+R')."""

from __future__ import annotations

import collections
import csv
from typing import Any

import numpy as np

from input_pipeline import schema
from mrp_jax import console
from mrp_jax.evaluation.scores import Key, Scores

READERS_MEAN = "Readers (mean)"
COLUMNS = ("case", "phase", "reader", "probability")


def read_readers(path: str) -> dict[tuple[str, str], dict[str, float]]:
  """(reader, phase) -> {case: probability} from a CSV with case, phase, reader, probability.

  Phases may be written 'pre' or 'Pre-NAT' (any case). Raises ValueError naming the file and
  line of a missing column, an unknown phase or a probability outside [0, 1].
  """
  out: dict[tuple[str, str], dict[str, float]] = collections.defaultdict(dict)
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = set(COLUMNS) - set(reader.fieldnames or [])
    if missing:
      raise ValueError(f"{path}: missing columns {sorted(missing)} (need case, phase, reader, "
                       "probability)")
    for line, row in enumerate(reader, start=2):
      phase = row["phase"].strip().lower().replace("-nat", "")
      if phase not in schema.PHASE_NAMES:
        raise ValueError(f"{path}:{line}: phase {row['phase']!r} is not pre, mid or post")
      try:
        probability = float(row["probability"])
      except ValueError:
        raise ValueError(f"{path}:{line}: probability {row['probability']!r} is not a "
                         "number") from None
      if not 0.0 <= probability <= 1.0:
        raise ValueError(f"{path}:{line}: probability {probability} is not in [0, 1]")
      out[(f"Reader {row['reader'].strip()}", phase)][row["case"].strip()] = probability
  return out


def add_readers(scores: dict[Key, Scores], path: str, split: str,
                patients: dict[str, dict[str, Any]]) -> list[str]:
  """Adds each reader's scores on ``split`` (cases of other splits or unlabelled are left out,
  and counted) and, per phase with two or more readers, their mean on the cases every one of
  them read (READERS_MEAN, the paper's '+R'). Returns the labels added."""
  by_reader = read_readers(path)
  labels = set()
  for (reader, phase), cases in sorted(by_reader.items()):
    ids = np.asarray(sorted(c for c in cases if c in patients and patients[c]["split"] == split
                            and patients[c]["label"] in (0, 1)))
    if len(ids) < len(cases):
      console.current("evaluate").warn(
          f"{reader} {phase}: {len(cases) - len(ids)} of {len(cases)} cases are not labelled "
          f"{split} patients; left out")
    scores[Key(reader, split, phase)] = Scores(
        ids, np.asarray([patients[i]["label"] for i in ids], np.int64),
        np.asarray([cases[i] for i in ids], np.float64))
    labels.add(reader)
  for phase in schema.PHASE_NAMES:
    readers = [r for (r, ph) in by_reader if ph == phase]
    if len(readers) < 2:
      continue
    common = sorted(set.intersection(*(set(scores[Key(r, split, phase)].ids) for r in readers)))
    ids = np.asarray(common)
    scores[Key(READERS_MEAN, split, phase)] = Scores(
        ids, np.asarray([patients[i]["label"] for i in ids], np.int64),
        np.mean([[by_reader[(r, phase)][i] for i in ids] for r in readers], axis=0))
    labels.add(READERS_MEAN)
  return sorted(labels - {READERS_MEAN}) + sorted(labels & {READERS_MEAN})
