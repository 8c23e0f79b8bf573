"""Writing the evaluation's outputs into WORKDIR/report/ (see evaluate.py), and the console's
closing lines that point at them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mrp_jax.evaluation import calibration, report
from mrp_jax.evaluation.scores import Scored
from mrp_jax.evaluation.tables import SUBGROUP_VARIABLES


def json_ready(value: Any) -> Any:
  """``value`` as JSON can hold it: numpy scalars and arrays as numbers and lists, NaN and
  infinities as null, sets sorted, dataclasses as dicts of their fields."""
  if isinstance(value, dict):
    return {str(k): json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_ready(v) for v in value]
  if isinstance(value, np.ndarray):
    return json_ready(value.tolist())
  if isinstance(value, (np.floating, float)):
    return None if not math.isfinite(float(value)) else float(value)
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (set, frozenset)):
    return sorted(value)
  if hasattr(value, "__dataclass_fields__"):
    return json_ready({k: getattr(value, k) for k in value.__dataclass_fields__})
  return value


def write(out_dir: Path, scored: Scored, result: dict[str, Any], attributions: dict[str, Any],
          baseline: dict[str, Any]) -> None:
  """Every file of the report folder; ``result`` is metrics.json's content (json_ready)."""
  if scored.weights is not None:
    scored.weights.save(out_dir / "mrp_ensemble.json")
  calibration.save(out_dir / "calibration.json", scored.calibration, scored.fit_split)
  (out_dir / "attribution_baseline.json").write_text(json.dumps(json_ready(baseline), indent=1))
  _write_predictions(out_dir / "predictions.csv", scored)
  (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))
  (out_dir / "attributions.json").write_text(json.dumps(json_ready(attributions), indent=1))
  report.write(out_dir, result, attributions, scored.reported)


def summary(out_dir: Path) -> list[str]:
  """The console's closing lines for a report folder: what is where, how to open it."""
  return [f"report: {out_dir / 'report.md'} (Markdown with its PNG figures beside it: open it "
          "in a Markdown viewer, e.g. VS Code's preview)",
          f"everything measured: {out_dir / 'metrics.json'}; per patient: "
          f"{out_dir / 'predictions.csv'}",
          f"for new patients: python -m mrp_jax.predict --evaluation {out_dir} --runs ..."]


def _write_predictions(path: Path, scored: Scored) -> None:
  """One row per patient, split, phase and label: the calibrated and the run's own
  probability, the label, whether the row is reported, and the subgroup variables."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["patient_id", "split", "phase", "model", "probability",
                     "uncalibrated_probability", "label", "reported", *SUBGROUP_VARIABLES])
    for key, s in sorted(scored.scores.items()):
      raw = scored.predictions.get(key)
      kept = (set(scored.reported[(key.label, key.phase)].ids) if key.split == scored.split
              else set())
      for k, (i, yi, pi) in enumerate(zip(s.ids, s.labels, s.probability)):
        info = scored.patients.get(i, {})
        writer.writerow([i, key.split, key.phase, key.label, f"{pi:.6f}",
                         "" if raw is None else f"{raw.probability[k]:.6f}", int(yi),
                         int(i in kept),
                         *[("" if info.get(v) is None else info.get(v))
                           for v in SUBGROUP_VARIABLES]])
