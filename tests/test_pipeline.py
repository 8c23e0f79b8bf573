"""The Grain input pipeline: the batch contract, training draws, determinism, per-host shards,
checkpointable iterator state (also through Orbax) and the evaluation populations."""

from __future__ import annotations

import collections
import itertools
import json
import mmap
import struct
from pathlib import Path

import grain
import grain.python
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from input_pipeline import encoding, records, schema
from input_pipeline.feed import batching, pipeline, stages
from input_pipeline.records import tfrecord
from mrp_jax.models import MODEL_NAMES, dummy_batch

MRI_SHAPE = (4, 4, 8)
MG_SHAPE = (8, 4)
AGE = [v.name for v in schema.VARIABLES].index("age")
AGE_COLUMN = encoding.INPUT_SLICES[AGE][0]

# (MRI phases, mammogram views, label) per patient; the patient's index is its position here.
TWO = ("CC", "MLO")
COHORT = [
    (("pre", "mid", "post"), TWO, 1),
    (("pre",), (), 0),
    (("pre", "mid"), ("CC",), 0),
    (("pre", "post"), (), 1),
    ((), TWO, 0),                       # mammogram + rhpc only
    ((), (), 1),                        # rhpc only
    (("mid",), ("CC",), 0),             # follow-up without a Pre baseline
    (("pre", "mid", "post"), (), 0),
    (("pre", "mid", "post"), TWO, -1),  # unknown label: never trains, not evaluated
    (("pre", "post"), ("MLO", "CC"), 0),  # MLO preferred: stored first
    (("pre",), ("CC",), 1),
    (("pre", "mid"), (), 1),
]
NUM_SHARDS = 4


def _voxel(index: int, phase: str) -> float:
  """The value filling patient ``index``'s ``phase`` volume (exact in float16)."""
  return float(index * 4 + schema.PHASE_NAMES.index(phase) + 1)


def _mg_value(index: int, view: str) -> int:
  """The value filling patient ``index``'s mammogram ``view``."""
  return 100 + 2 * index + TWO.index(view)


def _record(index: int) -> records.PatientRecord:
  phases, views, label = COHORT[index]
  codes = np.full(len(schema.VARIABLES), schema.UNKNOWN, np.int32)
  values = np.full(len(schema.VARIABLES), np.nan, np.float32)
  codes[AGE], values[AGE] = 0, 20 + index  # the age tells the patient apart in a batch
  return records.PatientRecord(
      patient_id=f"P{index:012x}", split="train", label=label,
      mri={p: np.full(MRI_SHAPE, _voxel(index, p), np.float16) for p in phases},
      mammograms={v: np.full(MG_SHAPE, _mg_value(index, v), np.uint16) for v in views},
      rhpc_raw=("",) * len(schema.VARIABLES), rhpc_codes=codes, rhpc_values=values,
      spacing_mm=(4.0, 4.0, 4.0) if phases else None)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
  """NUM_SHARDS shards (patients dealt round robin) and a manifest, as prepare writes them."""
  folder = tmp_path_factory.mktemp("records")
  entries, paths = [], []
  for s in range(NUM_SHARDS):
    name = f"train-{s:05d}-of-{NUM_SHARDS:05d}.tfrecord"
    members = range(s, len(COHORT), NUM_SHARDS)
    with tfrecord.TFRecordWriter(folder / name) as writer:
      for i in members:
        writer.write(records.encode(_record(i)))
    entries.append({"file": name, "split": "train", "records": len(members)})
    paths.append(str(folder / name))
  manifest = {"mri": {"shape": list(MRI_SHAPE), "dtype": "float16"},
              "mammogram": {"shape": list(MG_SHAPE), "dtype": "uint16"},
              "shards": entries + [{"file": "test-00000-of-00001.tfrecord", "split": "test",
                                    "records": 0}]}
  (folder / records.MANIFEST).write_text(json.dumps(manifest))
  return paths


def _patient(batch, row: int) -> int:
  return int(np.rint(batch["rhpc"][row, AGE_COLUMN] * 10 + 50)) - 20


