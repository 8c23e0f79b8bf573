"""Which NAT phase an MR or MG study is: the rules of the generic layout (layouts/generic.py's
docstring), shared with the I-SPY2 adapter through it."""

from __future__ import annotations

import re

from input_pipeline import schema
from input_pipeline.ingestion.dce_select import DiscoveryError
from input_pipeline.ingestion.dicom_scan import StudyInfo
from input_pipeline.schema import Phase

T1, FOLLOW_UP = "t1", "follow-up"
# A time-point tag is 'T0'..'T3' anywhere; a description only names one after 'MRI'
# ('ISPY2_MRI_T2', 'ISPY2MRIT0'), since 'T1'/'T2' alone there more likely mean weightings.
_TAG_TIME_POINT = re.compile(r"(?:^|[^a-z0-9])t ?([0-3])(?:$|[^0-9])")
_DESCRIBED_TIME_POINT = re.compile(r"mri[ _\-]*t([0-3])(?:$|[^0-9])")
_TREATMENT = r"(?:nat|nac|nact|neoadjuvant|treatment|therapy|chemo\w*)"
_DESCRIBED = (
    (Phase.POST, re.compile(rf"\bpost ?{_TREATMENT}\b|\bposttreatment\b|\bpre ?(?:op|operative|"
                            r"surgery|surgical)\b|\bpreoperative\b|\bpresurgical\b")),
    (Phase.MID, re.compile(rf"\bmid ?{_TREATMENT}?\b|\bmidtreatment\b|\binterim\b|"
                           rf"\bduring ?{_TREATMENT}\b")),
    (Phase.PRE, re.compile(rf"\bpre ?{_TREATMENT}\b|\bpretreatment\b|\bprenat\b|\bbaseline\b")),
    (FOLLOW_UP, re.compile(r"\bfollow ?up\b|\bfollowup\b")),
)


def phase_of_text(text: str, tag: bool) -> Phase | str | None:
  """The phase a ClinicalTrialTimePointID (``tag``) or StudyDescription names.

  Returns a Phase, 't1' (early treatment), 'follow-up' (Mid or Post, by date), or None when
  the text says nothing.
  """
  text = (text or "").strip().lower()
  if not text:
    return None
  if tag and text in schema.PHASE_NAMES:
    return Phase[text.upper()]
  match = (_TAG_TIME_POINT if tag else _DESCRIBED_TIME_POINT).search(text)
  if match:
    point = int(match.group(1))
    if point == 1:
      return T1
    return {0: Phase.PRE, 2: Phase.MID, 3: Phase.POST}[point]
  words = " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())
  for phase, pattern in _DESCRIBED:
    if pattern.search(words):
      return phase
  return None


def resolve_phases(studies: list[StudyInfo], two_study_followup: Phase = Phase.POST,
                   t1_phase: Phase | None = None) -> dict[Phase, StudyInfo]:
  """Which MR study is which NAT phase (see the module docstring for the rules).

  Args:
    studies: the patient's MR studies in date order.
    two_study_followup: the phase of the later of two studies known only by date.
    t1_phase: the phase a T1 (early treatment) study takes when no other study has it;
      None ignores T1 studies.

  Raises:
    DiscoveryError: two studies claim one phase, or more studies than phases are left.
  """
  assigned: dict[Phase, StudyInfo] = {}
  pending: list[tuple[StudyInfo, bool]] = []  # (study, is a follow-up)
  early: list[StudyInfo] = []
  for study in studies:
    phase = phase_of_text(study.time_point_id, tag=True)
    if phase is None:
      phase = phase_of_text(study.description, tag=False)
    if phase == T1:
      early.append(study)
    elif phase is None or phase == FOLLOW_UP:
      pending.append((study, phase == FOLLOW_UP))
    elif phase in assigned:
      raise DiscoveryError(f"two MR studies are {phase.label}: {assigned[phase].label()} and "
                           f"{study.label()}")
    else:
      assigned[phase] = study
  if pending and Phase.PRE not in assigned and not pending[0][1]:
    assigned[Phase.PRE] = pending.pop(0)[0]
  free = [p for p in (Phase.MID, Phase.POST) if p not in assigned]
  if len(pending) == 1 and len(free) == 2:
    free = [two_study_followup]
  if len(pending) > len(free):
    raise DiscoveryError(
        f"cannot tell the NAT phase of {len(pending)} MR studies ("
        + ", ".join(s.label() for s, _ in pending) + "): set ClinicalTrialTimePointID or a "
        "StudyDescription keyword (pre-NAT / mid-NAT / post-NAT)")
  for (study, _), phase in zip(pending, free):
    assigned[phase] = study
  if t1_phase is not None and t1_phase not in assigned and len(early) == 1:
    assigned[t1_phase] = early[0]
  return dict(sorted(assigned.items()))
