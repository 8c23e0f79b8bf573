"""The training pipeline's throughput next to a plain sequential read of the same shards.

  python -m input_pipeline.feed.throughput --records DIR [--model_name iMRrhpc --batch_size 4
      --batches 50 --threads read --threads read+batch --workers 4 --transfer views
      --transfer batch --transfer records --rounds 3 --step_ms 40]

By default: reader threads alone, reader and batch threads (host batches), and the views a
training run on one device takes (``--transfer views``).

Each round reads the shards plainly (sequentially, both CRCs checked: what every pipeline
configuration does too before decoding and batching), then runs one configuration, then reads
plainly again, and so on: configurations alternate with plain reads, so a shared machine's load
weighs on both alike. Per configuration it prints payload MB/s, examples/s and the ratio to the
plain read around it in records/s (each example is one record read and CRC-checked; on records
where every patient trains the model, as synthetic.records writes them, the ratio compares the
same work), and for configurations in this process the CPU time per example (all threads)
against the plain read's per record: the cost that decides the rate on a loaded machine. With
``--rounds`` > 1 a summary gives each configuration's median ratio and its range.

Configurations: ``--threads`` (reader threads, batch thread), ``--workers`` (worker processes),
``--transfer`` (the batch also put on the JAX device: ``batch``, one ``jax.device_put`` of the
batch from its reused buffer; ``views``, no host batch: the pipeline's views of the records'
volumes, each put on the device as it is (in place on the CPU backend), left for the train step
to stack, as training on one device does; ``records``, each record's volumes put on the device
as read and stacked into the batch there by a program of its own).

The benchmark job's ``pipeline`` part uses :func:`pipeline_rate` too.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Sequence

import grain
import numpy as np
from absl import flags

from input_pipeline import cli
from input_pipeline.feed import batching, pipeline
from input_pipeline.records import tfrecord
from input_pipeline.schema import IMAGE_KEYS, MODEL_NAMES


@dataclasses.dataclass(frozen=True)
class Rate:
  """A measured rate.

  Attributes:
    mb_per_s: MB (1e6 bytes) per second: record bytes for a plain read, payload
      (batching.payload_bytes) for the pipeline.
    per_s: records (plain read) or examples (pipeline) per second.
    cpu_ms: CPU time of this process (every thread) per record or example, in ms.
  """
  mb_per_s: float
  per_s: float
  cpu_ms: float


def plain_read_rate(paths: Sequence[str], min_seconds: float = 2.0) -> Rate:
  """Reading ``paths`` sequentially with both CRCs checked (every byte read once; the pipeline
  reads the same way, then decodes and batches), in whole passes until ``min_seconds`` passed,
  after one untimed pass (page cache warm, as for the pipeline)."""
  nbytes = nrecords = 0
  start = cpu = None
  while True:
    for path in paths:
      for _, data in tfrecord.iter_records(path, verify=True):
        nbytes += len(data)
        nrecords += 1
    if start is None:
      nbytes = nrecords = 0
      start, cpu = time.perf_counter(), time.process_time()
      continue
    seconds = time.perf_counter() - start
    if seconds >= min_seconds:
      return Rate(nbytes / seconds / 1e6, nrecords / seconds,
                  (time.process_time() - cpu) / nrecords * 1e3)


def pipeline_rate(iterator: Iterator[dict[str, Any]], num_batches: int, warmup: int = 2,
                  step_seconds: float = 0.0,
                  consume: Callable[[dict[str, Any]], None] | None = None) -> Rate:
  """Payload rate of ``num_batches`` batches after ``warmup`` untimed ones.

  Payload (batching.payload_bytes) counts the image slots and rows a model receives.
  ``step_seconds`` stands in for a train step after each batch: a sleep, which releases the
  GIL as waiting for an accelerator does, so background threads can overlap with it.
  ``consume(batch)`` is called on every batch (a transfer to the device, timed with it).
  ``cpu_ms`` counts this process only (not worker processes)."""
  for _ in range(warmup):
    batch = next(iterator)
    if consume:
      consume(batch)
    del batch  # its buffer goes back to the pool
  nbytes = nexamples = 0
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    batch = next(iterator)
    if consume:
      consume(batch)
    nbytes += batching.payload_bytes(batch)
    nexamples += int(batch["example_mask"].sum())
    del batch
    if step_seconds:
      time.sleep(step_seconds)
  seconds = time.perf_counter() - start
  return Rate(nbytes / seconds / 1e6, nexamples / seconds,
              (time.process_time() - cpu) / nexamples * 1e3)


class _RecordsToDevice:
  """Batches without a host batch: every example's volumes put on the JAX device as read (on
  the CPU backend in place for aligned records of format 2, a copy for format 1), then stacked
  into the image array by a program of its own (a copy on the device). Only the image array,
  its mask and ``example_mask`` are made (the rest of a batch is a few hundred bytes per
  example). Training's views (``--transfer views``) leave the stacking to the train step."""

  def __init__(self, examples: grain.DatasetIterator, model_name: str, batch_size: int,
               spec: batching.BatchSpec):
    import jax  # only this configuration needs JAX
    import jax.numpy as jnp

    self._key = IMAGE_KEYS[model_name]
    if self._key is None:
      raise ValueError("--transfer records needs an imaging model (iMRrhpc or iMGrhpc)")
    self._jax = jax
    self._examples = examples
    self._batch_size = batch_size
    self._slots = 2 if self._key == "mri" else 1
    shape = spec.mri_shape if self._key == "mri" else spec.mg_shape
    dtype = spec.mri_dtype if self._key == "mri" else spec.mg_dtype
    self._zeros = jax.device_put(np.zeros(shape, dtype))
    self._stack = jax.jit(lambda *volumes: jnp.stack(volumes).reshape(
        (batch_size, self._slots, *shape)))

  def _volumes(self, example: batching.Example) -> list[np.ndarray | None]:
    if self._key == "mg":
      return [example.mammogram]
    return [None if name is None else example.record.mri[name]
            for name in (example.baseline, example.follow_up)]

  def __next__(self) -> dict[str, Any]:
    volumes = [v for _ in range(self._batch_size) for v in self._volumes(next(self._examples))]
    mask = np.array([v is not None for v in volumes]).reshape(self._batch_size, self._slots)
    images = self._stack(*(self._zeros if v is None else self._jax.device_put(v)
                           for v in volumes))
    return {self._key: self._jax.block_until_ready(images), f"{self._key}_mask": mask,
            "example_mask": np.ones(self._batch_size, np.float32)}

  def close(self) -> None:
    self._examples.close()


