"""Orbax checkpoints of the train state and the Grain iterator, each step with its digest.

Two managers under the workdir:
* ``checkpoints/``: the latest ``keep`` checkpoints, for resuming. Each holds the train state
  (parameters, batch statistics, optimizer state, step, RNG, learning-rate scale) and the data
  iterator's position (one JSON per process). Saves are asynchronous; a save that a kill
  interrupts is never taken for a finished one (Orbax renames it into place at the end).
* ``best/``: the state with the best validation AUROC, for evaluation and prediction.

Every step also holds ``digest/``: the SHA-256 of each array of the state (its dtype, shape and
bytes) and of each process's iterator position, written in the same commit as what it
describes. Every restore recomputes them from what it read: a step whose bytes changed, or that
cannot be read, is named (step, item, the array or the reason) and the next good step is taken
instead, with one warning line; when no step is left, :class:`CheckpointError` says why in one
line. A step written before digests existed (its ``_CHECKPOINT_METADATA`` lists no digest item)
is loaded unverified, with a warning.

Resume order: the workdir's newest good checkpoint, else (a fresh run) the pretrained encoder
named in the config, else the random initialisation. A kill at any instant leaves a workdir the
same command resumes from: ``best/<step>`` is committed before ``checkpoints/<step>``, and a
rerun that reaches a step ``best/`` already holds keeps it when it holds the same state (same
digest, bytes intact), else replaces it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging as std_logging
import sys
import threading
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from mrp_jax import console

DIGEST = "digest"  # the item holding a step's digest
_STEP_METADATA = "_CHECKPOINT_METADATA"  # Orbax's per-step file; lists the step's items


class CheckpointError(RuntimeError):
  """No step of a run's checkpoints can be restored; the message says why, step by step."""


class _BadStep(Exception):
  """One step cannot be used: unreadable, incomplete, or not the bytes its digest describes."""


def _host_array(x: Any) -> np.ndarray:
  """The whole of ``x`` on this host; arrays sharded over processes are gathered (a collective:
  every process calls it in the same order)."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def state_digest(state: Any) -> dict[str, str]:
  """Each array of ``state``: its path ('.params['classifier']['kernel']') -> SHA-256 of its
  dtype, shape and bytes. Independent of the sharding and the device."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    array = np.ascontiguousarray(_host_array(leaf))
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.reshape(-1).view(np.uint8).data if array.size else b"")
    out[jax.tree_util.keystr(path)] = digest.hexdigest()
  return out


def _position_digest(position: Any) -> str:
  """SHA-256 of an iterator position (Grain's JSON), independent of its formatting."""
  if isinstance(position, (bytes, str)):
    position = json.loads(position)
  return hashlib.sha256(json.dumps(position, sort_keys=True).encode()).hexdigest()


def _gather_digests(local: str) -> list[str]:
  """Each process's ``local`` digest, in process order (a collective)."""
  if jax.process_count() == 1:
    return [local]
  gathered = multihost_utils.process_allgather(np.frombuffer(bytes.fromhex(local), np.uint8))
  return [bytes(row).hex() for row in np.asarray(gathered)]


def _brief(error: BaseException) -> str:
  """One line of what went wrong: the innermost cause (TensorStore's names the array and the
  database), without the TensorStore spec that follows it."""
  while error.__cause__ is not None or (error.__context__ is not None
                                        and not error.__suppress_context__):
    error = error.__cause__ or error.__context__
  text = " ".join(str(error).split("[tensorstore_spec")[0].split())
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= 400 else text[:400] + "..."


@dataclasses.dataclass(frozen=True)
class _Step:
  """One saved step of one manager; ``name``: 'best/9', as messages show it."""
  manager: ocp.CheckpointManager
  folder: str
  step: int

  @property
  def name(self) -> str:
    return f"{self.folder}/{self.step}"

  @property
  def path(self) -> Path:
    return Path(self.manager.directory) / str(self.step)

  def saved_items(self) -> set[str]:
    metadata = self.path / _STEP_METADATA
    try:
      return set(json.loads(metadata.read_text())["item_handlers"])
    except FileNotFoundError as error:
      raise _BadStep(f"{self.name}/{_STEP_METADATA} is missing") from error
    except (OSError, ValueError, KeyError, TypeError) as error:
      raise _BadStep(f"{self.name}/{_STEP_METADATA} is unreadable ({_brief(error)})") from error

  def restore_item(self, item: str, args: ocp.args.CheckpointArgs) -> Any:
    if not (self.path / item).is_dir():
      raise _BadStep(f"{self.name}/{item} is missing")
    try:
      return self.manager.restore(self.step, args=ocp.args.Composite(**{item: args}))[item]
    except Exception as error:  # Orbax, TensorStore and JSON each raise their own
      _abandoned_reads_to_the_log()
      # Orbax's own files of the item, which its error does not name when one is missing.
      for name in ("_METADATA", "manifest.ocdbt") if item == "state" else ():
        if not (self.path / item / name).exists():
          raise _BadStep(f"{self.name}/{item}/{name} is missing") from error
      raise _BadStep(f"{self.name}/{item} is unreadable: {_brief(error)}") from error


