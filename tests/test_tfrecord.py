"""TFRecord framing: CRC32C vectors, byte-exact layout, corruption named by offset, Grain."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import grain
import numpy as np
import pytest

from input_pipeline.records import tfrecord


def _slow_crc32c(data: bytes) -> int:
  """Bitwise reflected CRC-32C (polynomial 0x82F63B78), independent of the crc32c package."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _spec_masked(data: bytes) -> int:
  crc = _slow_crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def _spec_record(data: bytes) -> bytes:
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", _spec_masked(length)) + data
          + struct.pack("<I", _spec_masked(data)))


@pytest.mark.parametrize("data, expected", [
    (bytes(32), 0x8A9136AA),                    # RFC 3720 B.4
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),                 # the CRC catalogue check value
])
def test_crc32c_published_vectors(data, expected):
  assert tfrecord.crc32c(data) == expected
  assert _slow_crc32c(data) == expected
  assert tfrecord.crc32c(memoryview(data)) == expected


def test_masked_crc32c_follows_the_spec():
  for data in (b"", b"a", b"123456789", bytes(range(256))):
    assert tfrecord.masked_crc32c(data) == _spec_masked(data)
  # Empty input: crc 0 -> rotated 0 -> the mask delta itself.
  assert tfrecord.masked_crc32c(b"") == 0xA282EAD8


def test_writer_produces_the_spec_bytes(tmp_path):
  records = [b"hello", b"", bytes(range(200))]
  path = tmp_path / "a.tfrecord"
  with tfrecord.TFRecordWriter(path) as writer:
    offsets = [writer.write(r) for r in records]
  expected = b"".join(_spec_record(r) for r in records)
  assert path.read_bytes() == expected
  assert offsets == [0, 12 + 5 + 4, 12 + 5 + 4 + 12 + 0 + 4]
  # The first record byte for byte: length 5, masked CRC of the length, data, masked CRC.
  assert expected[:8] == b"\x05\x00\x00\x00\x00\x00\x00\x00"
  assert expected[12:17] == b"hello"


def test_round_trip_and_offsets(tmp_path):
  rng = np.random.default_rng(0)
  # The last one spans several of the CRC's copy chunks, with a remainder.
  records = [rng.bytes(n) for n in (0, 1, 1000, (3 << 20) + 5)]
  path = tmp_path / "b.tfrecord"
  with tfrecord.TFRecordWriter(path) as writer:
    offsets = [writer.write(r) for r in records]
  assert writer.num_records == 4
  assert writer.bytes_written == path.stat().st_size == sum(16 + len(r) for r in records)
  read = list(tfrecord.iter_records(path))
  assert [o for o, _ in read] == offsets
  assert [d for _, d in read] == records
  # Views of the mapped file, not copies.
  assert all(isinstance(d, memoryview) and d.readonly for _, d in read)
  assert tfrecord.crc32c(read[3][1]) == tfrecord.crc32c(records[3])
  # Resuming at a record boundary, as the training pipeline's state does.
  assert [d for _, d in tfrecord.iter_records(path, start=offsets[2])] == records[2:]
  result = tfrecord.verify_file(path)
  assert result.ok and result.num_records == 4 and result.num_bytes == path.stat().st_size


def _three_records(tmp_path: Path) -> tuple[Path, list[int]]:
  path = tmp_path / "c.tfrecord"
  with tfrecord.TFRecordWriter(path) as writer:
    offsets = [writer.write(bytes([i]) * 100) for i in range(3)]
  return path, offsets


def _flip(path: Path, position: int) -> None:
  data = bytearray(path.read_bytes())
  data[position] ^= 0x01
  path.write_bytes(bytes(data))


def test_flipped_data_byte_names_the_record(tmp_path):
  path, offsets = _three_records(tmp_path)
  _flip(path, offsets[1] + 12 + 50)
  reader = tfrecord.iter_records(path)
  assert next(reader)[0] == offsets[0]
  with pytest.raises(tfrecord.CorruptRecordError) as info:
    next(reader)
  assert info.value.offset == offsets[1]
  assert info.value.path == str(path)
  assert "data CRC mismatch" in str(info.value)
  assert str(path) in str(info.value) and f"offset {offsets[1]}" in str(info.value)
  # Framing is intact, so verify_file reports the bad record and still reads the third.
  result = tfrecord.verify_file(path)
  assert [e.offset for e in result.errors] == [offsets[1]]
  assert result.num_records == 2


