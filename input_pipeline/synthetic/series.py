"""DICOM studies of the synthetic export: what a hospital's PACS export looks like.

Per patient a :class:`Plan` (scanner vendor and its series descriptions, acquisition protocol,
study dates, which phases and mammogram exist, how the phase can be recovered) and a
:class:`StudyWriter` that renders and writes each study with ``input_pipeline.dicom_writer``.

An MR study holds, as real ones do: a localizer (3 coronal slices), a T2 series, the DCE series
(one pre-contrast and 1-4 post-contrast series, or one GE 'MultiPhase' series holding all
phases), and a DERIVED subtraction series ('SUB' in its description). Its phase is recoverable
from a keyword in StudyDescription (most patients), from ClinicalTrialTimePointID T0/T2/T3
(some), or only from the date order (patients with all three phases only). Mid-NAT is ~3 months
and Post-NAT ~6 months after Pre-NAT; the mammogram a few days before Pre-NAT.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import re
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from input_pipeline.schema import PHASE_NAMES, VARIABLE_NAMES
from input_pipeline.synthetic import dicom_writer
from input_pipeline.synthetic.cohort import ClinicalDraw, ImageLatent
from input_pipeline.synthetic.images import (
  MG_MAX,
  Phantom,
  VolumeGeometry,
  render_dce,
  render_mammogram,
  rician,
)

_NTH = ("1st", "2nd", "3rd", "4th")


@dataclasses.dataclass(frozen=True)
class Vendor:
  """A scanner vendor: tags and its ways of naming series.

  styles: per naming style, (pre, post, subtraction, T2, localizer) descriptions; '{k}' is the
  post-contrast number, '{nth}' its ordinal ('1st'). Not every pre-contrast description says
  'pre' (Siemens' second style): series order and TriggerTime 0 tell it, as in real exports.
  """
  manufacturer: str
  models: tuple[str, ...]
  signed: bool
  styles: tuple[tuple[str, str, str, str, str], ...]
  series_step: int = 1  # Philips numbers series 301, 401, ...


VENDORS = (  # with the share of patients
    (0.45, Vendor("SIEMENS", ("Skyra", "Avanto_fit", "MAGNETOM Vida"), False, (
        ("T1 FL3D AX PRE", "T1 FL3D AX POST {k}", "T1 FL3D AX SUB {k}", "t2_tse_tra",
         "localizer"),
        ("t1_fl3d_tra_dynaVIEWS", "t1_fl3d_tra_dynaVIEWS_post{k}",
         "t1_fl3d_tra_dynaVIEWS_SUB{k}", "t2_tse_tra_fs", "localizer_3plane")))),
    (0.20, Vendor("GE MEDICAL SYSTEMS", ("DISCOVERY MR750", "SIGNA Architect"), True, (
        ("ax dyn pre", "ax dyn {nth} pass", "SUB ax dyn {nth} pass", "Ax T2 FSE", "3-Plane Loc"),
        ("ax 3d dyn pre", "Ph{k}/ax 3d dyn", "SUB Ph{k}/ax 3d dyn", "Ax T2 FRFSE",
         "3-Plane Loc"),
        ("ax dyn pre", "{nth} ax dyn", "{nth} ax dyn SUB", "AX T2", "Loc")))),
    (0.35, Vendor("Philips Medical Systems", ("Ingenia", "Achieva dStream"), False, (
        ("T1 THRIVE dyn pre", "T1 THRIVE dyn {k}", "SUB T1 THRIVE dyn {k}", "T2W_TSE ax",
         "Survey"),
        ("DYN_eTHRIVE pre", "DYN_eTHRIVE post {k}", "DYN_eTHRIVE SUB {k}", "T2W_SPAIR",
         "SmartSurvey")), series_step=100)),
)
MULTIPHASE_DESCRIPTION = "Ax Vibrant MultiPhase"
_STUDY_TEMPLATES = (("MRI BREAST BILAT", ("PRE-NAT", "MID-NAT", "POST-NAT")),
                    ("MRI mammae", ("pre-NAT", "mid-NAT", "post-NAT")),
                    ("MR BREAST", ("PRE NAT", "MID NAT", "POST NAT")))
_TIMEPOINTS = ("T0", "T2", "T3")  # I-SPY2's ClinicalTrialTimePointID for pre / mid / post
_SURNAMES = ("JANSEN", "DE VRIES", "VAN DEN BERG", "BAKKER", "VISSER", "SMIT", "MEIJER",
             "DE BOER", "MULDER", "BOS", "SMITH", "GARCIA", "MUELLER", "ROSSI", "NGUYEN")
_GIVEN = ("MARIA", "ANNA", "JOHANNA", "ELISABETH", "SARAH", "FATIMA", "LINDA", "SOPHIE",
          "ANNEKE", "PETRA", "IRIS", "NOOR")
_MG_VENDORS = (("HOLOGIC, Inc.", "Selenia Dimensions"), ("SIEMENS", "MAMMOMAT Inspiration"),
               ("GE MEDICAL SYSTEMS", "Senographe Pristina"))


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything about one patient's export that is not anatomy (see the module docstring).

  Spacings and field of view are at the 'full' geometry (mm); the writer scales spacings.
  Dates are per phase (index 0 pre, 1 mid, 2 post).
  """
  phases: tuple[int, ...]
  mammogram: bool
  marking: str  # 'keyword', 'timepoint' or 'none'
  vendor: Vendor
  style: int
  num_post: int
  instance_order: str
  special: str | None
  enhanced: bool  # MR series as Enhanced MR multi-frame files (one per series)
  rotation: np.ndarray
  spacing: tuple[float, float]  # in-plane, slice (mm)
  fov: tuple[float, float, float]  # x, y, z (mm)
  fov_centre: np.ndarray  # patient frame (mm)
  table_offset: np.ndarray  # patient frame -> scanner LPS, before the per-study jitter (mm)
  dates: tuple[datetime.date, datetime.date, datetime.date]
  mammogram_date: datetime.date
  patient_tags: dict[str, str]
  study_template: int


def _rotation_x(degrees: float) -> np.ndarray:
  c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def draw_plan(rng: np.random.Generator, clinical: ClinicalDraw, special: str | None,
              complete: bool, no_mid: float, no_post: float, no_mammogram: float) -> Plan:
  """Draws the non-anatomical facts of one patient's export.

  Args:
    special: the patient's unusual encoding or broken case, if any.
    complete: all three phases, whatever the missing-phase rates.
  """
  phases = (0,) + ((1,) if complete or rng.random() >= no_mid else ()) + (
      (2,) if complete or rng.random() >= no_post else ())
  mammogram = special == "monochrome1" or rng.random() >= no_mammogram
  marking = str(rng.choice(["keyword", "timepoint", "none"], p=[0.7, 0.15, 0.15]))
  if len(phases) < 3:
    marking = "keyword"  # date order alone cannot tell which phase is missing
  shares = np.array([share for share, _ in VENDORS])
  vendor = VENDORS[int(rng.choice(len(VENDORS), p=shares))][1]
  if special == "multiphase":
    vendor = VENDORS[1][1]
  order = str(rng.choice(["ascending", "descending", "shuffled"], p=[0.75, 0.2, 0.05]))
  rotation = np.eye(3)
  if special == "flipped":
    rotation = np.diag([-1.0, 1.0, 1.0])
  elif special == "oblique":
    rotation = _rotation_x(rng.choice([-1, 1]) * rng.uniform(10, 20))
  pre = datetime.date(2012, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 11 * 365)))
  dates = (pre, pre + datetime.timedelta(days=int(rng.integers(80, 101))),
           pre + datetime.timedelta(days=int(rng.integers(165, 201))))
  age = float(clinical.values[VARIABLE_NAMES.index("age")])
  birth = pre - datetime.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
  middle = f"^{chr(65 + int(rng.integers(26)))}" if rng.random() < 0.5 else ""
  sex = "M" if clinical.category("sex") == "male" else "F"
  return Plan(
      phases=phases, mammogram=bool(mammogram), marking=marking, vendor=vendor,
      style=int(rng.integers(len(vendor.styles))), num_post=int(rng.choice(
          [1, 2, 3, 4], p=[0.1, 0.3, 0.35, 0.25])),
      instance_order=order, special=special, enhanced=special == "enhanced", rotation=rotation,
      spacing=(round(float(rng.uniform(0.6, 0.9)), 3), round(float(rng.uniform(1.0, 2.0)), 1)),
      fov=(float(rng.uniform(340, 380)), float(rng.uniform(330, 350)),
           float(rng.uniform(150, 200))),
      fov_centre=np.array([rng.uniform(-10, 10), rng.uniform(-45, -25), rng.uniform(-10, 10)]),
      table_offset=np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), rng.uniform(-60, 60)]),
      dates=dates,
      mammogram_date=pre - datetime.timedelta(days=int(rng.integers(3, 22))),
      patient_tags={
          "PatientName": f"{_SURNAMES[int(rng.integers(len(_SURNAMES)))]}^"
                         f"{_GIVEN[int(rng.integers(len(_GIVEN)))]}{middle}",
          "PatientBirthDate": birth.strftime("%Y%m%d"), "PatientSex": sex},
      study_template=int(rng.integers(len(_STUDY_TEMPLATES))),
  )


