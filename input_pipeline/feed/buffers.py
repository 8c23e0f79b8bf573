"""Batch buffers allocated once and reused, recycled when nothing refers to them any more.

Why: a full-geometry iMRrhpc batch of 4 patients holds 175 MB of volumes. Written into freshly
allocated memory, every page costs a fault and a zero fill first (1.2-1.3 GB/s on 2 cores,
faster only when the kernel has transparent huge pages to give); into pages already mapped the
same copy runs at ~9 GB/s, every time (docs/performance.md, "Components"). So the image array
of every batch comes from a pool of buffers that are used again.

The contract, the one thing a consumer of batches must know: **a batch's image buffer is
written again only once no reference to the array made on it is left** -- not the batch dict,
not a view or slice of the array, not a ``jax.Array`` that aliases it. The last matters on the
CPU backend, where ``jax.device_put`` of a 64-byte aligned, writable host array aliases it
instead of copying (pool buffers are page-aligned, so a batch goes to the CPU "device" without a
copy); the ``jax.Array`` holds a reference to the host array, and XLA keeps it while a
dispatched step still reads it. Holding a batch is therefore always safe, for as long as one
likes; a consumer that holds k batches at once makes the pool hold k buffers (plus those
prefetched), which is what fresh allocations would hold too. Nothing depends on a count of
batches taken.

Two pools:

* :class:`BufferPool`: within one process (the training process; the batch thread of the
  pipeline allocates, the consumer's thread releases). Buffers are anonymous memory maps by
  default: page-aligned, and a drop-in place for page-locked memory -- ``allocate`` may return
  any writable buffer, e.g. pages registered with the accelerator's driver for DMA (nothing to
  do on the CPU backend; JAX has no API that hands out writable page-locked host memory).
* :class:`SharedBufferPool` in a worker process of Grain's ``mp_prefetch``: segments of POSIX
  shared memory, reused once the training process has let go of the array it opened on them
  (:meth:`SharedBuffer.open`). One byte per segment in a small shared flags segment says "in
  use": the worker sets it when it fills the segment, the training process clears it when the
  last reference to its array is gone. The worker creates a segment only when every one of
  its segments is in use, and removes its segments' names when it exits.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import mmap
import weakref
from collections.abc import Callable
from multiprocessing import shared_memory, util
from typing import Any

import numpy as np
from grain.python import SharedMemoryArray

# nbytes -> a writable buffer of at least nbytes (buffer protocol).
Allocate = Callable[[int], Any]
# Idle buffers kept per size for a later batch; more are given back to the system.
DEFAULT_MAX_FREE = 4
# Segments a worker reuses; past it (a consumer holding that many batches) each further batch
# gets a segment of its own, freed once its array is gone, as Grain does without a pool.
DEFAULT_SHARED_CAPACITY = 64


def anonymous_memory(nbytes: int) -> mmap.mmap:
  """Private anonymous memory of ``nbytes``, page-aligned (the default :class:`BufferPool`
  allocator)."""
  return mmap.mmap(-1, nbytes)


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
  return math.prod(shape) * dtype.itemsize


class BufferPool:
  """Arrays on reused buffers, within one process; thread-safe.

  :meth:`empty` hands out an array on an idle buffer of the same size, or on a new one; the
  buffer becomes idle again when the array is garbage (module docstring: the contract).

  Attributes:
    allocated: buffers made so far.
    reused: arrays handed out on an idle buffer.
  """

  def __init__(self, allocate: Allocate = anonymous_memory,
               max_free: int = DEFAULT_MAX_FREE):
    if max_free < 0:
      raise ValueError(f"max_free must be >= 0, got {max_free}")
    self._allocate = allocate
    self._max_free = max_free
    # deque.append / pop are atomic: the releasing thread needs no lock.
    self._idle: dict[int, collections.deque] = collections.defaultdict(collections.deque)
    self.allocated = 0
    self.reused = 0

  def empty(self, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
    """An uninitialised array of ``shape`` and ``dtype`` (the ``empty`` of batching.collate)."""
    dtype = np.dtype(dtype)
    nbytes = _nbytes(shape, dtype)
    if nbytes == 0:
      return np.empty(shape, dtype)
    idle = self._idle[nbytes]
    try:
      buffer = idle.pop()
      self.reused += 1
    except IndexError:
      buffer = self._allocate(nbytes)
      self.allocated += 1
    # The array's base is the buffer itself (not an ndarray), so every view of the array keeps
    # the array alive (NumPy collapses a view's base only through ndarrays).
    array = np.ndarray(shape, dtype, buffer=buffer)
    weakref.finalize(array, self._release, idle, buffer).atexit = False
    return array

  def _release(self, idle: collections.deque, buffer: Any) -> None:
    if len(idle) < self._max_free:
      idle.append(buffer)


@dataclasses.dataclass(frozen=True)
class SharedBuffer:
  """A filled array in a worker's shared memory, as it travels to the training process.

  Attributes:
    name: the data segment.
    shape, dtype: the array at the start of the segment.
    flags: the worker's flags segment; None for a segment of its own (unlinked after use).
    slot: the segment's byte in ``flags``.
  """
  name: str
  shape: tuple[int, ...]
  dtype: str
  flags: str | None
  slot: int

  def open(self) -> SharedMemoryArray:
    """The array, mapped in this process without a copy; once no reference to it is left, the
    worker may fill the segment again."""
    array = SharedMemoryArray.from_shared_memory(shared_memory.SharedMemory(self.name),
                                                 self.shape, self.dtype)
    if self.flags is None:
      array.unlink_on_del()
    else:
      # The array closes its own mapping when it dies (SharedMemoryArray.__del__); the flag
      # is cleared through a mapping of the flags segment that the finalizer keeps open.
      weakref.finalize(array, _clear_flag, _flags_segment(self.flags), self.slot).atexit = False
    return array


# Mappings of workers' flags segments in the training process, while some array needs them.
_FLAGS: weakref.WeakValueDictionary[str, shared_memory.SharedMemory] = (
    weakref.WeakValueDictionary())


def _flags_segment(name: str) -> shared_memory.SharedMemory:
  segment = _FLAGS.get(name)
  if segment is None:
    segment = shared_memory.SharedMemory(name)
    _FLAGS[name] = segment
  return segment


def _clear_flag(flags: shared_memory.SharedMemory, slot: int) -> None:
  flags.buf[slot] = 0


class SharedBufferPool:
  """Arrays in reused POSIX shared memory, in a worker process (module docstring).

  Not thread-safe: a worker builds one batch at a time.
  """

  def __init__(self, capacity: int = DEFAULT_SHARED_CAPACITY):
    if capacity < 1:
      raise ValueError(f"capacity must be >= 1, got {capacity}")
    self._flags = shared_memory.SharedMemory(create=True, size=capacity)
    self._flags.buf[:capacity] = bytes(capacity)
    self._capacity = capacity
    self._segments: list[shared_memory.SharedMemory] = []
    self._sizes: list[int] = []
    self.allocated = 0
    self.reused = 0
    # Names go when the worker exits normally (Grain stops its workers so); a worker that is
    # killed leaves them to multiprocessing's resource tracker, which removes them at the end.
    util.Finalize(self, _unlink_all, args=(self._flags, self._segments), exitpriority=0)

  def take(self, shape: tuple[int, ...], dtype: np.dtype | str
           ) -> tuple[np.ndarray, SharedBuffer]:
    """An uninitialised array in shared memory, and the handle that reopens it elsewhere."""
    dtype = np.dtype(dtype)
    nbytes = max(_nbytes(shape, dtype), 1)
    flags = self._flags.buf
    for slot, (segment, size) in enumerate(zip(self._segments, self._sizes)):
      if size == nbytes and flags[slot] == 0:
        self.reused += 1
        break
    else:
      self.allocated += 1
      if len(self._segments) == self._capacity:
        # Grain's own way: the training process unlinks the segment when done with it.
        array = SharedMemoryArray(shape, dtype)
        return array, SharedBuffer(array.shm.name, tuple(shape), dtype.name, None, 0)
      segment = shared_memory.SharedMemory(create=True, size=nbytes)
      slot = len(self._segments)
      self._segments.append(segment)
      self._sizes.append(nbytes)
    flags[slot] = 1
    return (np.ndarray(shape, dtype, buffer=segment.buf),
            SharedBuffer(segment.name, tuple(shape), dtype.name, self._flags.name, slot))


def _unlink_all(flags: shared_memory.SharedMemory,
                segments: list[shared_memory.SharedMemory]) -> None:
  for segment in [flags, *segments]:
    try:
      segment.unlink()
    except FileNotFoundError:
      pass
