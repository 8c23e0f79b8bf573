"""TFRecord files, framed exactly as TensorFlow writes them, without TensorFlow.

Each record is::

  uint64  length            little-endian
  uint32  masked_crc32c(length bytes)
  bytes   data[length]
  uint32  masked_crc32c(data)

with ``masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)`` over the
Castagnoli CRC (tensorflow/core/lib/hash/crc32c.h, tsl/lib/io/record_writer.cc). Files are
therefore readable by ``tf.data.TFRecordDataset``, TFDS and Grain's ``TFRecordIterDataset``.

Grain's own TFRecord reader checks no CRC and copies every record twice; :func:`iter_records`
(which the training pipeline reads through too) and :func:`verify_file` check both CRCs, so a
damaged shard is named (file, byte offset, what failed) instead of being decoded into garbage,
and hand out records as views of the memory-mapped file: a 44 MB full-geometry record costs
its CRC (~6 ms, computed on the mapped pages without a copy and without holding the GIL), not a
copy.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import crc32c as _crc32c

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")  # length, masked CRC of the 8 length bytes
_FOOTER = struct.Struct("<I")   # masked CRC of the data
HEADER_BYTES = _HEADER.size     # 12
FOOTER_BYTES = _FOOTER.size     # 4
# A writer's file until it is closed cleanly; never matches the '*.tfrecord' shard pattern.
PARTIAL_SUFFIX = ".partial"


def crc32c(data: bytes | bytearray | memoryview) -> int:
  """CRC-32C (Castagnoli, RFC 3720) of ``data``, any contiguous buffer.

  Computed in C by the ``crc32c`` package (SSE 4.2 / ARMv8 CRC instructions) on the buffer
  itself, so a record mapped from a shard is read once and never copied, and the GIL is
  released for buffers over 32 KiB: reader threads check CRCs while other threads run.
  (google-crc32c takes only ``bytes`` objects: a mapped record had to be copied to it in 1 MiB
  pieces, with the GIL held during each copy; docs/performance.md, "Components".)
  """
  return _crc32c.crc32c(data)


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
  """The masked CRC-32C that TFRecord stores, so that CRCs of CRCs stay well distributed."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class CorruptRecordError(ValueError):
  """A TFRecord file is damaged.

  Attributes:
    path: the file.
    offset: byte offset of the start of the damaged record (its length field).
    reason: what failed (length CRC, data CRC, truncated length or data).
  """

  def __init__(self, path: str | os.PathLike, offset: int, reason: str):
    self.path = str(path)
    self.offset = offset
    self.reason = reason
    super().__init__(f"{self.path}: corrupt record at byte offset {offset}: {reason}")


class TFRecordWriter:
  """Writes one TFRecord file, atomically.

  Records go to ``<path>.<pid>.partial`` in the same folder; a clean :meth:`close` (or leaving
  the ``with`` block without an exception) flushes, fsyncs and renames it to ``path``. Leaving
  with an exception, or :meth:`abort`, deletes the partial file. A killed process leaves only a
  ``.partial`` file, never a half shard under the final name.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    self._partial = self.path.with_name(f"{self.path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    self._file: BinaryIO | None = open(self._partial, "wb")
    self._offset = 0
    self.num_records = 0

  def write(self, record: bytes | bytearray | memoryview) -> int:
    """Appends one record; returns the byte offset at which it starts."""
    if self._file is None:
      raise ValueError(f"{self.path}: write() after the writer was closed")
    length = len(record)
    length_bytes = struct.pack("<Q", length)
    offset = self._offset
    self._file.write(length_bytes + struct.pack("<I", masked_crc32c(length_bytes)))
    self._file.write(record)
    self._file.write(_FOOTER.pack(masked_crc32c(record)))
    self._offset += HEADER_BYTES + length + FOOTER_BYTES
    self.num_records += 1
    return offset

  @property
  def bytes_written(self) -> int:
    return self._offset

  def close(self) -> None:
    """Makes the file durable and gives it its final name."""
    if self._file is None:
      return
    self._file.flush()
    os.fsync(self._file.fileno())
    self._file.close()
    self._file = None
    os.replace(self._partial, self.path)
    _fsync_directory(self.path.parent)

  def abort(self) -> None:
    """Discards everything written; ``path`` is left as it was."""
    if self._file is None:
      return
    self._file.close()
    self._file = None
    self._partial.unlink(missing_ok=True)

  def __enter__(self) -> TFRecordWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def _fsync_directory(folder: Path) -> None:
  # The rename itself must survive a power cut, not only the file contents.
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:
    return  # Not possible on every platform (Windows); the rename is still atomic.
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _map(path: Path) -> tuple[mmap.mmap | None, memoryview]:
  """The whole file, mapped read-only: (the map, a view of it); (None, empty view) for an
  empty file.

  Records are handed out as slices of the view, so reading copies nothing: the pages are the
  page cache's. The map stays open while any slice (or an array built on one) is alive. A file
  truncated while mapped makes a later access fail with SIGBUS: shards are written once, under
  a temporary name, and never changed in place (:class:`TFRecordWriter`)."""
  with open(path, "rb") as f:
    if os.fstat(f.fileno()).st_size == 0:
      return None, memoryview(b"")
    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
  return mapped, memoryview(mapped)


def _will_need(mapped: mmap.mmap | None, begin: int, length: int) -> None:
  """Asks the kernel to read a record's pages ahead in one go (a cold shard on disk)."""
  advice = getattr(mmap, "MADV_WILLNEED", None)  # absent on Windows
  if mapped is not None and length and advice is not None:
    aligned = begin - begin % mmap.PAGESIZE
    mapped.madvise(advice, aligned, begin + length - aligned)