def _rows(batch):
  """(patient index, follow-up phase name or None; None also for batches without MRI) of
  every real row."""
  out = []
  for row in range(len(batch["label"])):
    if batch["example_mask"][row] == 0:
      continue
    index = _patient(batch, row)
    follow_up = (schema.PHASE_NAMES[batch["mri_phase"][row, 1]]
                 if "mri" in batch and batch["mri_mask"][row, 1] else None)
    out.append((index, follow_up))
  return out


def _train(shards, model_name="iMRrhpc", seed=0, **kwargs):
  kwargs.setdefault("batch_size", 3)
  kwargs.setdefault("shuffle_window", 4)
  return pipeline.train_iterator(
      shards, pipeline.TrainFeed(model_name=model_name, seed=seed, **kwargs))


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
def test_split_paths_and_spec(shards):
  folder = Path(shards[0]).parent
  assert pipeline.split_paths(folder, "train") == shards
  with pytest.raises(ValueError, match="no shard holds a 'test' patient"):
    pipeline.split_paths(folder, "test")
  with pytest.raises(ValueError, match="split must be one of"):
    pipeline.split_paths(folder, "tain")
  assert pipeline.batch_spec(folder) == batching.BatchSpec(MRI_SHAPE, "float16", MG_SHAPE,
                                                            "uint16")


@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_batches_follow_the_model_contract(shards, model_name):
  reference = dummy_batch(model_name, 3, mri_shape=MRI_SHAPE, mg_shape=MG_SHAPE)
  dtypes = {"mri": np.float16, "mg": np.uint16, "mri_mask": bool, "mg_mask": bool,
            "mri_phase": np.int32, "mg_phase": np.int32, "phase": np.int32}
  iterator = _train(shards, model_name)
  train = next(iterator)
  iterator.close()
  evaluation, ids = next(pipeline.eval_batches(shards, pipeline.EvalFeed(
      model_name=model_name, phase="mid", batch_size=3)))
  assert len(ids) == 3
  for batch in (train, evaluation):
    assert set(batch) == set(reference)  # the one batch contract (batching.empty_batch)
    for key, value in batch.items():
      assert value.shape == reference[key].shape, key
      assert value.dtype == dtypes.get(key, np.float32), key


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2 worker processes"])
def test_training_draws_every_available_combination_and_nothing_else(shards, workers):
  iterator = _train(shards, "iMRrhpc", batch_size=4, workers=workers)
  seen = collections.defaultdict(set)
  for batch in _take(iterator, 90):
    for row in range(len(batch["label"])):
      if batch["example_mask"][row] == 0:
        continue
      index = _patient(batch, row)
      drawn = []
      for slot in range(2):
        if not batch["mri_mask"][row, slot]:
          assert not batch["mri"][row, slot].any()  # an empty slot is zeros
          continue
        phase = schema.PHASE_NAMES[batch["mri_phase"][row, slot]]
        # Each present slot holds this patient's volume of the phase it says.
        assert np.all(batch["mri"][row, slot] == _voxel(index, phase)), (index, slot)
        drawn.append(phase)
      # The first slot is never empty, and a pair is in time order.
      assert batch["mri_mask"][row, 0]
      assert drawn == sorted(drawn, key=schema.PHASE_NAMES.index) and len(set(drawn)) == len(drawn)
      seen[index].add(tuple(drawn))
      assert batch["label"][row] == COHORT[index][2]
  iterator.close()
  trainable = {i for i, (phases, _, label) in enumerate(COHORT) if phases and label >= 0}
  # No patient without MRI (4, 5) or without a label (8) trains the MRI model; 6 (Mid only) does.
  assert set(seen) == trainable
  for index in trainable:
    phases = COHORT[index][0]
    expected = {(p,) for p in phases} | set(itertools.combinations(phases, 2))
    assert seen[index] == expected, index


@pytest.mark.parametrize("model_name, expected", [
    ("iMGrhpc", {i for i, (_, views, label) in enumerate(COHORT) if views and label >= 0}),
    ("rhpc", {i for i, (_, _, label) in enumerate(COHORT) if label >= 0}),
])
def test_training_patients_per_model(shards, model_name, expected):
  iterator = _train(shards, model_name, batch_size=4)
  seen = {index for batch in _take(iterator, 12) for index, _ in _rows(batch)}
  iterator.close()
  assert seen == expected


