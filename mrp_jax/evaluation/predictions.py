"""Stages 1-3 of the evaluation: every run's predictions, their calibration, MRP's scores, and
for a synthetic export the oracles' scores."""

from __future__ import annotations

import collections
import dataclasses
import itertools
from pathlib import Path

import numpy as np

from input_pipeline import cli
from input_pipeline.feed import pipeline
from input_pipeline.synthetic import oracle as synthetic_oracle
from mrp_jax import console
from mrp_jax.core import inference, runs
from mrp_jax.evaluation import calibration, ensemble
from mrp_jax.evaluation.scores import ORACLE_RULE, Key, Scores


def predict_splits(loaded: list[runs.Run], records_dir: Path, splits: tuple[str, ...],
                   phases: tuple[str, ...], batch_size: int, mesh
                   ) -> dict[Key, inference.Predictions]:
  """Every eligible patient's prediction by every run, per split and phase."""
  predictions = {}
  bar = cli.progress(total=len(loaded) * len(splits) * len(phases),
                     desc="predict (run x split x phase)", unit="set")
  for run_ in loaded:
    for split in splits:
      paths = pipeline.split_paths(records_dir, split)
      for phase in phases:
        predictions[Key(run_.label, split, phase)] = inference.predict(
            run_.eval_step, run_.state, mesh, paths, model_name=run_.model_name, phase=phase,
            batch_size=batch_size)
        bar.update(1)
  bar.close()
  for split in splits:
    counts = []
    for phase in phases:
      n = sorted({len(predictions[Key(r.label, split, phase)].label) for r in loaded})
      counts.append(f"{phase} {n[0]}" + (f"-{n[-1]}" if len(n) > 1 else ""))
    console.current("evaluate").stage(f"predicted {split} with {len(loaded)} runs: patients "
                                      f"per phase {', '.join(counts)}")
  return predictions


def calibrate(predictions: dict[Key, inference.Predictions], fit_split: str,
              phases: tuple[str, ...]) -> dict[str, dict[str, calibration.PlattMap]]:
  """run label -> phase -> the Platt map fitted on the fit split's logits."""
  maps: dict[str, dict[str, calibration.PlattMap]] = collections.defaultdict(dict)
  for key, p in predictions.items():
    if key.split == fit_split and key.phase in phases:
      maps[key.label][key.phase] = calibration.fit_platt(p.label, p.logit)
  return dict(maps)


def calibrated(predictions: dict[Key, inference.Predictions],
               maps: dict[str, dict[str, calibration.PlattMap]]) -> dict[Key, Scores]:
  """Every prediction's calibrated scores (the Platt map of its run and phase)."""
  return {key: Scores(p.patient_ids, p.label, maps[key.label][key.phase](p.logit))
          for key, p in predictions.items()}


def mrp_members(loaded: list[runs.Run]) -> dict[str, str]:
  """Model name -> the run label MRP uses: the run labelled with the model's name, else the
  first run of that model (ablations such as 'iMRrhpc no time' are reported beside)."""
  by_model: dict[str, str] = {}
  for r in loaded:
    if r.label == r.model_name or r.model_name not in by_model:
      by_model[r.model_name] = r.label
  return by_model


@dataclasses.dataclass(frozen=True)
class Ensemble:
  """What :func:`add_mrp` fits MRP on: the MRP members (:func:`mrp_members`), the split the
  weights (and with 'model' inputs MRP's Platt maps) are fitted on, and what the weights
  combine (ensemble.INPUTS; config.evaluate.mrp_inputs)."""
  members: dict[str, str]
  fit_split: str
  inputs: str


def add_mrp(scores: dict[Key, Scores], predictions: dict[Key, inference.Predictions],
            maps: dict[str, dict[str, calibration.PlattMap]], how: Ensemble
            ) -> ensemble.EnsembleWeights | None:
  """Fits the MRP weights on the fit split and adds MRP's scores for every split and phase the
  runs predicted; None without both an iMGrhpc and an iMRrhpc run.

  With 'calibrated' inputs the weights combine the members' calibrated probabilities (their
  scores) and MRP's scores are the combination. With 'model' inputs they combine the members'
  own probabilities; the combination is MRP's own output, added to ``predictions`` as label
  'MRP' (its logit is ensemble.logit of it), and MRP's scores are it through a Platt map per
  phase fitted on the fit split, added to ``maps`` as 'MRP'.
  """
  members = how.members
  if "iMGrhpc" not in members or "iMRrhpc" not in members:
    return None
  mg, mr = members["iMGrhpc"], members["iMRrhpc"]
  splits = tuple(dict.fromkeys(key.split for key in predictions))
  phases = tuple(dict.fromkeys(key.phase for key in predictions))

  def arrays(split, phase):
    a, b = predictions[Key(mg, split, phase)], predictions[Key(mr, split, phase)]
    if not np.array_equal(a.patient_ids, b.patient_ids):
      raise RuntimeError(f"{split} {phase}: iMGrhpc and iMRrhpc saw different patients")
    if how.inputs == "model":
      p_mg, p_mr = a.probability, b.probability
    else:
      p_mg, p_mr = (scores[Key(mg, split, phase)].probability,
                    scores[Key(mr, split, phase)].probability)
    return {"label": a.label, "p_mg": p_mg, "p_mr": p_mr, "mg_present": a.image_present,
            "mr_present": b.image_present}

  weights = ensemble.fit([arrays(how.fit_split, phase) for phase in phases], inputs=how.inputs)
  combined = {}
  for split, phase in itertools.product(splits, phases):
    a = arrays(split, phase)
    combined[split, phase] = ensemble.combine(weights, a["p_mg"], a["p_mr"], a["mg_present"],
                                              a["mr_present"])
    if how.inputs == "model":
      predictions[Key("MRP", split, phase)] = inference.Predictions(
          predictions[Key(mg, split, phase)].patient_ids, ensemble.logit(combined[split, phase]),
          combined[split, phase], a["label"], None, None)
  if how.inputs == "model":
    fitted = {phase: predictions[Key("MRP", how.fit_split, phase)] for phase in phases}
    maps["MRP"] = {phase: calibration.fit_platt(p.label, p.logit) for phase, p in fitted.items()}
  for (split, phase), y in combined.items():
    if how.inputs == "model":
      y = maps["MRP"][phase](predictions[Key("MRP", split, phase)].logit)
    scores[Key("MRP", split, phase)] = Scores(predictions[Key(mg, split, phase)].patient_ids,
                                              predictions[Key(mg, split, phase)].label, y)
  return weights


