"""Which series of an MR study are the DCE inputs: the pre-contrast and the n-th post-contrast.

:func:`select_dce` picks them among the series that ``dicom_scan.scan_folder`` indexed: a
multiphase series first (all phases in one series, split by temporal position), then
series descriptions as scanners write them, then acquisition order of same-geometry series.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from pathlib import Path
from typing import Iterable

import numpy as np

from input_pipeline.ingestion.dicom_scan import SeriesInfo
from input_pipeline.ingestion.patient import DicomDce, SeriesSelection

# Series descriptions are compared lower-cased with every character except letters, digits,
# '+' and '-' turned into spaces ('Ph1/ax 3d dyn' -> 'ph1 ax 3d dyn', 'ax t1 +c' stays).
_NOT_DCE = re.compile(
    r"\b(?:loc|locali[sz]er|scout|survey|3 ?plane|tri ?pilot|cal|calibration|t2\w*|stir|tirm|"
    r"dwi|diffusion|adc|trace\w*|ep2d|b ?\d{3,4}|mip|sub|subs|subtract\w*|ser|pe\d?|mask|"
    r"seg|segmentation|cad|mpr|reformat\w*)\b")
_NOT_DCE_IMAGE_TYPES = frozenset({"SUB", "SUBTRACT", "SUBTRACTION", "MIP", "MPR",
                                  "PROJECTION IMAGE", "LOCALIZER"})
_PRE_STRONG = re.compile(r"\bpre\b|\bprecontrast\b|\bnative?\b|\bunenhanced\b")
_PRE_WEAK = re.compile(r"(?:^|\s)c-(?:\s|$)|\bw/?o\b|\bwithout\b|\bnon-?contrast\b")
_ORDINAL_WORDS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6}
_POST_ORDINAL = (
    re.compile(r"\b(\d)(?:st|nd|rd|th)\b"),
    re.compile(r"\bpost ?-? ?(\d)\b"),
    re.compile(r"\bpass ?(\d)\b"),
    re.compile(r"\b(" + "|".join(_ORDINAL_WORDS) + r")\b"),
)
_POST_ANY = re.compile(r"\bpost\b|\+c\b|\bc\+|\bgd\b|\bgad\w*|\bcontrast\b|\bdelayed?\b|\benh\b")
_PHASE_NUMBER = re.compile(r"\bph ?(\d+)\b")
_DYNAMIC = re.compile(r"\bdyn\w*|\bdce\b|vibrant|fl3d|\bvibe\b|thrive|\blava\b|twist|\bfame\b|"
                      r"\b3d\b|multiphase|\bph ?\d")
# Long TR or TE means T2 weighting or diffusion, whatever the description says.
_MAX_DCE_REPETITION_MS = 1000.0
_MAX_DCE_ECHO_MS = 40.0


class DiscoveryError(Exception):
  """The files of a patient cannot give the inputs asked for; the message says why."""


def normalise_description(text: str) -> str:
  return " ".join(re.sub(r"[^a-z0-9+\-]+", " ", (text or "").lower()).split())


def is_dce_candidate(series: SeriesInfo) -> bool:
  """An MR image series that could be a DCE phase (not a localizer, T2, DWI, MIP, map...)."""
  if not series.is_mr or series.frames_per_position < 2:
    return False
  if _NOT_DCE.search(normalise_description(series.description)):
    return False
  if _NOT_DCE_IMAGE_TYPES.intersection(series.image_type):
    return False
  if (series.repetition_time_ms or 0.0) >= _MAX_DCE_REPETITION_MS:
    return False
  return (series.echo_time_ms or 0.0) < _MAX_DCE_ECHO_MS


def _post_ordinal(text: str) -> int | None:
  for pattern in _POST_ORDINAL:
    match = pattern.search(text)
    if match:
      token = match.group(1)
      return _ORDINAL_WORDS.get(token) or int(token)
  return None


@dataclasses.dataclass(frozen=True)
class _Role:
  """What a series description and its times say about its place in the dynamic scan.

  Attributes:
    pre: 2 explicit ('pre', 'native'), 1 weak ('c-', 'w/o'), 0 not pre-contrast.
    post: says post-contrast ('1st pass', 'post 2', '+c', ...).
    ordinal: which post-contrast phase, when the description says so.
    dynamic: looks like a dynamic acquisition ('dyn', 'vibrant', 'ph2', ...).
    timed: AcquisitionTime or TriggerTime is known.
    order: acquisition order key: time, trigger time, 'PhN' number, SeriesNumber.
  """
  pre: int
  post: bool
  ordinal: int | None
  dynamic: bool
  timed: bool
  order: tuple


def _role(series: SeriesInfo) -> _Role:
  text = normalise_description(series.description)
  ordinal = _post_ordinal(text)
  pre = 2 if _PRE_STRONG.search(text) else 1 if _PRE_WEAK.search(text) else 0
  phase = _PHASE_NUMBER.search(text)
  unknown = math.inf
  order = (unknown if series.acquisition_time_s is None else series.acquisition_time_s,
           unknown if series.trigger_time_ms is None else series.trigger_time_ms,
           int(phase.group(1)) if phase else unknown,
           unknown if series.number is None else series.number)
  post = ordinal is not None or (pre == 0 and bool(_POST_ANY.search(text)))
  timed = series.acquisition_time_s is not None or series.trigger_time_ms is not None
  return _Role(pre, post, ordinal, bool(_DYNAMIC.search(text)), timed, order)


def _seen(series: Iterable[SeriesInfo]) -> str:
  return ", ".join(repr(s.description or "(no description)") for s in
                   sorted(series, key=lambda s: (s.number is None, s.number or 0, s.description)))


def _size(series: SeriesInfo) -> str:
  return (f"{series.columns}x{series.rows}x{series.frames_per_position} voxels, "
          f"spacing {series.pixel_spacing}, orientation {series.orientation}")


def _along_normal(series: SeriesInfo, normal: np.ndarray) -> dict[float, list[Path]] | None:
  """Files by slice position along ``normal`` (mm, to 0.1), or None when the positions are
  unknown (multi-frame files) or repeat by design (several temporal positions)."""
  if len(series.temporal_positions) > 1 or not series.positions or None in series.positions:
    return None
  by_position: dict[float, list[Path]] = collections.defaultdict(list)
  for path, position in zip(series.files, series.positions):
    by_position[round(float(np.dot(position, normal)), 1) + 0.0].append(Path(path))
  return by_position


def _slice_difference(pre: SeriesInfo, post: SeriesInfo) -> str | None:
  """Why pre and post of one in-plane geometry differ in slice count, where their slice
  positions tell: a position two files of one series share (a duplicated file), or positions
  one series has and the other lacks (missing files). None when they differ otherwise."""
  if (pre.rows, pre.columns, pre.orientation, pre.pixel_spacing) != (
      post.rows, post.columns, post.orientation, post.pixel_spacing) or not pre.orientation:
    return None
  normal = np.cross(pre.orientation[:3], pre.orientation[3:])
  named = {"pre-contrast": pre, "post-contrast": post}
  along = {name: _along_normal(series, normal) for name, series in named.items()}
  if None in along.values():
    return None
  for name, series in named.items():
    for z, paths in sorted(along[name].items()):
      if len(paths) > 1:
        return (f"{name} {series.description!r} has {len(paths)} files at one slice position "
                f"({', '.join(p.name for p in paths)}, {z:g} mm along the slice normal): a "
                "duplicated file; remove all but one")
  for name, other in (("pre-contrast", "post-contrast"), ("post-contrast", "pre-contrast")):
    positions = np.array(sorted(along[name]))
    step = float(np.median(np.diff(positions))) if len(positions) > 1 else 1.0
    missing = [z for z in sorted(along[other]) if np.abs(positions - z).min() > step / 4]
    if missing:
      return (f"{name} {named[name].description!r} lacks the slice(s) at "
              f"{', '.join(f'{z:g}' for z in missing[:5])} mm along the slice normal that "
              f"{other} {named[other].description!r} has (in "
              f"{along[other][missing[0]][0].name}): missing file(s)")
  return None


def _mismatch(pre: SeriesInfo, post: SeriesInfo) -> DiscoveryError:
  difference = _slice_difference(pre, post)
  return DiscoveryError(
      f"pre/post size mismatch: {difference}" if difference else
      f"pre/post size mismatch: pre-contrast {pre.description!r} is {_size(pre)}, "
      f"post-contrast {post.description!r} is {_size(post)}")


def _from_multiphase(series: SeriesInfo, post_index: int) -> DicomDce:
  positions = sorted(series.temporal_positions)
  if post_index >= len(positions):
    raise DiscoveryError(
        f"multiphase series {series.description!r} has {len(positions)} temporal positions; "
        f"post-contrast phase {post_index} needs {post_index + 1}")
  files = tuple(series.files)
  return DicomDce(pre=SeriesSelection(files, positions[0], series.description),
                  post=SeriesSelection(files, positions[post_index], series.description))


def _contrast_evidence(group: list[SeriesInfo]) -> dict[str, bool]:
  """Which series the contrast tags say were acquired after the injection.

  A series acquired at or after ContrastBolusStartTime was; one acquired before it was not.
  Without a start time, a series carrying contrast tags was, and one without them was not.
  Tags only count when they set series apart: some vendors copy the agent onto every series of
  the exam, the pre-contrast one included, and then they say nothing.
  """
  starts = [s.contrast_start_s for s in group if s.contrast_start_s is not None]
  start = min(starts) if starts else None
  after = {s.uid: (s.acquisition_time_s >= start
                   if start is not None and s.acquisition_time_s is not None else s.contrast)
           for s in group}
  return after if len(set(after.values())) > 1 else {}


def _pick_in_group(group: list[SeriesInfo], post_index: int
                   ) -> tuple[SeriesInfo | None, SeriesInfo | None]:
  """(pre, post) among series of one geometry; either is None when it cannot be told."""
  roles = {s.uid: _role(s) for s in group}
  # A series the contrast tags place after the injection is never the pre-contrast one.
  for uid, after in _contrast_evidence(group).items():
    if after:
      roles[uid] = dataclasses.replace(roles[uid], pre=0, post=True)
  ordered = sorted(group, key=lambda s: roles[s.uid].order)
  explicit = [s for s in ordered if roles[s.uid].pre and not roles[s.uid].post]
  if explicit:
    pre = min(explicit, key=lambda s: (-roles[s.uid].pre, -roles[s.uid].dynamic))
    rest = [s for s in ordered if not roles[s.uid].pre]
  else:
    # No description says pre-contrast: the one series not labelled post-contrast is, or
    # else the earliest of them, if their order is known (times, 'PhN' numbers, or series
    # numbers beside labelled post-contrast series).
    unlabelled = [s for s in ordered if not roles[s.uid].post]
    labelled = len(unlabelled) < len(ordered)
    if not unlabelled or len(ordered) < 2:
      return None, None
    if len(unlabelled) > 1:
      first, second = roles[unlabelled[0].uid], roles[unlabelled[1].uid]
      if first.order == second.order or not (first.timed or labelled
                                             or first.order[2] < math.inf):
        return None, None
    pre = unlabelled[0]
    rest = [s for s in ordered if s is not pre]
  # A series acquired before the pre-contrast one cannot be post-contrast.
  rest = [s for s in rest if not roles[s.uid].order[0] < roles[pre.uid].order[0]]
  posts = sorted(rest, key=lambda s: (roles[s.uid].ordinal or math.inf, roles[s.uid].order))
  numbered = [s for s in posts if roles[s.uid].ordinal == post_index]
  if numbered:
    return pre, numbered[0]
  return pre, posts[post_index - 1] if len(posts) >= post_index else None


def select_dce(series: Iterable[SeriesInfo], post_index: int = 1) -> DicomDce:
  """Chooses the pre-contrast and the ``post_index``-th post-contrast series of one MR study.

  In this order:
    1. a multiphase series (at least two temporal positions, e.g. GE 'Ax Vibrant MultiPhase',
       I-SPY2 'original DCE'): its first temporal position is the pre-contrast phase and the
       ``post_index``-th after it the post-contrast one;
    2. series descriptions ('ax dyn pre' / 'ax dyn 1st pass', 'T1 FL3D AX PRE' / 'POST 1',
       'Ph1/ax 3d dyn', 'ax t1 +c', ...), pairing only series of one geometry;
    3. the acquisition order (AcquisitionTime, TriggerTime, SeriesNumber) of same-geometry
       series: the earliest is pre-contrast.
  In 2 and 3 the contrast tags overrule: a series acquired after ContrastBolusStartTime, or
  the one carrying contrast tags when others of its geometry do not, is never pre-contrast.
  Localizers, T2, DWI/ADC, MIPs, subtractions and other derived series are never chosen
  (derived multiphase series only when no original one exists).

  Args:
    series: the series of one study.
    post_index: 1 for the first post-contrast phase (the paper's choice), 2 for the second...

  Raises:
    DiscoveryError: no pre- or no post-contrast series; the message lists the descriptions
      seen.
  """
  if post_index < 1:
    raise ValueError(f"post_index must be >= 1, got {post_index}")
  series = list(series)
  candidates = [s for s in series if is_dce_candidate(s)]
  multiphase = [s for s in candidates if len(s.temporal_positions) >= 2]
  if multiphase:
    best = min(multiphase, key=lambda s: (
        s.is_derived, -(s.rows or 0) * (s.columns or 0) * s.frames_per_position,
        -len(s.temporal_positions)))
    return _from_multiphase(best, post_index)

  groups: dict[tuple, list[SeriesInfo]] = {}
  for s in candidates:
    if not s.is_derived:
      groups.setdefault(s.geometry, []).append(s)
  found_pre = None
  best_pair, best_rank = None, None
  for group in groups.values():
    pre, post = _pick_in_group(group, post_index)
    found_pre = found_pre or pre
    if pre is None or post is None:
      continue
    rank = (_role(pre).pre, sum(_role(s).dynamic for s in group), len(group))
    if best_rank is None or rank > best_rank:
      best_pair, best_rank = (pre, post), rank
  if best_pair is None:
    # Pairing across geometries finds the pair that the grouping kept apart (e.g. a pre-contrast
    # series named like the posts, alone in its geometry): a size mismatch, said as such.
    pre, post = _pick_in_group([s for s in candidates if not s.is_derived], post_index)
    if pre is not None and post is not None and pre.geometry != post.geometry:
      raise _mismatch(pre, post)
    if found_pre is None:
      raise DiscoveryError(f"no pre-contrast series among: {_seen(series) or 'no series'}")
    posts = [s for s in candidates if s.geometry != found_pre.geometry and _role(s).post
             and not s.is_derived]
    if posts:
      raise _mismatch(found_pre, posts[0])
    raise DiscoveryError(
        f"no post-contrast series (phase {post_index}) with the geometry of pre-contrast "
        f"{found_pre.description!r} among: {_seen(series)}")
  pre, post = best_pair
  return DicomDce(pre=SeriesSelection(tuple(pre.files), None, pre.description),
                  post=SeriesSelection(tuple(post.files), None, post.description))
