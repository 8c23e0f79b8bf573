"""The Grain input pipeline over prepared TFRecord shards: training and evaluation batches.

Training (:func:`train_iterator`), per process::

  shards paths[k::count] -> file order shuffled per epoch, repeated forever
    -> the records of each file (CRC-checked views of the memory-mapped shard, no copy),
       interleaved over ``cycle_length`` open files
    -> window shuffle of the records -> records.decode (arrays stay views of the file)
    -> the model's training patients
    -> one random MRI combination and mammogram view per patient (Grain random_map: seeded
       by the seed, the process and the position in the stream; ``every_view``: each
       mammogram view its own example, for pretraining)
    -> batches of ``batch_size`` (remainder dropped; the only copy of the image data is into
       the batch, whose image buffer is reused: input_pipeline/feed/buffers.py)
    -> ``prefetch_batches`` batches prepared ahead in a background thread, or, with
       ``workers`` > 0, all of the above in that many worker processes, each on its share of
       the shard order, batches handed over in reused shared memory

Views (``views=True``), the default of training on one device: no host batch of images at all.
A batch's image entry holds each row's arrays as the records hold them, views of the mapped
shards (64-byte aligned in records of format version 2), and one shared zero image for empty
slots. ``sharding.global_batch`` puts each on the device: on the CPU backend without a copy
(XLA uses the mapped pages in place), on an accelerator one transfer per volume; the step
stacks them (``augment.prepare_images``), on a CPU fused into the first pass over the images,
so the host's only work per patient is reading it (its CRCs). With several devices the host
stacks them (the ``sharding.global_batch`` fallback: a copy, as the reused buffers below).

Reused buffers, the consumer's contract: a batch's image array is written again only once
no reference to it is left (the batch, a view of it, or a jax.Array that aliases it: on the CPU
backend jax.device_put of a batch aliases its page-aligned image array instead of copying).
Holding batches is always safe; see input_pipeline/feed/buffers.py.

The iterator is a ``grain.DatasetIterator``: ``get_state()`` is a small JSON-able dict (file
offsets, window start, counters; never record bytes) that ``set_state`` or
``grain.checkpoint.CheckpointRestore`` turns back into exactly the same following batches.

Host memory is the window, not the data set: records are 40-66 MB at full geometry, so Grain's
defaults (ReadOptions buffers 500 elements) would hold gigabytes. What this pipeline holds, in
records of one patient (~66 MB at full geometry, ~1.1 MB demo), per process or worker:

* ``shuffle_window`` records in the shuffle window (default 16: ~1 GB at full geometry);
* per open shard (``cycle_length``, plus the next one opened ahead) up to ``read_buffer`` + 1
  records in its reader thread (defaults 4 and 1: ~10 records, ~0.7 GB);
* ``prefetch_batches`` + 2 batches of ``batch_size`` patients (2 volumes each, ~44 MB),
  plus those the consumer still holds, in reused buffers (up to 4 idle ones are kept).

Records are pages of the shards' memory maps, i.e. the kernel's page cache: they count
towards a process's RSS but are not anonymous memory, and a data set that fits in RAM is read
from disk once.

Evaluation (:func:`eval_batches`) is a plain generator: every process reads every shard in
order, so that every process knows how many rows there are and all yield the same number of
batches (a multi-host jitted step needs that); eligible row i belongs to process i % count (a
row is a patient, or for iMGrhpc one of its mammogram views). Shards are CRC-checked while read
(tfrecord.iter_records).

``python -m input_pipeline.feed.throughput --records DIR`` measures it next to a plain sequential
read of the same shards. The Grain stages themselves are in feed/stages.py.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grain
from absl import flags

from input_pipeline import records
from input_pipeline.feed import batching, buffers, stages
from input_pipeline.feed.batching import BatchSpec
from input_pipeline.records import tfrecord

# Records held for shuffling; RAM = window x record size (~66 MB each at full geometry).
DEFAULT_SHUFFLE_WINDOW = 16
# Shards read at once (round robin): consecutive records come from this many shards.
DEFAULT_CYCLE_LENGTH = 4
# Records read ahead per open shard by its reader thread. At least 1: with 0, grain 0.2.18's
# InterleaveIterDataset still starts the reader thread, with an unbounded queue, and the
# consumer reads the same file object too (misaligned reads, MemoryError; docs/data.md, "The
# input pipeline").
DEFAULT_READ_BUFFER = 1
# Batches assembled ahead in a background thread (0: assembled when asked for).
DEFAULT_PREFETCH_BATCHES = 2


# ---------------------------------------------------------------------------------------------
# Shards and the manifest
# ---------------------------------------------------------------------------------------------
def split_paths(records_dir: str | os.PathLike, split: str) -> list[str]:
  """The shard files of ``split`` ('train', 'validation', 'test'), in manifest order.

  Raises:
    ValueError: for an unknown split or a split without shards.
    FileNotFoundError: when the manifest or a shard it lists is missing.
  """
  if split not in records.SPLITS:
    raise ValueError(f"split must be one of {records.SPLITS}, got {split!r}")
  manifest = records.read_manifest(records_dir)
  paths = [str(Path(records_dir) / shard["file"]) for shard in manifest["shards"]
           if shard["split"] == split and shard["records"] > 0]
  if not paths:
    raise ValueError(f"{Path(records_dir) / records.MANIFEST}: no shard holds a {split!r} patient")
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"{len(missing)} shards listed in "
                            f"{Path(records_dir) / records.MANIFEST} are missing, e.g. "
                            f"{missing[0]}")
  return paths


def batch_spec(records_dir: str | os.PathLike) -> BatchSpec:
  """Image shapes and dtypes of the records in ``records_dir``, from its manifest."""
  return BatchSpec.of(records.read_manifest(records_dir))


def _manifest_beside(paths: Sequence[str]) -> tuple[dict[str, Any] | None, list[str]]:
  """The manifest of the folder holding ``paths`` (None if there is none or several folders),
  and the folders."""
  folders = sorted({str(Path(p).parent) for p in paths})
  if len(folders) == 1 and (Path(folders[0]) / records.MANIFEST).exists():
    return records.read_manifest(folders[0]), folders
  return None, folders


def _spec(paths: Sequence[str], spec: BatchSpec | None) -> BatchSpec:
  """``spec``, else the image shapes and dtypes from the manifest beside the shards."""
  if spec is not None:
    return spec
  manifest, folders = _manifest_beside(paths)
  if manifest is None:
    raise ValueError(f"no {records.MANIFEST} beside the shards ({folders[:2]}): pass "
                     "spec= (the MRI and mammogram shapes and dtypes)")
  return batch_spec(folders[0])


def _record_counts(paths: Sequence[str]) -> dict[str, int]:
  """Records per shard file name, from the manifest beside the shards (empty without one)."""
  manifest, _ = _manifest_beside(paths)
  return {s["file"]: s["records"] for s in manifest["shards"]} if manifest else {}


def host_shards(paths: Sequence[str], process_index: int, process_count: int) -> list[str]:
  """Shards of process ``process_index``: paths[process_index::process_count]."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  mine = list(paths[process_index::process_count])
  if not mine:
    raise ValueError(f"{len(paths)} shards cannot feed {process_count} processes (process "
                     f"{process_index} would get none): prepare with a smaller --shard_size "
                     "so that every process gets at least one shard")
  return mine



