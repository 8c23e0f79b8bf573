"""The two folders ``prepare`` writes, and what keeps each what it claims to be.

``--out`` holds the de-identified shards and manifest.json and nothing else that names a patient:
no source id, path, date or UID, in hidden folders neither. ``<out>.private/`` beside it holds
everything identifying, for the data steward and for resuming: the progress note of every
finished shard (source ids, full skip reasons, raw clinical values) and the report (skipped.csv,
unparsed_values.csv, unused_images.csv, warnings.csv). It is created mode 0700 and its files
0600, whatever the umask.

A folder ``prepare`` finishes passes its own ``verify``: shards an earlier run of another plan
left behind (killed, then rerun with another --shard_size; manifest.json deleted, then rerun on
another source) are removed, and shard files that no progress note accounts for are refused,
never mixed with the new ones. Where the folders cannot be written the run stops before the
scan, writing nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from input_pipeline.records import tfrecord

PRIVATE_SUFFIX = ".private"
SHARD_PATTERN = "*.tfrecord"
# Where an earlier version kept the progress notes, inside --out.
_OLD_PROGRESS = ".progress"


class FolderError(Exception):
  """An output folder cannot be used; the message names it and says what to do."""


def private_folder(out: Path) -> Path:
  """``<out>.private``: beside --out, never inside it."""
  return out.with_name(out.name + PRIVATE_SUFFIX)


def progress_folder(out: Path) -> Path:
  """The progress notes of ``out``'s shards (they carry source ids: private)."""
  return private_folder(out) / "progress"


def note_path(out: Path, shard: str) -> Path:
  return progress_folder(out) / f"{shard}.json"


# ---------------------------------------------------------------------------------------------
# Before the scan
# ---------------------------------------------------------------------------------------------
def check_writable(folders: Iterable[tuple[str, Path]], files: Iterable[tuple[str, Path]] = ()
                   ) -> None:
  """Fails now, not after an hour's scan, where a folder to create or fill cannot be written.

  Args:
    folders: (what, path) pairs, e.g. ('--out', Path('records')): folders to create or fill.
    files: (what, path) pairs of files to create unless they exist (the pseudonym key).

  Each is probed in its nearest existing folder with a temporary file that is removed at once,
  so a failed check leaves nothing behind.

  Raises:
    FolderError: naming the path, the folder that refused and why.
  """
  targets = [(what, path) for what, path in folders]
  for what, path in files:
    if not path.exists():
      targets.append((what, path.parent))
  for what, path in targets:
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
      raise FolderError(f"{what} {path}: {existing} is a file, not a folder")
    try:
      handle, probe = tempfile.mkstemp(dir=existing, prefix=".prepare-write-check-")
      os.close(handle)
      os.unlink(probe)
    except OSError as error:
      raise FolderError(f"{what} {path}: cannot write in {existing} ({error.strerror}); "
                        "choose a folder you can write") from None


# ---------------------------------------------------------------------------------------------
# Private files
# ---------------------------------------------------------------------------------------------
def make_private_folder(out: Path) -> Path:
  """Creates ``<out>.private/progress`` with mode 0700 (the umask does not widen it, and a
  folder an earlier version created wider is narrowed); returns ``<out>.private``."""
  folder = private_folder(out)
  for path in (folder, progress_folder(out)):
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
  return folder


def open_private(path: Path):
  """``path`` opened for writing text, created (or reset to) mode 0600."""
  handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
  os.fchmod(handle, 0o600)
  return os.fdopen(handle, "w", newline="", encoding="utf-8")


def write_private_json(path: Path, data: Any) -> None:
  """Writes ``data`` as JSON, mode 0600, atomically (a killed run leaves the old file or none)."""
  tmp = path.with_name(path.name + ".tmp")
  with open_private(tmp) as handle:
    handle.write(json.dumps(data, indent=1, sort_keys=True))
  os.replace(tmp, path)


def read_note(out: Path, shard: str) -> dict[str, Any] | None:
  """The progress note of ``shard``, or None when there is none or it cannot be read."""
  try:
    note = json.loads(note_path(out, shard).read_text())
  except (OSError, ValueError):
    return None
  return note if isinstance(note, dict) else None


# ---------------------------------------------------------------------------------------------
# Shards of another plan
# ---------------------------------------------------------------------------------------------
def clear_stale(out: Path, planned: set[str], fingerprint: str) -> list[str]:
  """Removes what an earlier run of another plan left in ``out``; returns the shards removed.

  A shard whose progress note carries another fingerprint, or that the plan no longer has while
  a note shows prepare wrote it, is removed with its note; so are partial files of killed
  writers and the progress folder an earlier version kept inside --out (it named patients).
  A shard of this plan without a note stays: this run rewrites it.

  Raises:
    FolderError: shard files the plan does not have and no progress note accounts for (put
      there by hand, or their notes deleted); they are listed, nothing is removed.
  """
  removed, unknown = [], []
  for path in sorted(out.glob(SHARD_PATTERN)):
    note = read_note(out, path.name)
    if note is None:
      if path.name not in planned:
        unknown.append(path.name)
    elif note.get("fingerprint") != fingerprint:
      removed.append(path)
  if unknown:
    raise FolderError(
        f"{out} holds {len(unknown)} shard file(s) this run does not plan and no progress note "
        f"in {progress_folder(out)} accounts for ({', '.join(unknown[:5])}"
        f"{', ...' if len(unknown) > 5 else ''}); mixed with the new ones they would fail "
        "verify: move them away or use a new --out")
  for path in removed:
    path.unlink()
  folder = progress_folder(out)
  for note in folder.glob("*.json") if folder.is_dir() else ():
    shard = note.name[:-len(".json")]
    content = read_note(out, shard)
    if content is None or content.get("fingerprint") != fingerprint:
      note.unlink()
  for partial in out.glob(f"{SHARD_PATTERN}.*{tfrecord.PARTIAL_SUFFIX}"):
    partial.unlink()
  if (out / _OLD_PROGRESS).is_dir():
    shutil.rmtree(out / _OLD_PROGRESS)
  return [p.name for p in removed]


def unplanned_shards(out: Path, planned: set[str]) -> list[str]:
  """Shard files in ``out`` that the plan does not have (none, after a finished run)."""
  return sorted(p.name for p in out.glob(SHARD_PATTERN) if p.name not in planned)