@dataclasses.dataclass(frozen=True)
class _MrSeries:
  """One series of an MR study, as :meth:`StudyWriter.mr_study` writes it.

  Attributes:
    role: its name in the truth ('localizer', 't2', 'pre', 'post_1', 'subtraction', ...).
    description: SeriesDescription and ProtocolName.
    geometry: its voxel grid.
    tags: acquisition tags beyond the study's.
    trigger_ms: TriggerTime per temporal position (None: the writer's default).
    subtraction: stored signed and without rescale, as scanners store subtraction images.
  """
  role: str
  description: str
  geometry: VolumeGeometry
  tags: dict[str, Any]
  trigger_ms: tuple[float, ...] | None = None
  subtraction: bool = False


def _folder_name(number: int, description: str) -> str:
  return f"{number}_{re.sub(r'[^A-Za-z0-9]+', '_', description).strip('_')}"


class StudyWriter:
  """Writes one patient's studies under ``root`` (the patient folder).

  Args:
    root: DIR/<PatientID>.
    seed, index: the patient's identity in the cohort (UIDs derive from them).
    plan: from :func:`draw_plan`.
    scale: the geometry's spacing multiplier.
  """

  def __init__(self, root: Path, seed: int, index: int, plan: Plan, scale: float):
    self.root, self.seed, self.index, self.plan, self.scale = root, seed, index, plan, scale
    self.patient_id = root.name
    events = sorted([(plan.dates[p], "MR", p) for p in plan.phases] + (
        [(plan.mammogram_date, "MG", -1)] if plan.mammogram else []))
    self._study_number = {(m, p): n for n, (_, m, p) in enumerate(events, start=1)}

  def _uid(self, *parts: Any) -> str:
    return generate_uid(entropy_srcs=[str(self.seed), str(self.index), *map(str, parts)])

  def _study_tags(self, phase: int, modality: str, date: datetime.date,
                  rng: np.random.Generator) -> dict[str, Any]:
    return {
        "PatientID": self.patient_id, **self.plan.patient_tags,
        "StudyInstanceUID": self._uid("study", modality, phase),
        "FrameOfReferenceUID": self._uid("frame", modality, phase),
        "StudyDate": date.strftime("%Y%m%d"),
        "StudyTime": f"{int(rng.integers(8, 18)):02d}{int(rng.integers(60)):02d}00",
        "AccessionNumber": str(int(rng.integers(10**9, 10**10))),
        "StudyID": str(int(rng.integers(1, 10**5))), "InstitutionName": "SYNTHETIC HOSPITAL",
        "BodyPartExamined": "BREAST",
    }

  def _folder(self, modality: str, phase: int, date: datetime.date) -> Path:
    n = self._study_number[(modality, phase)]
    return self.root / f"{date.strftime('%Y%m%d')}_{modality}_{n}"

  # ------------------------------------------------------------------------------------------
  def mr_study(self, phantom: Phantom, phase: int, rng: np.random.Generator) -> dict[str, Any]:
    """Renders and writes the MR study of ``phase`` (0 pre, 1 mid, 2 post); returns its truth."""
    plan, vendor = self.plan, self.plan.vendor
    pre_desc, post_desc, sub_desc, t2_desc, loc_desc = vendor.styles[plan.style]
    tags = self._study_tags(phase, "MR", plan.dates[phase], rng)
    template, keywords = _STUDY_TEMPLATES[plan.study_template]
    tags["StudyDescription"] = (f"{template} {keywords[phase]}" if plan.marking == "keyword"
                                else template)
    if plan.marking == "timepoint":
      tags["ClinicalTrialTimePointID"] = _TIMEPOINTS[phase]
    tags.update(Manufacturer=vendor.manufacturer,
                ManufacturerModelName=vendor.models[int(rng.integers(len(vendor.models)))],
                MagneticFieldStrength=float(rng.choice([1.5, 3.0])), PatientPosition="FFP")
    folder = self._folder("MR", phase, plan.dates[phase])
    shift = plan.table_offset + rng.uniform(-8, 8, 3)
    centre = plan.fov_centre + shift
    in_plane, thickness = (v * self.scale for v in plan.spacing)
    dce = VolumeGeometry.centred(centre, plan.fov, (in_plane, in_plane, thickness),
                                 plan.rotation)
    bias = (rng.uniform(-0.1, 0.1), rng.uniform(0, 0.15), rng.uniform(0, 0.1))
    sigma = float(rng.uniform(6, 14))
    slope, intercept = 1.0, 0.0
    if vendor.manufacturer.startswith("Philips"):
      slope = round(float(rng.uniform(0.5, 3.0)), 6)
    elif not vendor.signed and rng.random() < 0.1:
      intercept = -1024.0
    written: list[dict[str, Any]] = []
    number = itertools.count(1)

    def write(series: _MrSeries, volumes) -> list[Path]:
      series_number = next(number) * vendor.series_step + (vendor.series_step > 1)
      series_uid = self._uid("series", phase, series.role)
      out = folder / _folder_name(series_number, series.description)
      geometry = series.geometry
      paths = dicom_writer.write_mr_series(
          out, volumes,
          dicom_writer.Geometry(geometry.origin, geometry.spacing, geometry.direction),
          {**tags, **series.tags, "SeriesDescription": series.description,
           "ProtocolName": series.description, "SeriesNumber": series_number,
           "SeriesInstanceUID": series_uid},
          dicom_writer.SeriesOptions(
              rescale=(1.0, 0.0) if series.subtraction else (slope, intercept),
              signed=series.subtraction or vendor.signed, enhanced=plan.enhanced,
              instance_order=plan.instance_order, order_seed=self.index,
              transfer_syntax=RLELossless if plan.special == "rle" else ExplicitVRLittleEndian,
              trigger_times_ms=series.trigger_ms, uid_seed=series_uid))
      written.append({"role": series.role, "description": series.description,
                      "series_number": series_number,
                      "folder": str(out.relative_to(self.root.parent)), "files": len(paths),
                      "temporal_positions": len(volumes) if isinstance(volumes, list) else 1,
                      "geometry": geometry.to_json()})
      return paths

    gradient_echo = {"ScanningSequence": "GR", "SequenceVariant": "SP", "MRAcquisitionType": "3D",
                     "RepetitionTime": 4.5, "EchoTime": 1.8, "FlipAngle": 12.0}
    contrast = {**gradient_echo, "ContrastBolusAgent": "Gadobutrol"}

    # Localizer: three coarse coronal slices.
    coronal = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
    loc = VolumeGeometry.centred(centre, (plan.fov[0], 300.0, 120.0),
                                 (2 * in_plane, 2 * in_plane, 40.0), coronal)
    loc_maps = render_dce(phantom, loc, shift, phase, bias)
    write(_MrSeries("localizer", loc_desc, loc, {**gradient_echo, "MRAcquisitionType": "2D"}),
          rician(rng, loc_maps.pre, sigma))

    t2 = VolumeGeometry.centred(centre, plan.fov, (1.4 * in_plane, 1.4 * in_plane,
                                                   2 * thickness), plan.rotation)
    t2_signal = rician(rng, render_dce(phantom, t2, shift, phase, bias, contrast="t2").pre, sigma)
    write(_MrSeries("t2", t2_desc, t2, {"ScanningSequence": "SE", "MRAcquisitionType": "2D",
                                        "RepetitionTime": 4000.0, "EchoTime": 90.0,
                                        "FlipAngle": 90.0}), t2_signal)

    maps = render_dce(phantom, dce, shift, phase, bias)
    first, step = float(rng.uniform(60, 100)), float(rng.uniform(60, 90))
    times = [0.0] + [first + k * step for k in range(plan.num_post)]
    volumes = [rician(rng, maps.at(t), sigma) for t in times]
    broken = plan.special if phase == 0 else None
    if plan.special == "multiphase":
      write(_MrSeries("multiphase", MULTIPHASE_DESCRIPTION, dce, contrast,
                      trigger_ms=tuple(1000 * t for t in times)), volumes)
    else:
      if broken != "no_pre_contrast":
        pre_paths = write(_MrSeries("pre", pre_desc, dce, gradient_echo, trigger_ms=(0.0,)),
                          volumes[0])
      post_geometry, post_volumes = dce, volumes[1:]
      if broken == "size_mismatch":
        post_geometry = VolumeGeometry.centred(centre, plan.fov, (1.25 * in_plane,
                                                                  1.25 * in_plane, thickness),
                                               plan.rotation)
        post_maps = render_dce(phantom, post_geometry, shift, phase, bias)
        post_volumes = [rician(rng, post_maps.at(t), sigma) for t in times[1:]]
      for k, (t, volume) in enumerate(zip(times[1:], post_volumes), start=1):
        write(_MrSeries(f"post_{k}", post_desc.format(k=k, nth=_NTH[k - 1]), post_geometry,
                        contrast, trigger_ms=(1000 * t,)), volume)
      if broken not in ("no_pre_contrast", "size_mismatch"):
        write(_MrSeries("subtraction", sub_desc.format(k=1, nth=_NTH[0]), dce,
                        {**contrast, "ImageType": ["DERIVED", "PRIMARY", "SUBTRACTION"]},
                        subtraction=True), volumes[1] - volumes[0])
      if broken == "truncated_dicom":
        victim = sorted(pre_paths)[len(pre_paths) // 2]
        victim.write_bytes(victim.read_bytes()[:int(victim.stat().st_size * 0.6)])

    tumour_lps = np.asarray(phantom.latent.tumour_centre) + shift
    return {
        "phase": PHASE_NAMES[phase], "folder": str(folder.relative_to(self.root.parent)),
        "study_date": tags["StudyDate"], "study_description": tags["StudyDescription"],
        "timepoint_id": tags.get("ClinicalTrialTimePointID"),
        "instance_order": plan.instance_order, "post_times_s": times[1:],
        "chest_wall_y_lps": float(shift[1]), "shift_lps": [float(v) for v in shift],
        "tumour": {"centre_lps": [float(v) for v in tumour_lps],
                   "radius_mm": phantom.latent.radius_mm[phase],
                   "enhancement": phantom.latent.enhancement[phase]},
        "series": written,
    }

  # ------------------------------------------------------------------------------------------
  def mg_study(self, latent: ImageLatent, shape: tuple[int, int], spacing_mm: float,
               rng: np.random.Generator) -> dict[str, Any]:
    """Renders and writes the Pre-NAT mammogram study of the tumour side (CC, and MLO for
    :data:`MLO_SHARE` of patients; both views of the one tumour latent); returns truth."""
    plan = self.plan
    tags = self._study_tags(-1, "MG", plan.mammogram_date, rng)
    manufacturer, model = _MG_VENDORS[int(rng.integers(len(_MG_VENDORS)))]
    tags.update(StudyDescription=str(rng.choice(["MAMMOGRAPHY BILATERAL", "MG mammografie",
                                                 "Mammo diagnostic"])),
                Manufacturer=manufacturer, ManufacturerModelName=model)
    folder = self._folder("MG", -1, plan.mammogram_date)
    side = "L" if latent.side == "left" else "R"
    photometric = "MONOCHROME1" if plan.special == "monochrome1" else "MONOCHROME2"
    views = ["CC"] + (["MLO"] if rng.random() < MLO_SHARE else [])
    written = []
    for number, view in enumerate(views, start=1):
      image, truth = render_mammogram(rng, latent, shape, spacing_mm, view)
      stored = MG_MAX - image if photometric == "MONOCHROME1" else image
      centre = float(np.median(stored))
      description = f"{side} {view}"
      series_uid = self._uid("series", "MG", view)
      path = folder / _folder_name(number, description) / "IM000001.dcm"
      dicom_writer.write_mammogram(
          path, stored, laterality=side, view=view,
          tags={**tags, "SeriesDescription": description, "SeriesNumber": number,
                "SeriesInstanceUID": series_uid,
                "PatientOrientation": _mammogram_orientation(side, view)},
          options=dicom_writer.MammogramFileOptions(
              pixel_spacing_mm=spacing_mm, photometric=photometric,
              window=(centre, float(MG_MAX)), uid_seed=series_uid,
              transfer_syntax=RLELossless if plan.special == "rle" else ExplicitVRLittleEndian))
      written.append({**truth, "description": description, "photometric": photometric,
                      "file": str(path.relative_to(self.root.parent))})
    return {"folder": str(folder.relative_to(self.root.parent)),
            "study_date": tags["StudyDate"], "laterality": side, "series": written}


# Patients with a mammogram whose study holds an MLO view besides the CC (most screening and
# diagnostic studies image both; the rest keep the one-view path exercised). One draw from the
# patient's own mammogram stream either way, so no other draw moves.
MLO_SHARE = 0.85


def _mammogram_orientation(side: str, view: str) -> list[str]:
  """PatientOrientation (row direction, column direction) of a view as displayed."""
  row = "A" if side == "L" else "P"  # chest wall left for L, right for R
  column = {"CC": "R" if side == "L" else "L", "MLO": "FR" if side == "L" else "FL"}[view]
  return [row, column]