def test_several_bad_records_are_all_collected(tmp_path):
  path, offsets = _three_records(tmp_path)
  _flip(path, offsets[0] + 12)
  _flip(path, offsets[2] + 12 + 100)  # inside the data CRC itself
  result = tfrecord.verify_file(path)
  assert [e.offset for e in result.errors] == [offsets[0], offsets[2]]
  assert all("data CRC mismatch" in e.reason for e in result.errors)
  assert result.num_records == 1


def test_flipped_length_byte_names_the_record(tmp_path):
  path, offsets = _three_records(tmp_path)
  _flip(path, offsets[2] + 3)
  with pytest.raises(tfrecord.CorruptRecordError, match="length CRC mismatch") as info:
    list(tfrecord.iter_records(path))
  assert info.value.offset == offsets[2]
  result = tfrecord.verify_file(path)
  assert [e.offset for e in result.errors] == [offsets[2]]
  assert result.num_records == 2


def test_truncated_data_and_header_are_named(tmp_path):
  path, offsets = _three_records(tmp_path)
  full = path.read_bytes()
  path.write_bytes(full[:offsets[2] + 12 + 60])
  with pytest.raises(tfrecord.CorruptRecordError, match="truncated data") as info:
    list(tfrecord.iter_records(path))
  assert info.value.offset == offsets[2]
  path.write_bytes(full[:offsets[1] + 7])
  with pytest.raises(tfrecord.CorruptRecordError, match="truncated length header") as info:
    list(tfrecord.iter_records(path, verify=False))
  assert info.value.offset == offsets[1]
  result = tfrecord.verify_file(path)
  assert result.num_records == 1 and [e.offset for e in result.errors] == [offsets[1]]


def test_damaged_length_without_verify_does_not_allocate(tmp_path):
  path, offsets = _three_records(tmp_path)
  data = bytearray(path.read_bytes())
  data[offsets[0] + 7] = 0x7F  # length ~ 9e18 bytes
  path.write_bytes(bytes(data))
  with pytest.raises(tfrecord.CorruptRecordError, match="truncated data") as info:
    list(tfrecord.iter_records(path, verify=False))
  assert info.value.offset == 0


def test_writer_is_atomic(tmp_path):
  path = tmp_path / "d.tfrecord"
  writer = tfrecord.TFRecordWriter(path)
  writer.write(b"x" * 10)
  assert not path.exists()
  partials = list(tmp_path.glob(f"*{tfrecord.PARTIAL_SUFFIX}"))
  assert [p.name for p in partials] == [f"d.tfrecord.{os.getpid()}{tfrecord.PARTIAL_SUFFIX}"]
  writer.close()
  assert [d for _, d in tfrecord.iter_records(path)] == [b"x" * 10]
  assert not list(tmp_path.glob(f"*{tfrecord.PARTIAL_SUFFIX}"))
  with pytest.raises(ValueError, match="after the writer was closed"):
    writer.write(b"y")

  with pytest.raises(RuntimeError):
    with tfrecord.TFRecordWriter(path) as failing:
      failing.write(b"z" * 10)
      raise RuntimeError("killed half way")
  # The earlier complete file is untouched and no partial file remains.
  assert [d for _, d in tfrecord.iter_records(path)] == [b"x" * 10]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tfrecord"]


def test_grain_reads_the_files_unchanged(tmp_path):
  rng = np.random.default_rng(1)
  records = [rng.bytes(n) for n in (3, 0, 5000, 17)]
  path = tmp_path / "e.tfrecord"
  with tfrecord.TFRecordWriter(path) as writer:
    for r in records:
      writer.write(r)
  assert list(grain.experimental.TFRecordIterDataset(str(path))) == records