def _mg_draws(batches) -> list[tuple[int, str]]:
  """(patient, view) of every real row of iMGrhpc batches, the view told by its pixel value."""
  out = []
  for batch in batches:
    for row, (index, _) in enumerate(_rows(batch)):
      value = batch["mg"][row, 0].flat[0]
      assert batch["mg_mask"][row, 0] and np.all(batch["mg"][row, 0] == value)
      [view] = [v for v in COHORT[index][1] if _mg_value(index, v) == value]
      out.append((index, view))
  return out


def test_training_draws_each_mammogram_view_over_draws_deterministically(shards):
  """One view per patient and draw, drawn with the MRI combination: over draws both views of a
  two-view patient, the one view of a one-view patient; the same seed draws the same views."""
  draws = [_mg_draws(_take(iterator, 40)) for iterator in
           (_train(shards, "iMGrhpc", seed=3, batch_size=4, prefetch_batches=0),
            _train(shards, "iMGrhpc", seed=3, batch_size=4, prefetch_batches=0))]
  assert draws[0] == draws[1]
  seen = collections.defaultdict(collections.Counter)
  for index, view in draws[0]:
    seen[index][view] += 1
  for index, counts in seen.items():
    assert set(counts) == set(COHORT[index][1]), index
  # Both views of the two-view patients, each a fair share (a uniform draw: 40 batches hold ~20
  # draws of each patient; a share under a fifth has probability < 1e-3).
  for index in (0, 4, 9):
    assert min(seen[index].values()) >= sum(seen[index].values()) / 5, seen[index]


def test_every_view_makes_each_view_an_example_of_its_own(shards):
  """The pretrain job's stream: a two-view patient comes as two examples of one view each, so
  one pass over the records holds every view once."""
  from input_pipeline.feed import stages
  two = _record(0)
  split = stages.EveryView().flat_map(two)
  assert [list(r.mammograms) for r in split] == [["CC"], ["MLO"]]
  assert all(r.patient_id == two.patient_id and r.mri is two.mri for r in split)
  one = _record(2)
  assert stages.EveryView().flat_map(one) == [one]  # one view: passed on as it is
  feed = pipeline.TrainFeed(model_name="iMGrhpc", batch_size=1, seed=0, shuffle_window=1,
                            cycle_length=1, every_view=True)
  paths = shards[:1]  # patients 0, 4, 8 (unlabelled: not trained) in order
  examples = list(itertools.islice(iter(pipeline.example_dataset(paths, feed)), 4))
  assert [(int(e.record.patient_id[1:], 16), e.mg_view) for e in examples] == [
      (0, "CC"), (0, "MLO"), (4, "CC"), (4, "MLO")]
  assert all(len(e.record.mammograms) == 1 for e in examples)


def test_fixed_seed_repeats_and_another_seed_differs(shards):
  first, second, other = (_train(shards, seed=s) for s in (7, 7, 8))
  a, b, c = _take(first, 6), _take(second, 6), _take(other, 6)
  for iterator in (first, second, other):
    iterator.close()
  _assert_same_batches(a, b)
  assert any(not np.array_equal(x["rhpc"], y["rhpc"]) or not np.array_equal(x["mri"], y["mri"])
             for x, y in zip(a, c))


def test_per_host_shards_cover_every_patient_once(shards):
  seen = []
  for process_index in range(2):
    iterator = _train(shards, "rhpc", batch_size=2, process_index=process_index,
                      process_count=2)
    seen.append({index for batch in _take(iterator, 20) for index, _ in _rows(batch)})
    iterator.close()
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == {i for i, (_, _, label) in enumerate(COHORT) if label >= 0}
  with pytest.raises(ValueError, match="4 shards cannot feed 5 processes"):
    _train(shards, process_index=4, process_count=5)


