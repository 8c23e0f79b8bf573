"""report.md and the figures of the evaluation (matplotlib, no display needed).

Table 1 of the paper per phase: AUROC and AUPRC with 95% CIs, sensitivity, specificity, PPV and
NPV at the stated threshold; DeLong p-values against MRP (or the last model); the operating
points; the ensemble weights. Figures: ROC and PR curves with bootstrap 95% bands per phase,
decision curves per phase in the paper's direction, and attribution bars.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mrp_jax.evaluation import statistics

_PHASE_TITLES = {"pre": "Pre-NAT", "mid": "Mid-NAT", "post": "Post-NAT"}
_BAND_REPLICATES = 200


def _fmt(entry: dict[str, Any] | None, digits: int = 3) -> str:
  if not entry or entry.get("value") is None:
    return "n/a"
  low, high = entry.get("ci_low"), entry.get("ci_high")
  ci = f" ({low:.{digits}f}-{high:.{digits}f})" if low is not None and high is not None else ""
  return f"{entry['value']:.{digits}f}{ci}"


def _num(value: float | None, digits: int = 3) -> str:
  return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _difference(entry: dict[str, Any]) -> str:
  """A signed difference and its CI, 'to' between the bounds (they may be negative)."""
  if entry.get("value") is None:
    return "n/a"
  low, high = entry.get("ci_low"), entry.get("ci_high")
  ci = f" ({low:+.3f} to {high:+.3f})" if low is not None and high is not None else ""
  return f"{entry['value']:+.3f}{ci}"


def shape_summary(claims: list[dict[str, Any]]) -> str:
  """One line per claim of ``metrics.json``'s paper_shape, for a terminal."""
  held = sum(c["holds"] for c in claims)
  lines = [f"the paper's result: {held} of {len(claims)} claims hold on this split"]
  for c in claims:
    lines.append(f"  {'yes' if c['holds'] else 'NO '} {c['claim']:<34} {c['phase']:<12} "
                 f"{_num(c['auroc_a'])} vs {_num(c['auroc_b'])}, difference "
                 f"{_difference(c['difference'])}, n = {c['n']}")
  return "\n".join(lines)


