"""Is the MRI's pCR evidence still in the prepared records at the 'tiny' geometry?
(docs/experiments.md, "The MRI encoder")

An experiment, not part of the package. Command (from the repository root, ~10 s on 2 cores):
  python docs/experiments/mri_features.py --demo runs/demo

Reads a finished synthetic demo (its records, records.pseudonym.key, export/synthetic_truth.json
and records/synthetic_oracle.json). Every labelled patient's subtraction volume per phase
(8 mm voxels, box [z, y, x] 22 x 22 x 44, intensity relative to the pre-contrast body scale)
is reduced to hand-made statistics, no learning:
* whole volume: max, 99th / 99.9th percentile, mean of the top 10 voxels;
* the tumour region, found from the record alone: the brightest voxel outside the heart's
  corner of the box (posterior and midline), a ball of 3 voxels around it; there the peak, the
  mean of the top 5, the integral of the enhancement above half the peak, the count of voxels
  above half the peak (a volume proxy), and the peak over the volume's max (what per-image
  min-max scaling would leave of it);
* Mid / Post: the same region statistics in their own volume over Pre's (log ratios).
Each statistic's AUROC (sign chosen on train) on validation / test, a logistic regression on
a handful of them fitted on train, beside the oracle's image evidence (log-odds of oracle
iMRrhpc minus oracle rhpc, as evaluation/evidence.py computes it) and the MRI's own latents
redrawn from the export's truth (the Pre-NAT enhancement ratio; the radius factor Mid / Pre,
Post / Pre; oracle.mri_log_likelihood, their label log-likelihood ratio), with each statistic's
Spearman correlation with its latent. It also says where the volume's max lies (tumour or
heart) and how the tumour's peak depends on the enhancement ratio, radius and core.
"""

import json
import types
from pathlib import Path

import numpy as np
from absl import app, flags
from scipy import special, stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from input_pipeline import geometries, records
from input_pipeline.feed import pipeline
from input_pipeline.records import pseudonyms, tfrecord
from input_pipeline.synthetic import oracle

flags.DEFINE_string("demo", "runs/demo", "A finished demo run on a synthetic export.")
FLAGS = flags.FLAGS
PHASES, SPLITS = ("pre", "mid", "post"), ("train", "validation", "test")
# The heart corner and the 3-voxel region below are drawn for the 'tiny' preset's voxels.
_TINY = geometries.preset("tiny")
SHAPE, MM = np.array(_TINY.mri_box), _TINY.mri_spacing_mm[0]
GRID = np.indices(tuple(SHAPE)).reshape(3, -1).T


def load(demo: Path, box: tuple[int, int, int] | None = tuple(SHAPE)):
  """Labelled patients: split, label, volumes per phase, truth latent, oracle evidence.

  Raises:
    ValueError: a record's MRI box is not ``box`` (None: any box)."""
  truth = json.loads((demo / "export/synthetic_truth.json").read_text())
  key = (demo / "records.pseudonym.key").read_text().strip().encode()
  latent = {pseudonyms.pseudonym(key, p["patient_id"]): p["latent"] for p in truth["patients"]}
  truth_oracle = oracle.read(demo / "records")
  out = []
  for split in SPLITS:
    for path in pipeline.split_paths(demo / "records", split):
      for _, d in tfrecord.iter_records(path):
        r = records.decode(d)
        if r.label in (0, 1) and "pre" in r.mri:
          evidence = {ph: special.logit(truth_oracle[r.patient_id]["iMRrhpc"][ph])
                      - special.logit(truth_oracle[r.patient_id]["rhpc"][ph])
                      for ph in r.mri}
          out.append(types.SimpleNamespace(
              split=split, label=r.label, latent=latent[r.patient_id], evidence=evidence,
              mri={ph: np.asarray(v, np.float32) for ph, v in r.mri.items()}))
          if box is not None and out[-1].mri["pre"].shape != box:
            raise ValueError(f"{path}: MRI box {out[-1].mri['pre'].shape}, not the 'tiny' "
                             f"preset's {box} this script's regions are drawn for")
  return out


