"""Prepared-looking record shards written directly, for timing the input pipeline.

``prepare`` is the only way to make records for training: it reads DICOM, resamples and
pseudonymises. Timing the pipeline at full geometry needs only records of the right sizes,
and on a machine without pydicom and SimpleITK (the device image of launch/gpu_benchmark.sh)
this writes them in seconds::

  python -m input_pipeline.synthetic_records --out /tmp/records --patients 48

Each patient gets Pre and Post volumes, every other one a Mid volume too (so records are
44.7 or 66.5 MB at the default 176 x 176 x 352), a 1024 x 512 mammogram, a label and no
clinical values (all Unknown). The voxels are shifted copies of one noise volume: their
content does not matter to the pipeline, only their bytes do. ``manifest.json`` carries what
the pipeline reads from it (geometry and shards), not prepare's fingerprint or options.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from input_pipeline import records, schema, tfrecord
from input_pipeline.pipeline import MANIFEST


def write(out_dir: str | Path, num_patients: int, *, mri_shape: Sequence[int] = (176, 176, 352),
          mg_shape: Sequence[int] = (1024, 512), per_shard: int = 4, seed: int = 0) -> Path:
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
            mg=np.roll(mammogram, i, axis=1), rhpc_raw=("",) * len(schema.VARIABLES),
            rhpc_codes=unknown, rhpc_values=no_values, spacing_mm=(1.0, 1.0, 1.0))))
    shards.append({"file": name, "split": "train", "records": len(members)})
  (out / MANIFEST).write_text(json.dumps({
      "format_version": records.FORMAT_VERSION, "layout": "synthetic_records",
      "mri": {"shape": list(mri_shape), "dtype": "float16"},
      "mammogram": {"shape": list(mg_shape), "dtype": "uint16"}, "shards": shards}, indent=1))
  return out


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m input_pipeline.synthetic_records",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, type=Path)
  parser.add_argument("--patients", type=int, default=48)
  parser.add_argument("--mri_shape", default="176,176,352", help="z,y,x voxels")
  parser.add_argument("--mg_shape", default="1024,512", help="rows,cols")
  parser.add_argument("--per_shard", type=int, default=4)
  args = parser.parse_args(argv)
  shape = tuple(int(v) for v in args.mri_shape.split(","))
  mg = tuple(int(v) for v in args.mg_shape.split(","))
  if len(shape) != 3 or len(mg) != 2:
    parser.error("--mri_shape takes z,y,x and --mg_shape rows,cols")
  out = write(args.out, args.patients, mri_shape=shape, mg_shape=mg, per_shard=args.per_shard)
  size = sum(p.stat().st_size for p in out.glob("*.tfrecord"))
  print(f"{args.patients} patients, {size / 1e9:.2f} GB in {out}")


if __name__ == "__main__":
  main()
