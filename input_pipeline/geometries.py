"""Named preprocessing geometries, shared by `prepare`, the configs and the synthetic export.

Every geometry covers the paper's bilateral breast box, 176 x 176 x 352 mm ([z, y, x]:
S-I x A-P x L-R); the coarser ones only change the voxel size, so the anatomy and the model's
receptive field stay comparable while the cost falls by the cube of the factor.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Geometry:
  """mri_spacing_mm (x, y, z); mri_box [z, y, x] voxels; mg_size (rows, cols) pixels."""
  mri_spacing_mm: tuple[float, float, float]
  mri_box: tuple[int, int, int]
  mg_size: tuple[int, int]


GEOMETRIES = {
    "full": Geometry((1.0, 1.0, 1.0), (176, 176, 352), (1024, 512)),  # the paper's
    "demo": Geometry((4.0, 4.0, 4.0), (44, 44, 88), (256, 128)),  # CPU demo
    "tiny": Geometry((8.0, 8.0, 8.0), (22, 22, 44), (64, 32)),  # tests and CI
    "small": Geometry((5.5, 5.5, 5.5), (32, 32, 64), (128, 64)),  # CPU benchmark
}


def preset(name: str) -> Geometry:
  """The preset ``name``; '' (a config that names none) is 'full', the paper's. Jobs that build
  batches without records (the benchmark, describe) take their shapes from it.

  Raises:
    KeyError: an unknown name.
  """
  return GEOMETRIES[name or "full"]


class GeometryMismatch(ValueError):
  """A config or a run expects another preprocessing than the records' (or the run's) own; the
  message names the field and both values."""