@dataclasses.dataclass(frozen=True)
class TrainFeed:
  """How one process reads its endless training batches (:func:`train_iterator`).

  Attributes:
    model_name: 'rhpc', 'iMGrhpc' or 'iMRrhpc' (decides the patients and the image keys).
    batch_size: this process's batch (the global batch / process_count).
    seed: the data seed; with the process index it seeds shard order, window shuffle and the
      MRI combination drawn for each patient.
    shuffle_window: records shuffled together; RAM = window x record size.
    process_index, process_count: this process and the number of processes.
    spec: image shapes and dtypes; default: from the manifest beside the shards.
    cycle_length: shards read at once.
    read_buffer: records read ahead per open shard by its reader thread (>= 1, see
      DEFAULT_READ_BUFFER).
    prefetch_batches: batches assembled ahead in a background thread (0: none); not used
      with ``workers`` (each worker keeps one batch ready).
    workers: worker processes (Grain ``mp_prefetch``, spawned) that read, decode and batch,
      each on its own share of the shards; 0 runs everything in this process (threads). Each
      worker holds its own shuffle window and open shards; batches travel through /dev/shm,
      which must hold ~4 x workers batches (a container's too; Docker's default 64 MB is too
      small at full geometry). The iterator state records the workers' states: a run
      resumes with the same ``workers``.
    views: no host batch of images (module docstring, "Views"): a batch's image entry is,
      per row, the tuple of its slots' arrays as the records hold them (views of the mapped
      shards) or a shared zero image, stacked on the device inside the step
      (``sharding.global_batch`` and ``augment.prepare_images``). Needs ``workers`` = 0.
      The batches' contents, order and the iterator state are those of views=False.
    every_view: each mammogram view of a patient is an example of its own (the pretrain job's
      unlabelled images) instead of one view drawn per patient and draw.

  Raises:
    ValueError: an unknown model name or a count out of range.
  """
  model_name: str
  batch_size: int
  seed: int
  shuffle_window: int = DEFAULT_SHUFFLE_WINDOW
  process_index: int = 0
  process_count: int = 1
  spec: BatchSpec | None = None
  cycle_length: int = DEFAULT_CYCLE_LENGTH
  read_buffer: int = DEFAULT_READ_BUFFER
  prefetch_batches: int = DEFAULT_PREFETCH_BATCHES
  workers: int = 0
  views: bool = False
  every_view: bool = False

  def __post_init__(self):
    batching.check_model_name(self.model_name)
    low = {"prefetch_batches": 0, "workers": 0}
    for name in ("shuffle_window", "cycle_length", "read_buffer", "batch_size",
                 "prefetch_batches", "workers"):
      value = getattr(self, name)
      if value < low.get(name, 1):
        raise ValueError(f"{name} must be >= {low.get(name, 1)}, got {value}")
    if self.views and self.workers:
      raise ValueError("views=True needs workers=0: views are pages of this process's maps of "
                       "the shards, and worker processes hand batches over in shared memory")


