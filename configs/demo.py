"""The built-in demo: a synthetic hospital export, prepared into records, end to end on CPU.

Command (what `make demo` runs):
  python -m mrp_jax.main --config configs/demo.py --workdir runs/demo
It writes WORKDIR/export (DICOM studies + clinical.csv of synthetic patients), WORKDIR/records
(verified TFRecord shards + manifest.json) and reuses both when run again. Training, the MRP
ensemble and the report join the demo as they land (see the README's status table).
Variants: ':tiny' for a seconds-long smoke run (CI).
"""

import ml_collections

from configs import common
from input_pipeline.geometries import GEOMETRIES


def get_config(arg=None):
  config = common.get_config()
  config.job = "demo"
  config.model.name = "imr_rhpc"
  config.demo = d = ml_collections.ConfigDict()
  d.patients = 64  # synthetic patients (a few are deliberately broken and get skipped)
  d.geometry = "demo"  # full | demo | tiny: voxel size of export and records
  d.workers = 2  # processes for generation and preparation
  d.shard_size = 8  # patients per record shard
  tiny = arg and "tiny" in arg.split(",")
  if tiny:
    d.patients = 12
    d.geometry = "tiny"
  common.apply_variants(config, arg)
  geometry = GEOMETRIES[d.geometry]
  config.data.mri_shape = geometry.mri_box
  config.data.mri_spacing_mm = geometry.mri_spacing_mm
  config.data.mg_shape = geometry.mg_size
  return config
