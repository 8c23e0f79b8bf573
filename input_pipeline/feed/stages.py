"""The Grain stages of the training stream (composed by ``pipeline.example_dataset`` and
``pipeline.train_dataset``): the records of one shard without a copy, their decoding, the filter
of training patients, the split of a patient into its mammogram views (pretraining), the
per-process seeds, and the collation of batches into reused buffers.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from input_pipeline import records
from input_pipeline.feed import batching, buffers
from input_pipeline.feed.batching import BatchSpec
from input_pipeline.records import tfrecord
from input_pipeline.schema import IMAGE_KEYS


class ShardRecords(grain.IterDataset):
  """The records of one shard as (path, byte offset, data), CRC-checked, without copying
  (tfrecord.iter_records: views of the mapped file).

  Grain's TFRecordIterDataset checks no CRC and copies each record twice (read, then
  struct.unpack): ~60 ms per 44 MB full-geometry record against ~10 ms here. The iterator's
  state is the same {'reader_offset': byte offset of the next record}.
  """

  def __init__(self, path: str):
    super().__init__()
    self._path = path

  def __iter__(self) -> grain.DatasetIterator:
    return ShardRecordsIterator(self._path)


class ShardRecordsIterator(grain.DatasetIterator):

  def __init__(self, path: str):
    super().__init__()
    self._path = path
    self._offset = 0
    self._records: Iterator[tuple[int, memoryview]] | None = None

  def __next__(self) -> tuple[str, int, memoryview]:
    if self._records is None:
      self._records = tfrecord.iter_records(self._path, start=self._offset)
    offset, data = next(self._records)
    self._offset = offset + tfrecord.HEADER_BYTES + len(data) + tfrecord.FOOTER_BYTES
    return self._path, offset, data

  def get_state(self) -> dict[str, int]:
    return {"reader_offset": self._offset}

  def set_state(self, state: dict[str, int]) -> None:
    self._offset = int(state["reader_offset"])
    self._records = None


class WindowShuffle(grain.IterDataset):
  """The parent's elements shuffled within consecutive windows of ``window_size``.

  What Grain's WindowShuffleIterDataset does, with the same iterator state (the parent's
  state at the window's start, the window's index and the position in it), at a fraction of
  its cost: Grain draws each position of a window by cycle-walking a 16-bit block cipher
  (index_shuffle) until it lands inside the window, ~65,536 / window encryptions per
  element: 17 ms per record at the tiny configs' window of 4, 3.5 ms at 16, more than a
  64 x 32 mammogram's record costs to read and decode (docs/data.md, "The input pipeline").
  Here window w is ordered by one permutation from NumPy's generator seeded by (seed, w).
  """

  def __init__(self, parent: grain.IterDataset, *, window_size: int, seed: int):
    super().__init__(parent)
    self._window_size = window_size
    self._seed = seed

  def __iter__(self) -> grain.DatasetIterator:
    return WindowShuffleIterator(self._parent.__iter__(), self._window_size, self._seed)


class WindowShuffleIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, window_size: int, seed: int):
    super().__init__(parent)
    self._window_size = window_size
    self._seed = seed
    self._window_index = 0
    self._position = 0  # elements of the current window handed out
    self._window: list[Any] = []
    self._window_start = parent.get_state()
    self._parent_exhausted = False

  def _fill(self) -> None:
    window = []
    try:
      while len(window) < self._window_size:
        window.append(next(self._parent))
    except StopIteration:
      self._parent_exhausted = True
    order = np.random.default_rng([self._seed, self._window_index]).permutation(len(window))
    self._window = [window[i] for i in order]

  def __next__(self) -> Any:
    if self._position == len(self._window):  # the window is used up (or none yet)
      if self._window:
        self._window_index += 1
      if self._parent_exhausted:
        raise StopIteration
      self._window_start = copy.deepcopy(self._parent.get_state())
      self._fill()
      self._position = 0
      if not self._window:
        raise StopIteration
    element = self._window[self._position]
    self._window[self._position] = None  # the consumer's reference is the only one left
    self._position += 1
    return element

  def get_state(self) -> dict[str, Any]:
    return {"parent_window_start_state": copy.deepcopy(self._window_start),
            "window_index": self._window_index, "pos_in_window": self._position}

  def set_state(self, state: dict[str, Any]) -> None:
    self._window_start = copy.deepcopy(state["parent_window_start_state"])
    self._parent.set_state(self._window_start)
    self._window_index = int(state["window_index"])
    self._parent_exhausted = False
    self._fill()
    self._position = min(int(state["pos_in_window"]), len(self._window))
    self._window[:self._position] = [None] * self._position


def decode(element: tuple[str, int, memoryview]) -> records.PatientRecord:
  path, offset, data = element
  try:
    return records.decode(data)
  except records.RecordFormatError as error:
    raise ValueError(f"{path}: record at byte offset {offset}: {error}") from None


class Collate:
  """batching.collate as Grain's batch_fn, into reused image buffers (feed/buffers.py).

  In this process the image array comes from a :class:`buffers.BufferPool`. In a worker
  process of ``mp_prefetch`` (``shared``, or Grain's :meth:`enable_shared_memory_output`) it
  is built in the worker's :class:`buffers.SharedBufferPool` and travels as a
  :class:`buffers.SharedBuffer`, which :func:`open_shared_buffers` opens in the training
  process without a copy.
  """

  def __init__(self, model_name: str, spec: BatchSpec, shared: bool = False,
               views: bool = False):
    self._model_name = model_name
    self._spec = spec
    self._views = views
    # Set here for worker processes: Grain calls enable_shared_memory_output only with 2 or
    # more workers (a single one would otherwise copy every batch into fresh shared memory).
    self._shared = shared
    self._pool: buffers.BufferPool | buffers.SharedBufferPool | None = None

  def __getstate__(self) -> dict:
    # Pools are made where the batches are built (this process or a worker), never pickled.
    return {**self.__dict__, "_pool": None}

  def enable_shared_memory_output(self) -> None:
    self._shared = True

  def __call__(self, values: Sequence[batching.Example]) -> dict[str, Any]:
    if self._views:
      return batching.collate(values, self._model_name, self._spec, views=True)
    if not self._shared:
      if self._pool is None:
        self._pool = buffers.BufferPool()
      return batching.collate(values, self._model_name, self._spec, empty=self._pool.empty)
    if self._pool is None:
      self._pool = buffers.SharedBufferPool()
    handles = []

    def empty(shape: tuple[int, ...], dtype: str) -> np.ndarray:
      array, handle = self._pool.take(shape, dtype)
      handles.append(handle)
      return array

    batch = batching.collate(values, self._model_name, self._spec, empty=empty)
    if handles:  # the image array (rhpc batches have none)
      (batch[IMAGE_KEYS[self._model_name]],) = handles
    return batch


def open_shared_buffers(batch: dict[str, Any]) -> dict[str, np.ndarray]:
  """In the training process: a worker's batch with its image array opened (no copy)."""
  return {key: value.open() if isinstance(value, buffers.SharedBuffer) else value
          for key, value in batch.items()}


class TrainingPatients:
  """The filter of training patients; raises when a process's shards hold none.

  Without the check, a process whose shards hold no eligible patient (an MRI model on
  mammogram-only shards) would read its shards forever. The rejected set resets at every
  accepted record, so it fills only when every local record was rejected in a row.
  """

  def __init__(self, model_name: str, shards: Sequence[str], num_records: int | None):
    self._model_name = model_name
    self._shards = list(shards)
    self._num_records = num_records
    self._rejected: set[str] = set()

  def __call__(self, record: records.PatientRecord) -> bool:
    if batching.trains(record, self._model_name):
      self._rejected.clear()
      return True
    self._rejected.add(record.patient_id)
    if self._num_records is not None and len(self._rejected) >= self._num_records:
      needs = {"iMRrhpc": "an MRI and ", "iMGrhpc": "a mammogram and "}
      raise ValueError(
          f"none of the {self._num_records} patients in {len(self._shards)} shards "
          f"({self._shards[0]}, ...) can train {self._model_name!r}: it needs "
          f"{needs.get(self._model_name, '')}a pCR label")
    return False


class EveryView(grain.experimental.FlatMapTransform):
  """A patient with several mammogram views -> one record per view (each holding that view
  alone, the arrays still views of the shard): every view an image of its own, as the pretrain
  job wants its unlabelled images. A record of no or one view passes as it is."""

  # More views than a records folder holds (one CC and one MLO per patient).
  max_fan_out = 8

  def flat_map(self, element: records.PatientRecord) -> list[records.PatientRecord]:
    if len(element.mammograms) < 2:
      return [element]
    return [dataclasses.replace(element, mammograms={name: image})
            for name, image in element.mammograms.items()]


def seeds(seed: int, process_index: int) -> tuple[int, int, int]:
  """Independent 31-bit seeds (file order, window shuffle, combinations) per process.

  31 bits: Grain adds the window / epoch number to a seed and needs the sum to stay 32-bit."""
  state = np.random.SeedSequence([seed, process_index]).generate_state(3)
  return tuple(int(s) >> 1 for s in state)
