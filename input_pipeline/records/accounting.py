"""What ``prepare`` accounts for: the manifest's record of every patient and image, the private
report for the data steward, and the summary it prints.

The manifest (under --out) holds only pseudonyms and scrubbed text; the private report (beside
--out, ``<out>.private/``) keeps the source ids and the full reasons.
"""

from __future__ import annotations

import collections
import csv
from typing import Any

import numpy as np

from input_pipeline import records, schema
from input_pipeline.records import out_folder
from input_pipeline.records.pseudonyms import scrub


def manifest(options, jobs, notes, discovery_skips, fingerprint, seconds) -> dict[str, Any]:
  splits = {s: {"patients": 0, "pcr": 0, "non_pcr": 0, "phases": collections.Counter(),
                "mammograms": 0, "mammogram_views": collections.Counter()}
            for s in records.SPLITS}
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
      entry["mammograms"] += bool(patient["mammogram_views"])
      entry["mammogram_views"].update(patient["mammogram_views"])
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
    entry["mammogram_views"] = _view_counts(entry["mammogram_views"])
  images = _image_accounting(options, jobs, notes, source_keys)
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
      **images,
      "rhpc": {"missing": dict(sorted(unknown.items())),
               "unparsed": dict(sorted(unparsed.items()))},
      "timing": {"seconds": round(seconds, 1),
                 "seconds_per_patient": round(float(np.mean(per_patient_seconds)), 3)
                 if per_patient_seconds else None,
                 "bytes_per_patient": int(np.mean(per_patient_bytes))
                 if per_patient_bytes else None},
  }


def _view_counts(counts: collections.Counter) -> dict[str, int]:
  """Mammogram views written, by view name ('unknown' for a view nothing states)."""
  return {name or "unknown": n for name, n in sorted(counts.items())}


def _image_accounting(options, jobs, notes, source_keys) -> dict[str, Any]:
  """The manifest's account of the images of the planned patients: how many patients were
  written with and without each modality, who was written clinical-only and why, every image
  or series not used and why, and the warnings of the choices (all scrubbed)."""
  written = {p["patient"]: p for note in notes.values() for p in note["written"]}
  modalities = {name: {"with": 0, "without": 0}
                for name in ("mammogram", *(f"mri_{p}" for p in schema.PHASE_NAMES))}
  clinical_only, unused, warnings = [], [], []
  warning_counts: collections.Counter = collections.Counter()
  for job in jobs:
    for pid, source in job.patients:

      def clean(text: str) -> str:
        return scrub(text, options.source, source_keys.get(pid, ""), pid)

      unused += [{"patient": pid, "item": clean(u.item), "reason": clean(u.reason)}
                 for u in source.unused]
      warnings += [{"patient": pid, "warning": clean(w)} for w in source.warnings]
      warning_counts.update(w.split(":")[0] for w in source.warnings)
      if pid not in written:
        continue
      present = {"mammogram": bool(written[pid]["mammogram_views"]),
                 **{f"mri_{name}": phase in written[pid]["phases"]
                    for phase, name in enumerate(schema.PHASE_NAMES)}}
      for name, has in present.items():
        modalities[name]["with" if has else "without"] += 1
      if source.empty:
        clinical_only.append({"patient": pid, "reason": clean(source.empty)})
  return {"modalities": modalities,
          "clinical_only": sorted(clinical_only, key=lambda e: e["patient"]),
          "unused_images": sorted(unused, key=lambda e: (e["patient"], e["item"])),
          "warnings": {"counts": dict(sorted(warning_counts.items())),
                       "patients": sorted(warnings, key=lambda e: (e["patient"], e["warning"]))}}


def write_private_report(options, notes, discovery_skips, jobs) -> None:
  """Identifying details for the data steward, outside --out: source ids and full reasons."""
  folder = out_folder.make_private_folder(options.out)
  rows = [(s["key"], s["patient"], s["stage"], s["reason"]) for s in discovery_skips]
  for note in notes.values():
    rows += [(s["key"], s["patient"], s["stage"], s["reason"]) for s in note["skipped"]]
  with out_folder.open_private(folder / "skipped.csv") as f:
    writer = csv.writer(f)
    writer.writerow(["source_patient", "patient_id", "stage", "reason"])
    writer.writerows(sorted(rows))
  with out_folder.open_private(folder / "unparsed_values.csv") as f:
    writer = csv.writer(f)
    writer.writerow(["variable", "raw_value", "count"])
    counts = collections.Counter()
    for note in notes.values():
      for variable, raw, n in note["parse"]["unparsed"]:
        counts[(variable, raw)] += n
    writer.writerows(sorted((v, r, n) for (v, r), n in counts.items()))
  with out_folder.open_private(folder / "unused_images.csv") as f:
    writer = csv.writer(f)
    writer.writerow(["source_patient", "patient_id", "item", "file_or_folder", "reason"])
    writer.writerows(sorted((p.key, pid, u.item, u.where, u.reason) for job in jobs
                            for pid, p in job.patients for u in p.unused))
  with out_folder.open_private(folder / "warnings.csv") as f:
    writer = csv.writer(f)
    writer.writerow(["source_patient", "patient_id", "warning"])
    writer.writerows(sorted((p.key, pid, w) for job in jobs for pid, p in job.patients
                            for w in p.warnings))


def empty_splits(options, jobs, notes: dict[str, dict[str, Any]]) -> dict[str, str]:
  """Split -> why it has no record, for every split --split gives a share; a split emptied by
  patients skipped in preprocessing leaves training without validation data, or evaluation
  without test data."""
  empty = {}
  for split, fraction in zip(records.SPLITS, options.split_fractions):
    planned = sum(len(job.patients) for job in jobs if job.split == split)
    written = sum(notes[job.file]["records"] for job in jobs if job.split == split)
    if fraction > 0 and not written:
      empty[split] = (f"its {planned} patient(s) were skipped in preprocessing (manifest "
                      "'skipped' says why)" if planned else
                      f"no patient was assigned to it (a share of {fraction:g} of the usable "
                      "patients rounds to none)")
  return empty


def warnings(manifest: dict[str, Any]) -> list[str]:
  """What the user must hear about a finished run: empty splits, and clinical values read as
  Unknown because they could not be read or were impossible (the values themselves are
  private: they may hold anything a person typed)."""
  lines = [f"split {split!r} is empty: {why}" for split, why in manifest["empty_splits"].items()]
  unparsed = manifest["rhpc"]["unparsed"]
  if unparsed:
    lines.append(f"{sum(unparsed.values())} rhpc value(s) unreadable or impossible (negative, "
                 "out of range, a range, another unit), read as Unknown: "
                 + ", ".join(f"{name} {n}" for name, n in unparsed.items())
                 + "; each value is listed in <out>.private/unparsed_values.csv")
  return lines


def summary(manifest: dict[str, Any]) -> str:
  lines = []
  for split, entry in manifest["splits"].items():
    lines.append(f"  {split:<10} {entry['patients']:>5} patients ({entry['pcr']} pCR), "
                 f"{entry['mammograms']} with a mammogram ("
                 + (", ".join(f"{n} {view}" for view, n in entry["mammogram_views"].items())
                    or "no view") + f"), phases {entry['phases']}")
  lines.append(f"  skipped    {len(manifest['skipped']):>5} patients (reasons in manifest.json)")
  for entry in manifest["skipped"][:10]:
    reason = entry["reason"] if len(entry["reason"]) <= 110 else entry["reason"][:107] + "..."
    lines.append(f"    {entry['patient']}: {reason}")
  return "\n".join(lines)