def tumour_voxel(latent) -> np.ndarray:
  """The true tumour centre in box voxels [z, y, x]: the box is centred on the body in x and on
  the breasts in z and starts 5 mm anterior of the breast's tip (ingestion/mri.py)."""
  cx, cy, cz = latent["tumour_centre"]
  return np.array([SHAPE[0] / 2 - 0.5 + (cz - latent["breast_z"]) / MM,
                   (cy + latent["breast_axes"][1] + 5) / MM - 0.5, SHAPE[2] / 2 - 0.5 + cx / MM])


def heart_mask() -> np.ndarray:
  """The box's posterior midline corner, where the heart (patient frame (0, 95, -45) mm, axes
  45 mm, images.py) enters for small breasts."""
  z, y, x = GRID.T
  return ((y >= 14) & (np.abs(x - (SHAPE[2] / 2 - 0.5)) <= 6)).reshape(tuple(SHAPE))


def region(v: np.ndarray, centre: np.ndarray, radius: float = 3.0) -> dict[str, float]:
  ball = np.linalg.norm(GRID - centre, axis=1) <= radius
  x = v.reshape(-1)[ball]
  peak = x.max()
  above = x[x > peak / 2]
  return {"peak": peak, "top5": np.sort(x)[-5:].mean(), "integral": above.sum(),
          "count": float(len(above)), "peak/max": peak / v.max()}


def features(p, heart: np.ndarray) -> dict[str, float]:
  pre = p.mri["pre"]
  flat = pre.reshape(-1)
  masked = np.where(heart, -np.inf, pre).reshape(-1)
  centre = GRID[np.argmax(masked)]  # the tumour region, from the record alone
  f = {"pre max": flat.max(), "pre p99": np.percentile(flat, 99),
       "pre p99.9": np.percentile(flat, 99.9), "pre top10": np.sort(flat)[-10:].mean()}
  f.update({f"pre {k}": v for k, v in region(pre, centre).items()})
  truth = tumour_voxel(p.latent)
  f["pre peak at the true tumour"] = region(pre, truth, 2.0)["peak"]
  f["_argmax_at_tumour"] = float(np.linalg.norm(GRID[np.argmax(flat)] - truth) <= 3)
  f["_argmax_in_heart"] = float(heart.reshape(-1)[np.argmax(flat)])
  f["_region_at_tumour"] = float(np.linalg.norm(centre - truth) <= 3)
  base = region(pre, centre)
  for ph in ("mid", "post"):
    if ph in p.mri:
      # The follow-up tumour is where Pre's was (no motion at this scale): its region around
      # its own brightest voxel near Pre's centre.
      v = p.mri[ph]
      near = np.linalg.norm(GRID - centre, axis=1) <= 3
      c = GRID[near][np.argmax(v.reshape(-1)[near])]
      r = region(v, c)
      for k in ("peak", "integral", "count", "top5"):
        f[f"{ph}/pre {k}"] = np.log(max(r[k], 1e-3) / max(base[k], 1e-3))
  return f


def auroc(y, s) -> float:
  return roc_auc_score(y, s) if len(set(y)) == 2 else float("nan")