def _shuffled(n, window, seed):
  return iter(stages.WindowShuffle(grain.MapDataset.range(n).to_iter_dataset(),
                                   window_size=window, seed=seed))


def test_window_shuffle_permutes_each_window_and_resumes_anywhere():
  order = list(_shuffled(22, 4, seed=3))
  windows = [order[i:i + 4] for i in range(0, 22, 4)]
  # Each window holds exactly its own elements (the last one the 2 left over), reordered.
  assert [sorted(w) for w in windows] == [list(range(i, min(i + 4, 22))) for i in range(0, 22, 4)]
  assert order != list(range(22))
  assert order == list(_shuffled(22, 4, seed=3))
  assert order != list(_shuffled(22, 4, seed=4))
  for taken in (0, 3, 4, 9):  # at a window's start, inside one, at its last element
    iterator = _shuffled(22, 4, seed=3)
    head = [next(iterator) for _ in range(taken)]
    state = json.loads(json.dumps(iterator.get_state()))
    resumed = _shuffled(22, 4, seed=3)
    resumed.set_state(state)
    assert head + list(resumed) == order, taken


def test_iterator_state_round_trip(shards):
  iterator = _train(shards)
  _take(iterator, 5)  # past a few shuffle windows and an epoch of some shards
  state = iterator.get_state()
  expected = _take(iterator, 6)
  iterator.close()
  restored = _train(shards)
  restored.set_state(json.loads(json.dumps(state)))  # the state survives JSON as Orbax writes it
  _assert_same_batches(expected, _take(restored, 6))
  restored.close()


def test_worker_processes_hand_over_shared_memory_and_resume(shards):
  iterator = _train(shards, workers=2)
  _take(iterator, 5)
  state = iterator.get_state()
  expected = _take(iterator, 6)
  iterator.close()
  # Built in shared memory by the worker, opened here without a copy.
  assert isinstance(expected[0]["mri"], grain.python.SharedMemoryArray)
  restored = _train(shards, workers=2)
  restored.set_state(json.loads(json.dumps(state)))
  _assert_same_batches(expected, _take(restored, 6))
  restored.close()


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2 worker processes"])
def test_a_held_batch_survives_any_number_of_later_batches(shards, workers):
  """Image buffers are reused (input_pipeline/feed/buffers.py), but never under a batch the consumer
  still holds, nor under a jax.Array that aliases it (jax.device_put on the CPU backend does
  not copy an aligned host array). A ring reused after a fixed number of batches fails here:
  every later batch differs from the held one, so any overwrite shows."""
  iterator = _train(shards, batch_size=4, workers=workers)
  _take(iterator, 2)
  held = next(iterator)
  expected = {key: np.array(value) for key, value in held.items()}
  device = jax.device_put(held["mri"], jax.devices("cpu")[0])
  image = held.pop("mri")  # the device array and the other arrays hold the buffer alone
  del image
  for _ in range(6 * (pipeline.DEFAULT_PREFETCH_BATCHES + 2)):
    later = next(iterator)
    assert not np.array_equal(later["mri"], expected["mri"])
    del later
  iterator.close()
  np.testing.assert_array_equal(np.asarray(device), expected["mri"])
  for key, value in held.items():
    np.testing.assert_array_equal(value, expected[key], err_msg=key)


@pytest.mark.parametrize("workers, most", [(0, pipeline.DEFAULT_PREFETCH_BATCHES + 3), (2, 12)],
                         ids=["in-process", "2 worker processes"])
def test_batches_let_go_of_give_their_buffers_to_later_ones(shards, workers, most):
  """Batches that nobody holds any more hand their image buffer on: a handful of buffers (those
  prefetched or in transit at once) serve every batch."""
  iterator = _train(shards, batch_size=4, workers=workers)
  buffers_seen = {}
  for _ in range(40):
    image = next(iterator)["mri"]
    # The pool's mapping in this process, or the worker's segment (held here: ids stay unique).
    memory = image.shm.name if workers else image.base
    assert workers or isinstance(memory, mmap.mmap)
    buffers_seen[memory if workers else id(memory)] = memory
    del image, memory
  iterator.close()
  assert len(buffers_seen) <= most


