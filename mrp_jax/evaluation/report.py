"""report.md and the figures of the evaluation (matplotlib, no display needed).

Per phase the paper's Table 1 (AUROC and AUPRC with 95% CIs, sensitivity, specificity, PPV and
NPV at the stated threshold) with the Brier score, DeLong p-values, the decision curves at a few
thresholds with the paper's Eq. (1) beside dcurves' quantities; the calibration maps; the
paper's claims checked; Table 2's odds ratios; the attributions as the paper's Fig. 4.
Figures: ROC and PR curves with bootstrap 95% bands, decision curves (net benefit and Eq. (1))
and calibration curves per phase, and the attribution bars.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mrp_jax.evaluation import statistics
from mrp_jax.evaluation.scores import ORACLE_RULE, Cell, Scores

_PHASE_TITLES = {"pre": "Pre-NAT", "mid": "Mid-NAT", "post": "Post-NAT"}
# The figures' ROC and PR bands (seed 0, stratified: no one-class replicates).
_BAND_BOOTSTRAP = statistics.Bootstrap(replicates=200, stratified=True)


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


def _interval(entry: dict[str, Any] | None, digits: int = 0) -> str:
  """A value that may be negative with its CI, 'to' between the bounds."""
  if not entry or entry.get("value") is None:
    return "n/a"
  low, high = entry.get("ci_low"), entry.get("ci_high")
  ci = (f" ({low:.{digits}f} to {high:.{digits}f})" if low is not None and high is not None
        else "")
  return f"{entry['value']:.{digits}f}{ci}"


def claims_summary(paper: dict[str, Any], gaps: dict[str, list[dict[str, Any]]],
                   images: dict[str, list[dict[str, Any]]] | None = None) -> str:
  """The paper's claims (metrics.json 'paper_claims'), the ordering per phase, each model's
  gap to its oracle ('oracle_gaps') and what each image encoder finds alone
  ('image_evidence'), for a terminal."""
  lines = [f"the paper's result: {paper['held']} of {paper['total']} claims hold by the point "
           f"estimate, {paper['held_with_ci']} with the 95% CI of the difference above 0"]
  if paper.get("degenerate_weights"):
    lines.append(f"  MRP's weights are degenerate: {paper['degenerate_weights']}")
  for c in paper["claims"]:
    mark = "yes" if c["holds"] else ("n/a" if c.get("degenerate") else "NO ")
    lines.append(f"  {mark} {c['claim']:<30} {c['phase']:<12} {_num(c['auroc_a'])} vs "
                 f"{_num(c['auroc_b'])}, difference {_difference(c['difference'])}, "
                 f"n = {c['n']}")
  for phase, entry in paper["ordering"].items():
    order = " < ".join(f"{m} {_num(entry['auroc'][m])}" for m in entry["order"])
    lines.append(f"  {'yes' if entry['paper'] else 'NO '} ordering at {phase:<4}  {order}")
  for phase, rows in gaps.items():
    if rows:
      lines.append(f"  gap to the oracle at {phase}: " + ", ".join(
          f"{r['model']} {_num(r['auroc'])} / {_num(r['auroc_oracle'])}"
          + (" (its rule's)" if r["oracle"] == ORACLE_RULE else "") for r in rows))
  for phase, rows in (images or {}).items():
    if rows:
      truth = any("auroc_oracle_evidence" in r for r in rows)
      lines.append(f"  image encoder alone at {phase}"
                   + (" (AUROC / what the image tells in truth)" if truth else " (AUROC)")
                   + ": " + ", ".join(
                       f"{r['model']} {_num(r['auroc'])}"
                       + (f" / {_num(r['auroc_oracle_evidence'])}"
                          if "auroc_oracle_evidence" in r else "") for r in rows))
  return "\n".join(lines)


def _curves_figure(path: Path, reported: dict[Cell, Scores], phase: str, labels: list[str],
                   kind: str) -> None:
  fig, ax = plt.subplots(figsize=(5, 5))
  for label in labels:
    if (label, phase) not in reported:
      continue
    s = reported[(label, phase)]
    band_fn = statistics.roc_band if kind == "roc" else statistics.pr_band
    band = band_fn(s.labels, s.probability, bootstrap=_BAND_BOOTSTRAP)
    line, = ax.plot(band.grid, band.value, label=label)
    ax.fill_between(band.grid, band.low, band.high, color=line.get_color(), alpha=0.15)
  if kind == "roc":
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity")
  else:
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)")
  ax.set(title=f"{_PHASE_TITLES[phase]} {kind.upper()}", xlim=(0, 1), ylim=(0, 1.02))
  ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _decision_figure(path: Path, curves: dict[str, Any], phase: str) -> None:
  """Left: net benefit with treat-all / treat-none (dcurves); right: the paper's Eq. (1)."""
  fig, (ax, ax_eq1) = plt.subplots(1, 2, figsize=(11, 4.5))
  direction = curves["direction"]
  reference = None
  for label, curve in curves.items():
    if label == "direction":
      continue
    t = np.asarray(curve["thresholds"])
    line, = ax.plot(t, curve["net_benefit"], label=label)
    ax_eq1.plot(t, curve["net_reduction_in_interventions"], label=label, color=line.get_color())
    for axis, name in ((ax, "net_benefit"), (ax_eq1, "net_reduction_in_interventions")):
      if curve.get(f"{name}_low") is not None:
        axis.fill_between(t, curve[f"{name}_low"], curve[f"{name}_high"],
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
    ax_eq1.axhline(0.0, color="black", lw=0.8)
  event = "non-pCR (therapy changed)" if direction == "therapy" else "pCR (surgery avoided)"
  ax.set(xlabel=f"threshold probability of {event.split(' ')[0]}",
         ylabel="net benefit per 1000 patients",
         title=f"{_PHASE_TITLES[phase]} decision curve: {event}")
  ax_eq1.set(xlabel=f"threshold probability of {event.split(' ')[0]}",
             ylabel="(TP - FP)/N - (FN - TN)/N, per 1000",
             title="net reduction in interventions, the paper's Eq. (1)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _calibration_figure(path: Path, curves: dict[str, Any], phase: str) -> None:
  fig, ax = plt.subplots(figsize=(5, 5))
  ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="calibrated")
  for label, curve in curves.items():
    predicted = np.asarray(curve["predicted"], dtype=float)
    filled = np.isfinite(predicted)
    line, = ax.plot(predicted[filled], np.asarray(curve["observed"], dtype=float)[filled],
                    marker="o", ms=3, label=label)
    low = np.asarray(curve["low"], dtype=float)
    high = np.asarray(curve["high"], dtype=float)
    band = filled & np.isfinite(low)
    ax.fill_between(predicted[band], low[band], high[band], color=line.get_color(), alpha=0.12)
  ax.set(xlabel="predicted probability of pCR (calibrated)", ylabel="observed pCR rate",
         title=f"{_PHASE_TITLES[phase]} calibration", xlim=(0, 1), ylim=(0, 1))
  ax.legend(fontsize=8, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# The paper's Fig. 4 colours its bars by the variable's group.
_GROUP_COLOURS = {"r": "tab:blue", "h": "tab:orange", "p": "tab:green", "c": "tab:purple",
                  "image": "tab:red"}
_GROUP_NAMES = {"r": "radiological", "h": "histopathological", "p": "personal",
                "c": "clinical", "image": "image"}


def _attribution_figure(path: Path, attributions: dict[str, Any]) -> None:
  """The paper's Fig. 4: per model every feature's bar (signed: normalised mean contribution;
  magnitude: mean normalised |attribution|) with its standard deviation, in ranked order."""
  ranked = attributions["ranked"]
  labels = list(ranked)
  rows_max = max(len(rows) for rows in ranked.values())
  fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 0.25 * rows_max + 1.5),
                           squeeze=False)
  for ax, label in zip(axes[0], labels):
    rows = ranked[label][::-1]  # barh draws bottom-up: the first row on top
    ax.barh([r["feature"] for r in rows], [r["value"] for r in rows],
            xerr=[r["std"] for r in rows], color=[_GROUP_COLOURS[r["group"]] for r in rows],
            alpha=0.85, error_kw={"lw": 0.8})
    ax.axvline(0.0, color="black", lw=0.6)
    signed = attributions["ranking"] == "signed"
    ax.set(title=f"{label} (n = {attributions['cases']})",
           xlabel="normalised coefficient" if signed else "normalised |attribution|")
    ax.tick_params(axis="y", labelsize=7)
  handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _GROUP_COLOURS.values()]
  fig.legend(handles, _GROUP_NAMES.values(), loc="upper right", fontsize=7)
  fig.tight_layout(rect=(0, 0, 0.93, 1))
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _table_1(lines: list[str], result: dict[str, Any], phase: str) -> None:
  lines += ["| model | n | AUROC (95% CI) | AUPRC (95% CI) | threshold | sensitivity | "
            "specificity | PPV | NPV | Brier (95% CI) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
  for label, by_phase in result["models"].items():
    entry = by_phase.get(phase)
    if not entry:
      continue
    t = result["thresholds"][label][phase]
    lines.append(f"| {label} | {entry['n']} | {_fmt(entry['auroc'])} | "
                 f"{_fmt(entry['auprc'])} | {t:.3f} | {_fmt(entry['sensitivity'], 2)} | "
                 f"{_fmt(entry['specificity'], 2)} | {_fmt(entry['ppv'], 2)} | "
                 f"{_fmt(entry['npv'], 2)} | {_fmt(entry['brier'])} |")


def _decision_table(lines: list[str], result: dict[str, Any], phase: str) -> None:
  direction = result["decision_curves"][phase]["direction"]
  event = "non-pCR (change therapy)" if direction == "therapy" else "pCR (avoid surgery)"
  lines += [f"Decision curves for {event}, per 1,000 patients (95% CI): net benefit; "
            "net interventions avoided (dcurves, against treat-all); net reduction in "
            "interventions (the paper's Eq. (1): (TP - FP)/N - (FN - TN)/N).", "",
            "| model | threshold | net benefit | net interventions avoided (dcurves) | "
            "net reduction in interventions, Eq. (1) |", "|---|---|---|---|---|"]
  for label, rows in result["decision_thresholds"][phase].items():
    for row in rows:
      lines.append(f"| {label} | {row['threshold']:.2f} | "
                   f"{_interval(row['net_benefit_per_1000'])} | "
                   f"{_interval(row['net_interventions_avoided_per_1000'])} | "
                   f"{_interval(row['net_reduction_in_interventions_per_1000'])} |")


def _odds_table(lines: list[str], odds: dict[str, Any]) -> None:
  lines += ["## Table 2: pCR by characteristic (all splits)", "",
            f"{odds['n']} labelled patients of the {', '.join(odds['splits'])} splits "
            f"({odds['n_pcr']} pCR). Odds ratio of pCR against the reference category (the most "
            "common; non-dense for density), Woolf 95% CI, Fisher's exact p.", "",
            "| characteristic | category | n | pCR (%) | OR (95% CI) | p |",
            "|---|---|---|---|---|---|"]
  for variable, categories in odds["by_variable"].items():
    for name, row in categories.items():
      reference = row["category"] == row["reference"]
      ci = "" if reference else f" ({_num(row['ci_low'], 2)}-{_num(row['ci_high'], 2)})"
      p = "reference" if reference else _num(row["p_value"], 3)
      lines.append(f"| {variable} | {name} | {row['n']} | {row['n_pcr']} "
                   f"({100 * row['pcr_rate']:.1f}) | {_num(row['odds_ratio'], 2)}{ci} | {p} |")


def write(out_dir: Path, result: dict[str, Any], attributions: dict[str, Any],
          reported: dict[Cell, Scores]) -> None:
  """Writes report.md and the figures into ``out_dir``; ``reported``: the reported cohort's
  scores of each label and phase."""
  phases = result["phases"]
  labels = list(result["models"])
  for phase in phases:
    for kind in ("roc", "pr"):
      _curves_figure(out_dir / f"{kind}_{phase}.png", reported, phase, labels, kind)
    _decision_figure(out_dir / f"decision_curve_{phase}.png", result["decision_curves"][phase],
                     phase)
    _calibration_figure(out_dir / f"calibration_{phase}.png",
                        result["calibration_curves"][phase], phase)
  if attributions.get("ranked"):
    _attribution_figure(out_dir / "attributions.png", attributions)

  cohort = result["cohort"]
  sizes = ", ".join(f"{_PHASE_TITLES[p]} {cohort['n'][p]}" for p in phases)
  lines = ["# MRP evaluation report", "",
           f"Split reported: **{result['split']}**, cohort **{cohort['description']}** "
           f"(patients per phase: {sizes}). Calibration maps, thresholds and MRP weights "
           f"chosen on **{result['fit_split']}**. Probabilities are calibrated (Platt "
           "scaling per model and phase; AUROCs are those of the models' own outputs). "
           f"95% CIs: bootstrap percentile, {result['bootstrap']['replicates']} replicates. "
           "AUPRC is average precision.", ""]
  if result.get("ensemble"):
    w = result["ensemble"]
    fit_auroc = w.get("validation_auroc")
    fit_text = (f"{fit_auroc:.3f}" if isinstance(fit_auroc, (int, float)) and np.isfinite(
        fit_auroc) else "undefined: no fit phase has both classes, equal weights")
    combined = ("the models' own probabilities, then MRP's output calibrated (its Platt map "
                "below)" if w.get("inputs") == "model" else "calibrated probabilities")
    lines += [f"MRP = {w['w_mg']:.2f} x iMGrhpc + {w['w_mr']:.2f} x iMRrhpc, {combined} "
              f"({w['objective']}: {fit_text}).", ""]
  for phase in phases:
    lines += [f"## {_PHASE_TITLES[phase]}", ""]
    _table_1(lines, result, phase)
    lines += ["", "DeLong p-values (AUROC):", ""]
    for test in result["delong"][phase]:
      p = test["p_value"]
      lines.append(f"- {test['a']} vs {test['b']}: "
                   + ("n/a" if p is None else f"p = {p:.3g}") + f" (n = {test['n']})")
    lines += ["", f"![ROC](roc_{phase}.png) ![PR](pr_{phase}.png)", ""]
    _decision_table(lines, result, phase)
    lines += ["", f"![decision curve](decision_curve_{phase}.png)",
              f"![calibration](calibration_{phase}.png)", ""]
  lines += ["## Calibration", "",
            "Platt maps p = sigmoid(a logit + b) fitted on the fit split; Brier score of the "
            "reported cohort before and after.", "",
            "| model | phase | a | b | fit n | Brier uncalibrated | Brier calibrated |",
            "|---|---|---|---|---|---|---|"]
  for label, maps in result["calibration"]["maps"].items():
    for phase, m in maps.items():
      entry = result["models"].get(label, {}).get(phase, {})
      lines.append(f"| {label} | {phase} | {m['slope']:.3f} | {m['intercept']:.3f} | {m['n']} | "
                   f"{_fmt(entry.get('brier_uncalibrated'))} | {_fmt(entry.get('brier'))} |")
  if "MRP" in result["models"] and "MRP" not in result["calibration"]["maps"]:
    for phase, entry in result["models"]["MRP"].items():  # it combines calibrated probabilities
      lines.append(f"| MRP (of calibrated) | {phase} | - | - | - | - | "
                   f"{_fmt(entry.get('brier'))} |")
  lines.append("")
  paper = result["paper_claims"]
  if paper["claims"]:
    lines += ["## The paper's result, checked", "",
              f"**{paper['held']} of {paper['total']}** claims hold by the point estimate, "
              f"**{paper['held_with_ci']}** with the 95% CI of the difference above 0. Each "
              "claim compares AUROCs on the patients both sides share; the difference has a "
              "paired bootstrap 95% CI. Strict claims: a model equal to another does not "
              "beat it.", ""]
    if paper.get("degenerate_weights"):
      lines += [f"MRP's weights are degenerate: {paper['degenerate_weights']}; its claims "
                "against its parts cannot hold.", ""]
    lines += ["| claim | phase | n | AUROC a | AUROC b | difference (95% CI) | DeLong p | holds "
              "| CI above 0 |", "|---|---|---|---|---|---|---|---|---|"]
    for claim in paper["claims"]:
      p = claim["p_value"]
      lines.append(
          f"| {claim['claim']} | {claim['phase']} | {claim['n']} | {_num(claim['auroc_a'])} | "
          f"{_num(claim['auroc_b'])} | {_difference(claim['difference'])} | "
          f"{'n/a' if p is None else f'{p:.3g}'} | "
          f"{'degenerate' if claim.get('degenerate') else 'yes' if claim['holds'] else 'no'} | "
          f"{'yes' if claim['ci_above_zero'] else 'no'} |")
    lines += ["", "The paper's ordering rhpc < iMGrhpc < iMRrhpc < MRP per phase:", ""]
    for phase, entry in paper["ordering"].items():
      order = " < ".join(f"{m} {_num(entry['auroc'][m])}" for m in entry["order"])
      verdict = "the paper's order" if entry["paper"] else "not the paper's order"
      lines.append(f"- {_PHASE_TITLES[phase]}: {order} ({verdict})")
    lines.append("")
  if any(result.get("oracle_gaps", {}).values()):
    rule = any(r["oracle"] == ORACLE_RULE for rows in result["oracle_gaps"].values()
               for r in rows)
    lines += ["## Against the truth (synthetic cohort)", "",
              "The oracle of a model is the Bayes-optimal P(pCR) given what that model sees, "
              "computed from the generator's truth (input_pipeline/synthetic/oracle.py). The "
              "gap is the trained model's AUROC minus its oracle's on the same patients (paired "
              "bootstrap 95% CI): what the data holds that the model did not find."
              + (f" '{ORACLE_RULE}' is MRP's rule (a weighted mean of two probabilities, its "
                 "weights chosen on the fit split) applied to the oracles of iMGrhpc and "
                 "iMRrhpc: the most that rule can reach. It is below 'oracle MRP', the "
                 "posterior given both images at once, because a mean of two posteriors does "
                 "not add the two images' evidence." if rule else ""), "",
              "| phase | model | oracle | AUROC | oracle AUROC | gap (95% CI) | n |",
              "|---|---|---|---|---|---|---|"]
    for phase, rows in result["oracle_gaps"].items():
      for r in rows:
        lines.append(f"| {phase} | {r['model']} | {r['oracle']} | {_num(r['auroc'])} | "
                     f"{_num(r['auroc_oracle'])} | {_difference(r['gap'])} | {r['n']} |")
    lines.append("")
  if any(result.get("image_evidence", {}).values()):
    truth = any("auroc_oracle_evidence" in r for rows in result["image_evidence"].values()
                for r in rows)
    lines += ["## What the image encoders find alone", "",
              "The AUROC of each fused model's image-only pCR estimate (its cross-modal knowledge "
              "predictor, which sees the image and nothing else) on the reported patients with "
              "that image. A fused model's gain over rhpc can only come from its encoder's "
              "features; this shows how much of the label they carry on their own."
              + (" Beside it, for a synthetic cohort, what the image tells in truth: the "
                 "log-odds the model's oracle adds to the oracle rhpc's, scored by AUROC on the "
                 "same patients, and the difference (paired bootstrap 95% CI)." if truth else ""),
              ""]
    if truth:
      lines += ["| phase | model | image | image-only AUROC | the image in truth | "
                "difference (95% CI) | n |", "|---|---|---|---|---|---|---|"]
    else:
      lines += ["| phase | model | image | image-only AUROC | n |", "|---|---|---|---|---|"]
    for phase, rows in result["image_evidence"].items():
      for r in rows:
        cells = [phase, r["model"], r["image"], _num(r["auroc"])]
        if truth:
          cells += [_num(r.get("auroc_oracle_evidence")), _difference(r.get("gap", {}))]
        lines.append("| " + " | ".join(cells + [str(r["n"])]) + " |")
    lines.append("")
  _odds_table(lines, result["odds_ratios"])
  lines.append("")
  if attributions.get("ranked"):
    how = ("mean signed contribution over cases, normalised across the attributes (sum of "
           "|values| 1), error bar one standard deviation; positive pushes towards pCR"
           if attributions["ranking"] == "signed" else
           "per case |attribution| normalised to sum 1, mean and standard deviation over cases")
    baseline = attributions["baseline"]
    lines += ["## Feature attributions (Integrated Gradients, the paper's Fig. 4)", "",
              f"{attributions['cases']} {attributions['split']} patients of the reported "
              f"cohort at the {_PHASE_TITLES[attributions['phase']]} phase; target: "
              f"{attributions['target']} (MRP per case as the ensemble combines them); "
              f"baseline: the {baseline['reference_split']} split's reference patient "
              f"(every variable at its most common value) and black images; {how}.", "",
              "![attributions](attributions.png)", "",
              "| model | mean abs completeness error | mean abs f(x) - f(baseline) |",
              "|---|---|---|"]
    for label, c in attributions["completeness"].items():
      lines.append(f"| {label} | {c['mean_abs_delta']:.2g} | "
                   f"{c['mean_abs_output_difference']:.2g} |")
    lines.append("")
  (out_dir / "report.md").write_text("\n".join(lines) + "\n")
