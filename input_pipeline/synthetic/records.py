"""Prepared-looking record shards written directly, for timing the input pipeline.

``prepare`` is the only way to make records for training: it reads DICOM, resamples and
pseudonymises. Timing the pipeline at full geometry needs only records of the right sizes,
and on a machine without pydicom and SimpleITK (the device image of launch/gpu_benchmark.sh)
this writes them in seconds::

  python -m input_pipeline.synthetic.records --out /tmp/records --patients 48

Each patient gets Pre and Post volumes, every other one a Mid volume too (so records are
44.7 or 66.5 MB at the default 176 x 176 x 352), a 1024 x 512 mammogram, a label and no
clinical values (all Unknown). The voxels are shifted copies of one noise volume: their
content does not matter to the pipeline, only their bytes do. ``manifest.json`` carries what
the pipeline reads from it (geometry and shards), not prepare's fingerprint or options.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import flags

from input_pipeline import cli, records, schema
from input_pipeline.geometries import GEOMETRIES
from input_pipeline.records import tfrecord


def write(out_dir: str | Path, num_patients: int, *,
          mri_shape: Sequence[int] = GEOMETRIES["full"].mri_box,
          mg_shape: Sequence[int] = GEOMETRIES["full"].mg_size, per_shard: int = 4,
          seed: int = 0) -> Path:
  """Writes ``num_patients`` training records in shards of ``per_shard`` and a manifest.

  Returns:
    ``out_dir``, ready for ``pipeline.split_paths(out_dir, 'train')``.
  """
  if num_patients < 1 or per_shard < 1:
    raise ValueError("num_patients and per_shard must be >= 1")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  base = rng.standard_normal(tuple(mri_shape), np.float32).astype(np.float16)
  mammogram = rng.integers(0, 4096, tuple(mg_shape), np.uint16)
  unknown = np.full(len(schema.VARIABLES), schema.UNKNOWN, np.int32)
  no_values = np.full(len(schema.VARIABLES), np.nan, np.float32)
  num_shards = -(-num_patients // per_shard)
  shards = []
  for s in range(num_shards):
    name = f"train-{s:05d}-of-{num_shards:05d}.tfrecord"
    members = range(s * per_shard, min(num_patients, (s + 1) * per_shard))
    with tfrecord.TFRecordWriter(out / name) as writer:
      for i in members:
        phases = ("pre", "mid", "post") if i % 2 else ("pre", "post")
        writer.write(records.encode(records.PatientRecord(
            patient_id=f"P{i:012x}", split="train", label=i % 2,
            mri={p: np.roll(base, 7 * i + k, axis=2) for k, p in enumerate(phases)},
            mammograms={"CC": np.roll(mammogram, i, axis=1)},
            rhpc_raw=("",) * len(schema.VARIABLES),
            rhpc_codes=unknown, rhpc_values=no_values, spacing_mm=(1.0, 1.0, 1.0))))
    shards.append({"file": name, "split": "train", "records": len(members)})
  (out / records.MANIFEST).write_text(json.dumps({
      "format_version": records.FORMAT_VERSION, "layout": "synthetic_records",
      "mri": {"shape": list(mri_shape), "dtype": "float16"},
      "mammogram": {"shape": list(mg_shape), "dtype": "uint16"}, "shards": shards}, indent=1))
  return out


def define_flags(values: flags.FlagValues) -> None:
  """The command line (input_pipeline/cli.py)."""
  flags.DEFINE_string("out", None, "Records folder to write (created).", required=True,
                      flag_values=values)
  flags.DEFINE_integer("patients", 48, "Patients to write.", lower_bound=1, flag_values=values)
  full = GEOMETRIES["full"]
  flags.DEFINE_list("mri_shape", [str(n) for n in full.mri_box], "Volume shape z,y,x in voxels "
                    "(default: the full geometry).", flag_values=values)
  flags.DEFINE_list("mg_shape", [str(n) for n in full.mg_size], "Mammogram shape rows,cols in "
                    "pixels (default: the full geometry).", flag_values=values)
  flags.DEFINE_integer("per_shard", 4, "Patients per shard.", lower_bound=1, flag_values=values)
  flags.register_validator("mri_shape", lambda v: len(v) == 3 and all(x.isdigit() for x in v),
                           "--mri_shape takes three positive integers z,y,x",
                           flag_values=values)
  flags.register_validator("mg_shape", lambda v: len(v) == 2 and all(x.isdigit() for x in v),
                           "--mg_shape takes two positive integers rows,cols",
                           flag_values=values)


def write_records(options: flags.FlagValues, arguments: Sequence[str]) -> int:
  """The command: writes the records and prints their size."""
  if arguments:
    print(f"synthetic.records: unexpected arguments {list(arguments)}", file=sys.stderr)
    return 2
  out = write(options.out, options.patients, mri_shape=tuple(map(int, options.mri_shape)),
              mg_shape=tuple(map(int, options.mg_shape)), per_shard=options.per_shard)
  size = sum(p.stat().st_size for p in out.glob("*.tfrecord"))
  print(f"{options.patients} patients, {size / 1e9:.2f} GB in {out}")
  return 0


def main(argv: Sequence[str]) -> int:
  """The command for callers in Python: ``argv`` without the program name."""
  return cli.call("synthetic.records", define_flags, write_records, argv)


if __name__ == "__main__":
  cli.run_program(define_flags, write_records)