def test_a_damaged_record_stops_training_naming_shard_and_offset(shards, tmp_path):
  damaged = tmp_path / Path(shards[1]).name
  data = bytearray(Path(shards[1]).read_bytes())
  first = tfrecord.HEADER_BYTES + struct.unpack("<Q", data[:8])[0] + tfrecord.FOOTER_BYTES
  data[first + tfrecord.HEADER_BYTES + 3] ^= 0xFF  # inside the second record's data
  damaged.write_bytes(bytes(data))
  iterator = _train([damaged], "rhpc", batch_size=1, spec=pipeline.batch_spec(
      Path(shards[0]).parent), prefetch_batches=0)
  with pytest.raises(tfrecord.CorruptRecordError,
                     match=f"{damaged.name}: corrupt record at byte offset {first}: data CRC"):
    _take(iterator, 10)
  iterator.close()


def test_iterator_state_through_an_orbax_checkpoint(shards, tmp_path):
  iterator = _train(shards)
  _take(iterator, 4)
  with ocp.CheckpointManager(tmp_path / "checkpoints", item_names=("data",)) as manager:
    manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
  expected = _take(iterator, 5)
  iterator.close()
  restored = _train(shards)
  with ocp.CheckpointManager(tmp_path / "checkpoints", item_names=("data",)) as manager:
    assert manager.latest_step() == 4
    manager.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  _assert_same_batches(expected, _take(restored, 5))
  restored.close()