def _abandoned_reads_to_the_log() -> None:
  """After a failed restore Orbax leaves the step's other reads running; they fail later in its
  threads and coroutines ("Event loop is closed", "Encountered error while reading array
  index"), whose tracebacks Python prints to stderr by default. From the first failed restore
  on, such tracebacks go to the library log instead, so the damaged step's one line stays the
  only word on the console; any other uncaught error is shown as before. A read can outlive the
  command's log (closed at exit): its line is then dropped, not replaced by logging's own
  traceback of the closed stream."""
  if getattr(sys.unraisablehook, "_mrp_checkpoint", False):
    return

  def abandoned(error: BaseException | None) -> bool:
    text = f"{type(error).__name__}: {error}" if error is not None else ""
    return "Event loop is closed" in text or "while reading array index" in text

  show_unraisable, show_thread = sys.unraisablehook, threading.excepthook
  lock = threading.Lock()

  def note(error: BaseException) -> None:
    with lock:  # reads fail in several threads at once; each puts back what it found
      raise_exceptions, std_logging.raiseExceptions = std_logging.raiseExceptions, False
      try:
        logging.warning("an abandoned checkpoint read failed: %s", error)
      finally:
        std_logging.raiseExceptions = raise_exceptions

  def unraisable(info: Any) -> None:
    if abandoned(info.exc_value):
      note(info.exc_value)
    else:
      show_unraisable(info)

  def thread(info: Any) -> None:
    if abandoned(info.exc_value):
      note(info.exc_value)
    else:
      show_thread(info)

  unraisable._mrp_checkpoint = True  # type: ignore[attr-defined]
  sys.unraisablehook, threading.excepthook = unraisable, thread


def _read(step: _Step, abstract_state: Any, data_iterator: Any = None
          ) -> tuple[Any, dict[str, Any] | None]:
  """The step's state (and the iterator's position, restored in place), checked against the
  step's digest: (state, the digest that verified it; None for a step written without one).

  Raises:
    _BadStep: naming the step, the item and what is wrong with it.
  """
  saved = step.saved_items()
  verified = DIGEST in saved
  expected = step.restore_item(DIGEST, ocp.args.JsonRestore()) if verified else None
  if verified and not (isinstance(expected, dict) and isinstance(expected.get("state"), dict)):
    raise _BadStep(f"{step.name}/{DIGEST} is unreadable: not a digest")
  state = step.restore_item("state", ocp.args.StandardRestore(abstract_state))
  if verified:
    actual = state_digest(state)
    wrong = sorted(k for k in actual.keys() | expected["state"].keys()
                   if actual.get(k) != expected["state"].get(k))
    if wrong:
      raise _BadStep(f"{step.name}/state: {len(wrong)} of {len(actual)} arrays differ from the "
                     f"digest written with them ({', '.join(wrong[:3])}"
                     f"{', ...' if len(wrong) > 3 else ''})")
  if data_iterator is not None:
    if verified:
      # The position file as Grain names and reads it (its restored iterator does not report
      # the same position back: an exhausted source's slot may differ).
      name = f"data/process_{jax.process_index()}-of-{jax.process_count()}.json"
      unreadable = None
      try:
        local = _position_digest((step.path / name).read_bytes())
      except (OSError, ValueError) as error:  # still takes part in the collective below
        local, unreadable = "0" * 64, f"{step.name}/{name} is unreadable: {_brief(error)}"
      gathered = _gather_digests(local)
      if unreadable:
        raise _BadStep(unreadable)
      if gathered != expected.get("data"):
        raise _BadStep(f"{step.name}/{name}: the iterator position differs from the digest "
                       "written with it")
    step.restore_item("data", grain.checkpoint.CheckpointRestore(data_iterator))
  return state, expected


def _warn(text: str) -> None:
  console.current("mrp_jax").warn(text)


def _first_good(steps: list[_Step], abstract_state: Any, data_iterator: Any = None
                ) -> tuple[_Step, Any, list[str]]:
  """The first of ``steps`` that reads back as saved: (step, state, the reasons each earlier
  one was passed over). A step without a digest is taken with a warning.

  Raises:
    CheckpointError: none can be used (or there are none).
  """
  problems = []
  for step in steps:
    try:
      state, digest = _read(step, abstract_state, data_iterator)
    except _BadStep as bad:
      # The library log keeps the traceback of an unreadable item (the warning has one line).
      logging.info("checkpoint %s passed over: %s", step.name, bad,
                   exc_info=bad.__cause__ is not None)
      problems.append(str(bad))
      continue
    if digest is None:
      _warn(f"{step.path}: written before checkpoints had digests; loaded without verifying "
            "its bytes")
    return step, state, problems
  raise CheckpointError("; ".join(problems) if problems else "no checkpoint")


