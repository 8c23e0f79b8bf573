"""Reused batch buffers: a buffer is written again only once nothing refers to its array (a view
and a jax.Array that aliases it count), idle buffers are bounded, and a worker's shared memory
comes back once the training process lets go of the array it opened."""

from __future__ import annotations

import gc

import jax
import numpy as np
import pytest
from grain.python import SharedMemoryArray

from input_pipeline.feed import buffers

SHAPE = (2, 3, 64, 64)


def _address(array: np.ndarray) -> int:
  return array.__array_interface__["data"][0]


def test_a_buffer_comes_back_only_when_no_view_is_left():
  pool = buffers.BufferPool()
  first = pool.empty(SHAPE, "float16")
  address = _address(first)
  view = first[1, 2]  # keeps the whole buffer
  del first
  second = pool.empty(SHAPE, "float16")
  assert _address(second) != address
  del view
  third = pool.empty(SHAPE, "float16")
  assert _address(third) == address
  assert (pool.allocated, pool.reused) == (2, 1)
  # Another size never gets this buffer.
  assert pool.empty((4,), "float16").nbytes == 8


def test_buffers_are_page_aligned_and_writable():
  array = buffers.BufferPool().empty(SHAPE, "uint16")
  assert _address(array) % 4096 == 0 and array.flags.writeable and array.flags.c_contiguous


def test_a_jax_array_on_the_cpu_aliases_the_buffer_and_keeps_it():
  """Why the pool counts references: jax.device_put of an aligned host array on the CPU
  backend is not a copy. Overwriting the buffer under it would change the device array."""
  pool = buffers.BufferPool()
  host = pool.empty(SHAPE, "float32")
  host[...] = 7.0
  device = jax.device_put(host, jax.devices("cpu")[0])
  assert device.unsafe_buffer_pointer() == _address(host)  # aliased, not copied
  address = _address(host)
  del host
  gc.collect()
  again = pool.empty(SHAPE, "float32")
  assert _address(again) != address
  again[...] = -1.0
  np.testing.assert_array_equal(np.asarray(device), np.full(SHAPE, 7.0, np.float32))
  del device
  gc.collect()  # assert_array_equal's frames may hold the device array in a cycle
  assert _address(pool.empty(SHAPE, "float32")) == address


def test_idle_buffers_are_bounded():
  pool = buffers.BufferPool(max_free=2)
  arrays = [pool.empty(SHAPE, "uint8") for _ in range(5)]
  del arrays
  gc.collect()
  for _ in range(5):
    pool.empty(SHAPE, "uint8")  # each dropped at once: the same idle buffer again
  assert (pool.allocated, pool.reused) == (5, 5)
  kept = [pool.empty(SHAPE, "uint8") for _ in range(3)]
  assert (pool.allocated, pool.reused) == (6, 7)  # 2 idle ones, then a new one
  assert len({_address(a) for a in kept}) == 3


def test_shared_buffers_come_back_when_the_opened_array_is_gone():
  """Worker and training process in one process: the same segments, flags and mappings."""
  pool = buffers.SharedBufferPool(capacity=2)
  array, handle = pool.take(SHAPE, "float16")
  array[...] = np.arange(np.prod(SHAPE)).reshape(SHAPE) % 100
  expected = array.copy()
  opened = handle.open()
  assert isinstance(opened, SharedMemoryArray)
  np.testing.assert_array_equal(opened, expected)
  # In use until the opened array is gone: the next batch gets another segment.
  _, other = pool.take(SHAPE, "float16")
  assert other.name != handle.name and other.slot != handle.slot
  view = opened[0]
  del opened
  _, third = pool.take(SHAPE, "float16")  # capacity reached, a view still holds the first
  assert third.flags is None and third.name not in (handle.name, other.name)
  third.open()  # such a segment is unlinked once its opened array is gone
  del view
  gc.collect()
  array, again = pool.take(SHAPE, "float16")
  assert (again.name, again.slot) == (handle.name, handle.slot)
  np.testing.assert_array_equal(array, expected)  # the same memory, not yet rewritten
  assert (pool.allocated, pool.reused) == (3, 1)


def test_pool_arguments_are_checked():
  with pytest.raises(ValueError, match="max_free"):
    buffers.BufferPool(max_free=-1)
  with pytest.raises(ValueError, match="capacity"):
    buffers.SharedBufferPool(capacity=0)