@pytest.mark.parametrize("phase, follow_up", [("pre", None), ("mid", "mid"), ("post", "post")])
@pytest.mark.parametrize("model_name", ["iMRrhpc", "iMGrhpc"])
def test_eval_yields_each_eligible_patient_once(shards, phase, follow_up, model_name):
  eligible = [i for i, (phases, _, label) in enumerate(COHORT) if label >= 0
              and (follow_up is None or {"pre", follow_up} <= set(phases))]
  # iMGrhpc scores each mammogram view in a row of its own (one row without a mammogram).
  rows = [(i, view) for i in sorted(eligible, key=lambda i: (i % NUM_SHARDS, i))
          for view in (COHORT[i][1] if model_name == "iMGrhpc" and COHORT[i][1] else (None,))]
  batch_size = 4
  seen = []
  batches = list(pipeline.eval_batches(shards, pipeline.EvalFeed(
      model_name=model_name, phase=phase, batch_size=batch_size)))
  assert len(batches) == -(-len(rows) // batch_size)
  for batch, ids in batches:
    if model_name == "iMRrhpc":  # the phase's follow-up slot, where the patient has one
      expected = schema.PHASE_NAMES.index(phase)
      assert np.all(batch["mri_phase"][batch["mri_mask"][:, 1], 1] == expected)
    for row, patient_id in enumerate(ids):
      if not patient_id:  # padding: no data, masked out
        assert batch["example_mask"][row] == 0 and batch["label"][row] == 0
        assert not batch["rhpc"][row].any() and not batch["aux_masks"][row].any()
        assert not batch[f"{'mri' if model_name == 'iMRrhpc' else 'mg'}_mask"][row].any()
        continue
      index = int(patient_id[1:], 16)
      phases, views, label = COHORT[index]
      assert _patient(batch, row) == index and batch["example_mask"][row] == 1
      assert batch["label"][row] == label
      if model_name == "iMRrhpc":
        assert batch["mri_mask"][row, 0] == ("pre" in phases)
        if "pre" in phases:
          assert np.all(batch["mri"][row, 0] == _voxel(index, "pre"))
        assert batch["mri_mask"][row, 1] == (follow_up is not None)
        if follow_up:
          assert np.all(batch["mri"][row, 1] == _voxel(index, follow_up))
          assert batch["mri_phase"][row, 1] == schema.PHASE_NAMES.index(follow_up)
      else:
        assert batch["mg_mask"][row, 0] == bool(views)
        value = batch["mg"][row, 0].flat[0]
        assert np.all(batch["mg"][row, 0] == value)
        view = next((v for v in views if _mg_value(index, v) == value), None)
        assert view is not None if views else value == 0
      seen.append((index, view if model_name == "iMGrhpc" else None))
  # Shard order, then record order (a patient's views in their stored order): deterministic,
  # each patient (iMGrhpc: each view) exactly once.
  assert seen == rows
  # Padding: the last batch is filled with empty rows.
  assert len(seen) + batches[-1][1].count("") == len(batches) * batch_size


def test_eval_shards_patients_across_processes_with_equal_batch_counts(shards):
  per_process = [list(pipeline.eval_batches(shards, pipeline.EvalFeed(
      model_name="rhpc", phase="pre", batch_size=2, process_index=k, process_count=3)))
                 for k in range(3)]
  ids = [[i for _, batch_ids in batches for i in batch_ids if i] for batches in per_process]
  assert len({len(batches) for batches in per_process}) == 1  # a multi-host step needs this
  flat = [i for process_ids in ids for i in process_ids]
  assert len(flat) == len(set(flat))
  assert {int(i[1:], 16) for i in flat} == {i for i, c in enumerate(COHORT) if c[2] >= 0}


def test_eval_include_unlabeled_for_prediction(shards):
  ids = [i for _, batch_ids in pipeline.eval_batches(shards, pipeline.EvalFeed(
      model_name="rhpc", phase="post", batch_size=8, include_unlabeled=True))
         for i in batch_ids if i]
  assert f"P{8:012x}" in ids


def test_shards_without_training_patients_are_named(tmp_path, shards):
  # Patients 5 (rhpc only) and 1 (Pre MRI, no mammogram): nobody can train the mammogram model.
  path = tmp_path / "train-00000-of-00001.tfrecord"
  with tfrecord.TFRecordWriter(path) as writer:
    for i in (5, 1):
      writer.write(records.encode(_record(i)))
  (tmp_path / records.MANIFEST).write_text(json.dumps({
      "mri": {"shape": list(MRI_SHAPE), "dtype": "float16"},
      "mammogram": {"shape": list(MG_SHAPE), "dtype": "uint16"},
      "shards": [{"file": path.name, "split": "train", "records": 2}]}))
  iterator = _train([str(path)], "iMGrhpc", prefetch_batches=0)
  with pytest.raises(ValueError, match="none of the 2 patients .* can train 'iMGrhpc'"):
    next(iterator)
  iterator.close()


def test_synthetic_records_feed_the_pipeline(tmp_path):
  from input_pipeline.synthetic import records as synthetic_records
  folder = synthetic_records.write(tmp_path / "records", 5, mri_shape=(4, 6, 8), mg_shape=(8, 4),
                                   per_shard=2)
  paths = pipeline.split_paths(folder, "train")
  assert len(paths) == 3
  assert pipeline.batch_spec(folder) == batching.BatchSpec((4, 6, 8), "float16", (8, 4),
                                                           "uint16")
  decoded = [records.decode(data) for p in paths for _, data in tfrecord.iter_records(p)]
  assert [r.phases for r in decoded] == [(0, 2), (0, 1, 2)] * 2 + [(0, 2)]
  iterator = _train(paths, batch_size=5, shuffle_window=5)
  batch = next(iterator)
  iterator.close()
  assert batch["mri"].shape == (5, 2, 4, 6, 8) and batch["mri_mask"][:, 0].all()


def test_per_record_transfers_build_the_pipelines_batches(shards):
  """throughput --transfer records (volumes put on the device one by one, stacked there) makes
  the image arrays of the same batches as the pipeline, from the same stream of examples."""
  from input_pipeline.feed import throughput
  iterator = _train(shards, batch_size=3, prefetch_batches=0)
  examples = iter(pipeline.example_dataset(shards, pipeline.TrainFeed(
      model_name="iMRrhpc", batch_size=3, seed=0, shuffle_window=4)))
  on_device = throughput._RecordsToDevice(examples, "iMRrhpc", 3, pipeline.batch_spec(
      Path(shards[0]).parent))
  for _ in range(4):
    host, device = next(iterator), next(on_device)
    np.testing.assert_array_equal(np.asarray(device["mri"]), host["mri"])
    np.testing.assert_array_equal(device["mri_mask"], host["mri_mask"])
  iterator.close()
  on_device.close()


@pytest.mark.parametrize("model_name, key", [("iMRrhpc", "mri"), ("iMGrhpc", "mg")])
def test_views_are_the_batches_without_a_host_copy(shards, model_name, key):
  """views=True: the same batches in the same order with the same iterator state, but each
  image slot is the record's own array (a read-only view of the mapped shard; empty slots one
  shared zero image), and on one CPU device it stays where it is: the device uses the mapped
  pages in place."""
  from mrp_jax.core import sharding

  copied = _train(shards, model_name, batch_size=3, prefetch_batches=0)
  viewed = _train(shards, model_name, batch_size=3, prefetch_batches=0, views=True)
  spec = pipeline.batch_spec(Path(shards[0]).parent)
  shape, dtype = (spec.mri_shape, spec.mri_dtype) if key == "mri" else (spec.mg_shape,
                                                                        spec.mg_dtype)
  mesh = sharding.make_mesh(jax.devices()[:1])
  empty = 0
  for _ in range(6):
    a, b = next(copied), next(viewed)
    assert batching.is_views(b[key]) and [len(row) for row in b[key]] == [a[key].shape[1]] * 3
    _assert_same_batches([a], [batching.stack_views(b)])
    assert batching.payload_bytes(a) == batching.payload_bytes(b)
    on_device = sharding.global_batch(b, mesh)
    for row, mask, device_row in zip(b[key], b[f"{key}_mask"], on_device[key]):
      for image, present, device_image in zip(row, mask, device_row):
        assert not image.flags.writeable and image.ctypes.data % 64 == 0
        if present:
          assert not image.flags.owndata  # a view of the record
        else:
          assert image is batching.zero_image(tuple(shape), dtype)
          empty += 1
        assert device_image.unsafe_buffer_pointer() == image.ctypes.data  # no copy
  assert copied.get_state() == viewed.get_state()
  assert empty > 0 if key == "mri" else True  # Pre-only draws leave the follow-up slot empty
  copied.close()
  viewed.close()


@pytest.mark.parametrize("model_name, key", [("iMRrhpc", "mri"), ("iMGrhpc", "mg")])
def test_evaluation_views_are_the_evaluation_batches(shards, model_name, key):
  """eval_batches(views=True): the same batches and ids, padding rows included (the shared
  zero image), with the records' own arrays in the image slots."""
  kwargs = dict(model_name=model_name, phase="post", batch_size=4)
  for (a, ids_a), (b, ids_b) in zip(
      pipeline.eval_batches(shards, pipeline.EvalFeed(**kwargs)),
      pipeline.eval_batches(shards, pipeline.EvalFeed(**kwargs, views=True)), strict=True):
    assert ids_a == ids_b and batching.is_views(b[key])
    _assert_same_batches([a], [batching.stack_views(b)])


def test_views_need_the_training_process(shards):
  with pytest.raises(ValueError, match="views=True needs workers=0"):
    _train(shards, workers=1, views=True)


def test_throughput_alternates_configurations_with_plain_reads(shards, capsys):
  from input_pipeline.feed import throughput
  status = throughput.main(["--records", str(Path(shards[0]).parent), "--batch_size", "2",
                            "--batches", "2", "--shuffle_window", "4", "--threads", "read",
                            "--transfer", "batch", "--transfer", "views", "--rounds", "2",
                            "--plain_seconds", "0.1"])
  lines = capsys.readouterr().out.splitlines()
  assert status == 0
  kinds = [line.split()[0] + " " + line.split()[1] for line in lines
           if line.startswith(("plain read", "pipeline"))]
  # plain, then each configuration followed by a plain read, round after round.
  assert kinds == ["plain read"] + ["pipeline read", "plain read", "pipeline batch",
                                    "plain read", "pipeline views", "plain read"] * 2
  summary = lines[next(i for i, line in enumerate(lines) if line.startswith("ratio to")) + 1:]
  assert [line.split()[0] for line in summary] == ["read", "batch", "views"]
