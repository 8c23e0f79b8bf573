"""The tf.train.Example record format: bit-exact round trips and named rejections."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from tensorflow_datasets.proto import tf_example_pb2

from input_pipeline import records
from input_pipeline.schema import VARIABLES


def _record(phases=("pre", "mid", "post"), views=("CC", "MLO"), dtype=np.float16, seed=0,
            patient_id="P0123456789ab", split="train", label=1) -> records.PatientRecord:
  rng = np.random.default_rng(seed)
  shape = (3, 4, 5)
  if dtype == np.int16:
    mri = {p: rng.integers(-32768, 32767, shape, dtype=np.int16) for p in phases}
  else:
    mri = {p: rng.standard_normal(shape).astype(np.float16) for p in phases}
  if dtype == np.float16 and phases:
    mri[phases[0]][0, 0, :3] = [np.nan, np.inf, -0.0]  # bit patterns must survive
  codes = np.arange(len(VARIABLES), dtype=np.int32) % 3 - 1
  values = np.full(len(VARIABLES), np.nan, np.float32)
  values[0] = 47.5
  raw = tuple("" if c < 0 else f"value {i} é" for i, c in enumerate(codes))
  return records.PatientRecord(
      patient_id=patient_id, split=split, label=label, mri=mri,
      mammograms={v: rng.integers(0, 65535, (6, 4), dtype=np.uint16) for v in views},
      rhpc_raw=raw, rhpc_codes=codes, rhpc_values=values, spacing_mm=(1.0, 0.75, 1.5))


def _assert_same(a: records.PatientRecord, b: records.PatientRecord) -> None:
  assert (a.patient_id, a.split, a.label, a.rhpc_raw, a.spacing_mm) == (
      b.patient_id, b.split, b.label, b.rhpc_raw, b.spacing_mm)
  assert list(a.mri) == list(b.mri)
  for name in a.mri:
    assert a.mri[name].dtype == b.mri[name].dtype and a.mri[name].shape == b.mri[name].shape
    assert a.mri[name].tobytes() == b.mri[name].tobytes()  # bit-exact, NaN included
  assert list(a.mammograms) == list(b.mammograms)  # the view names, in their order
  for name in a.mammograms:
    assert a.mammograms[name].dtype == b.mammograms[name].dtype
    assert np.array_equal(a.mammograms[name], b.mammograms[name])
  assert b.rhpc_codes.dtype == np.int32 and np.array_equal(a.rhpc_codes, b.rhpc_codes)
  assert b.rhpc_values.dtype == np.float32
  assert np.array_equal(a.rhpc_values, b.rhpc_values, equal_nan=True)


@pytest.mark.parametrize("phases, views, dtype", [
    (("pre", "mid", "post"), ("CC", "MLO"), np.float16),
    (("pre",), (), np.float16),
    (("pre", "post"), ("MLO", "CC"), np.int16),  # the preferred view first, kept in order
    (("mid",), ("CC",), np.int16),  # one view
    ((), ("ML",), np.float16),  # no MRI; a view other than CC / MLO
    ((), ("",), np.float16),  # a view nothing states
    ((), (), np.float16),  # rhpc only
])
def test_round_trip(phases, views, dtype):
  original = _record(phases, views, dtype)
  if not phases:
    original = records.PatientRecord(**{**original.__dict__, "spacing_mm": None})
  decoded = records.decode(records.encode(original))
  _assert_same(original, decoded)
  assert decoded.phases == tuple(("pre", "mid", "post").index(p) for p in phases)
  for volume in (*decoded.mri.values(), *decoded.mammograms.values()):
    # Zero-copy views of the record's bytes: native order, read-only.
    assert volume.dtype.isnative and not volume.flags.writeable
  assert "tensorflow" not in sys.modules


def test_float16_mammogram_and_negative_label():
  original = _record(label=-1, split="test")
  rng = np.random.default_rng(3)
  original = records.PatientRecord(**{**original.__dict__, "mammograms": {
      "CC": rng.random((7, 3)).astype(np.float16), "MLO": rng.random((7, 3)).astype(np.float16)}})
  decoded = records.decode(records.encode(original))
  _assert_same(original, decoded)
  assert decoded.label == -1 and decoded.split == "test"
  assert decoded.mammograms["MLO"].dtype == np.float16


def test_layout_is_the_documented_contract():
  """What a tf.data reader relies on: keys, kinds and little-endian raw bytes."""
  original = _record(("pre", "post"), views=("CC", "MLO"))
  example = tf_example_pb2.Example.FromString(records.encode(original))
  f = example.features.feature
  assert sorted(f) == sorted([
      "patient_id", "split", "label", "mri/phases", "mri/pre", "mri/post", "mri/shape",
      "mri/dtype", "mri/spacing_mm", "mg", "mg/shape", "mg/dtype", "mg/views", "rhpc/raw",
      "rhpc/codes",
      "rhpc/values", "format_version", "align/mri/pre", "align/mri/post", "align/mg",
      "align/end"])
  assert all(set(f[k].bytes_list.value[0]) <= {0} for k in f if k.startswith("align/"))
  assert f["mri/phases"].int64_list.value == [0, 2]
  assert f["mri/shape"].int64_list.value == [3, 4, 5]
  assert f["mri/dtype"].bytes_list.value == [b"float16"]
  assert f["mri/post"].bytes_list.value[0] == original.mri["post"].astype("<f2").tobytes()
  # The views stacked in their order, [views, rows, cols].
  assert f["mg"].bytes_list.value[0] == np.stack(
      [original.mammograms["CC"], original.mammograms["MLO"]]).astype("<u2").tobytes()
  assert f["mg/shape"].int64_list.value == [2, 6, 4]
  assert f["mg/views"].bytes_list.value == [b"CC", b"MLO"]
  assert list(f["mri/spacing_mm"].float_list.value) == [1.0, 0.75, 1.5]
  assert len(f["rhpc/raw"].bytes_list.value) == 22 and f["rhpc/raw"].bytes_list.value[0] == b""
  assert f["format_version"].int64_list.value == [records.FORMAT_VERSION]
  assert f["patient_id"].bytes_list.value == [b"P0123456789ab"]


def _mutated(mutate) -> bytes:
  example = tf_example_pb2.Example.FromString(records.encode(_record()))
  mutate(example.features.feature)
  return example.SerializeToString()


def _replace_int64(key, values):
  def mutate(f):
    del f[key].int64_list.value[:]
    f[key].int64_list.value.extend(values)
  return mutate


def _replace_bytes(key, values):
  def mutate(f):
    del f[key].bytes_list.value[:]
    f[key].bytes_list.value.extend(values)
  return mutate


def _replace_float(key, values):
  def mutate(f):
    del f[key].float_list.value[:]
    f[key].float_list.value.extend(values)
  return mutate


@pytest.mark.parametrize("mutate, key, words", [
    (lambda f: f.pop("label"), "label", "missing"),
    (lambda f: f.pop("mri/mid"), "mri/mid", "missing"),
    (lambda f: f.pop("mg/dtype"), "mg/dtype", "missing"),
    (_replace_int64("mri/shape", [3, 4, 6]), "mri/pre", "do not match"),
    (_replace_int64("mri/shape", [3, 20]), "mri/shape", "expected 3 values"),
    (_replace_int64("mg/shape", [2, 0, 4]), "mg/shape", "positive"),
    (_replace_int64("mg/shape", [6, 4]), "mg/shape", "expected 3 values"),
    (_replace_int64("mg/shape", [1, 6, 4]), "mg", "do not match"),
    (_replace_bytes("mg/views", [b"CC"]), "mg/views", "expected 2 values"),
    (_replace_bytes("mg/views", [b"CC", b"CC"]), "mg/views", "names a view twice"),
    (lambda f: f.pop("mg/views"), "mg/views", "missing while"),
    (_replace_bytes("mri/dtype", [b"float64"]), "mri/dtype", "not one of"),
    (_replace_bytes("mg/dtype", [b"int8"]), "mg/dtype", "not one of"),
    (_replace_bytes("rhpc/raw", [b""] * 21), "rhpc/raw", "expected 22 values"),
    (_replace_int64("rhpc/codes", [0] * 23), "rhpc/codes", "expected 22 values"),
    (_replace_float("rhpc/values", [0.0]), "rhpc/values", "expected 22 values"),
    (_replace_float("mri/spacing_mm", [1.0, 0.0, 1.0]), "mri/spacing_mm", "positive"),
    (_replace_int64("mri/phases", [0, 0, 1]), "mri/phases", "ascending"),
    (_replace_int64("mri/phases", [0, 1]), "mri/post", "present but"),
    (_replace_int64("label", [2]), "label", "not one of"),
    (_replace_int64("format_version", [99]), "format_version", "is 99"),
    (_replace_bytes("split", [b"holdout"]), "split", "not one of"),
    (lambda f: f["label"].CopyFrom(f["split"]), "label", "expected int64_list"),
    (lambda f: f["extra"].int64_list.value.append(1), "extra", "unknown key"),
    # Image values are read without protobuf (records.wire.split_payloads); same checks.
    (_replace_bytes("mri/pre", [b"\0" * 120, b"\0" * 120]), "mri/pre", "expected 1 values"),
    (lambda f: f["mg"].CopyFrom(f["label"]), "mg", "expected bytes_list"),
    (lambda f: f["mri/post"].Clear(), "mri/post", "an empty feature"),
    (_replace_bytes("mri/mid", [b"\0" * 7]), "mri/mid", "do not match"),
])
def test_malformed_examples_are_rejected_naming_the_key(mutate, key, words):
  with pytest.raises(records.RecordFormatError) as info:
    records.decode(_mutated(mutate))
  assert info.value.key == key
  assert f"'{key}'" in str(info.value) and words in str(info.value)
  assert info.value.patient_id == "P0123456789ab"  # read before the failing key


@pytest.mark.parametrize("shapes", [((3, 4, 5), (6, 4)), ((7, 9, 11), (5, 3)),
                                    ((176, 176, 352), (1024, 512))])
def test_images_are_aligned_in_a_shard(tmp_path, shapes):
  """Records written one after another: every record starts at a multiple of 64 bytes and
  every image payload at a 64-byte address of the mapped shard, whatever the shapes, phases
  and mammogram (odd byte counts included); there XLA's CPU client uses the mapped pages in
  place instead of copying them."""
  import jax

  from input_pipeline.records import tfrecord

  mri_shape, mg_shape = shapes
  rng = np.random.default_rng(0)
  written = []
  with tfrecord.TFRecordWriter(tmp_path / "shard.tfrecord") as writer:
    for i, (phases, views) in enumerate([(("pre", "mid", "post"), ("CC", "MLO")),
                                         (("pre",), ()), (("pre", "post"), ("CC",)),
                                         ((), ("CC", "MLO")), ((), ())]):
      record = records.PatientRecord(**{
          **_record(phases, views, seed=i).__dict__,
          "mri": {p: rng.standard_normal(mri_shape).astype(np.float16) for p in phases},
          "mammograms": {v: rng.integers(0, 65535, mg_shape, dtype=np.uint16) for v in views},
          "spacing_mm": (1.0, 0.75, 1.5) if phases else None})
      assert writer.write(records.encode(record)) % records.ALIGNMENT == 0
      written.append(record)
  assert (tmp_path / "shard.tfrecord").stat().st_size % records.ALIGNMENT == 0
  for (offset, data), original in zip(tfrecord.iter_records(tmp_path / "shard.tfrecord"),
                                      written, strict=True):
    decoded = records.decode(data)
    _assert_same(original, decoded)
    images = [*decoded.mri.values(), *decoded.mammograms.values()]
    for image in images[:len(decoded.mri) + 1]:  # each payload (later views follow the first)
      assert image.ctypes.data % records.ALIGNMENT == 0
    if images and max(shapes[0]) < 100:  # the device keeps the mapped pages: no copy
      on_device = jax.device_put(images[0], jax.devices("cpu")[0])
      assert on_device.unsafe_buffer_pointer() == images[0].ctypes.data
      np.testing.assert_array_equal(np.asarray(on_device), images[0])


def _one_view_example(original: records.PatientRecord, version: int):
  """``original`` (one view) as format ``version`` 1 or 2 wrote it: 'mg' [rows, cols], no
  'mg/views' (and in version 1 no padding entries)."""
  example = tf_example_pb2.Example.FromString(records.encode(original))
  f = example.features.feature
  del f["mg/views"]
  f["mg/shape"].int64_list.value[:] = list(original.mammograms["CC"].shape)
  for key in [k for k in f if k.startswith("align/") and version == 1]:
    del f[key]
  f["format_version"].int64_list.value[:] = [version]
  return example


@pytest.mark.parametrize("version", [1, 2])
def test_one_view_records_of_earlier_versions_still_decode(version):
  """Records prepared before the views (format versions 1 and 2) need no new prepare: their one
  mammogram comes back as a view named '' (its name was not recorded)."""
  original = _record(views=("CC",))
  example = _one_view_example(original, version)
  decoded = records.decode(example.SerializeToString(deterministic=True))
  _assert_same(records.PatientRecord(**{**original.__dict__, "mammograms": {
      "": original.mammograms["CC"]}}), decoded)
  # Version 3 fields in an older record are a format error, not a silent reading.
  example.features.feature["mg/views"].bytes_list.value.append(b"CC")
  with pytest.raises(records.RecordFormatError, match="mg/views.*not in format version"):
    records.decode(example.SerializeToString(deterministic=True))


def test_images_are_views_of_the_record_bytes():
  data = records.encode(_record())
  decoded = records.decode(memoryview(data))
  whole = np.frombuffer(data, np.uint8)
  for array in (*decoded.mri.values(), *decoded.mammograms.values()):
    assert np.shares_memory(array, whole)  # not copied: a full-geometry record is 44-66 MB


def test_any_serialisation_decodes_as_protobuf_reads_it():
  a, b = _record(seed=1), _record(seed=2)
  # Protobuf's own (non-deterministic) serialisation, keys in whatever order it chose.
  shuffled = tf_example_pb2.Example.FromString(records.encode(a)).SerializeToString()
  _assert_same(a, records.decode(shuffled))
  # Two Examples back to back are one Example to protobuf: every map value of the second wins.
  _assert_same(b, records.decode(records.encode(a) + records.encode(b)))


def test_identifier_and_garbage_rejected():
  with pytest.raises(records.RecordFormatError) as info:
    records.decode(_mutated(_replace_bytes("patient_id", [b"Breast_MRI_001"])))
  assert info.value.key == "patient_id" and info.value.patient_id is None
  assert "Breast_MRI_001" in str(info.value)
  with pytest.raises(records.RecordFormatError, match="not a tf.train.Example") as info:
    records.decode(b"\xff\xff\xff\xff")
  assert info.value.key is None


@pytest.mark.parametrize("change, field", [
    ({"patient_id": "ISPY2-100899"}, "patient_id"),
    ({"split": "val"}, "split"),
    ({"label": 2}, "label"),
    ({"mri": {"pre": np.zeros((2, 2), np.float16)}}, "mri"),
    ({"mri": {"pre": np.zeros((2, 2, 2), np.float16), "post": np.zeros((2, 2, 3), np.float16)}},
     "mri"),
    ({"mri": {"pre": np.zeros((2, 2, 2), np.float32)}}, "mri"),
    ({"mri": {"baseline": np.zeros((2, 2, 2), np.float16)}}, "mri"),
    ({"mammograms": {"CC": np.zeros((2, 2), np.int32)}}, "mammograms"),
    ({"mammograms": {"CC": np.zeros((2, 2), np.uint16), "MLO": np.zeros((2, 3), np.uint16)}},
     "mammograms"),
    ({"mammograms": {"CC": np.zeros((2, 2, 2), np.uint16)}}, "mammograms"),
    ({"rhpc_raw": ("",) * 21}, "rhpc_raw"),
    ({"spacing_mm": (1.0, 1.0)}, "spacing_mm"),
])
def test_encode_rejects_records_that_break_the_format(change, field):
  record = records.PatientRecord(**{**_record().__dict__, **change})
  with pytest.raises(ValueError, match=f"cannot encode {field}"):
    records.encode(record)