def example_dataset(paths: Sequence[str], feed: TrainFeed) -> grain.IterDataset:
  """The endless training examples of one process, before batching: each a
  :class:`batching.Example` whose volumes are views of the mapped shards (what a per-record
  transfer to the device consumes; ``python -m input_pipeline.feed.throughput --transfer
  records`` measures it). :func:`train_dataset` batches exactly this stream; the batching
  fields of ``feed`` are not used here."""
  mine = host_shards(paths, feed.process_index, feed.process_count)
  counts = _record_counts(paths)
  local_records = (sum(counts[Path(p).name] for p in mine)
                   if all(Path(p).name in counts for p in mine) else None)
  file_seed, window_seed, draw_seed = stages.seeds(feed.seed, feed.process_index)

  # MapDataset.shuffle mixes the epoch into its seed: another shard order every epoch.
  files = grain.MapDataset.source(mine).shuffle(seed=file_seed).repeat(None)
  ds = grain.experimental.InterleaveIterDataset(
      files.map(stages.ShardRecords), cycle_length=min(feed.cycle_length, len(mine)),
      iter_buffer_size=feed.read_buffer)
  # Shuffled as bytes: decoding only what leaves the window costs no more RAM (a record's
  # bytes are its arrays) and no decode is wasted on a window being refilled after a restore.
  ds = stages.WindowShuffle(ds, window_size=feed.shuffle_window, seed=window_seed)
  ds = ds.map(stages.decode).filter(stages.TrainingPatients(feed.model_name, mine,
                                                            local_records))
  if feed.every_view:
    ds = grain.experimental.FlatMapIterDataset(ds, stages.EveryView())
  return ds.random_map(batching.draw_training_example, seed=draw_seed)


def train_dataset(paths: Sequence[str], feed: TrainFeed) -> grain.IterDataset:
  """The endless training dataset of one process (see :func:`train_iterator`)."""
  ds = example_dataset(paths, feed)
  spec = _spec(paths, feed.spec)
  ds = ds.batch(feed.batch_size, drop_remainder=True,
                batch_fn=stages.Collate(feed.model_name, spec, shared=feed.workers > 0,
                                        views=feed.views))
  if feed.workers:
    if not flags.FLAGS.is_parsed():
      # Grain's worker processes read its absl flags; a caller without absl.app (this
      # module's CLI, a notebook) gets their defaults.
      flags.FLAGS.mark_as_parsed()
    # Worker k runs everything above on files k, k + workers, ... of the shuffled, repeated
    # shard order; batches come back through shared memory, taken from the workers in turn.
    # One batch ready per worker (plus the one it builds, and those in transit and held by
    # the consumer): /dev/shm holds ~4 x workers local batches (44 MB per full-geometry MRI
    # example), segments that each worker fills again once the consumer has let go of them.
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=feed.workers,
                                                     per_worker_buffer_size=1))
    ds = ds.map(stages.open_shared_buffers)
  elif feed.prefetch_batches:
    ds = grain.experimental.ThreadPrefetchIterDataset(
        ds, prefetch_buffer_size=feed.prefetch_batches)
  return ds


