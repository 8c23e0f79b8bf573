"""Which breast and which view a mammography image shows, from every place exports put them
(laterality and view attributes, codes, descriptions, PatientOrientation, file names).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pydicom

# ViewCodeSequence codes (SNOMED-RT as DICOM CID 4014 lists them, and their SNOMED CT ids).
_VIEW_CODES = {"R-10242": "CC", "399162004": "CC", "R-10226": "MLO", "399368009": "MLO",
               "R-10224": "ML", "399260004": "ML", "R-10228": "LM", "399352003": "LM",
               "R-1024A": "XCCL", "399099002": "XCCL", "R-1024B": "XCCM", "399192003": "XCCM"}
_VIEW_WORDS = (("MLO", r"medio ?lateral oblique|oblique"), ("CC", r"cranio ?caudal"),
               ("ML", r"medio ?lateral"), ("LM", r"latero ?medial"))
_VIEW_TOKENS = ("xccl", "xccm", "mlo", "cc", "ml", "lm")
_SIDE_WORDS = {"left": "L", "lt": "L", "l": "L", "right": "R", "rt": "R", "r": "R"}
# 'lcc', 'rmlo', 'leftcc': a side and a view written as one token.
_SIDE_VIEW_TOKEN = re.compile(r"(left|right|l|r)(" + "|".join(_VIEW_TOKENS) + r")")


@dataclasses.dataclass(frozen=True)
class ImageView:
  """What one mammography image shows, and which attribute said so.

  Attributes:
    laterality: 'L', 'R', or '' when nothing says.
    view: ViewPosition's code ('CC', 'MLO', 'ML', 'LM', 'XCCL', ...), or '' when nothing says.
    intent: PresentationIntentType ('FOR PRESENTATION', 'FOR PROCESSING' or '').
    laterality_from, view_from: the attribute that gave it ('ImageLaterality', 'ViewCodeSequence',
      'SeriesDescription', 'file name', ...), '' when none did.
  """
  laterality: str = ""
  view: str = ""
  intent: str = ""
  laterality_from: str = ""
  view_from: str = ""


def _text_view(text: str) -> tuple[str, str]:
  """(laterality, view) a description or a file name states; '' for what it does not."""
  words = " ".join(re.sub(r"[^a-z0-9]+", " ", (text or "").lower()).split())
  side, view = "", ""
  for token in words.split():
    match = _SIDE_VIEW_TOKEN.fullmatch(token)
    if match:
      side = side or _SIDE_WORDS[match.group(1)]
      view = view or match.group(2).upper()
    elif token in _VIEW_TOKENS:
      view = view or token.upper()
    elif token in _SIDE_WORDS:
      side = side or _SIDE_WORDS[token]
  if not view:
    view = next((code for code, words_re in _VIEW_WORDS if re.search(words_re, words)), "")
  return side, view


def _orientation_view(value) -> tuple[str, str]:
  """(laterality, view) from PatientOrientation's column direction (DICOM PS3.3 C.8.11.7:
  L CC 'A\\R', R CC 'P\\L', L MLO 'A\\FR', R MLO 'P\\FL'): going down the image runs
  medially, toward the other side; a head or foot component means an oblique or lateral view."""
  parts = [str(v).upper() for v in (value or [])]
  if len(parts) != 2:
    return "", ""
  column = parts[1]
  side = "L" if "R" in column and "L" not in column else (
      "R" if "L" in column and "R" not in column else "")
  return side, ("" if not side else "CC" if not set(column) & {"F", "H"} else "")


def mammogram_view(ds: pydicom.Dataset, path: Path) -> ImageView:
  """Laterality and view of a mammography image from every place exports put them.

  In this order, the first that says wins, each for itself: ImageLaterality, Laterality;
  ViewPosition, ViewCodeSequence (code, then meaning); SeriesDescription, ProtocolName,
  ImageComments, AcquisitionDeviceProcessingDescription ('L CC', 'RMLO', 'left
  craniocaudal'); PatientOrientation (its column direction gives the side, and CC when it has no
  head or foot component); last the file and folder names ('..._LEFT_CC/1-1.dcm').
  """
  found = {"laterality": ("", ""), "view": ("", "")}

  def offer(source: str, side: str = "", view: str = "") -> None:
    if side in ("L", "R") and not found["laterality"][0]:
      found["laterality"] = (side, source)
    if view and not found["view"][0]:
      found["view"] = (view, source)

  for keyword in ("ImageLaterality", "Laterality"):
    offer(keyword, side=str(ds.get(keyword, "") or "").strip().upper())
  offer("ViewPosition", view=str(ds.get("ViewPosition", "") or "").strip().upper())
  for item in ds.get("ViewCodeSequence") or ():
    code = _VIEW_CODES.get(str(item.get("CodeValue", "") or "").strip())
    offer("ViewCodeSequence", view=code or _text_view(str(item.get("CodeMeaning", "")))[1])
  for keyword in ("SeriesDescription", "ProtocolName", "ImageComments",
                  "AcquisitionDeviceProcessingDescription"):
    offer(keyword, *_text_view(str(ds.get(keyword, "") or "")))
  offer("PatientOrientation", *_orientation_view(ds.get("PatientOrientation")))
  for part in (path.stem, *reversed(path.parent.parts[-3:])):
    offer("file name", *_text_view(part))
  (side, side_from), (view, view_from) = found["laterality"], found["view"]
  return ImageView(side, view, str(ds.get("PresentationIntentType", "") or "").strip().upper(),
                   side_from, view_from)