# Thread configurations compared by the benchmark: (read_buffer, prefetch_batches). Reader
# threads cannot be turned off (see DEFAULT_READ_BUFFER); the batch thread can.
_THREADS = {"read": (1, 0), "read+batch": (1, pipeline.DEFAULT_PREFETCH_BATCHES),
            "read4+batch": (4, pipeline.DEFAULT_PREFETCH_BATCHES)}


def define_flags(values: flags.FlagValues) -> None:
  """The command line (input_pipeline/cli.py)."""
  flags.DEFINE_string("records", None, "Folder written by `python -m input_pipeline.records.prepare`.",
                      required=True, flag_values=values)
  flags.DEFINE_enum("split", "train", ["train", "validation", "test"],
                    "Split whose shards to read.", flag_values=values)
  flags.DEFINE_enum("model_name", "iMRrhpc", list(MODEL_NAMES),
                    "Model whose batches to build (decides the images read).", flag_values=values)
  flags.DEFINE_integer("batch_size", 4, "Examples per batch.", lower_bound=1, flag_values=values)
  flags.DEFINE_integer("batches", 50, "Timed batches per configuration.", lower_bound=1,
                       flag_values=values)
  flags.DEFINE_integer("shuffle_window", pipeline.DEFAULT_SHUFFLE_WINDOW,
                       "Records held for shuffling.", lower_bound=1, flag_values=values)
  flags.DEFINE_integer("cycle_length", pipeline.DEFAULT_CYCLE_LENGTH,
                       "Shards read at once (round robin).", lower_bound=1, flag_values=values)
  flags.DEFINE_multi_enum("threads", list(_THREADS), list(_THREADS),
                          "Thread configurations to time: 'read' (reader threads only), "
                          "'read+batch' (and a batch thread), 'read4+batch' (4 records read "
                          "ahead per shard).", flag_values=values)
  flags.DEFINE_multi_integer("workers", [], "Also time the pipeline with this many worker "
                             "processes (repeat the flag for several configurations).",
                             lower_bound=1, flag_values=values)
  flags.DEFINE_multi_enum("transfer", ["views"], ["batch", "views", "records"],
                          "Also time the batches put on the JAX device: 'batch' (read+batch, "
                          "then one jax.device_put of the batch), 'views' (read+batch without "
                          "a host batch: each volume put on the device as the record holds "
                          "it, stacked by the train step), 'records' (each record's volumes "
                          "put on the device, stacked there by a separate program).",
                          flag_values=values)
  flags.DEFINE_integer("rounds", 1, "Times every configuration is run, alternating with plain "
                       "reads.", lower_bound=1, flag_values=values)
  flags.DEFINE_float("plain_seconds", 2.0, "Minimum seconds of each plain read.",
                     lower_bound=0.1, flag_values=values)
  flags.DEFINE_float("step_ms", 0.0, "Simulated train step per batch (a sleep), to see "
                     "prefetching overlap with it.", lower_bound=0.0, flag_values=values)