def train_iterator(paths: Sequence[str], feed: TrainFeed) -> grain.DatasetIterator:
  """Endless training batches of one process, checkpointable.

  Args:
    paths: every training shard (all processes pass the same list, e.g. from
      :func:`split_paths`); process k reads paths[k::process_count].
    feed: the model, batch, seed and reading options (:class:`TrainFeed`).

  Returns:
    A grain.DatasetIterator of batch dicts (:func:`batching.collate`), with get_state /
    set_state. The image array of a batch lives in a reused buffer, written again only once
    nothing refers to it (module docstring). Call its ``close()``
    when done: it stops the reader and batch threads. (Grain's iterators hold reference
    cycles; left for the interpreter's exit, their __del__ prints ignored exceptions.)

  Raises:
    ValueError: fewer shards than processes; while iterating, a record that does not decode
      (naming the shard) or shards with no training patient for the model.
  """
  return iter(train_dataset(paths, feed))


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EvalFeed:
  """What :func:`eval_batches` reads and how.

  Attributes:
    model_name: decides the image keys of the batches, and for iMGrhpc one row per mammogram
      view (batching.eval_examples).
    phase: 'pre' (every patient), 'mid' (Pre and Mid MRI) or 'post' (Pre and Post MRI): the
      same population for every model.
    batch_size: this process's batch.
    process_index, process_count: eligible row i goes to process i % process_count; every
      process yields the same number of batches (trailing ones may be all padding).
    spec: image shapes and dtypes; default: from the manifest beside the shards.
    include_unlabeled: also yield patients with label -1 (for prediction; their 'label' is -1).
    views: image entries as the records' views instead of a host batch (module docstring,
      "Views"; padding rows and empty slots hold the shared zero image).

  Raises:
    ValueError: an unknown model name or phase, or a count out of range.
  """
  model_name: str
  phase: str
  batch_size: int
  process_index: int = 0
  process_count: int = 1
  spec: BatchSpec | None = None
  include_unlabeled: bool = False
  views: bool = False

  def __post_init__(self):
    batching.check_model_name(self.model_name)
    batching.check_eval_phase(self.phase)
    if self.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
    if not 0 <= self.process_index < self.process_count:
      raise ValueError(f"process_index {self.process_index} is not in "
                       f"[0, {self.process_count})")


def eval_batches(paths: Sequence[str], feed: EvalFeed
                 ) -> Iterator[tuple[dict[str, Any], list[str]]]:
  """Every evaluation patient of ``feed.phase`` exactly once, in shard order; for iMGrhpc each
  of its mammogram views in a row of its own (consecutive rows of one patient, which the
  predictions average: mrp_jax.core.inference).

  Args:
    paths: the shards of the evaluated split, in order (every process passes the same list).
    feed: the model, phase, batch and process (:class:`EvalFeed`).

  Yields:
    (batch, patient_ids): the batch as :func:`batching.collate` pads it, and the pseudonym of
    every row ('' for padding rows; a patient's id once per view row).

  Raises:
    tfrecord.CorruptRecordError: a damaged shard (file and byte offset named).
    ValueError: a record that does not decode (shard and offset named).
  """
  if not paths:
    raise ValueError("eval_batches: no shards given")
  spec = _spec(paths, feed.spec)
  # Arguments are checked above, at the call; the batches are read when iterated.
  return _eval_batches(list(paths), feed, spec)


def _eval_batches(paths: list[str], feed: EvalFeed, spec: BatchSpec
                  ) -> Iterator[tuple[dict[str, Any], list[str]]]:
  batch_size, count = feed.batch_size, feed.process_count
  # Views, or reused image buffers: each batch of a full-geometry evaluation would otherwise
  # fault in fresh pages (input_pipeline/feed/buffers.py).
  collate = functools.partial(batching.collate, model_name=feed.model_name, spec=spec,
                              batch_size=batch_size, views=feed.views)
  if not feed.views:
    collate = functools.partial(collate, empty=buffers.BufferPool().empty)

  def emit(pending: list[batching.Example]):
    ids = [e.record.patient_id for e in pending] + [""] * (batch_size - len(pending))
    return collate(pending), ids

  pending: list[batching.Example] = []
  eligible = batches = 0
  for path in paths:
    for offset, data in tfrecord.iter_records(path):
      try:
        record = records.decode(data)
      except records.RecordFormatError as error:
        raise ValueError(f"{path}: record at byte offset {offset}: {error}") from None
      if not batching.evaluates(record, feed.phase, feed.include_unlabeled):
        continue
      for example in batching.eval_examples(record, feed.phase, feed.model_name):
        mine = eligible % count == feed.process_index
        eligible += 1
        if mine:
          pending.append(example)
          if len(pending) == batch_size:
            yield emit(pending)
            batches += 1
            pending = []
  # Process 0 holds the most rows; every process pads up to its number of batches.
  total = math.ceil(math.ceil(eligible / count) / batch_size)
  while batches < total:
    yield emit(pending)
    batches += 1
    pending = []