def _curves_figure(path: Path, scores, split: str, phase: str, labels: list[str],
                   kind: str) -> None:
  fig, ax = plt.subplots(figsize=(5, 5))
  for label in labels:
    key = (label, split, phase)
    if key not in scores:
      continue
    _, y, p = scores[key]
    band_fn = statistics.roc_band if kind == "roc" else statistics.pr_band
    band = band_fn(y, p, replicates=_BAND_REPLICATES, stratified=True)
    line, = ax.plot(band.grid, band.value, label=label)
    ax.fill_between(band.grid, band.low, band.high, color=line.get_color(), alpha=0.15)
  if kind == "roc":
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity")
  else:
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)")
  ax.set(title=f"{_PHASE_TITLES[phase]} {kind.upper()} ({split})", xlim=(0, 1), ylim=(0, 1.02))
  ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _decision_figure(path: Path, curves: dict[str, Any], phase: str) -> None:
  fig, ax = plt.subplots(figsize=(6, 4.5))
  direction = curves["direction"]
  reference = None
  for label, curve in curves.items():
    if label == "direction":
      continue
    t = np.asarray(curve["thresholds"])
    line, = ax.plot(t, curve["net_benefit"], label=label)
    if curve.get("net_benefit_low") is not None:
      ax.fill_between(t, curve["net_benefit_low"], curve["net_benefit_high"],
                      color=line.get_color(), alpha=0.12)
    reference = curve
  if reference is not None:
    t = np.asarray(reference["thresholds"])
    ax.plot(t, reference["treat_all"], color="grey", ls="--", label="treat all")
    ax.plot(t, np.zeros_like(t), color="black", lw=0.8, label="treat none")
    positive = [v for c in curves.values() if isinstance(c, dict)
                for v in c["net_benefit"] if v is not None]
    if positive:
      ax.set_ylim(min(-50, min(positive)), max(positive) * 1.1 + 1)
  event = "non-pCR (therapy avoided)" if direction == "therapy" else "pCR (surgery avoided)"
  ax.set(xlabel=f"threshold probability of {event.split(' ')[0]}",
         ylabel="net benefit per 1000 patients",
         title=f"{_PHASE_TITLES[phase]} decision curve: {event}")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _attribution_figure(path: Path, ranked: dict[str, list[dict[str, Any]]]) -> None:
  labels = list(ranked)
  fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 6), squeeze=False)
  for ax, label in zip(axes[0], labels):
    rows = ranked[label][:15][::-1]
    names = [r["feature"] for r in rows]
    means = [r["mean"] for r in rows]
    stds = [r["std"] for r in rows]
    ax.barh(names, means, xerr=stds, color="tab:blue", alpha=0.8)
    ax.set(title=label, xlabel="normalised |attribution|")
    ax.tick_params(axis="y", labelsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write(out_dir: Path, result: dict[str, Any], attributions: dict[str, Any], scores,
          split: str) -> None:
  """Writes report.md and the figures into ``out_dir``."""
  phases = result["phases"]
  models = result["models"]
  labels = list(models)
  figures = []
  for phase in phases:
    for kind in ("roc", "pr"):
      name = f"{kind}_{phase}.png"
      _curves_figure(out_dir / name, scores, split, phase, labels, kind)
      figures.append(name)
    name = f"decision_curve_{phase}.png"
    _decision_figure(out_dir / name, result["decision_curves"][phase], phase)
    figures.append(name)
  if attributions.get("ranked"):
    _attribution_figure(out_dir / "attributions.png", attributions["ranked"])
    figures.append("attributions.png")

  lines = ["# MRP evaluation report", "",
           f"Split reported: **{split}**; thresholds and MRP weights chosen on "
           f"**{result['fit_split']}**. 95% CIs: bootstrap percentile, "
           f"{result['bootstrap']['replicates']} replicates. AUPRC is average precision.", ""]
  if result.get("ensemble"):
    w = result["ensemble"]
    fit_auroc = w.get("validation_auroc")
    fit_text = (f"{fit_auroc:.3f}" if isinstance(fit_auroc, (int, float)) and np.isfinite(
        fit_auroc) else "undefined: no fit phase has both classes, equal weights")
    lines += [f"MRP = {w['w_mg']:.2f} x iMGrhpc + {w['w_mr']:.2f} x iMRrhpc "
              f"({w['objective']}: {fit_text}).", ""]
  for phase in phases:
    lines += [f"## {_PHASE_TITLES[phase]}", "",
              "| model | n | AUROC (95% CI) | AUPRC (95% CI) | threshold | sensitivity | "
              "specificity | PPV | NPV |", "|---|---|---|---|---|---|---|---|---|"]
    for label in labels:
      entry = models[label].get(phase)
      if not entry:
        continue
      t = result["thresholds"][label][phase]
      lines.append(f"| {label} | {entry['n']} | {_fmt(entry['auroc'])} | "
                   f"{_fmt(entry['auprc'])} | {t:.3f} | {_fmt(entry['sensitivity'], 2)} | "
                   f"{_fmt(entry['specificity'], 2)} | {_fmt(entry['ppv'], 2)} | "
                   f"{_fmt(entry['npv'], 2)} |")
    lines += ["", "DeLong p-values (AUROC):", ""]
    for test in result["delong"][phase]:
      p = test["p_value"]
      lines.append(f"- {test['a']} vs {test['b']}: "
                   + ("n/a" if p is None else f"p = {p:.3g}") + f" (n = {test['n']})")
    lines += ["", f"![ROC](roc_{phase}.png) ![PR](pr_{phase}.png)",
              f"![decision curve](decision_curve_{phase}.png)", ""]
  if result.get("paper_shape"):
    lines += ["## The paper's result, checked", "",
              "Each claim compares AUROCs on the patients both sides share; the difference "
              "has a paired bootstrap 95% CI. 'holds' reads the point estimate, as the paper "
              "reports it; a CI that includes 0 means this split cannot tell.", "",
              "| claim | phase | n | AUROC a | AUROC b | difference (95% CI) | DeLong p | holds |",
              "|---|---|---|---|---|---|---|---|"]
    for claim in result["paper_shape"]:
      p = claim["p_value"]
      lines.append(
          f"| {claim['claim']} | {claim['phase']} | {claim['n']} | {_num(claim['auroc_a'])} | "
          f"{_num(claim['auroc_b'])} | {_difference(claim['difference'])} | "
          f"{'n/a' if p is None else f'{p:.3g}'} | {'yes' if claim['holds'] else 'no'} |")
    lines.append("")
  if attributions.get("ranked"):
    lines += ["## Feature attributions (Integrated Gradients)", "",
              f"{attributions['cases']} {split} patients at the {attributions['phase']} phase; "
              "per case |attribution| normalised to sum 1, mean over cases.", "",
              "![attributions](attributions.png)", ""]
  (out_dir / "report.md").write_text("\n".join(lines) + "\n")
