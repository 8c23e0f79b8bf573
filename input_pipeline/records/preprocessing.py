"""How a records folder was preprocessed, as its manifest says: the one source of the geometry
(MRI spacing and box, mammogram size) and of the stored intensity and dtypes.

Training copies the manifest's ``mri`` and ``mammogram`` sections into its run
(preprocessing.json); evaluation and predict read them from there, and predict preprocesses new
patients with exactly these options (:func:`options`). A config names at most a geometry preset
(``input_pipeline.geometries``); :func:`config_disagreement` and :func:`disagreement` say in one
line where a config, a run or records disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from input_pipeline.geometries import GEOMETRIES
from input_pipeline.ingestion.mammogram import MammogramOptions
from input_pipeline.ingestion.mri import MriOptions

# (section, key) of the manifest fields that decide the stored arrays, in the order messages
# name them.
FIELDS = (("mri", "spacing_mm"), ("mri", "shape"), ("mri", "intensity"), ("mri", "dtype"),
          ("mammogram", "shape"), ("mammogram", "dtype"))
# The sections each model reads (the rhpc model reads no image).
SECTIONS = {"rhpc": (), "iMGrhpc": ("mammogram",), "iMRrhpc": ("mri",)}
# Fields of the configs written before the geometry presets, still in older runs' config.json.
_OLDER_CONFIG_FIELDS = {"mri_spacing_mm": ("mri", "spacing_mm"), "mri_shape": ("mri", "shape"),
                        "mg_shape": ("mammogram", "shape")}


def options(preprocessing: Mapping[str, Any]) -> tuple[MriOptions, MammogramOptions]:
  """The MRI and mammogram options that preprocess new patients as ``preprocessing`` (a
  manifest, or a run's preprocessing.json) says its records were."""
  mri, mammogram = preprocessing["mri"], preprocessing["mammogram"]
  return (MriOptions(spacing_mm=tuple(mri["spacing_mm"]), box=tuple(mri["shape"]),
                     intensity=mri["intensity"], dtype=mri["dtype"]),
          MammogramOptions(size=tuple(mammogram["shape"]), dtype=mammogram["dtype"]))


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    return len(a) == len(b) and all(float(x) == float(y) for x, y in zip(a, b))
  return a == b


def _shown(value: Any) -> str:
  return str(tuple(value)) if isinstance(value, (list, tuple)) else repr(value)


def disagreement(a: Mapping[str, Any], b: Mapping[str, Any],
                 sections: Sequence[str] = ("mri", "mammogram")) -> str | None:
  """The first field of ``sections`` in which two preprocessings differ, as
  "mri.spacing_mm (4.0, 4.0, 4.0) vs (8.0, 8.0, 8.0)"; None when they agree."""
  for section, key in FIELDS:
    if section in sections and not _same(a[section][key], b[section][key]):
      return f"{section}.{key} {_shown(a[section][key])} vs {_shown(b[section][key])}"
  return None


def config_disagreement(data: Mapping[str, Any], preprocessing: Mapping[str, Any]
                        ) -> str | None:
  """Where a config's data section disagrees with ``preprocessing``, in one line naming the
  field and both values; None when it agrees or names no geometry.

  The config names a preset (data.geometry, '' for none); the config.json of a run trained
  before the presets holds data.mri_spacing_mm, data.mri_shape and data.mg_shape instead.
  """
  expected: dict[tuple[str, str], tuple[Any, str]] = {}
  name = data.get("geometry") or ""
  if name:
    preset = GEOMETRIES[name]
    source = f"config.data.geometry={name!r}"
    expected = {("mri", "spacing_mm"): (preset.mri_spacing_mm, source),
                ("mri", "shape"): (preset.mri_box, source),
                ("mammogram", "shape"): (preset.mg_size, source)}
  for key, field in _OLDER_CONFIG_FIELDS.items():
    if key in data:
      expected[field] = (data[key], f"config.data.{key}")
  for section, key in FIELDS:
    if (section, key) not in expected:
      continue
    value, source = expected[section, key]
    recorded = preprocessing[section][key]
    if not _same(value, recorded):
      return (f"{source} means {section}.{key} {_shown(value)}, the records were prepared "
              f"with {_shown(recorded)}")
  return None
