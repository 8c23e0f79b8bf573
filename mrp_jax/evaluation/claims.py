"""The paper's result, claim by claim, checked on the reported scores."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from mrp_jax.evaluation import delong, ensemble, statistics
from mrp_jax.evaluation.scores import Bootstrap, Cell, Scores, paired

# The paper's comparisons per phase (cohort A): each image model above rhpc, MRP above each of
# its parts and above rhpc; all strict, so nothing can hold by construction.
CLAIMS = (("iMGrhpc", "rhpc"), ("iMRrhpc", "rhpc"), ("MRP", "iMGrhpc"), ("MRP", "iMRrhpc"),
          ("MRP", "rhpc"))
# The paper's ordering of the four models at every phase (ascending AUROC).
ORDERING = ("rhpc", "iMGrhpc", "iMRrhpc", "MRP")


class Side(NamedTuple):
  """One side of a comparison: its name in the report and its scores."""
  name: str
  scores: Scores


def compare(claim: str, phase: str, a: Side, b: Side, bootstrap: Bootstrap) -> dict[str, Any]:
  """``a`` above ``b`` on the patients both have: both AUROCs, their paired bootstrap
  difference, DeLong's p, and whether it holds by the point estimate (strictly) and with the
  95% CI above 0."""
  y, pa, pb = paired(a.scores, b.scores)
  difference = statistics.paired_difference(y, pa, pb, bootstrap=bootstrap)
  value, low = difference.value, difference.ci_low
  return {"claim": claim, "phase": phase, "a": a.name, "b": b.name, "n": int(len(y)),
          "auroc_a": statistics.auroc(y, pa), "auroc_b": statistics.auroc(y, pb),
          "difference": difference.as_dict(),
          "p_value": delong.delong_test(y, pa, pb).p_value,
          "holds": bool(np.isfinite(value) and value > 0),
          "ci_above_zero": bool(np.isfinite(low) and low > 0)}


def paper_claims(reported: dict[Cell, Scores], phases: tuple[str, ...], members: dict[str, str],
                 weights: ensemble.EnsembleWeights | None, bootstrap: Bootstrap
                 ) -> dict[str, Any]:
  """The paper's result as the paper states it, checked on the reported scores, each claim on
  the patients both sides share.

  Per phase: iMGrhpc > rhpc, iMRrhpc > rhpc, MRP > iMGrhpc, MRP > iMRrhpc, MRP > rhpc; across
  phases: iMRrhpc at Post-NAT at least as good as at Pre-NAT (same patients, their Pre-NAT and
  Post-NAT predictions). Each claim carries both AUROCs, the paired bootstrap 95% CI of their
  difference, DeLong's p, ``holds`` (the point estimate, as the paper reports it) and
  ``ci_above_zero``. When MRP's weights put one part at 0, MRP is the other part: its claims
  against its parts are marked degenerate and never hold. Claims whose models were not
  evaluated are left out. Also per phase: the four models ordered by AUROC, and whether that
  is the paper's order.

  Args:
    members: model name -> the run label that stands for it (predictions.mrp_members).
  """
  name = {m: members.get(m, m) for m in ORDERING}
  degenerate = None
  if weights is not None and min(weights.w_mg, weights.w_mr) == 0:
    only = "iMRrhpc" if weights.w_mg == 0 else "iMGrhpc"
    degenerate = (f"MRP = {only}: the other part has weight 0 (w_mg {weights.w_mg:.2f}, "
                  f"w_mr {weights.w_mr:.2f}), so MRP adds nothing to it")
  claims, ordering = [], {}
  for phase in phases:
    for a, b in CLAIMS:
      la, lb = name[a], name[b]
      if (la, phase) in reported and (lb, phase) in reported:
        claim = compare(f"{a} > {b}", phase, Side(la, reported[(la, phase)]),
                        Side(lb, reported[(lb, phase)]), bootstrap)
        if degenerate and a == "MRP" and b != "rhpc":
          claim.update(holds=False, ci_above_zero=False, degenerate=True)
        claims.append(claim)
    present = [m for m in ORDERING if (name[m], phase) in reported]
    aurocs = {m: statistics.auroc(reported[(name[m], phase)].labels,
                                  reported[(name[m], phase)].probability) for m in present}
    order = sorted(present, key=lambda m: aurocs[m])
    ordering[phase] = {"order": order, "auroc": aurocs,
                       "paper": len(present) == len(ORDERING) and order == list(ORDERING)
                       and len(set(aurocs.values())) == len(ORDERING)}
  imr = name["iMRrhpc"]
  if all((imr, phase) in reported for phase in ("pre", "post")):
    claim = compare("iMRrhpc Post-NAT >= Pre-NAT", "post vs pre",
                    Side(f"{imr} post", reported[(imr, "post")]),
                    Side(f"{imr} pre", reported[(imr, "pre")]), bootstrap)
    value = claim["difference"]["value"]
    claim["holds"] = bool(value is not None and np.isfinite(value) and value >= 0)
    claims.append(claim)
  return {"claims": claims, "held": sum(c["holds"] for c in claims),
          "held_with_ci": sum(c["ci_above_zero"] for c in claims), "total": len(claims),
          "degenerate_weights": degenerate, "ordering": ordering}