def _scan(path: Path, verify: bool, start: int = 0
          ) -> Iterator[tuple[int, memoryview | None, str | None]]:
  """Walks the records of ``path`` from byte ``start`` (a record boundary): yields (offset,
  data, None) for a good record and (offset, None, reason) for a bad one. Stops after an error
  that breaks the framing (bad length CRC, truncation); continues after a data CRC error,
  whose framing is intact. ``data`` is a read-only view of the mapped file (:func:`_map`)."""
  mapped, view = _map(path)
  size = len(view)
  offset = start
  while offset < size:
    header = view[offset:offset + HEADER_BYTES]
    if len(header) < HEADER_BYTES:
      yield offset, None, (f"truncated length header: {len(header)} of {HEADER_BYTES} bytes "
                           f"before the end of the file")
      return
    length, length_crc = _HEADER.unpack(header)
    if verify and masked_crc32c(header[:8]) != length_crc:
      yield offset, None, (f"length CRC mismatch (stored 0x{length_crc:08x}, computed "
                           f"0x{masked_crc32c(header[:8]):08x}); the record length "
                           f"{length} cannot be trusted and the rest of the file is unreadable")
      return
    # Checked against the file size, so a damaged length is named, not sliced short.
    remaining = size - offset - HEADER_BYTES
    if length + FOOTER_BYTES > remaining:
      yield offset, None, (f"truncated data: the record declares {length} data bytes plus a "
                           f"{FOOTER_BYTES}-byte CRC, the file has {remaining} bytes left")
      return
    begin = offset + HEADER_BYTES
    _will_need(mapped, begin, length)
    data = view[begin:begin + length]
    (data_crc,) = _FOOTER.unpack(view[begin + length:begin + length + FOOTER_BYTES])
    if verify and masked_crc32c(data) != data_crc:
      yield offset, None, (f"data CRC mismatch over {length} bytes (stored 0x{data_crc:08x}, "
                           f"computed 0x{masked_crc32c(data):08x})")
    else:
      yield offset, data, None
    offset = begin + length + FOOTER_BYTES


def iter_records(path: str | os.PathLike, verify: bool = True, start: int = 0
                 ) -> Iterator[tuple[int, memoryview]]:
  """Reads a TFRecord file sequentially, without copying.

  Args:
    path: the file.
    verify: check both CRCs of every record (~8 ms per 44 MB record with the C CRC).
    start: byte offset to start at; must be a record boundary (an offset this function
      yielded, or the file size).

  Yields:
    (byte offset of the record's length field, record data as a read-only memoryview of the
    mapped file: ``bytes(data)`` makes a copy; ``np.frombuffer(data)`` does not).

  Raises:
    CorruptRecordError: at the first damaged record, naming file, offset and what failed.
      Truncation is always detected, CRC mismatches only when ``verify``.
  """
  path = Path(path)
  for offset, data, reason in _scan(path, verify, start):
    if reason is not None:
      raise CorruptRecordError(path, offset, reason)
    yield offset, data


@dataclasses.dataclass
class VerifyResult:
  """What :func:`verify_file` found in one file.

  Attributes:
    path: the file.
    num_records: records whose CRCs are correct.
    num_bytes: file size in bytes.
    errors: every damaged record found; reading stops at the first one that breaks the framing.
  """
  path: Path
  num_records: int = 0
  num_bytes: int = 0
  errors: list[CorruptRecordError] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not self.errors


def verify_file(path: str | os.PathLike,
                on_record: Callable[[int, memoryview], None] | None = None) -> VerifyResult:
  """Checks the framing and both CRCs of every record of ``path``; never raises on damage.

  Args:
    path: the file.
    on_record: called as ``on_record(offset, data)`` for every record whose CRCs are correct
      (``data`` a read-only memoryview, as :func:`iter_records` yields), so a caller can decode
      while the file is read once.

  Returns:
    The counts and the errors found. An unreadable file gives one error at offset 0.
  """
  path = Path(path)
  result = VerifyResult(path)
  try:
    result.num_bytes = path.stat().st_size
    for offset, data, reason in _scan(path, verify=True):
      if reason is not None:
        result.errors.append(CorruptRecordError(path, offset, reason))
        continue
      result.num_records += 1
      if on_record is not None:
        on_record(offset, data)
  except OSError as e:
    result.errors.append(CorruptRecordError(path, 0, f"cannot read the file: {e}"))
  return result
