"""The `prepare` command: a source folder -> de-identified TFRecord shards and a manifest.

  python -m input_pipeline.prepare --source /data/export --layout generic --out /data/records

Per patient: discover its studies (layouts/), preprocess every MRI exam into a subtraction
volume and the mammogram into a fixed-size image, parse the 22 rhpc values, and write one
``tf.train.Example`` (records.py) keyed by a pseudonym. Patients are split train / validation /
test by patient, stratified by label, seeded, and test keeps only the patients with every
image, as the paper's test cohort (splits.py); each split is cut into shards of ``shard_size``
patients that worker processes write in parallel.

Guarantees:
* One bad patient never stops the run: it is skipped and the manifest says why.
* Restartable: a shard counts as done once its file and its progress note exist (the file is
  renamed into place only when complete), and a rerun with the same options redoes only the
  shards that are not done. Different options or patients in the same --out are refused.
* Nothing written under --out carries a direct identifier. Pseudonyms are an HMAC of the
  source patient id with a secret key kept outside --out (``<out>.pseudonym.key`` unless
  --pseudonym_key says otherwise); skip reasons are scrubbed of paths, ids, UIDs and dates.
  The full, identifying skip report goes to ``<out>.private/skipped.csv`` for the data steward.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tqdm

from input_pipeline import clinical_table, layouts, records, schema, splits, tfrecord
from input_pipeline.geometries import GEOMETRIES
from input_pipeline.mammogram import MammogramOptions, preprocess_mammogram
from input_pipeline.mri import MriOptions, preprocess_exam
from input_pipeline.patient import PatientSource, worker_pool

MANIFEST = "manifest.json"
PROGRESS_DIR = ".progress"
SPLIT_NAMES = records.SPLITS


class PrepareError(RuntimeError):
  """The run cannot start (bad options, a folder prepared with other options)."""


class PatientError(Exception):
  """One patient cannot be used; the message says which input failed and why."""


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """Everything that decides the output bytes (plus ``workers``, which does not).

  Attributes:
    source, layout, layout_options: where patients come from (layouts.discover).
    out: the output folder.
    mri, mammogram: preprocessing.
    split_fractions: train, validation, test.
    seed: of the split.
    test_cohort: 'complete' (the paper's: test keeps the patients of its quota that have every
      image the collection has; the others go to validation) or 'random' (splits.py).
    shard_size: patients per shard.
    workers: processes scanning patient folders, then writing shards.
    pseudonym_key: secret key file (created if missing); default ``<out>.pseudonym.key``.
  """
  source: Path
  out: Path
  layout: str = "generic"
  layout_options: tuple[tuple[str, Any], ...] = ()
  mri: MriOptions = MriOptions()
  mammogram: MammogramOptions = MammogramOptions()
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  seed: int = 0
  test_cohort: str = "complete"
  shard_size: int = 16
  workers: int = 1
  pseudonym_key: Path | None = None

  def __post_init__(self):
    fractions = tuple(float(f) for f in self.split_fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
      raise PrepareError(f"--split must be three fractions (train, validation, test) summing "
                         f"to 1, got {self.split_fractions}")
    if self.test_cohort not in splits.TEST_COHORTS:
      raise PrepareError(f"test_cohort must be one of {splits.TEST_COHORTS}, got "
                         f"{self.test_cohort!r}")
    if self.shard_size < 1 or self.workers < 1:
      raise PrepareError("--shard_size and --workers must be >= 1")
    object.__setattr__(self, "split_fractions", fractions)

  def fingerprint_fields(self) -> dict[str, Any]:
    return {"layout": self.layout, "layout_options": [list(o) for o in self.layout_options],
            "mri": dataclasses.asdict(self.mri), "mammogram": dataclasses.asdict(self.mammogram),
            "split_fractions": list(self.split_fractions), "seed": self.seed,
            "shard_size": self.shard_size, "record_format": records.FORMAT_VERSION}


# ---------------------------------------------------------------------------------------------
# Pseudonyms, scrubbing
# ---------------------------------------------------------------------------------------------
def load_key(path: Path) -> bytes:
  """Reads the pseudonym key, creating a random one (mode 0600) on first use."""
  if not path.exists():
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
      f.write(secrets.token_hex(32))
  key = path.read_text().strip()
  if len(key) < 32:
    raise PrepareError(f"{path}: pseudonym key too short (expected 64 hex characters)")
  return key.encode()


def pseudonym(key: bytes, patient_key: str) -> str:
  """'P' + 12 hex digits of HMAC-SHA256(key, source id): stable, not invertible without key."""
  return "P" + hmac.new(key, patient_key.encode(), hashlib.sha256).hexdigest()[:12]


_UID = re.compile(r"(?<![\d.])\d+(?:\.\d+){3,}(?![\d.])")
# YYYYMMDD anywhere not inside a longer number: folder names such as '20211120_MR_1' too.
_DATE = re.compile(r"(?<!\d)(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?!\d)")


def scrub(text: str, source: Path, patient_key: str, patient_id: str) -> str:
  """Removes what could identify a patient from a message: the source path, the source
  patient id, DICOM UIDs and dates (YYYYMMDD)."""
  text = text.replace(str(source.resolve()), "<source>").replace(str(source), "<source>")
  if patient_key:
    text = text.replace(patient_key, patient_id)
  return _DATE.sub("<date>", _UID.sub("<uid>", text))


# ---------------------------------------------------------------------------------------------
# One patient, one shard (run in worker processes)
# ---------------------------------------------------------------------------------------------
def _rhpc(clinical: dict[str, Any], report: clinical_table.ParseReport):
  columns = clinical_table.find_columns(clinical.keys())
  raw = tuple("" if columns.get(v.name) is None or clinical[columns[v.name]] is None
              else str(clinical[columns[v.name]]).strip() for v in schema.VARIABLES)
  parsed = clinical_table.parse_rows([clinical], report)
  return raw, parsed.codes[0], parsed.values[0]


def process_patient(source: PatientSource, patient_id: str, split: str,
                    mri_options: MriOptions, mammogram_options: MammogramOptions,
                    report: clinical_table.ParseReport) -> records.PatientRecord:
  """Preprocesses one patient; raises on anything that makes the patient unusable.

  Also used by `mrp_jax.predict` for new patients (label -1)."""
  mri, spacing = {}, None
  for phase, exam in sorted(source.mri.items()):
    try:
      volume = preprocess_exam(exam, mri_options)
    except Exception as error:
      raise PatientError(f"{phase.name.lower()}-NAT MRI: {type(error).__name__}: {error}"
                         ) from error
    mri[schema.PHASE_NAMES[phase]] = volume.subtraction
    spacing = volume.spacing
  mg = None
  if source.mammogram is not None:
    try:
      mg = preprocess_mammogram(source.mammogram, mammogram_options)
    except Exception as error:
      raise PatientError(f"mammogram: {type(error).__name__}: {error}") from error
  raw, codes, values = _rhpc(dict(source.clinical), report)
  return records.PatientRecord(
      patient_id=patient_id, split=split, label=-1 if source.label is None else int(source.label),
      mri=mri, mg=mg,
      rhpc_raw=raw, rhpc_codes=codes, rhpc_values=values, spacing_mm=spacing)


@dataclasses.dataclass
class _ShardJob:
  file: str
  split: str
  patients: list[tuple[str, PatientSource]]  # (pseudonym, source)


def write_shard(job: _ShardJob, options: PrepareOptions, fingerprint: str) -> dict[str, Any]:
  """Writes one shard and its progress note; returns the note."""
  report = clinical_table.ParseReport()
  written, skipped, seconds = [], [], []
  path = options.out / job.file
  for stale in options.out.glob(f"{job.file}.*{tfrecord.PARTIAL_SUFFIX}"):
    stale.unlink()  # left by a run that was killed while writing this shard
  with tfrecord.TFRecordWriter(path) as writer:
    for patient_id, source in job.patients:
      start = time.perf_counter()
      try:
        record = process_patient(source, patient_id, job.split, options.mri, options.mammogram,
                                 report)
        writer.write(records.encode(record))
      except Exception as error:  # one bad patient never stops the others
        reason = str(error) if isinstance(error, PatientError) else (
            f"{type(error).__name__}: {error}")
        skipped.append({"patient": patient_id, "stage": "preprocess", "key": source.key,
                        "reason": reason})
        continue
      seconds.append(time.perf_counter() - start)
      written.append({"patient": patient_id, "label": record.label, "phases": record.phases,
                      "mammogram": record.mg is not None})
  note = {"fingerprint": fingerprint, "file": job.file, "split": job.split,
          "records": len(written), "written": written, "skipped": skipped,
          "seconds": seconds, "bytes": path.stat().st_size,
          "parse": {"unparsed": [[v, raw, n] for (v, raw), n in report.unparsed.items()],
                    "missing": dict(report.missing)}}
  _write_json(options.out / PROGRESS_DIR / f"{job.file}.json", note)
  return note


def _write_json(path: Path, data: Any) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def _plan(patients: list[PatientSource], options: PrepareOptions, key: bytes):
  ids = [pseudonym(key, p.key) for p in patients]
  skipped, usable = [], []
  for pid, patient in zip(ids, patients):
    if patient.error:
      skipped.append({"patient": pid, "stage": "discovery", "key": patient.key,
                      "reason": patient.error})
    elif patient.label is None:
      skipped.append({"patient": pid, "stage": "discovery", "key": patient.key,
                      "reason": "no pCR label"})
    else:
      usable.append((pid, patient))
  duplicates = [pid for pid, n in collections.Counter(pid for pid, _ in usable).items() if n > 1]
  if duplicates:
    raise PrepareError(f"{len(duplicates)} patients appear twice in {options.source}; "
                       "patient ids must be unique")
  # Split by the source ids, not the pseudonyms: the same export and seed give the same split
  # whatever the (secret, per-installation) pseudonym key.
  assignment = splits.assign_splits(
      [p.key for _, p in usable], [p.label for _, p in usable],
      [splits.images_of(p) for _, p in usable], options.split_fractions, options.seed,
      options.test_cohort)
  if assignment.note:
    print(f"prepare: {assignment.note}", file=sys.stderr)
  splits_of = {pid: assignment.of[p.key] for pid, p in usable}
  jobs = []
  for split in SPLIT_NAMES:
    members = sorted((pid, p) for pid, p in usable if splits_of[pid] == split)
    chunks = [members[i:i + options.shard_size]
              for i in range(0, len(members), options.shard_size)]
    for i, chunk in enumerate(chunks):
      jobs.append(_ShardJob(f"{split}-{i:05d}-of-{len(chunks):05d}.tfrecord", split, chunk))
  return jobs, skipped


def _fingerprint(options: PrepareOptions, jobs: list[_ShardJob]) -> str:
  plan = [[job.file, [pid for pid, _ in job.patients]] for job in jobs]
  text = json.dumps({"options": options.fingerprint_fields(), "plan": plan}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


def _done_note(options: PrepareOptions, job: _ShardJob, fingerprint: str) -> dict | None:
  note_path = options.out / PROGRESS_DIR / f"{job.file}.json"
  if not (note_path.exists() and (options.out / job.file).exists()):
    return None
  note = json.loads(note_path.read_text())
  return note if note.get("fingerprint") == fingerprint else None


def prepare(options: PrepareOptions, progress: bool = True) -> dict[str, Any]:
  """Runs discovery, preprocessing and writing; returns the manifest (also in out/manifest.json).

  Raises:
    PrepareError: bad options, an unknown layout, or --out prepared with other options.
  """
  started = time.perf_counter()
  key_path = options.pseudonym_key or options.out.with_name(options.out.name + ".pseudonym.key")
  key = load_key(Path(key_path))
  try:
    patients = layouts.discover(options.layout, options.source, workers=options.workers,
                                **dict(options.layout_options))
  except (ValueError, FileNotFoundError) as error:
    raise PrepareError(str(error)) from None
  jobs, skipped = _plan(patients, options, key)
  fingerprint = _fingerprint(options, jobs)
  manifest_path = options.out / MANIFEST
  if manifest_path.exists():
    previous = json.loads(manifest_path.read_text()).get("fingerprint")
    if previous != fingerprint:
      raise PrepareError(f"{options.out} holds records prepared from other options or patients; "
                         "use a new --out (or delete it to start over)")
  options.out.mkdir(parents=True, exist_ok=True)
  # Stale notes from an interrupted run with other options would never match; drop them.
  notes = {job.file: _done_note(options, job, fingerprint) for job in jobs}
  todo = [job for job in jobs if notes[job.file] is None]
  bar = tqdm.tqdm(total=sum(len(j.patients) for j in jobs), unit="patient", disable=not progress,
                  desc="prepare", initial=sum(len(j.patients) for j in jobs if j not in todo))
  if options.workers > 1 and len(todo) > 1:
    # Spawned (a caller such as the demo holds JAX's threads); they exit if this process dies.
    with worker_pool(min(options.workers, len(todo))) as pool:
      futures = {pool.submit(write_shard, job, options, fingerprint): job for job in todo}
      for future in concurrent.futures.as_completed(futures):
        notes[futures[future].file] = future.result()
        bar.update(len(futures[future].patients))
  else:
    for job in todo:
      notes[job.file] = write_shard(job, options, fingerprint)
      bar.update(len(job.patients))
  bar.close()
  manifest = _manifest(options, jobs, notes, skipped, fingerprint,
                       seconds=time.perf_counter() - started)
  _write_private_report(options, notes, skipped)
  _write_json(manifest_path, manifest)
  return manifest


def _manifest(options, jobs, notes, discovery_skips, fingerprint, seconds) -> dict[str, Any]:
  splits = {s: {"patients": 0, "pcr": 0, "non_pcr": 0, "phases": collections.Counter(),
                "mammograms": 0} for s in SPLIT_NAMES}
  unknown, unparsed = collections.Counter(), collections.Counter()
  skipped = [{k: v for k, v in s.items() if k != "key"} for s in discovery_skips]
  per_patient_seconds, per_patient_bytes = [], []
  for job in jobs:
    note = notes[job.file]
    for patient in note["written"]:
      entry = splits[note["split"]]
      entry["patients"] += 1
      entry["pcr" if patient["label"] == 1 else "non_pcr"] += 1
      entry["phases"]["+".join(schema.PHASE_NAMES[p] for p in patient["phases"]) or "none"] += 1
      entry["mammograms"] += patient["mammogram"]
    skipped += [{k: v for k, v in s.items() if k != "key"} for s in note["skipped"]]
    per_patient_seconds += note["seconds"]
    if note["records"]:
      per_patient_bytes.append(note["bytes"] / note["records"])
    unknown.update(note["parse"]["missing"])
    for variable, _, n in note["parse"]["unparsed"]:
      unparsed[variable] += n
  source_keys = {s["patient"]: s.get("key", "") for s in discovery_skips}
  for job in jobs:
    source_keys.update({pid: p.key for pid, p in job.patients})
  for entry in skipped:
    entry["reason"] = scrub(entry["reason"], options.source, source_keys.get(entry["patient"], ""),
                            entry["patient"])
  for entry in splits.values():
    entry["phases"] = dict(sorted(entry["phases"].items()))
  return {
      "format_version": records.FORMAT_VERSION,
      "fingerprint": fingerprint,
      "layout": options.layout,
      "mri": {"shape": list(options.mri.box), "spacing_mm": list(options.mri.spacing_mm),
              "dtype": options.mri.dtype, "intensity": options.mri.intensity},
      "mammogram": {"shape": list(options.mammogram.size), "dtype": options.mammogram.dtype},
      "split_fractions": list(options.split_fractions),
      "seed": options.seed,
      "splits": splits,
      "shards": [{"file": job.file, "split": job.split, "records": notes[job.file]["records"]}
                 for job in jobs],
      "skipped": sorted(skipped, key=lambda s: s["patient"]),
      "rhpc": {"missing": dict(sorted(unknown.items())),
               "unparsed": dict(sorted(unparsed.items()))},
      "timing": {"seconds": round(seconds, 1),
                 "seconds_per_patient": round(float(np.mean(per_patient_seconds)), 3)
                 if per_patient_seconds else None,
                 "bytes_per_patient": int(np.mean(per_patient_bytes))
                 if per_patient_bytes else None},
  }


def _write_private_report(options: PrepareOptions, notes, discovery_skips) -> None:
  """Identifying details for the data steward, outside --out: source ids and full reasons."""
  folder = options.out.with_name(options.out.name + ".private")
  folder.mkdir(parents=True, exist_ok=True)
  rows = [(s["key"], s["patient"], s["stage"], s["reason"]) for s in discovery_skips]
  for note in notes.values():
    rows += [(s["key"], s["patient"], s["stage"], s["reason"]) for s in note["skipped"]]
  with open(folder / "skipped.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["source_patient", "patient_id", "stage", "reason"])
    writer.writerows(sorted(rows))
  with open(folder / "unparsed_values.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["variable", "raw_value", "count"])
    counts = collections.Counter()
    for note in notes.values():
      for variable, raw, n in note["parse"]["unparsed"]:
        counts[(variable, raw)] += n
    writer.writerows(sorted((v, r, n) for (v, r), n in counts.items()))


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _numbers(text: str, kind=float) -> tuple:
  return tuple(kind(v) for v in text.split(","))


def options_from_args(argv: Sequence[str] | None = None) -> tuple[PrepareOptions, bool]:
  parser = argparse.ArgumentParser(prog="python -m input_pipeline.prepare",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--source", required=True, type=Path, help="the export / collection")
  parser.add_argument("--out", required=True, type=Path, help="folder for shards + manifest")
  parser.add_argument("--layout", default="generic", choices=sorted(layouts.LAYOUTS))
  parser.add_argument("--geometry", default="full", choices=sorted(GEOMETRIES),
                      help="preset of voxel spacing, MRI box and mammogram size")
  parser.add_argument("--spacing_mm", type=_numbers, help="x,y,z (overrides --geometry)")
  parser.add_argument("--box", type=lambda t: _numbers(t, int), help="z,y,x voxels")
  parser.add_argument("--mg_size", type=lambda t: _numbers(t, int), help="rows,cols")
  parser.add_argument("--intensity", default="relative", choices=("relative", "raw"))
  parser.add_argument("--mri_dtype", default="float16", choices=("float16", "int16"))
  parser.add_argument("--on_size_mismatch", default="skip", choices=("skip", "resample"))
  parser.add_argument("--split", type=_numbers, default=(0.8, 0.1, 0.1),
                      help="train,validation,test fractions")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--shard_size", type=int, default=16)
  parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) - 1))
  parser.add_argument("--pseudonym_key", type=Path)
  parser.add_argument("--layout_option", action="append", default=[], metavar="NAME=VALUE",
                      help="adapter option, e.g. post_index=2, two_study_followup=mid, "
                           "clinical_file=..., mapping_file=... (repeatable)")
  parser.add_argument("--no_progress", action="store_true")
  args = parser.parse_args(argv)
  geometry = GEOMETRIES[args.geometry]
  layout_options = []
  for item in args.layout_option:
    name, sep, value = item.partition("=")
    if not sep:
      parser.error(f"--layout_option {item!r}: expected NAME=VALUE")
    layout_options.append((name, int(value) if value.isdigit() else value))
  try:
    options = PrepareOptions(
        source=args.source, out=args.out, layout=args.layout,
        layout_options=tuple(layout_options),
        mri=MriOptions(spacing_mm=args.spacing_mm or geometry.mri_spacing_mm,
                       box=args.box or geometry.mri_box, intensity=args.intensity,
                       dtype=args.mri_dtype, on_size_mismatch=args.on_size_mismatch),
        mammogram=MammogramOptions(size=args.mg_size or geometry.mg_size),
        split_fractions=args.split, seed=args.seed, shard_size=args.shard_size,
        workers=args.workers, pseudonym_key=args.pseudonym_key)
  except (ValueError, PrepareError) as error:
    parser.error(str(error))
  return options, not args.no_progress


def summary(manifest: dict[str, Any]) -> str:
  lines = []
  for split, entry in manifest["splits"].items():
    lines.append(f"  {split:<10} {entry['patients']:>5} patients ({entry['pcr']} pCR), "
                 f"{entry['mammograms']} mammograms, phases {entry['phases']}")
  lines.append(f"  skipped    {len(manifest['skipped']):>5} patients (reasons in manifest.json)")
  for entry in manifest["skipped"][:10]:
    reason = entry["reason"] if len(entry["reason"]) <= 110 else entry["reason"][:107] + "..."
    lines.append(f"    {entry['patient']}: {reason}")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  options, progress = options_from_args(argv)
  try:
    manifest = prepare(options, progress=progress)
  except PrepareError as error:
    print(f"prepare: {error}", file=sys.stderr)
    return 2
  print(f"prepare: wrote {sum(s['records'] for s in manifest['shards'])} records to "
        f"{options.out} in {manifest['timing']['seconds']} s\n{summary(manifest)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
