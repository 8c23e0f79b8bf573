"""One preprocessed patient <-> one ``tf.train.Example``, without TensorFlow.

The proto classes come from ``tensorflow_datasets.proto.tf_example_pb2``. Volumes are stored
as raw little-endian array bytes plus a shape (an int64 list would be 4x larger). Feature keys
(other code and any tf.data reader depend on them; change them only with ``FORMAT_VERSION``):

  patient_id      bytes   pseudonym 'P' + 12 lower-case hex digits (never a source id)
  split           bytes   'train' | 'validation' | 'test'
  label           int64   1 pCR, 0 non-pCR, -1 unknown
  mri/phases      int64[] Phase values present (0 pre, 1 mid, 2 post), ascending; empty for
                          a patient without MRI (mammogram and/or rhpc only)
  mri/pre|mid|post bytes  subtraction volume [z, y, x], only for the phases present
  mri/shape       int64[3]  [z, y, x], shared by every phase    } absent when
  mri/dtype       bytes   'float16' | 'int16'                   } mri/phases
  mri/spacing_mm  float[3]  voxel spacing (x, y, z) in mm, as float32 } is empty
  mg              bytes   the mammogram views stacked [views, rows, cols]; mg, mg/shape,
  mg/shape        int64[3]  mg/dtype and mg/views are absent when the patient has no
  mg/dtype        bytes   'uint16' | 'float16'              } mammogram
  mg/views        bytes[views] each view's name: 'CC', 'MLO', another view as the DICOM states
                          it, '' when nothing states it; distinct, the preferred view first
  rhpc/raw        bytes[22] raw clinical strings in schema.VARIABLES order, '' when missing
  rhpc/codes      int64[22] schema codes (-1 Unknown)
  rhpc/values     float[22] raw numbers, NaN where not numeric
  format_version  int64   FORMAT_VERSION
  align/<key>     bytes   zero padding before image <key>, and align/end after the last one
                          (version 2; readers ignore them)

Format version 3 holds every mammogram view of the tumour side (version 1 and 2: one view,
``mg/shape`` [rows, cols] and no ``mg/views``). Versions 1 and 2 are still read: their one view
comes back under the name '' (the view was not recorded), so a records folder prepared before
needs no new prepare to train or evaluate; only a new prepare stores the second view.

Alignment (format version 2 on): :func:`encode` places every image payload at an offset of the
record's data that is 12 short of a multiple of 64 (12: the TFRecord header of length and CRC
in front of the data), and pads the record so that its framed size (12 + data + 4) is a
multiple of 64. Written one after another into a shard from offset 0
(tfrecord.TFRecordWriter), every record starts at a 64-byte file offset and every volume at a
64-byte address of the mapped shard: XLA's CPU client then uses the mapped pages in place
(``jax.device_put`` of a 64-byte aligned host array does not copy), and a DMA engine reads
whole cache lines. The padding entries are ordinary features (a ``tf.train.Example`` map does
not depend on entry order), so any Example reader still reads the records. Version 1 records
(no padding) are still read; their volumes are copied when put on a device.

:func:`decode` rejects anything else (a missing or unknown key, a wrong feature kind or list
length, an unknown dtype, a shape that does not match the byte count) with a
:class:`RecordFormatError` naming the key, so a bad record never turns into a wrong array.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from google.protobuf.message import DecodeError
from tensorflow_datasets.proto import tf_example_pb2, tf_feature_pb2

from input_pipeline.records import wire
from input_pipeline.schema import PHASE_NAMES, VARIABLES

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
# The last version that held one mammogram [rows, cols] and no view names.
_ONE_VIEW_VERSIONS = (1, 2)
# Image payloads start at this alignment in a shard's file (module docstring).
ALIGNMENT = wire.ALIGNMENT
SPLITS = ("train", "validation", "test")
# The records folder's index, written last by prepare: shards, splits, geometry, counts.
MANIFEST = "manifest.json"
LABELS = (-1, 0, 1)
MRI_DTYPES = ("float16", "int16")
MG_DTYPES = ("uint16", "float16")
# A pseudonym cannot carry a source identifier such as 'Breast_MRI_001' or 'ISPY2-100899'.
PSEUDONYM = re.compile(r"P[0-9a-f]{12}")
NUM_RHPC = len(VARIABLES)


def read_manifest(records_dir: str | os.PathLike) -> dict[str, Any]:
  """The manifest that ``prepare`` wrote in ``records_dir``."""
  path = Path(records_dir) / MANIFEST
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: is {records_dir} a folder written by "
                            "python -m input_pipeline.records.prepare?")
  return json.loads(path.read_text())


_REQUIRED = ("patient_id", "split", "label", "mri/phases", "rhpc/raw", "rhpc/codes",
             "rhpc/values", "format_version")
_MRI_KEYS = ("mri/shape", "mri/dtype", "mri/spacing_mm")
_MG_KEYS = ("mg", "mg/shape", "mg/dtype")
_MG_VIEWS = "mg/views"
_PAYLOAD_ORDER = tuple(f"mri/{p}" for p in PHASE_NAMES) + ("mg",)
_ALIGN_KEYS = tuple(f"align/{k}" for k in _PAYLOAD_ORDER) + ("align/end",)
_KNOWN = frozenset(_REQUIRED + _MRI_KEYS + _MG_KEYS + (_MG_VIEWS,) + _PAYLOAD_ORDER + _ALIGN_KEYS)
# Image values are cut out of a serialised Example as views (records/wire.py), the rest parsed.
_PAYLOAD_KEYS = frozenset(_PAYLOAD_ORDER)


class RecordFormatError(ValueError):
  """An Example that does not follow the record format.

  Attributes:
    key: the offending feature key (None when the bytes are not an Example at all).
    patient_id: the record's pseudonym when it could be read before the error, else None.
  """

  def __init__(self, key: str | None, problem: str, patient_id: str | None = None):
    self.key = key
    self.patient_id = patient_id
    where = f"feature '{key}'" if key else "record"
    who = f" (patient {patient_id})" if patient_id else ""
    super().__init__(f"{where}{who}: {problem}")


@dataclasses.dataclass(frozen=True, eq=False)
class PatientRecord:
  """One preprocessed patient, decoded.

  Attributes:
    patient_id: pseudonym, 'P' + 12 lower-case hex digits.
    split: 'train', 'validation' or 'test'.
    label: 1 pCR, 0 non-pCR, -1 unknown.
    mri: subtraction volume [z, y, x] per phase name present ('pre', 'mid', 'post'), all of
      one shape and one dtype (float16 or int16); empty for a patient without MRI.
    mammograms: the Pre-NAT mammogram views of the tumour side, view name ('CC', 'MLO', another
      view, '' when not stated or not recorded) -> [rows, cols], all of one shape and one dtype
      (uint16 or float16), the preferred view first; empty for a patient without mammogram.
    rhpc_raw: the 22 raw clinical strings in schema.VARIABLES order, '' when missing.
    rhpc_codes: int32 [22], schema codes, -1 Unknown.
    rhpc_values: float32 [22], raw numbers, NaN where not numeric.
    spacing_mm: MRI voxel spacing (x, y, z) in mm; None without MRI.
  """
  patient_id: str
  split: str
  label: int
  mri: Mapping[str, np.ndarray]
  mammograms: Mapping[str, np.ndarray]
  rhpc_raw: tuple[str, ...]
  rhpc_codes: np.ndarray
  rhpc_values: np.ndarray
  spacing_mm: tuple[float, float, float] | None

  @property
  def phases(self) -> tuple[int, ...]:
    """Phase values present, ascending (0 pre, 1 mid, 2 post)."""
    return tuple(i for i, name in enumerate(PHASE_NAMES) if name in self.mri)


def _check(record: PatientRecord) -> None:
  """Raises ValueError naming the patient and the field that cannot be encoded."""
  pid = record.patient_id

  def fail(field: str, problem: str) -> None:
    raise ValueError(f"patient {pid!r}: cannot encode {field}: {problem}")

  if not isinstance(pid, str) or not PSEUDONYM.fullmatch(pid):
    fail("patient_id", "expected a pseudonym 'P' + 12 lower-case hex digits; source "
         "identifiers must never be written to records")
  if record.split not in SPLITS:
    fail("split", f"{record.split!r} is not one of {SPLITS}")
  if record.label not in LABELS:
    fail("label", f"{record.label!r} is not one of {LABELS}")
  unknown = set(record.mri) - set(PHASE_NAMES)
  if unknown:
    fail("mri", f"unknown phase names {sorted(unknown)}; expected some of {PHASE_NAMES}")
  volumes = list(record.mri.values())
  if volumes:
    if volumes[0].ndim != 3:
      fail("mri", f"expected [z, y, x] volumes, got shape {volumes[0].shape}")
    if any(v.shape != volumes[0].shape or v.dtype != volumes[0].dtype for v in volumes):
      fail("mri", "phases differ in shape or dtype: "
           + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in record.mri.items()))
    if volumes[0].dtype.name not in MRI_DTYPES:
      fail("mri", f"dtype {volumes[0].dtype} is not one of {MRI_DTYPES}")
    if (record.spacing_mm is None or len(record.spacing_mm) != 3
        or not all(math.isfinite(s) and s > 0 for s in record.spacing_mm)):
      fail("spacing_mm", f"expected 3 positive spacings in mm, got {record.spacing_mm}")
  views = list(record.mammograms.values())
  if views:
    if not all(isinstance(name, str) for name in record.mammograms):
      fail("mammograms", f"view names must be strings, got {list(record.mammograms)}")
    if views[0].ndim != 2:
      fail("mammograms", f"expected [rows, cols] views, got shape {views[0].shape}")
    if any(v.shape != views[0].shape or v.dtype != views[0].dtype for v in views):
      fail("mammograms", "views differ in shape or dtype: "
           + ", ".join(f"{k!r} {v.shape} {v.dtype}" for k, v in record.mammograms.items()))
    if views[0].dtype.name not in MG_DTYPES:
      fail("mammograms", f"dtype {views[0].dtype} is not one of {MG_DTYPES}")
  if len(record.rhpc_raw) != NUM_RHPC or not all(isinstance(s, str) for s in record.rhpc_raw):
    fail("rhpc_raw", f"expected {NUM_RHPC} strings, got {len(record.rhpc_raw)} items")
  for field in ("rhpc_codes", "rhpc_values"):
    if np.shape(getattr(record, field)) != (NUM_RHPC,):
      fail(field, f"expected shape ({NUM_RHPC},), got {np.shape(getattr(record, field))}")


def _little_endian_bytes(array: np.ndarray) -> bytes:
  return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode(record: PatientRecord) -> bytes:
  """Serialises ``record`` as a ``tf.train.Example`` whose image payloads are aligned (module
  docstring: they start at 64-byte file offsets once written into a shard).

  The bytes are deterministic: protobuf's sorted serialisation of the small features, then per
  image (Pre, Mid, Post, mammogram) a padding entry and the image entry, then a final padding
  entry.

  Raises:
    ValueError: naming the patient and field, when the record breaks the format (see
      :class:`PatientRecord`).
  """
  _check(record)
  example = tf_example_pb2.Example()
  feature = example.features.feature
  feature["patient_id"].bytes_list.value.append(record.patient_id.encode())
  feature["split"].bytes_list.value.append(record.split.encode())
  feature["label"].int64_list.value.append(int(record.label))
  # An empty int64 list, not a missing key: 'no MRI' is stated, not implied.
  feature["mri/phases"].int64_list.value.extend(record.phases)
  payloads: list[tuple[str, bytes]] = []
  if record.mri:
    first = next(iter(record.mri.values()))
    payloads += [(f"mri/{name}", _little_endian_bytes(record.mri[name]))
                 for name in PHASE_NAMES if name in record.mri]
    feature["mri/shape"].int64_list.value.extend(first.shape)
    feature["mri/dtype"].bytes_list.value.append(first.dtype.name.encode())
    feature["mri/spacing_mm"].float_list.value.extend(float(s) for s in record.spacing_mm)
  if record.mammograms:
    stacked = np.stack(list(record.mammograms.values()))
    payloads.append(("mg", _little_endian_bytes(stacked)))
    feature["mg/shape"].int64_list.value.extend(stacked.shape)
    feature["mg/dtype"].bytes_list.value.append(stacked.dtype.name.encode())
    feature[_MG_VIEWS].bytes_list.value.extend(name.encode() for name in record.mammograms)
  feature["rhpc/raw"].bytes_list.value.extend(s.encode() for s in record.rhpc_raw)
  feature["rhpc/codes"].int64_list.value.extend(int(c) for c in record.rhpc_codes)
  feature["rhpc/values"].float_list.value.extend(float(v) for v in record.rhpc_values)
  feature["format_version"].int64_list.value.append(FORMAT_VERSION)
  small = memoryview(example.SerializeToString(deterministic=True))  # sorted map keys
  begin, end = wire.only_field(small, 0, len(small), wire.TAG_1_LEN)  # Example.features
  return wire.aligned_example(bytes(small[begin:end]), payloads)


class _Reader:
  """Typed access to the features of one Example; every error names the key.

  ``payloads`` are the image values cut out of the serialised Example (bytes-list features
  of one value each, as views); protobuf parsed the rest into ``features``.
  """

  def __init__(self, features: Mapping[str, tf_feature_pb2.Feature],
               payloads: Mapping[str, memoryview]):
    self._features = features
    self._payloads = payloads
    self.patient_id: str | None = None

  def __contains__(self, key: str) -> bool:
    return key in self._features or key in self._payloads

  def keys(self) -> list[str]:
    return list(self._features) + list(self._payloads)

  def fail(self, key: str, problem: str) -> RecordFormatError:
    return RecordFormatError(key, problem, self.patient_id)

  def values(self, key: str, kind: str, length: int | None = None) -> list:
    if key in self._payloads:
      found, values = "bytes_list", [self._payloads[key]]
    elif key in self._features:
      found = self._features[key].WhichOneof("kind")
      values = list(getattr(self._features[key], kind).value) if found == kind else []
    else:
      raise self.fail(key, "missing")
    if found != kind:
      raise self.fail(key, f"expected {kind}, found {found or 'an empty feature'}")
    if length is not None and len(values) != length:
      raise self.fail(key, f"expected {length} values, found {len(values)}")
    return values

  def text(self, key: str, allowed: tuple[str, ...] | None = None) -> str:
    (raw,) = self.values(key, "bytes_list", 1)
    try:
      text = raw.decode()
    except UnicodeDecodeError:
      raise self.fail(key, "not UTF-8 text") from None
    if allowed is not None and text not in allowed:
      raise self.fail(key, f"{text!r} is not one of {allowed}")
    return text

  def array(self, key: str, shape_key: str, dtype_key: str, ndim: int,
            dtypes: tuple[str, ...]) -> np.ndarray:
    shape = tuple(self.values(shape_key, "int64_list", ndim))
    if any(d <= 0 for d in shape):
      raise self.fail(shape_key, f"dimensions must be positive, got {list(shape)}")
    dtype = np.dtype(self.text(dtype_key, dtypes))
    (raw,) = self.values(key, "bytes_list", 1)
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
      raise self.fail(key, f"{len(raw)} bytes do not match {shape_key} {list(shape)} of "
                      f"{dtype.name} ({expected} bytes)")
    # A read-only view of the record's bytes (no copy: a full-geometry record holds 66 MB);
    # only a big-endian host pays for a byte swap.
    array = np.frombuffer(raw, dtype.newbyteorder("<")).reshape(shape)
    return array if array.dtype.isnative else array.astype(dtype)


def decode(data: bytes | memoryview) -> PatientRecord:
  """Parses and validates one serialised Example.

  The image arrays of the result are read-only views of ``data`` (which they keep alive):
  pass a memoryview of a mapped file (tfrecord.iter_records) and nothing is copied.

  Raises:
    RecordFormatError: naming the key (and the patient when known) that breaks the format.
  """
  try:
    rest, payloads = wire.split_payloads(data, _PAYLOAD_KEYS)
  except wire.Irregular:
    rest, payloads = bytes(data), {}  # rare: not as encode() writes; protobuf reads bytes
  example = tf_example_pb2.Example()
  try:
    example.ParseFromString(rest)
  except DecodeError as e:
    raise RecordFormatError(None, f"not a tf.train.Example ({e})") from None
  reader = _Reader(example.features.feature, payloads)
  patient_id = reader.text("patient_id")
  if not PSEUDONYM.fullmatch(patient_id):
    raise reader.fail("patient_id", f"{patient_id[:40]!r} is not a pseudonym 'P' + 12 "
                      "lower-case hex digits")
  reader.patient_id = patient_id
  for key in reader.keys():
    if key not in _KNOWN:
      raise reader.fail(key, "unknown key (not in this record format)")
  (version,) = reader.values("format_version", "int64_list", 1)
  if version not in READABLE_VERSIONS:
    raise reader.fail("format_version", f"is {version}, this code reads {READABLE_VERSIONS}")
  split = reader.text("split", SPLITS)
  (label,) = reader.values("label", "int64_list", 1)
  if label not in LABELS:
    raise reader.fail("label", f"{label} is not one of {LABELS}")

  phases = reader.values("mri/phases", "int64_list")
  if phases != sorted(set(phases)) or not all(0 <= p < len(PHASE_NAMES) for p in phases):
    raise reader.fail("mri/phases", f"{phases} is not an ascending list of distinct "
                      f"phases in 0..{len(PHASE_NAMES) - 1}")
  names = [PHASE_NAMES[p] for p in phases]
  for name in PHASE_NAMES:
    if name not in names and f"mri/{name}" in reader:
      raise reader.fail(f"mri/{name}", f"present but mri/phases is {phases}")
  mri = {name: reader.array(f"mri/{name}", "mri/shape", "mri/dtype", 3, MRI_DTYPES)
         for name in names}
  spacing = None
  if names:
    spacing = tuple(reader.values("mri/spacing_mm", "float_list", 3))
    if not all(math.isfinite(s) and s > 0 for s in spacing):
      raise reader.fail("mri/spacing_mm", f"{list(spacing)} are not positive spacings in mm")
  else:
    extra = [k for k in _MRI_KEYS if k in reader]
    if extra:
      raise reader.fail(extra[0], "present but mri/phases is empty")

  mammograms = _mammograms(reader, version)

  raw = reader.values("rhpc/raw", "bytes_list", NUM_RHPC)
  try:
    rhpc_raw = tuple(s.decode() for s in raw)
  except UnicodeDecodeError:
    raise reader.fail("rhpc/raw", "not UTF-8 text") from None
  codes = np.asarray(reader.values("rhpc/codes", "int64_list", NUM_RHPC), np.int64)
  if codes.min() < np.iinfo(np.int32).min or codes.max() > np.iinfo(np.int32).max:
    raise reader.fail("rhpc/codes", "values do not fit int32")
  values = np.asarray(reader.values("rhpc/values", "float_list", NUM_RHPC), np.float32)
  return PatientRecord(
      patient_id=patient_id, split=split, label=int(label), mri=mri, mammograms=mammograms,
      rhpc_raw=rhpc_raw, rhpc_codes=codes.astype(np.int32), rhpc_values=values,
      spacing_mm=spacing)


def _mammograms(reader: _Reader, version: int) -> dict[str, np.ndarray]:
  """The mammogram views of a record: {view name: [rows, cols] view of the stacked array}."""
  keys = _MG_KEYS if version in _ONE_VIEW_VERSIONS else _MG_KEYS + (_MG_VIEWS,)
  present = [k for k in keys if k in reader]
  if version in _ONE_VIEW_VERSIONS and _MG_VIEWS in reader:
    raise reader.fail(_MG_VIEWS, f"not in format version {version} (one unnamed view)")
  if not present:
    return {}
  if len(present) != len(keys):
    missing = [k for k in keys if k not in reader][0]
    raise reader.fail(missing, f"missing while {', '.join(present)} present")
  if version in _ONE_VIEW_VERSIONS:
    return {"": reader.array("mg", "mg/shape", "mg/dtype", 2, MG_DTYPES)}
  stacked = reader.array("mg", "mg/shape", "mg/dtype", 3, MG_DTYPES)
  names = []
  for raw in reader.values(_MG_VIEWS, "bytes_list", stacked.shape[0]):
    try:
      names.append(raw.decode())
    except UnicodeDecodeError:
      raise reader.fail(_MG_VIEWS, "not UTF-8 text") from None
  if len(set(names)) != len(names):
    raise reader.fail(_MG_VIEWS, f"{names} names a view twice")
  return dict(zip(names, stacked))