def add_oracle(scores: dict[Key, Scores], records_dir: Path,
               predictions: dict[Key, inference.Predictions]) -> list[str]:
  """For records of a synthetic export: adds each model's Bayes-optimal probability
  ('oracle rhpc', ... 'oracle MRP'; input_pipeline/synthetic/oracle.py) for the patients the
  runs predicted, per split and phase. Returns the labels added (none for real data)."""
  truth = synthetic_oracle.read(records_dir)
  if truth is None:
    return []
  splits = tuple(dict.fromkeys(key.split for key in predictions))
  phases = tuple(dict.fromkeys(key.phase for key in predictions))
  labels = []
  for model in synthetic_oracle.MODELS:
    label = f"oracle {model}"
    for split, phase in itertools.product(splits, phases):
      ids, y = next((p.patient_ids, p.label) for key, p in sorted(predictions.items())
                    if key.split == split and key.phase == phase)
      known = np.asarray([phase in truth.get(i, {}).get(model, {}) for i in ids], bool)
      scores[Key(label, split, phase)] = Scores(
          ids[known], y[known], np.asarray([truth[i][model][phase] for i in ids[known]]))
    labels.append(label)
  return labels


def add_oracle_rule(scores: dict[Key, Scores], predictions: dict[Key, inference.Predictions],
                    how: Ensemble) -> ensemble.EnsembleWeights | None:
  """MRP's rule on perfect members: y = W1 x P(oracle iMGrhpc) + W2 x P(oracle iMRrhpc), the
  weights chosen on the fit split as MRP's are (ensemble.fit), added as ORACLE_RULE for every
  split and phase. 'oracle MRP' is the posterior given both images at once; a weighted mean of
  two posteriors that each count the table is not that, so this is the most the paper's rule
  can reach, and MRP's gap to 'oracle MRP' splits into the rule's part ('oracle MRP' minus
  this) and its members' (this minus MRP). None without both MRP members or their oracles.

  The oracles are calibrated probabilities, so the combination is used as it is (no Platt map;
  one would not change its AUROC)."""
  members = how.members
  if "iMGrhpc" not in members or "iMRrhpc" not in members:
    return None
  splits = tuple(dict.fromkeys(key.split for key in predictions))
  phases = tuple(dict.fromkeys(key.phase for key in predictions))
  if not all(Key(f"oracle {m}", split, phase) in scores for m in ("iMGrhpc", "iMRrhpc")
             for split in splits for phase in phases):
    return None

  def arrays(split, phase):
    mg, mr = scores[Key("oracle iMGrhpc", split, phase)], scores[Key("oracle iMRrhpc", split,
                                                                         phase)]
    if not np.array_equal(mg.ids, mr.ids):
      raise RuntimeError(f"{split} {phase}: the oracles of iMGrhpc and iMRrhpc cover "
                         "different patients")
    present = {}
    for model in ("iMGrhpc", "iMRrhpc"):
      p = predictions[Key(members[model], split, phase)]
      by_id = dict(zip(p.patient_ids, p.image_present))
      present[model] = np.asarray([by_id[i] for i in mg.ids], bool)
    return {"ids": mg.ids, "label": mg.labels, "p_mg": mg.probability,
            "p_mr": mr.probability, "mg_present": present["iMGrhpc"],
            "mr_present": present["iMRrhpc"]}

  cells = {(split, phase): arrays(split, phase)
           for split, phase in itertools.product(splits, phases)}
  weights = ensemble.fit([cells[how.fit_split, phase] for phase in phases], inputs="calibrated")
  for (split, phase), a in cells.items():
    scores[Key(ORACLE_RULE, split, phase)] = Scores(
        a["ids"], a["label"], ensemble.combine(weights, a["p_mg"], a["p_mr"], a["mg_present"],
                                               a["mr_present"]))
  return weights
