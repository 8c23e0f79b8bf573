"""What a patient folder holds that the inputs do not use, and why: series not chosen, and files
the scan could not read (which stop the patient only when they could have changed the choice).

Shared by the generic and Duke adapters.
"""

from __future__ import annotations

import collections
from pathlib import Path

from input_pipeline.ingestion.dce_select import DiscoveryError, is_dce_candidate
from input_pipeline.ingestion.dicom_scan import ScanResult, SeriesInfo
from input_pipeline.ingestion.patient import Unused


def _series_folder(series: SeriesInfo) -> str:
  folders = {str(Path(f).parent) for f in series.files}
  return folders.pop() if len(folders) == 1 else str(Path(series.files[0]).parent)


def unused_series(scan: ScanResult, used: dict[str, set[Path]], reasons: dict[str, str],
                  post_index: int) -> list[Unused]:
  """Every series of the scan, other than mammograms, that the exams do not use, and why.

  Args:
    used: study uid -> the files its chosen DCE exam reads.
    reasons: study uid -> why a whole study is not used (no phase, ...).
  """
  unused = []
  for study in scan.sorted_studies():
    for series in sorted(study.series.values(), key=lambda s: (s.number or 0, s.uid)):
      if series.is_mammogram or used.get(study.uid, set()) & set(series.files):
        continue
      item = (f"{series.modality or 'unknown modality'} series "
              f"{series.description or '(no description)'!r} of {study.label()}")
      if study.uid in reasons:
        reason = reasons[study.uid]
      elif not series.is_mr:
        reason = f"modality {series.modality or 'unknown'}: only MR and mammography are used"
      elif not is_dce_candidate(series):
        reason = ("not a DCE phase (a localizer, T2, diffusion, derived or other series, by "
                  "its description, image type or TR / TE)")
      else:
        reason = (f"a DCE series other than the pre-contrast one and post-contrast phase "
                  f"{post_index}")
      unused.append(Unused(item, _series_folder(series), reason))
  return unused


def unread_note(scan: ScanResult) -> str:
  """What a message about missing series should add: the files the scan could not read."""
  if not scan.problems:
    return ""
  return (f" ({len(scan.problems)} DICOM file(s) could not be read, e.g. "
          f"{scan.problems[0]})")


def unreadable_files(scan: ScanResult, used: set[Path]) -> list[Unused]:
  """The files the scan could not read, as unused images, when none could have changed the
  choice of the patient's inputs.

  The series a broken file may belong to: the one its SeriesInstanceUID names (readable in a
  file cut off in its pixel data), else every series of its folder (exports keep a series per
  folder). It is harmless when those series are neither used nor could be chosen: not DCE
  candidates (a localizer, a T2) or mammograms, whose other views are a fallback the choice
  makes anyway (a warning says so). A file of a DCE candidate is not: a slice lost from the
  pre-contrast series changes its geometry and so the pairing. A file of a series no readable
  file has counts by its Modality (MR: not harmless); a file of which nothing is readable,
  alone in its folder, is not harmless either.

  Raises:
    DiscoveryError: naming the first harmful file (and how many more).
  """
  used = {Path(p) for p in used}
  series = {s.uid: s for study in scan.studies.values() for s in study.series.values()}
  by_folder: dict[Path, set[str]] = collections.defaultdict(set)
  for one in series.values():
    for path in one.files:
      by_folder[Path(path).parent].add(one.uid)

  def harmless(one: SeriesInfo) -> bool:
    return not used.intersection(map(Path, one.files)) and (
        one.is_mammogram or not is_dce_candidate(one))

  harmful = []
  for problem in scan.problems:
    if problem.series_uid in series:
      ok = harmless(series[problem.series_uid])
    elif problem.series_uid is not None:
      ok = problem.modality not in (None, "MR")
    else:
      near = [series[uid] for uid in by_folder.get(problem.path.parent, ())]
      ok = bool(near) and all(harmless(one) for one in near)
    if not ok:
      harmful.append(problem)
  if harmful:
    more = f" (and {len(harmful) - 1} more)" if len(harmful) > 1 else ""
    raise DiscoveryError(f"{harmful[0]}{more}; it may belong to a series used or one the "
                         "choice of series depends on: repair or remove the file")
  return [Unused(f"unreadable file {p.path.name!r}", str(p.path),
                 f"corrupt DICOM file ({p.reason}); not in a series used") for p in scan.problems]


def unreadable_warning(unreadable: list[Unused]) -> list[str]:
  """The warning a patient kept despite unreadable files carries: the series chosen are
  readable, but a broken file may have been the one a rule would have preferred (the CC
  view, say)."""
  if not unreadable:
    return []
  return [(f"unreadable DICOM files outside the series used: {len(unreadable)} (listed with the "
           "unused images); readable, they might have been chosen")]
