"""DICOM elements encoded directly, Explicit VR Little Endian, in the bytes pydicom's own writer
gives the same dataset: what lets the synthetic export build a series' shared header once and
write hundreds of files that differ in a handful of elements (:class:`SeriesEncoder`)."""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

SOP_INSTANCE_UID = 0x00080018

# An element described by its values: (tag, VR, value). DS, IS, UL and FD take a number or a
# sequence of numbers, text VRs a string, OB/OW bytes, SQ a list of items (lists of elements).
Element = tuple[int, str, Any]
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)
_BINARY_NUMBERS = {"UL": "I", "FD": "d", "US": "H"}  # VR -> struct code


def _numbers(value) -> list:
  return list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]


def _value_bytes(vr: str, value: Any) -> bytes:
  """The value field of an element, as pydicom writes it (padded to even length)."""
  if vr == "SQ":
    items = [b"".join(encode(*e) for e in sorted(item, key=lambda e: e[0])) for item in value]
    return b"".join(_ITEM + struct.pack("<I", len(item)) + item for item in items)
  if vr == "DS":  # pydicom writes a Python float as its repr
    data = "\\".join(repr(float(v)) for v in _numbers(value)).encode("ascii")
  elif vr == "IS":
    data = "\\".join(str(int(v)) for v in _numbers(value)).encode("ascii")
  elif vr in _BINARY_NUMBERS:
    numbers = _numbers(value)
    data = struct.pack(f"<{len(numbers)}{_BINARY_NUMBERS[vr]}", *numbers)
  elif vr in ("OB", "OW"):
    data = bytes(value)
  else:  # text
    data = str(value).encode("ascii")
  if len(data) % 2:
    data += b"\0" if vr in ("UI", "OB") else b" "
  return data


def encode(tag: int, vr: str, value: Any) -> bytes:
  """One element in Explicit VR Little Endian (SQ and its items with defined lengths, as
  pydicom writes a sequence it created)."""
  data = _value_bytes(vr, value)
  if vr in _LONG_VRS:
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(data)) + data
  return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data)) + data


def to_dataset(elements: Iterable[Element]) -> Dataset:
  """The same elements as a pydicom dataset (for the compressed syntaxes, which pydicom
  encodes)."""
  ds = Dataset()
  for tag, vr, value in elements:
    if vr == "SQ":
      value = DicomSequence([to_dataset(item) for item in value])
    elif vr in ("DS", "IS", "UL", "FD", "US") and isinstance(value, (list, tuple, np.ndarray)):
      value = [float(v) if vr in ("DS", "FD") else int(v) for v in value]
    ds.add(DataElement(tag, vr, value))
  return ds


class SeriesEncoder:
  """Writes the files of one series, encoding what they share once.

  A classic MR series is hundreds of files that differ in a handful of elements; pydicom's
  ``dcmwrite`` re-validates and re-encodes all ~60 elements of every file, which made writing
  the synthetic export its slowest stage. Here pydicom encodes the shared elements and the
  file meta once; each file's own elements (:data:`Element` descriptions, always the same tags)
  are encoded by :func:`encode`; the file is the tag-ordered concatenation, the same bytes
  ``Dataset.save_as(..., enforce_file_format=True)`` writes (tests/test_dicom_io.py checks).
  Explicit VR Little Endian only.

  Args:
    template: the shared elements, with file_meta; no SOPInstanceUID (each file has its own).
    own_tags: the tags every file gives :meth:`write` (SOPInstanceUID is added).
  """

  def __init__(self, template: Dataset, own_tags: Iterable[int]):
    if template._transfer_syntax != ExplicitVRLittleEndian:
      raise ValueError("the shared-element encoder writes Explicit VR Little Endian only")
    encodings = template._character_set
    meta = copy.deepcopy(template.file_meta)
    meta.MediaStorageSOPInstanceUID = "1.2"  # a placeholder while the rest is validated
    validate_file_meta(meta, enforce_standard=True)
    encoded_meta = {elem.tag: self._pydicom(elem, encodings) for elem in meta
                    if elem.tag not in (0x00020000, 0x00020003)}
    self._meta = (b"".join(v for t, v in sorted(encoded_meta.items()) if t < 0x00020003),
                  b"".join(v for t, v in sorted(encoded_meta.items()) if t > 0x00020003))
    correct_ambiguous_vr(template, is_little_endian=True)
    shared = {elem.tag: self._pydicom(elem, encodings) for elem in template}
    self._own = frozenset(own_tags) | {SOP_INSTANCE_UID}
    if self._own & shared.keys():
      raise ValueError(f"elements both shared and per file: {sorted(self._own & shared.keys())}")
    # Runs of consecutive shared elements as one chunk; an int is where an own element goes.
    self._layout: list[bytes | int] = []
    for tag in sorted(shared.keys() | self._own):
      if tag in self._own:
        self._layout.append(tag)
      elif self._layout and isinstance(self._layout[-1], bytes):
        self._layout[-1] += shared[tag]
      else:
        self._layout.append(shared[tag])

  @staticmethod
  def _pydicom(elem: DataElement, encodings) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem, encodings)
    return fp.getvalue()

  def write(self, path: Path, sop_instance_uid: str, own: Iterable[Element]) -> Path:
    """Writes the file of the shared elements and ``own`` (its folder must exist)."""
    encoded = {tag: encode(tag, vr, value) for tag, vr, value in own}
    encoded[SOP_INSTANCE_UID] = encode(SOP_INSTANCE_UID, "UI", sop_instance_uid)
    if encoded.keys() != self._own:
      raise ValueError(f"{path}: per-file elements {sorted(encoded)}, expected "
                       f"{sorted(self._own)}")
    meta = self._meta[0] + encode(0x00020003, "UI", sop_instance_uid) + self._meta[1]
    parts = [b"\x00" * 128, b"DICM", encode(0x00020000, "UL", len(meta)), meta]
    parts += [part if isinstance(part, bytes) else encoded[part] for part in self._layout]
    with open(path, "wb") as f:
      f.write(b"".join(parts))
    return path