class Checkpoints:
  """The workdir's checkpoint managers."""

  def __init__(self, workdir: str | Path, keep: int, best_metric: str = "auroc"):
    self.workdir = Path(workdir).resolve()
    self.latest = ocp.CheckpointManager(
        self.workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True),
        item_names=("state", "data", DIGEST))
    self.best = ocp.CheckpointManager(
        self.workdir / "best",
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m[best_metric], best_mode="max",
            enable_async_checkpointing=False),
        item_names=("state", DIGEST))
    self._digest: tuple[int, Any, dict[str, str]] | None = None  # (step, state, its digest)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def _state_digest(self, step: int, state: Any) -> dict[str, str]:
    # A step that is validated and checkpointed saves the same state twice: hashed once.
    if self._digest is None or self._digest[0] != step or self._digest[1] is not state:
      self._digest = (step, state, state_digest(state))
    return self._digest[2]

  def save(self, step: int, state: Any, data_iterator: Any, force: bool = False) -> None:
    digest = {"state": self._state_digest(step, state),
              "data": _gather_digests(_position_digest(data_iterator.get_state()))}
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        **{DIGEST: ocp.args.JsonSave(digest)}), force=force)

  def restore(self, abstract_state: Any, data_iterator: Any) -> Any:
    """Restores the newest good state (sharded like ``abstract_state``) and the iterator in
    place. Newer steps that are not good are named in one warning and deleted (the run saves
    those steps again).

    Raises:
      CheckpointError: no step can be restored.
    """
    steps = [_Step(self.latest, "checkpoints", s)
             for s in sorted(self.latest.all_steps(), reverse=True)]
    try:
      step, state, problems = _first_good(steps, abstract_state, data_iterator)
    except CheckpointError as error:
      raise CheckpointError(
          f"{self.workdir}: no checkpoint can be resumed from: {error}. Move "
          f"{self.workdir / 'checkpoints'} and {self.workdir / 'best'} away to train from "
          "scratch (or run with the config the run was trained with)") from None
    if problems:
      passed = [s.step for s in steps if s.step > step.step]
      for bad in passed:
        self.latest.delete(bad)
      _warn(f"{'; '.join(problems)}; resuming from {step.name} instead (deleted "
            f"{', '.join(f'checkpoints/{s}' for s in passed)} of {self.workdir})")
    return state

  def save_best(self, step: int, state: Any, metrics: dict[str, float]) -> None:
    # The two managers' finalisation uses the same named multi-process barrier
    # (ThreadSaveMultiHostValueHolder): a best save overlapping the latest manager's async
    # save failed a 2-process test with "Barrier ... is already ongoing" under load (orbax
    # 0.12.8; docs/design.md, "Checkpoints"). Saving one at a time avoids the collision.
    self.latest.wait_until_finished()
    digest = self._state_digest(step, state)
    if step in self.best.all_steps():
      # A run killed after this commit and before checkpoints/<step>'s resumed from an earlier
      # step and came here again: the same state is kept; another one (or damaged bytes)
      # replaced, since the metrics are this run's.
      try:
        _, stored = _read(_Step(self.best, "best", step), jax.tree.map(_abstract, state))
        kept = stored is not None and stored["state"] == digest
      except _BadStep:
        kept = False
      logging.info("best/%d exists (a resumed run); %s", step, "kept" if kept else "replaced")
      if kept:
        return
      self.best.delete(step)
    self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), **{DIGEST: ocp.args.JsonSave({"state": digest})}),
                   metrics=metrics, force=True)

  def best_step(self) -> int | None:
    return self.best.best_step()

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _abstract(x: Any) -> Any:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def restore_state_only(directory: str | Path, abstract_state: Any) -> tuple[Any, int]:
  """The best (else latest) good state of a finished run, for evaluation: (state, step).

  Tried in order: ``best/``'s steps, newest first; the same step in ``checkpoints/`` (the same
  state, saved beside it); the other steps of ``checkpoints/``, newest first. Taking another
  than the first says so in one warning. Nothing is written.

  Raises:
    CheckpointError: no step can be restored (FileNotFoundError: the run has none).
  """
  directory = Path(directory).resolve()
  managers, steps = [], []
  try:
    for folder, names in (("best", ("state", DIGEST)), ("checkpoints", ("state", "data", DIGEST))):
      if (directory / folder).is_dir():
        manager = ocp.CheckpointManager(directory / folder, item_names=names)
        managers.append(manager)
        steps += [_Step(manager, folder, s) for s in sorted(manager.all_steps(), reverse=True)]
    if not steps:
      raise FileNotFoundError(f"{directory}: no checkpoint (expected best/ or checkpoints/ "
                              "from a train run)")
    best_steps = {s.step for s in steps if s.folder == "best"}
    steps.sort(key=lambda s: (s.folder != "best", s.step not in best_steps))  # stable
    try:
      step, state, problems = _first_good(steps, abstract_state)
    except CheckpointError as error:
      raise CheckpointError(f"{directory}: no checkpoint can be loaded: {error}") from None
    if problems:
      how = ("the same step" if step.step in best_steps
             else "the newest readable step, not the best-validated one")
      _warn(f"{directory}: {'; '.join(problems)}; using {step.name} ({how}) instead")
    return state, step.step
  finally:
    for manager in managers:
      manager.close()
