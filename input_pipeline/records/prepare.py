"""The `prepare` command: a source folder -> de-identified TFRecord shards and a manifest.

  python -m input_pipeline.records.prepare --source /data/export --layout generic --out /data/records

Per patient: discover its studies (layouts/), preprocess every MRI exam into a subtraction
volume and each mammogram view into a fixed-size image, parse the 22 rhpc values, and write one
``tf.train.Example`` (records.py) keyed by a pseudonym. Patients are split train / validation /
test by patient, stratified by label, seeded, and test keeps only the patients with every
image, as the paper's test cohort (splits.py); each split is cut into shards of ``shard_size``
patients that worker processes write in parallel.

Guarantees:
* One bad patient never stops the run: it is skipped and the manifest says why.
* Restartable: a shard counts as done once its file and its progress note exist (the file is
  renamed into place only when complete), and a rerun with the same options redoes only the
  shards that are not done. Different options or patients in the same --out are refused.
* The folder passes its own ``verify``: shards an earlier run of another plan left are removed,
  shard files nothing accounts for are refused (out_folder.py). Where --out, the private
  folder or the key cannot be written, the run stops before the scan, writing nothing.
* Nothing written under --out carries a direct identifier, hidden folders included. Pseudonyms
  are an HMAC of the source patient id with a secret key kept outside --out
  (``<out>.pseudonym.key`` unless --pseudonym_key says otherwise); skip reasons are scrubbed of
  paths, ids, UIDs and dates. The progress notes (source ids, full reasons) and the full,
  identifying report go to ``<out>.private/`` (mode 0700, files 0600) for the data steward
  (skipped.csv, unused_images.csv, warnings.csv, unparsed_values.csv).
* Every image is accounted for: each image or series found but not used is listed with its
  reason (manifest ``unused_images``), each choice made without the attribute that should
  decide it is a counted warning, patients written with and without each modality are
  counted, and a patient without any image is written clinical-only or skipped
  (``--imageless``), named with the reason.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from absl import flags

from input_pipeline import cli, clinical_table, records, schema
from input_pipeline.geometries import GEOMETRIES
from input_pipeline.ingestion import layouts
from input_pipeline.ingestion.mammogram import MammogramOptions, preprocess_mammogram
from input_pipeline.ingestion.mri import DTYPES as MRI_DTYPES
from input_pipeline.ingestion.mri import INTENSITIES, ON_SIZE_MISMATCH, MriOptions, preprocess_exam
from input_pipeline.ingestion.patient import PatientSource
from input_pipeline.records import accounting, out_folder, splits, tfrecord
from input_pipeline.records.pseudonyms import pseudonym
from input_pipeline.workers import worker_pool

MANIFEST = records.MANIFEST
SPLIT_NAMES = records.SPLITS
IMAGELESS = ("clinical_only", "skip")


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
    imageless: a patient whose folder gives no image: 'clinical_only' writes her record with
      the rhpc values alone (the rhpc model and the ensemble's fallback use it), 'skip' skips
      her; either way the manifest counts and names her with the reason.
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
  imageless: str = "clinical_only"

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
    if self.imageless not in IMAGELESS:
      raise PrepareError(f"--imageless must be one of {IMAGELESS}, got {self.imageless!r}")
    object.__setattr__(self, "split_fractions", fractions)

  def fingerprint_fields(self) -> dict[str, Any]:
    return {"layout": self.layout, "layout_options": [list(o) for o in self.layout_options],
            "mri": dataclasses.asdict(self.mri), "mammogram": dataclasses.asdict(self.mammogram),
            "split_fractions": list(self.split_fractions), "seed": self.seed,
            "shard_size": self.shard_size, "imageless": self.imageless,
            "record_format": records.FORMAT_VERSION}


# ---------------------------------------------------------------------------------------------
# The pseudonym key
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
  mammograms = {}
  for image in source.mammograms:
    try:
      mammograms[image.view] = preprocess_mammogram(image.path, mammogram_options)
    except Exception as error:
      raise PatientError(f"mammogram {image.view or '(view unknown)'}: "
                         f"{type(error).__name__}: {error}") from error
  raw, codes, values = _rhpc(dict(source.clinical), report)
  return records.PatientRecord(
      patient_id=patient_id, split=split, label=-1 if source.label is None else int(source.label),
      mri=mri, mammograms=mammograms,
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
                      "mammogram_views": list(record.mammograms)})
  note = {"fingerprint": fingerprint, "file": job.file, "split": job.split,
          "records": len(written), "written": written, "skipped": skipped,
          "seconds": seconds, "bytes": path.stat().st_size,
          "parse": {"unparsed": [[v, raw, n] for (v, raw), n in report.unparsed.items()],
                    "missing": dict(report.missing)}}
  out_folder.write_private_json(out_folder.note_path(options.out, job.file), note)
  return note


def _write_json(path: Path, data: Any) -> None:
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
    elif patient.empty and options.imageless == "skip":
      skipped.append({"patient": pid, "stage": "discovery", "key": patient.key,
                      "reason": f"no image: {patient.empty} (--imageless=skip)"})
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
  if not (options.out / job.file).exists():
    return None
  note = out_folder.read_note(options.out, job.file)
  return note if note is not None and note.get("fingerprint") == fingerprint else None


def prepare(options: PrepareOptions, progress: bool = True) -> dict[str, Any]:
  """Runs discovery, preprocessing and writing; returns the manifest (also in out/manifest.json).

  Raises:
    PrepareError: bad options, an unknown layout, an output folder that cannot be written,
      --out prepared with other options, or shard files in --out nothing accounts for.
  """
  started = time.perf_counter()
  key_path = Path(options.pseudonym_key or options.out.with_name(options.out.name
                                                                  + ".pseudonym.key"))
  try:
    out_folder.check_writable([("--out", options.out),
                               ("private report", out_folder.private_folder(options.out))],
                              [("--pseudonym_key", key_path)])
  except out_folder.FolderError as error:
    raise PrepareError(str(error)) from None
  try:
    patients = layouts.discover(options.layout, options.source, workers=options.workers,
                                progress=progress, **dict(options.layout_options))
  except (ValueError, FileNotFoundError) as error:
    raise PrepareError(str(error)) from None
  # Only now that discovery succeeded: a run that fails before its first patient writes nothing.
  key = load_key(key_path)
  jobs, skipped = _plan(patients, options, key)
  fingerprint = _fingerprint(options, jobs)
  manifest_path = options.out / MANIFEST
  if manifest_path.exists():
    previous = json.loads(manifest_path.read_text()).get("fingerprint")
    if previous != fingerprint:
      raise PrepareError(f"{options.out} holds records prepared from other options or patients; "
                         "use a new --out (or delete it to start over)")
  options.out.mkdir(parents=True, exist_ok=True)
  out_folder.make_private_folder(options.out)
  planned = {job.file for job in jobs}
  try:
    removed = out_folder.clear_stale(options.out, planned, fingerprint)
  except out_folder.FolderError as error:
    raise PrepareError(str(error)) from None
  if removed:
    print(f"prepare: removed {len(removed)} shard(s) that an earlier, unfinished run with other "
          f"options or patients left in {options.out}: {', '.join(removed)}", file=sys.stderr)
  notes = {job.file: _done_note(options, job, fingerprint) for job in jobs}
  todo = [job for job in jobs if notes[job.file] is None]
  bar = cli.progress(total=sum(len(j.patients) for j in jobs), unit="patient", enabled=progress,
                     desc="prepare shards",
                     initial=sum(len(j.patients) for j in jobs if j not in todo))
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
  unplanned = out_folder.unplanned_shards(options.out, planned)
  if unplanned:
    raise PrepareError(f"{options.out}: shard files appeared during the run that it did not "
                       f"write ({', '.join(unplanned)}); is another prepare writing there?")
  manifest = accounting.manifest(options, jobs, notes, skipped, fingerprint,
                               seconds=time.perf_counter() - started)
  manifest["empty_splits"] = accounting.empty_splits(options, jobs, notes)
  for warning in accounting.warnings(manifest):
    print(f"prepare: warning: {warning}", file=sys.stderr)
  accounting.write_private_report(options, notes, skipped, jobs)
  _write_json(manifest_path, manifest)
  return manifest


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _geometry_help() -> str:
  return "; ".join(
      f"{name}: MRI {'x'.join(map(str, g.mri_box))} voxels (z,y,x) of "
      f"{'x'.join(f'{v:g}' for v in g.mri_spacing_mm)} mm, mammogram "
      f"{'x'.join(map(str, g.mg_size))}" for name, g in sorted(GEOMETRIES.items()))


def define_flags(flag_values: flags.FlagValues) -> None:
  """Defines the command line's flags on ``flag_values``.

  The command line defines them on absl's global FLAGS; :func:`main` on a fresh FlagValues per
  call, so this module can be imported, and main() called, any number of times in a process.
  """
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("source", None, "Required. The export or collection folder.", **fv)
  flags.DEFINE_string("out", None, "Required. Folder for the shards and manifest.json.", **fv)
  flags.DEFINE_enum("layout", "generic", sorted(layouts.LAYOUTS),
                    'How the source is organised (docs/data.md, "Layouts").', **fv)
  flags.DEFINE_enum("geometry", "full", sorted(GEOMETRIES),
                    f"Preset of voxel spacing, MRI box and mammogram size: {_geometry_help()}.",
                    **fv)
  flags.DEFINE_list("spacing_mm", None, "MRI voxel spacing x,y,z in mm; overrides --geometry.",
                    **fv)
  flags.DEFINE_list("box", None, "MRI box z,y,x in voxels; overrides --geometry.", **fv)
  flags.DEFINE_list("mg_size", None, "Mammogram rows,columns; overrides --geometry.", **fv)
  flags.DEFINE_enum("intensity", "relative", list(INTENSITIES),
                    "MRI subtraction scale: 'relative' divides by the pre-contrast body "
                    "intensity, 'raw' keeps scanner units.", **fv)
  flags.DEFINE_enum("mri_dtype", "float16", list(MRI_DTYPES),
                    "Storage type of the MRI subtraction (int16 needs --intensity=raw).", **fv)
  flags.DEFINE_enum("on_size_mismatch", "skip", list(ON_SIZE_MISMATCH),
                    "Pre and post-contrast series of different geometry: skip the patient, or "
                    "resample the post-contrast one onto the pre-contrast grid.", **fv)
  flags.DEFINE_list("split", ["0.8", "0.1", "0.1"],
                    "Train, validation, test fractions, by patient, stratified by label.", **fv)
  flags.DEFINE_integer("seed", 0, "Seed of the split.", **fv)
  flags.DEFINE_integer("shard_size", 16, "Patients per shard.", **fv)
  flags.DEFINE_integer("workers", max(1, (os.cpu_count() or 1) - 1),
                       "Processes scanning patient folders, then writing shards (default: "
                       "this machine's cores less one).", **fv)
  flags.DEFINE_string("pseudonym_key", None,
                      "Secret key file of the pseudonyms, created on first use (default: "
                      "<out>.pseudonym.key beside --out; keep it outside --out).", **fv)
  flags.DEFINE_enum("imageless", "clinical_only", list(IMAGELESS),
                    "A patient whose folder gives no image (empty, no DICOM or NIfTI, none "
                    "used): 'clinical_only' writes her rhpc values, 'skip' skips her; the "
                    "manifest counts and names her either way.", **fv)
  flags.DEFINE_multi_string("layout_option", [],
                            "NAME=VALUE adapter option, e.g. post_index=2, mg_view=MLO, "
                            "two_study_followup=mid, t1_phase=mid, clinical_file=..., "
                            "mapping_file=..., and for clinical.csv 'column_map=HEADER="
                            "variable;...', 'ignore_columns=HEADER;...', clinical_encoding="
                            "cp1252 (repeat the flag for several)", **fv)
  flags.DEFINE_bool("no_progress", False, "Hide the progress bars (the folder scan and the "
                    "shards).", **fv)
  flags.mark_flags_as_required(["source", "out"], **fv)


def _numbers(values: Sequence[str] | None, kind, name: str) -> tuple | None:
  if values is None:
    return None
  try:
    return tuple(kind(v) for v in values)
  except ValueError:
    raise PrepareError(f"--{name}: expected comma-separated numbers, got "
                       f"{','.join(values)!r}") from None


def options_from_flags(fv: flags.FlagValues) -> tuple[PrepareOptions, bool]:
  """(options, show progress) from parsed flags.

  Raises:
    PrepareError: a malformed or inconsistent option.
  """
  geometry = GEOMETRIES[fv.geometry]
  layout_options = []
  for item in fv.layout_option:
    name, sep, value = item.partition("=")
    if not sep:
      raise PrepareError(f"--layout_option {item!r}: expected NAME=VALUE")
    layout_options.append((name, int(value) if value.isdigit() else value))
  try:
    options = PrepareOptions(
        source=Path(fv.source), out=Path(fv.out), layout=fv.layout,
        layout_options=tuple(layout_options),
        mri=MriOptions(spacing_mm=_numbers(fv.spacing_mm, float, "spacing_mm")
                       or geometry.mri_spacing_mm,
                       box=_numbers(fv.box, int, "box") or geometry.mri_box,
                       intensity=fv.intensity, dtype=fv.mri_dtype,
                       on_size_mismatch=fv.on_size_mismatch),
        mammogram=MammogramOptions(size=_numbers(fv.mg_size, int, "mg_size")
                                   or geometry.mg_size),
        split_fractions=_numbers(fv.split, float, "split"), seed=fv.seed,
        shard_size=fv.shard_size, workers=fv.workers,
        pseudonym_key=Path(fv.pseudonym_key) if fv.pseudonym_key else None,
        imageless=fv.imageless)
  except ValueError as error:
    raise PrepareError(str(error)) from None
  return options, not fv.no_progress



def run(fv: flags.FlagValues, arguments: Sequence[str]) -> int:
  """Runs the command on parsed flags; returns the exit status (2: bad options or a run that
  cannot start)."""
  try:
    if arguments:
      raise PrepareError(f"unexpected arguments: {' '.join(arguments)}")
    options, progress = options_from_flags(fv)
    manifest = prepare(options, progress=progress)
  except PrepareError as error:
    print(f"prepare: {error}", file=sys.stderr)
    return 2
  print(f"prepare: wrote {sum(s['records'] for s in manifest['shards'])} records to "
        f"{options.out} in {manifest['timing']['seconds']} s\n{accounting.summary(manifest)}")
  return 0


def main(argv: Sequence[str]) -> int:
  """The command for callers in Python: ``argv`` without the program name, e.g.
  ``main(["--source", "export", "--out", "records"])``; returns the exit status."""
  return cli.call("prepare", define_flags, run, argv)


if __name__ == "__main__":
  cli.run_program(define_flags, run)
