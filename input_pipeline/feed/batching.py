"""One decoded patient record -> one training or evaluation example -> a model batch.

Pure numpy, no Grain: the pipeline (``input_pipeline/feed/pipeline.py``) decides which records flow
where; this module decides what a record means for a model.

Who trains a model (docs/background.md section 1):

* ``iMRrhpc``: patients with an MRI at any phase;
* ``iMGrhpc``: patients with a mammogram;
* ``rhpc``: every patient.

Patients with an unknown label (-1) never train: the response loss needs a label.

Per patient and per draw, training uses one combination of its MRI, chosen uniformly among
those its scans allow, as the paper trains the longitudinal model on single and multi-time-point
inputs: each phase alone (Pre, Mid, Post) and each pair in time order (Pre+Mid, Pre+Post,
Mid+Post). The earlier scan fills the first Siamese slot, the later one the second; each slot
carries its own phase (``mri_phase``), which the time embedding reads. All three scans at once
is not a combination: the network has two Siamese branches (baseline and follow-up, paper
Fig. 2) and every clinical moment it predicts at has at most two scans.
Evaluation is per phase, with one population for every model so that models are compared on
the same patients:

* ``pre``: every patient (baseline slot: the Pre MRI when present; no follow-up);
* ``mid``: patients with Pre and Mid MRI (baseline Pre, follow-up Mid);
* ``post``: patients with Pre and Post MRI (baseline Pre, follow-up Post).

The mammogram is Pre-NAT and used at every phase when present (``mg_mask`` False otherwise).
A patient may have several views (CC and MLO, records format 3); the model sees one per row:
training draws one uniformly per draw (:func:`draw_mammogram_view`, beside the MRI combination),
evaluation scores every view in its own row (:func:`eval_examples`) and the predictions average
their probabilities per patient (``mrp_jax.core.inference``), as the paper's loaders and its
patient-level averaging do.

Batches follow ``mrp_jax.models.dummy_batch`` key for key, with the stored image dtypes kept
(MRI float16 or int16, mammogram uint16 or float16): the device casts and normalises, so the
host never widens 40-66 MB volumes to float32.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import mmap
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from input_pipeline import clinical_table, encoding, schema
from input_pipeline.records import PatientRecord
from input_pipeline.schema import IMAGE_KEYS, MODEL_NAMES

# Evaluation phase name -> (baseline MRI phase, follow-up MRI phase or None).
EVAL_PHASES = {"pre": ("pre", None), "mid": ("pre", "mid"), "post": ("pre", "post")}
_FOLLOW_UPS = ("mid", "post")


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """Shapes and dtypes of the image arrays of every batch, fixed so that the jitted step
  compiles once (a batch without any MRI still has its zero [b, 2, z, y, x] array).

  Attributes:
    mri_shape: [z, y, x] voxels of the stored subtraction volumes.
    mri_dtype: their stored dtype name ('float16' or 'int16').
    mg_shape: [rows, cols] pixels of the stored mammogram.
    mg_dtype: its stored dtype name ('uint16' or 'float16').
  """
  mri_shape: tuple[int, int, int]
  mri_dtype: str
  mg_shape: tuple[int, int]
  mg_dtype: str

  @classmethod
  def of(cls, preprocessing: Mapping[str, Any]) -> BatchSpec:
    """The spec of records preprocessed as ``preprocessing`` says (a manifest, or a run's
    preprocessing.json: records.preprocessing)."""
    mri, mammogram = preprocessing["mri"], preprocessing["mammogram"]
    return cls(mri_shape=tuple(mri["shape"]), mri_dtype=mri["dtype"],
               mg_shape=tuple(mammogram["shape"]), mg_dtype=mammogram["dtype"])


@dataclasses.dataclass(frozen=True, eq=False)
class Example:
  """A patient with the MRI phases chosen for its two Siamese slots and its mammogram view.

  Attributes:
    record: the decoded patient.
    baseline: the phase in the first slot (the earlier scan of the combination: 'pre' at
      every evaluation phase; 'mid' or 'post' too in training draws), else None (empty slot).
    follow_up: the phase in the second slot ('mid' or 'post', later than ``baseline``), else
      None (empty slot).
    mg_view: the name of the mammogram view in the 'mg' slot (a key of
      ``record.mammograms``); None: the first (preferred) view. Without a mammogram the slot is
      empty either way.
  """
  record: PatientRecord
  baseline: str | None
  follow_up: str | None
  mg_view: str | None = None

  @property
  def mammogram(self) -> np.ndarray | None:
    """The [rows, cols] mammogram of the 'mg' slot, or None."""
    views = self.record.mammograms
    if self.mg_view is not None:
      return views[self.mg_view]
    return next(iter(views.values()), None)


def check_model_name(model_name: str) -> None:
  if model_name not in MODEL_NAMES:
    raise ValueError(f"model_name must be one of {MODEL_NAMES}, got {model_name!r}")


def check_eval_phase(phase: str) -> None:
  if phase not in EVAL_PHASES:
    raise ValueError(f"phase must be one of {tuple(EVAL_PHASES)}, got {phase!r}")


def trains(record: PatientRecord, model_name: str) -> bool:
  """Whether ``record`` is a training patient of ``model_name`` (see the module docstring)."""
  if record.label not in (0, 1):
    return False
  if model_name == "iMRrhpc":
    return bool(record.mri)
  if model_name == "iMGrhpc":
    return bool(record.mammograms)
  return True


def training_combinations(record: PatientRecord) -> tuple[tuple[str | None, str | None], ...]:
  """The (first slot, second slot) phases a training draw may choose for ``record``.

  Each MRI phase present alone, (phase, None), and each pair of present phases in time order,
  (earlier, later); a patient without MRI (rhpc / mammogram models only) has the single
  combination (None, None).
  """
  present = [name for name in schema.PHASE_NAMES if name in record.mri]
  if not present:
    return ((None, None),)
  return (tuple((name, None) for name in present)
          + tuple(itertools.combinations(present, 2)))


def draw_training_example(record: PatientRecord, rng: np.random.Generator) -> Example:
  """One uniformly drawn combination of ``record``'s MRI, then one of its mammogram views
  (``rng`` decides; see Grain's random_map, which seeds it from the pipeline seed and the
  position in the stream)."""
  combinations = training_combinations(record)
  baseline, follow_up = combinations[int(rng.integers(len(combinations)))]
  return Example(record, baseline, follow_up, draw_mammogram_view(record, rng))


def draw_mammogram_view(record: PatientRecord, rng: np.random.Generator) -> str | None:
  """One of ``record``'s mammogram views, uniformly (None without a mammogram); a one-view
  patient draws nothing from ``rng``."""
  views = list(record.mammograms)
  if len(views) < 2:
    return views[0] if views else None
  return views[int(rng.integers(len(views)))]


def evaluates(record: PatientRecord, phase: str, include_unlabeled: bool = False) -> bool:
  """Whether ``record`` belongs to the evaluation population of ``phase`` (any model)."""
  if record.label not in (0, 1) and not include_unlabeled:
    return False
  baseline, follow_up = EVAL_PHASES[phase]
  return follow_up is None or (baseline in record.mri and follow_up in record.mri)


def eval_example(record: PatientRecord, phase: str, mg_view: str | None = None) -> Example:
  """``record`` at evaluation ``phase`` (which :func:`evaluates` accepted), with mammogram view
  ``mg_view`` (default: the first)."""
  baseline, follow_up = EVAL_PHASES[phase]
  return Example(record, baseline if baseline in record.mri else None, follow_up, mg_view)


def eval_examples(record: PatientRecord, phase: str, model_name: str) -> list[Example]:
  """The rows ``model_name`` scores for ``record`` at ``phase``: one per mammogram view for
  iMGrhpc (their probabilities are averaged per patient), else one."""
  if IMAGE_KEYS[model_name] == "mg" and len(record.mammograms) > 1:
    return [eval_example(record, phase, view) for view in record.mammograms]
  return [eval_example(record, phase)]


def _image(record: PatientRecord, name: str, array: np.ndarray, shape: tuple[int, ...],
           dtype: str) -> np.ndarray:
  # One mismatching patient would otherwise fail deep inside numpy with no name attached.
  if array.shape != tuple(shape) or array.dtype.name != dtype:
    raise ValueError(f"patient {record.patient_id}: {name} is {array.dtype.name} "
                     f"{list(array.shape)}, the batch expects {dtype} {list(shape)} (the "
                     "manifest's geometry); were these shards prepared with other options?")
  return array


def empty_batch(model_name: str, batch_size: int, spec: BatchSpec,
                allocate: Callable[[tuple[int, ...], str], np.ndarray] = np.zeros
                ) -> dict[str, np.ndarray]:
  """The batch contract: every key, shape and dtype the models and losses read.

  Args:
    model_name: 'rhpc', 'iMGrhpc' or 'iMRrhpc'; decides the image keys.
    batch_size: rows b.
    spec: image shapes and dtypes.
    allocate: makes the image array, called as ``allocate(shape, dtype)`` (np.zeros by
      default; collate passes an allocator that need not zero).

  Returns:
    Every row padding (zeros, masks False):
    'rhpc' float32 [b, encoding.INPUT_DIM]; 'aux_targets', 'aux_masks' float32 [b, AUX_DIM]
    (collate masks what the model's image cannot show: encoding.UNSEEN);
    'label' float32 [b] (1 pCR, 0 non-pCR; -1 only for unlabeled evaluation patients);
    'example_mask' float32 [b] (1 for a real patient);
    iMRrhpc: 'mri' [b, 2, z, y, x] in spec.mri_dtype (slot 0 the earlier scan, Pre at
      every evaluation phase; slot 1 the later one), 'mri_mask' bool [b, 2], 'mri_phase' int32 [b, 2] (schema.Phase values);
    iMGrhpc: 'mg' [b, 1, rows, cols] in spec.mg_dtype, 'mg_mask' bool [b, 1],
      'mg_phase' int32 [b, 1] (always Phase.PRE).
  """
  b = batch_size
  batch = {
      "rhpc": np.zeros((b, encoding.INPUT_DIM), np.float32),
      "aux_targets": np.zeros((b, encoding.AUX_DIM), np.float32),
      "aux_masks": np.zeros((b, encoding.AUX_DIM), np.float32),
      "label": np.zeros((b,), np.float32),
      "example_mask": np.zeros((b,), np.float32),
  }
  image_key = IMAGE_KEYS[model_name]
  if image_key == "mri":
    batch.update(mri=allocate((b, 2, *spec.mri_shape), spec.mri_dtype),
                 mri_mask=np.zeros((b, 2), bool), mri_phase=np.zeros((b, 2), np.int32))
  elif image_key == "mg":
    batch.update(mg=allocate((b, 1, *spec.mg_shape), spec.mg_dtype),
                 mg_mask=np.zeros((b, 1), bool),
                 mg_phase=np.full((b, 1), int(schema.Phase.PRE), np.int32))
  return batch


def collate(examples: Sequence[Example], model_name: str, spec: BatchSpec,
            batch_size: int | None = None,
            empty: Callable[[tuple[int, ...], str], np.ndarray] = np.empty,
            views: bool = False) -> dict[str, Any]:
  """Stacks examples into one batch of the contract of :func:`empty_batch`, padded to
  ``batch_size`` rows.

  Args:
    examples: at most ``batch_size`` examples.
    model_name: 'rhpc', 'iMGrhpc' or 'iMRrhpc'; decides the image keys.
    spec: image shapes and dtypes.
    batch_size: rows of the batch (default ``len(examples)``); rows past the examples are
      padding: zeros, ``example_mask`` 0, image masks False.
    empty: allocates the image array, called as ``empty(shape, dtype)`` (the pipeline's worker
      processes pass Grain's SharedMemoryArray); every element is then written, so the
      allocation need not be zeroed.
    views: no image array at all: the image key holds, per row, a tuple of its slots' arrays
      (:data:`ImageViews`): the records' own arrays (views of the mapped shards, nothing
      copied), and for an empty slot or a padding row one shared read-only zero image
      (:func:`zero_image`). ``stack_views`` (or the device, inside the step) makes the
      contract's [b, slots, ...] array of them.
  """
  b = len(examples) if batch_size is None else batch_size
  if len(examples) > b:
    raise ValueError(f"{len(examples)} examples do not fit a batch of {b}")
  n = len(examples)
  batch = empty_batch(model_name, b, spec, allocate=_no_array if views else empty)
  # Padding rows carry no information at all, not 'every variable Unknown': only the real
  # rows are encoded.
  parsed = clinical_table.ParsedRhpc(
      np.stack([e.record.rhpc_codes for e in examples]).astype(np.int32) if n else
      np.zeros((0, len(schema.VARIABLES)), np.int32),
      np.stack([e.record.rhpc_values for e in examples]).astype(np.float32) if n else
      np.zeros((0, len(schema.VARIABLES)), np.float32))
  batch["rhpc"][:n] = encoding.model_inputs(parsed)
  batch["aux_targets"][:n], batch["aux_masks"][:n] = encoding.aux_targets(parsed)
  # Targets the model's image cannot show (encoding.UNSEEN) stay out of its losses.
  batch["aux_masks"][:n] *= encoding.unseen_keep(IMAGE_KEYS[model_name])
  batch["label"][:n] = [e.record.label for e in examples]
  batch["example_mask"][:n] = 1.0

  key = IMAGE_KEYS[model_name]
  if key is None:
    return batch
  if key == "mri":
    shape, dtype = spec.mri_shape, spec.mri_dtype
    phases = batch["mri_phase"]
    for i, example in enumerate(examples):
      for slot, name in enumerate((example.baseline, example.follow_up)):
        if name is not None:  # else PRE (0), as an empty slot's phase
          phases[i, slot] = schema.PHASE_NAMES.index(name)
  else:
    shape, dtype = spec.mg_shape, spec.mg_dtype
  mask = batch[f"{key}_mask"]
  rows: list[tuple[np.ndarray | None, ...]] = []
  for i, example in enumerate(examples):
    if key == "mri":
      named = [(f"MRI {name}", None if name is None else example.record.mri[name])
               for name in (example.baseline, example.follow_up)]
    else:
      named = [(f"mammogram {example.mg_view or ''}".strip(), example.mammogram)]
    rows.append(tuple(None if array is None else
                      _image(example.record, what, array, shape, dtype)
                      for what, array in named))
    mask[i] = [array is not None for array in rows[-1]]
  slots = mask.shape[1]
  if views:
    zeros = zero_image(shape, dtype)
    batch[key] = tuple(tuple(zeros if array is None else array for array in row)
                       for row in rows + [(None,) * slots] * (b - n))
    return batch
  images = batch[key]
  images[n:] = 0
  for i, row in enumerate(rows):
    for slot, array in enumerate(row):
      images[i, slot] = 0 if array is None else array
  return batch


# A batch's image entry in ``views`` mode: per row, a tuple of its slots' [*shape] arrays.
ImageViews = tuple[tuple[np.ndarray, ...], ...]


def _no_array(shape: tuple[int, ...], dtype: str) -> None:
  return None


@functools.lru_cache(maxsize=8)
def zero_image(shape: tuple[int, ...], dtype: str) -> np.ndarray:
  """One read-only zero image per shape and dtype, page-aligned (so that the CPU backend uses
  it in place too), shared by every empty slot of every ``views`` batch."""
  nbytes = max(1, math.prod(shape) * np.dtype(dtype).itemsize)
  zeros = np.frombuffer(mmap.mmap(-1, nbytes), np.dtype(dtype), math.prod(shape)).reshape(shape)
  zeros.flags.writeable = False
  return zeros


def is_views(images: Any) -> bool:
  """Whether a batch's image entry is in ``views`` mode (:data:`ImageViews`)."""
  return isinstance(images, tuple)


def stack_views(batch: dict[str, Any]) -> dict[str, Any]:
  """``batch`` with a ``views`` image entry stacked on the host into the contract's
  [b, slots, ...] array (a copy; what the device does inside the step otherwise)."""
  return {key: np.stack([np.stack(row) for row in value]) if is_views(value) else value
          for key, value in batch.items()}


def payload_bytes(batch: dict[str, Any]) -> int:
  """Bytes of real data in ``batch``: present image slots and the rows of real examples
  (padding rows and empty image slots are not payload)."""
  rows = batch["example_mask"] > 0
  total = 0
  for key, array in batch.items():
    if key in IMAGE_KEYS.values():
      mask = batch[f"{key}_mask"]
      image = array[0][0] if is_views(array) else (array[0, 0] if array.size else None)
      total += int(mask.sum()) * (image.nbytes if image is not None else 0)
    else:
      total += int(rows.sum()) * (array[0].nbytes if array.size else 0)
  return total
