"""The training pipeline's throughput next to a plain sequential read of the same shards.

  python -m input_pipeline.throughput --records DIR [--model_name iMRrhpc --batch_size 4
      --batches 50 --threads read --threads read+batch --workers 4 --workers 8 --step_ms 40]

Prints MB/s and examples/s of each pipeline configuration (thread layouts, worker processes)
between two plain CRC-checked reads of the same files (the second shows drift on a shared
machine). The benchmark job's ``pipeline`` part uses :func:`pipeline_rate` too.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Sequence

import grain
from absl import flags

from input_pipeline import batching, cli, pipeline, tfrecord
from input_pipeline.schema import MODEL_NAMES


def plain_read_rate(paths: Sequence[str], min_seconds: float = 2.0) -> tuple[float, float]:
  """(MB/s, records/s) of reading ``paths`` sequentially with both CRCs checked (every byte
  read once; the pipeline reads the same way, then decodes and batches), in whole passes until
  ``min_seconds`` passed, after one untimed pass (page cache warm, as for the pipeline).
  MB = 1e6 bytes of record data."""
  nbytes = nrecords = 0
  start = None
  while True:
    for path in paths:
      for _, data in tfrecord.iter_records(path, verify=True):
        nbytes += len(data)
        nrecords += 1
    if start is None:
      nbytes = nrecords = 0
      start = time.perf_counter()
      continue
    seconds = time.perf_counter() - start
    if seconds >= min_seconds:
      return nbytes / seconds / 1e6, nrecords / seconds


def pipeline_rate(iterator: grain.DatasetIterator, num_batches: int, warmup: int = 2,
                  step_seconds: float = 0.0) -> tuple[float, float]:
  """(payload MB/s, examples/s) of ``num_batches`` batches after ``warmup`` untimed ones.

  Payload (batching.payload_bytes) counts the image slots and rows a model receives.
  ``step_seconds`` stands in for a train step after each batch: a sleep, which releases the
  GIL as waiting for an accelerator does, so background threads can overlap with it."""
  for _ in range(warmup):
    next(iterator)
  nbytes = nexamples = 0
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(iterator)
    nbytes += batching.payload_bytes(batch)
    nexamples += int(batch["example_mask"].sum())
    if step_seconds:
      time.sleep(step_seconds)
  seconds = time.perf_counter() - start
  return nbytes / seconds / 1e6, nexamples / seconds


# Thread configurations compared by the benchmark: (read_buffer, prefetch_batches). Reader
# threads cannot be turned off (see DEFAULT_READ_BUFFER); the batch thread can.
_THREADS = {"read": (1, 0), "read+batch": (1, pipeline.DEFAULT_PREFETCH_BATCHES),
            "read4+batch": (4, pipeline.DEFAULT_PREFETCH_BATCHES)}


def define_flags(values: flags.FlagValues) -> None:
  """The command line (input_pipeline/cli.py)."""
  flags.DEFINE_string("records", None, "Folder written by `python -m input_pipeline.prepare`.",
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
  flags.DEFINE_float("step_ms", 0.0, "Simulated train step per batch (a sleep), to see "
                     "prefetching overlap with it.", lower_bound=0.0, flag_values=values)


def measure(options: flags.FlagValues, arguments: Sequence[str]) -> int:
  """Prints the plain read, each pipeline configuration, and the plain read again."""
  if arguments:
    print(f"throughput: unexpected arguments {list(arguments)}", file=sys.stderr)
    return 2
  paths = pipeline.split_paths(options.records, options.split)
  plain_mb, plain_records = plain_read_rate(paths)
  print(f"plain read        {plain_mb:8.1f} MB/s  {plain_records:8.1f} records/s "
        f"({len(paths)} shards, CRC-checked)")
  configs = [(name, *_THREADS[name], 0) for name in options.threads]
  configs += [(f"{n} workers", pipeline.DEFAULT_READ_BUFFER, 1, n) for n in options.workers]
  for name, read_buffer, prefetch, workers in configs:
    iterator = pipeline.train_iterator(
        paths, model_name=options.model_name, batch_size=options.batch_size, seed=0,
        shuffle_window=options.shuffle_window, cycle_length=options.cycle_length,
        read_buffer=read_buffer, prefetch_batches=prefetch, workers=workers)
    mb, rate = pipeline_rate(iterator, options.batches, step_seconds=options.step_ms / 1e3)
    iterator.close()
    # Grain's iterators form reference cycles; collected at interpreter exit, their __del__
    # prints ignored exceptions (modules already torn down). Collect them now.
    del iterator
    gc.collect()
    print(f"pipeline {name:<10} {mb:8.1f} MB/s  {rate:8.1f} examples/s "
          f"(payload; read_buffer={read_buffer}, prefetch_batches={prefetch}, "
          f"workers={workers}, step {options.step_ms:g} ms)", flush=True)
  plain_mb, plain_records = plain_read_rate(paths)  # the machine may be shared: drift check
  print(f"plain read again  {plain_mb:8.1f} MB/s  {plain_records:8.1f} records/s")
  return 0


def main(argv: Sequence[str]) -> int:
  """The command for callers in Python: ``argv`` without the program name."""
  return cli.call("throughput", define_flags, measure, argv)


if __name__ == "__main__":
  cli.run_program(define_flags, measure)
