"""The ``verify`` command: are the record shards in a folder intact and complete?

  python -m input_pipeline.records.verify --records DIR

For every ``*.tfrecord`` file under DIR it checks the framing and both CRCs of every record and
decodes every record with :func:`input_pipeline.records.decode`. It also reports a patient that
appears twice (in two splits that is a train/test leak). ``DIR/manifest.json`` must exist (a
folder without it is an unfinished prepare, or holds shards nothing accounts for), list every
shard, and match the record count of every shard and of every split, and, where it counts them
(``splits.<split>.mammogram_views``), the mammogram views of every split by view name.
Manifest layout (other keys are opaque)::

  {"shards": [{"file": "train-00000-of-00002.tfrecord", "records": 12, "split": "train"}, ...]}

Prints one line per problem (file, byte offset, patient where known), then a summary; exits 1
when anything is wrong, 0 otherwise (2 for bad arguments).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from absl import flags

from input_pipeline import cli, records
from input_pipeline.records import tfrecord

MANIFEST = records.MANIFEST
SHARD_PATTERN = "*.tfrecord"


@dataclasses.dataclass(frozen=True)
class Problem:
  """One thing wrong; ``file`` is relative to the verified folder."""
  file: str
  message: str
  offset: int | None = None
  patient_id: str | None = None

  def __str__(self) -> str:
    where = self.file if self.offset is None else f"{self.file}:{self.offset}"
    who = f" [patient {self.patient_id}]" if self.patient_id else ""
    return f"{where}:{who} {self.message}"


@dataclasses.dataclass
class ShardSummary:
  """What one shard holds: readable records per split, mammogram views per (split, view
  name; 'unknown' for a view nothing states), and its size in bytes."""
  file: str
  num_bytes: int = 0
  records: int = 0
  splits: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  views: collections.Counter = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass
class VerifyReport:
  """Result of :func:`verify_directory`.

  Attributes:
    root: the verified folder.
    shards: one summary per ``*.tfrecord`` file, sorted by name.
    problems: everything wrong; empty means the folder passed.
    warnings: things worth knowing that do not make the records wrong (leftover partial files
      of a killed writer).
    manifest_checked: whether ``manifest.json`` was found and compared (its absence is a
      problem).
  """
  root: Path
  shards: list[ShardSummary] = dataclasses.field(default_factory=list)
  problems: list[Problem] = dataclasses.field(default_factory=list)
  warnings: list[str] = dataclasses.field(default_factory=list)
  manifest_checked: bool = False

  @property
  def ok(self) -> bool:
    return not self.problems

  @property
  def num_records(self) -> int:
    return sum(s.records for s in self.shards)

  @property
  def splits(self) -> collections.Counter:
    total: collections.Counter = collections.Counter()
    for shard in self.shards:
      total.update(shard.splits)
    return total

  def summary(self) -> str:
    splits = ", ".join(f"{k} {self.splits[k]}" for k in records.SPLITS if self.splits[k])
    manifest = "manifest checked" if self.manifest_checked else f"no {MANIFEST}"
    verdict = "OK" if self.ok else f"FAILED: {len(self.problems)} problem(s)"
    return (f"{self.root}: {len(self.shards)} shard(s), {self.num_records} record(s)"
            f"{f' ({splits})' if splits else ''}, {manifest}: {verdict}")


def verify_directory(path: str | Path) -> VerifyReport:
  """Verifies every shard under ``path`` and, if present, its manifest. Never raises on bad
  data: every problem is collected in the report."""
  root = Path(path)
  report = VerifyReport(root)
  if not root.is_dir():
    report.problems.append(Problem(str(root), "not a folder"))
    return report
  shard_paths = sorted(root.rglob(SHARD_PATTERN))
  if not shard_paths:
    report.problems.append(Problem(".", f"no {SHARD_PATTERN} files under {root}"))
  seen: dict[str, tuple[str, int, str]] = {}  # patient_id -> (file, offset, split)
  for shard_path in shard_paths:
    report.shards.append(_verify_shard(root, shard_path, seen, report.problems))
  for partial in sorted(root.rglob(f"*{tfrecord.PARTIAL_SUFFIX}")):
    report.warnings.append(f"{partial.relative_to(root).as_posix()}: leftover file of an "
                           "interrupted writer; not a shard, safe to delete")
  manifest = root / MANIFEST
  if manifest.exists():
    report.manifest_checked = True
    report.problems.extend(_check_manifest(manifest, report.shards))
  else:
    report.problems.append(Problem(MANIFEST, "missing: without it nothing says which shards "
                                   "belong to the records (prepare writes it last; an "
                                   "unfinished prepare is finished by running it again)"))
  return report


def _verify_shard(root: Path, shard_path: Path, seen: dict[str, tuple[str, int, str]],
                  problems: list[Problem]) -> ShardSummary:
  name = shard_path.relative_to(root).as_posix()
  summary = ShardSummary(name)
  found: list[Problem] = []

  def on_record(offset: int, data: bytes) -> None:
    try:
      record = records.decode(data)
    except records.RecordFormatError as e:
      found.append(Problem(name, f"cannot decode: {e}", offset, e.patient_id))
      return
    summary.records += 1
    summary.splits[record.split] += 1
    summary.views.update((record.split, name or "unknown") for name in record.mammograms)
    first = seen.setdefault(record.patient_id, (name, offset, record.split))
    if first != (name, offset, record.split):
      leak = " in another split (train/test leak)" if first[2] != record.split else ""
      found.append(Problem(
          name, f"patient appears twice{leak}: first in {first[0]} at byte offset "
          f"{first[1]} ({first[2]}), again here ({record.split})", offset, record.patient_id))

  result = tfrecord.verify_file(shard_path, on_record)
  summary.num_bytes = result.num_bytes
  found.extend(Problem(name, error.reason, error.offset) for error in result.errors)
  problems.extend(sorted(found, key=lambda p: p.offset))
  return summary


def _check_manifest(manifest: Path, shards: list[ShardSummary]) -> list[Problem]:
  """Compares record counts per shard and per split with the manifest."""
  try:
    content: Any = json.loads(manifest.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    return [Problem(MANIFEST, f"unreadable: {e}")]
  entries = content.get("shards") if isinstance(content, dict) else None
  if not isinstance(entries, list):
    return [Problem(MANIFEST, "expected a JSON object with a 'shards' list")]
  problems: list[Problem] = []
  by_file = {s.file: s for s in shards}
  listed: set[str] = set()
  declared_splits: collections.Counter = collections.Counter()
  every_entry_has_split = True
  for i, entry in enumerate(entries):
    if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
            and isinstance(entry.get("records"), int)):
      problems.append(Problem(MANIFEST, f"shards[{i}] needs a 'file' name and an integer "
                              f"'records' count, found {entry!r}"))
      continue
    file, count, split = entry["file"], entry["records"], entry.get("split")
    if file in listed:
      problems.append(Problem(MANIFEST, f"shards[{i}]: {file} is listed twice"))
      continue
    listed.add(file)
    if split is None:
      every_entry_has_split = False
    else:
      declared_splits[split] += count
    shard = by_file.get(file)
    if shard is None:
      problems.append(Problem(file, f"listed in {MANIFEST} with {count} record(s) but missing"))
      continue
    if shard.records != count:
      problems.append(Problem(file, f"holds {shard.records} readable record(s), {MANIFEST} "
                              f"says {count}"))
    other = {k: v for k, v in shard.splits.items() if k != split}
    if split is not None and other:
      problems.append(Problem(file, f"{MANIFEST} says split '{split}' but the shard holds "
                              f"records of {dict(other)}"))
  for shard in shards:
    if shard.file not in listed:
      problems.append(Problem(shard.file, f"not listed in {MANIFEST}"))
  # Per-split totals are only comparable when the manifest gives every shard a split.
  problems += _check_views(content, shards)
  if declared_splits and every_entry_has_split:
    readable: collections.Counter = collections.Counter()
    for shard in shards:
      readable.update(shard.splits)
    for split in sorted(set(declared_splits) | set(readable)):
      if declared_splits[split] != readable[split]:
        problems.append(Problem(MANIFEST, f"split '{split}': {declared_splits[split]} "
                                f"record(s) declared, {readable[split]} readable"))
  return problems


def _check_views(content: dict[str, Any], shards: list[ShardSummary]) -> list[Problem]:
  """Compares the mammogram views per split and view name with the manifest's
  ``splits.<split>.mammogram_views`` (manifests of record format 3 on; others have none)."""
  declared = content.get("splits")
  if not isinstance(declared, dict):
    return []
  readable: collections.Counter = collections.Counter()
  for shard in shards:
    readable.update(shard.views)
  problems = []
  for split, entry in sorted(declared.items()):
    views = entry.get("mammogram_views") if isinstance(entry, dict) else None
    if not isinstance(views, dict):
      continue
    found = {name: n for (s, name), n in sorted(readable.items()) if s == split}
    if found != views:
      problems.append(Problem(MANIFEST, f"split '{split}': mammogram views {views} declared, "
                              f"{found} readable"))
  return problems


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the command line's flags on ``flag_values`` (see ``prepare.define_flags``)."""
  flags.DEFINE_string("records", None, "Required. Folder holding the *.tfrecord shards (and "
                      "manifest.json) that `python -m input_pipeline.records.prepare` wrote.",
                      flag_values=flag_values)
  flags.mark_flag_as_required("records", flag_values=flag_values)


def run(fv: flags.FlagValues, arguments: Sequence[str]) -> int:
  """Verifies ``--records`` and prints the problems and the summary; returns the exit status
  (0 intact, 1 a problem found, 2 bad arguments)."""
  if arguments:
    print(f"verify: unexpected arguments: {' '.join(arguments)}", file=sys.stderr)
    return 2
  report = verify_directory(Path(fv.records))
  for problem in report.problems:
    print(problem)
  for warning in report.warnings:
    print(f"warning: {warning}")
  print(report.summary())
  return 0 if report.ok else 1


def main(argv: Sequence[str]) -> int:
  """The command for callers in Python: ``argv`` without the program name, e.g.
  ``main(["--records", "DIR"])``; returns the exit status."""
  return cli.call("verify", define_flags, run, argv)


if __name__ == "__main__":
  cli.run_program(define_flags, run)