@dataclasses.dataclass(frozen=True)
class _Config:
  name: str
  read_buffer: int
  prefetch: int
  workers: int = 0
  transfer: str = ""


def _configs(options: flags.FlagValues) -> list[_Config]:
  read_buffer, prefetch = _THREADS["read+batch"]
  configs = [_Config(name, *_THREADS[name]) for name in options.threads]
  configs += [_Config(f"{n} workers", pipeline.DEFAULT_READ_BUFFER, 1, n)
              for n in options.workers]
  configs += [_Config(f"{t} to device", read_buffer, prefetch, transfer=t)
              for t in options.transfer]
  return configs


def _run(config: _Config, paths: Sequence[str], options: flags.FlagValues) -> Rate:
  feed = pipeline.TrainFeed(
      model_name=options.model_name, batch_size=options.batch_size, seed=0,
      shuffle_window=options.shuffle_window, cycle_length=options.cycle_length,
      read_buffer=config.read_buffer, prefetch_batches=config.prefetch, workers=config.workers,
      views=config.transfer == "views")
  consume = None
  if config.transfer == "records":
    examples = pipeline.example_dataset(paths, feed)
    # Records read, checked and decoded ahead in a thread, as batches are otherwise.
    examples = grain.experimental.ThreadPrefetchIterDataset(
        examples, prefetch_buffer_size=config.prefetch * options.batch_size)
    iterator = _RecordsToDevice(iter(examples), options.model_name, options.batch_size,
                                pipeline.batch_spec(options.records))
  else:
    iterator = pipeline.train_iterator(paths, feed)
    if config.transfer in ("batch", "views"):
      import jax  # only these configurations need JAX

      def consume(batch):
        # A views batch: a device_put per volume (jax.device_put maps over the tuples).
        jax.block_until_ready(jax.device_put(batch))
  try:
    return pipeline_rate(iterator, options.batches, step_seconds=options.step_ms / 1e3,
                         consume=consume)
  finally:
    iterator.close()
    # Grain's iterators form reference cycles; collected at interpreter exit, their __del__
    # prints ignored exceptions (modules already torn down). Collect them now.
    del iterator
    gc.collect()


def measure(options: flags.FlagValues, arguments: Sequence[str]) -> int:
  """Prints plain reads alternating with every pipeline configuration, round by round."""
  if arguments:
    print(f"throughput: unexpected arguments {list(arguments)}", file=sys.stderr)
    return 2
  paths = pipeline.split_paths(options.records, options.split)
  configs = _configs(options)
  ratios: dict[str, list[float]] = {c.name: [] for c in configs}

  def plain() -> Rate:
    return plain_read_rate(paths, options.plain_seconds)

  def show(rate: Rate) -> None:
    print(f"plain read                {rate.mb_per_s:8.1f} MB/s {rate.per_s:7.1f} records/s"
          f"              cpu {rate.cpu_ms:5.1f} ms/record ({len(paths)} shards, "
          "CRC-checked)", flush=True)

  before = plain()
  show(before)
  for round_ in range(options.rounds):
    if options.rounds > 1:
      print(f"round {round_ + 1} of {options.rounds}", flush=True)
    for config in configs:
      rate = _run(config, paths, options)
      after = plain()
      # Against the plain reads just before and just after it.
      ratio = rate.per_s / ((before.per_s + after.per_s) / 2)
      ratios[config.name].append(ratio)
      cpu = (f"cpu {rate.cpu_ms:5.1f} ms/example" if not config.workers
             else "cpu in the workers")
      print(f"pipeline {config.name:<16} {rate.mb_per_s:8.1f} MB/s {rate.per_s:7.1f} "
            f"examples/s {ratio:5.2f}x plain  {cpu} (payload; read_buffer={config.read_buffer}, "
            f"prefetch_batches={config.prefetch}, workers={config.workers}, "
            f"step {options.step_ms:g} ms)", flush=True)
      show(after)
      before = after
  if options.rounds > 1:
    print("ratio to the plain read (records/s), median [min, max] over "
          f"{options.rounds} rounds:")
    for name, values in ratios.items():
      print(f"  {name:<17} {statistics.median(values):.2f} [{min(values):.2f}, "
            f"{max(values):.2f}]")
  return 0


def main(argv: Sequence[str]) -> int:
  """The command for callers in Python: ``argv`` without the program name."""
  return cli.call("throughput", define_flags, measure, argv)


if __name__ == "__main__":
  cli.run_program(define_flags, measure)