def main(argv):
  del argv
  patients = load(Path(FLAGS.demo))
  heart = heart_mask()
  feats = [features(p, heart) for p in patients]
  split = np.array([p.split for p in patients])
  y = np.array([p.label for p in patients])

  def lat(ph):  # the latent a phase adds
    return np.array([
        np.log(p.latent["enhancement"][0]) if ph == "pre" else
        -p.latent["radius_mm"][PHASES.index(ph)] / p.latent["radius_mm"][0] for p in patients])

  def own(ph):  # the MRI's own label log-likelihood ratio up to the phase (oracle.py)
    return np.array([
        np.diff(oracle.mri_log_likelihood(types.SimpleNamespace(
            enhancement=p.latent["enhancement"], radius_mm=p.latent["radius_mm"]),
            PHASES.index(ph)))[0] for p in patients])

  counts = ", ".join(f"{s} {np.sum(split == s)}" for s in SPLITS)
  print(f"{len(patients)} labelled patients with MRI ({counts})")
  for k, what in (("_argmax_at_tumour", "the volume's max within 3 voxels of the true tumour"),
                  ("_argmax_in_heart", "the volume's max in the heart corner"),
                  ("_region_at_tumour", "the record-only tumour region on the true tumour")):
    print(f"  Pre: {what}: {np.mean([f[k] for f in feats]):.2f}")
  enh = np.log([p.latent["enhancement"][0] for p in patients])
  rad = np.log([p.latent["radius_mm"][0] for p in patients])
  core = np.array([p.latent["heterogeneity"] for p in patients])
  for k in ("pre peak at the true tumour", "pre peak", "pre max"):
    v = np.log(np.maximum([f[k] for f in feats], 1e-3))
    design = np.column_stack([enh, rad, core ** 3, np.ones_like(enh)])
    r2 = 1 - np.var(v - design @ np.linalg.lstsq(design, v, rcond=None)[0]) / np.var(v)
    rho = [stats.spearmanr(v, w)[0] for w in (enh, rad, core)]
    print(f"  log {k}: Spearman with the enhancement ratio {rho[0]:.2f}, radius {rho[1]:.2f}, "
          f"core fraction {rho[2]:.2f}; R2 on (log enh, log radius, core^3) {r2:.2f}")

  v = np.log(np.maximum([f["pre peak"] for f in feats], 1e-3))
  train = split == "train"
  design = np.column_stack([enh, rad, core ** 3, np.ones_like(enh)])
  b = np.linalg.lstsq(design[train], v[train], rcond=None)[0]
  corrected = v - design[:, 1:3] @ b[1:3]
  print("  log pre peak less its fitted (train) dependence on the true log radius and core^3, "
        "AUROC validation / test: " + " / ".join(
            f"{auroc(y[split == h], corrected[split == h]):.3f}" for h in ("validation", "test"))
        + f"; Spearman with the enhancement ratio {stats.spearmanr(corrected, enh)[0]:.2f}")

  sets = {ph: np.array([ph in p.mri for p in patients]) for ph in PHASES}
  held = ("validation", "test")
  print("\nstatistic | phase | AUROC validation / test | latent's AUROC v / t | "
        "Spearman with latent")
  for ph in PHASES:
    has = sets[ph]
    ev = np.array([p.evidence.get(ph, np.nan) for p in patients])
    latent, mri_own = lat(ph), own(ph)
    def ref(s, has=has):
      return " / ".join(f"{auroc(y[has & (split == h)], s[has & (split == h)]):.3f}"
                        for h in held)
    print(f"-- {ph}: oracle image evidence {ref(ev)}; latent "
          f"({'log enhancement ratio' if ph == 'pre' else f'-radius factor {ph}/pre'}) "
          f"{ref(latent)}; MRI's own log-LR {ref(mri_own)}  (n "
          + " / ".join(str(np.sum(has & (split == h))) for h in held) + ")")
    names = [k for k in feats[0] if (k.startswith("pre") if ph == "pre" else
                                     k.startswith(f"{ph}/"))]
    target = latent if ph == "pre" else np.log(-latent) * 3  # radius factor cubed
    for k in names:
      v = np.array([f.get(k, np.nan) for f in feats])
      train = has & (split == "train")
      sign = 1 if auroc(y[train], v[train]) >= 0.5 else -1
      rho = stats.spearmanr(v[has], target[has])[0]
      print(f"  {k} | {ph} | {ref(sign * v)} | {ref(latent)} | {rho:+.2f}")
    chosen = ["pre peak", "pre top5", "pre integral", "pre count", "pre peak/max", "pre max"] + [
        n for n in names if ph != "pre"]
    x = np.column_stack([
        np.array([f.get(k, np.nan) for f in feats])[has] if k.startswith(f"{ph}/")
        else np.log(np.maximum([f[k] for f in feats], 1e-3))[has] for k in chosen])
    x = (x - x[split[has] == "train"].mean(0)) / x[split[has] == "train"].std(0)
    fit = LogisticRegression(C=1.0, max_iter=2000).fit(x[split[has] == "train"],
                                                       y[has][split[has] == "train"])
    score = np.full(len(y), np.nan)
    score[has] = fit.decision_function(x)
    print(f"  logistic regression on {len(chosen)} | {ph} | {ref(score)} | {ref(mri_own)} "
          f"(MRI's own log-LR) | {stats.spearmanr(score[has], mri_own[has])[0]:+.2f}")


if __name__ == "__main__":
  app.run(main)
