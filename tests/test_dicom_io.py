"""Tests for input_pipeline/ingestion/dicom_io.py: DICOM series and NIfTI volumes -> SimpleITK images."""

from __future__ import annotations

import dataclasses

import imagecodecs
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom import uid
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from input_pipeline.ingestion import dicom_io, mammogram
from input_pipeline.ingestion.patient import SeriesSelection
from input_pipeline.synthetic.dicom_writer import (
  Geometry,
  MammogramFileOptions,
  SeriesOptions,
  write_mammogram,
  write_mr_series,
)

# An oblique geometry: rotations about z (20 deg) then x (15 deg); columns are axis directions.
_A, _B = np.deg2rad(20), np.deg2rad(15)
_OBLIQUE = (np.array([[1, 0, 0], [0, np.cos(_B), -np.sin(_B)], [0, np.sin(_B), np.cos(_B)]])
            @ np.array([[np.cos(_A), -np.sin(_A), 0], [np.sin(_A), np.cos(_A), 0], [0, 0, 1]]))
_GEOMETRY = Geometry(origin=(-30.0, 12.5, 40.0), spacing=(0.8, 0.9, 2.5),
                     direction=tuple(_OBLIQUE.ravel()))
_TAGS = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1", "SeriesDescription": "ax dyn pre"}


def _volume(seed: int = 0, shape=(6, 10, 12)) -> np.ndarray:
  """[z, y, x] integer-valued test volume whose slices all differ."""
  rng = np.random.default_rng(seed)
  return rng.integers(-200, 3000, size=shape).astype(np.float64)


def _select(paths, **kwargs) -> SeriesSelection:
  return SeriesSelection(files=tuple(paths), description="ax dyn pre", **kwargs)


def _geometry(image: sitk.Image):
  return image.GetOrigin(), image.GetSpacing(), image.GetDirection()


def test_loads_values_and_geometry_of_an_oblique_series(tmp_path):
  volume = _volume()
  image = dicom_io.load_series(_select(write_mr_series(tmp_path, volume, _GEOMETRY, _TAGS)))
  assert image.GetPixelID() == sitk.sitkFloat32
  np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume)
  np.testing.assert_allclose(image.GetOrigin(), _GEOMETRY.origin, atol=1e-4)
  np.testing.assert_allclose(image.GetSpacing(), _GEOMETRY.spacing, atol=1e-4)
  np.testing.assert_allclose(image.GetDirection(), _GEOMETRY.direction, atol=1e-5)


@pytest.mark.parametrize("order", ["descending", "shuffled"])
def test_slice_order_comes_from_positions_not_instance_numbers(tmp_path, order):
  volume = _volume()
  ascending = dicom_io.load_series(_select(
      write_mr_series(tmp_path / "a", volume, _GEOMETRY, _TAGS)))
  other_paths = write_mr_series(tmp_path / "b", volume, _GEOMETRY, _TAGS,
                                SeriesOptions(instance_order=order, order_seed=3))
  other = dicom_io.load_series(_select(other_paths[::-1]))
  np.testing.assert_array_equal(sitk.GetArrayFromImage(other), sitk.GetArrayFromImage(ascending))
  np.testing.assert_allclose(np.concatenate(_geometry(other)),
                             np.concatenate(_geometry(ascending)), atol=1e-6)


def test_positions_decreasing_along_the_normal_give_a_right_handed_volume(tmp_path):
  # Slices written along -normal (a left-handed direction matrix, as sagittal exports do).
  direction = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], np.float64)
  volume = _volume()
  image = dicom_io.load_series(_select(write_mr_series(
      tmp_path, volume, Geometry((5.0, 0.0, 0.0), (1.0, 1.0, 2.0), tuple(direction.ravel())),
      _TAGS)))
  loaded = np.asarray(image.GetDirection()).reshape(3, 3)
  assert np.linalg.det(loaded) == pytest.approx(1.0)
  np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume[::-1])
  # Written slice k sits at x = 5 + 2k mm; the normal (row x column) points to -x, so the
  # loaded volume starts at the last written slice.
  np.testing.assert_allclose(image.GetOrigin(), (15.0, 0.0, 0.0), atol=1e-6)
  np.testing.assert_allclose(loaded[:, 2], (-1.0, 0.0, 0.0), atol=1e-6)


def test_enhanced_multiframe_loads_like_the_classic_series(tmp_path):
  volume = _volume()
  classic = dicom_io.load_series(_select(
      write_mr_series(tmp_path / "c", volume, _GEOMETRY, _TAGS, SeriesOptions(rescale=(2.0, -50.0)))))
  enhanced_paths = write_mr_series(tmp_path / "e", volume, _GEOMETRY, _TAGS, SeriesOptions(
      rescale=(2.0, -50.0), enhanced=True, instance_order="shuffled"))
  assert len(enhanced_paths) == 1
  enhanced = dicom_io.load_series(_select(enhanced_paths))
  np.testing.assert_array_equal(sitk.GetArrayFromImage(enhanced),
                                sitk.GetArrayFromImage(classic))
  np.testing.assert_allclose(np.concatenate(_geometry(enhanced)),
                             np.concatenate(_geometry(classic)), atol=1e-6)


@pytest.mark.parametrize("enhanced", [False, True])
def test_multiphase_series_gives_the_phase_of_each_temporal_position(tmp_path, enhanced):
  phases = [_volume(seed) for seed in range(3)]
  paths = write_mr_series(tmp_path, phases, _GEOMETRY, _TAGS,
                          SeriesOptions(enhanced=enhanced, instance_order="shuffled"))
  for t, phase in enumerate(phases, start=1):
    image = dicom_io.load_series(_select(paths, temporal_position=t))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), phase)
  with pytest.raises(dicom_io.DicomError, match="temporal position 4.*positions \\[1, 2, 3\\]"):
    dicom_io.load_series(_select(paths, temporal_position=4))
  with pytest.raises(dicom_io.DicomError, match="share a position.*temporal position"):
    dicom_io.load_series(_select(paths))


@pytest.mark.parametrize("signed", [True, False])
def test_series_files_are_the_bytes_pydicom_itself_writes(tmp_path, signed):
  # The writer encodes a series' shared elements once and each file's own elements from their
  # values (dicom_encoding.SeriesEncoder); every file must be exactly what pydicom's own dcmwrite
  # makes of the dataset it reads back.
  phases = [_volume(seed) + 200 for seed in range(2)]
  paths = write_mr_series(tmp_path, phases, _GEOMETRY, {**_TAGS, "PatientName": "MUELLER^ANNA"},
                          SeriesOptions(signed=signed, rescale=(2.5, -100.0), uid_seed="bytes"))
  assert len(paths) == 12
  assert len({_same_bytes_as_pydicom(path, tmp_path) for path in paths}) == len(paths)
  # SimpleITK (GDCM) reads them as well.
  reader = sitk.ImageSeriesReader()
  reader.SetFileNames([str(p) for p in sorted(paths)[:6]])
  assert reader.Execute().GetSize() == (12, 10, 6)


def test_an_enhanced_file_is_the_bytes_pydicom_itself_writes(tmp_path):
  phases = [_volume(seed) + 200 for seed in range(2)]
  [path] = write_mr_series(tmp_path, phases, _GEOMETRY, _TAGS, SeriesOptions(
      enhanced=True, rescale=(2.5, -100.0), instance_order="descending", uid_seed="bytes"))
  _same_bytes_as_pydicom(path, tmp_path)
  ds = pydicom.dcmread(path)
  assert ds.NumberOfFrames == len(ds.PerFrameFunctionalGroupsSequence) == 12
  frame = ds.PerFrameFunctionalGroupsSequence[0]  # descending: the last slice comes first
  assert frame.FrameContentSequence[0].InStackPositionNumber == 6
  assert frame.FrameContentSequence[0].TemporalPositionIndex == 1
  np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient,
                             np.add(_GEOMETRY.origin, 5 * 2.5 * _OBLIQUE[:, 2]), atol=1e-9)
  np.testing.assert_allclose(frame.PlaneOrientationSequence[0].ImageOrientationPatient,
                             _OBLIQUE[:, :2].T.ravel(), atol=1e-9)


def test_a_frame_takes_its_own_functional_group_first_then_the_shared_one(tmp_path):
  volume = _volume()
  [path] = write_mr_series(tmp_path, volume, _GEOMETRY, _TAGS,
                           SeriesOptions(enhanced=True, rescale=(2.0, -50.0)))
  ds = pydicom.dcmread(path)
  own = pydicom.Dataset()  # frame 3 rescales its stored values its own way
  own.RescaleSlope, own.RescaleIntercept, own.RescaleType = 4.0, 10.0, "US"
  ds.PerFrameFunctionalGroupsSequence[2].PixelValueTransformationSequence = [own]
  ds.save_as(path)
  loaded = sitk.GetArrayFromImage(dicom_io.load_series(_select([path])))
  stored = np.rint((volume + 50.0) / 2.0)  # what the file holds
  np.testing.assert_array_equal(loaded[2], stored[2] * 4.0 + 10.0)
  np.testing.assert_array_equal(np.delete(loaded, 2, axis=0),
                                np.delete(stored * 2.0 - 50.0, 2, axis=0))
  del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
  ds.save_as(path)
  with pytest.raises(dicom_io.DicomError, match=f"{path.name}.*frame 2 has no "
                     "PlanePositionSequence.ImagePositionPatient"):
    dicom_io.load_series(_select([path]))


def _same_bytes_as_pydicom(path, tmp_path) -> str:
  """Checks that pydicom writes ``path``'s dataset to the same bytes; its SOPInstanceUID."""
  ds = pydicom.dcmread(path)
  assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
  again = tmp_path / "again.dcm"
  ds.save_as(again, enforce_file_format=True)
  assert again.read_bytes() == path.read_bytes(), path.name
  return ds.SOPInstanceUID


def test_rle_compressed_series_decodes_like_uncompressed(tmp_path):
  volume = _volume()
  plain = dicom_io.load_series(_select(write_mr_series(tmp_path / "p", volume, _GEOMETRY, _TAGS)))
  rle_paths = write_mr_series(tmp_path / "r", volume, _GEOMETRY, _TAGS,
                              SeriesOptions(transfer_syntax=RLELossless))
  rle = dicom_io.load_series(_select(rle_paths))
  np.testing.assert_array_equal(sitk.GetArrayFromImage(rle), sitk.GetArrayFromImage(plain))
  enhanced_rle = dicom_io.load_series(_select(write_mr_series(
      tmp_path / "er", volume, _GEOMETRY, _TAGS,
      SeriesOptions(transfer_syntax=RLELossless, enhanced=True))))
  np.testing.assert_array_equal(sitk.GetArrayFromImage(enhanced_rle), volume)


def test_rescale_slope_and_intercept_are_applied_per_file(tmp_path):
  volume = _volume()
  paths = write_mr_series(tmp_path, volume, _GEOMETRY, _TAGS,
                          SeriesOptions(rescale=(0.5, -1000.0), signed=False))
  image = dicom_io.load_series(_select(paths))
  np.testing.assert_allclose(sitk.GetArrayFromImage(image), volume, atol=0.25)
  # A file with its own rescale: slice values follow that file's slope/intercept.
  ds = pydicom.dcmread(paths[2])
  ds.RescaleSlope, ds.RescaleIntercept = 1.0, -7.0
  ds.save_as(paths[2])
  slice_index = 2  # ascending instance order: file k is slice k
  values = sitk.GetArrayFromImage(dicom_io.load_series(_select(paths)))[slice_index]
  stored = ds.pixel_array.astype(np.float64)
  np.testing.assert_allclose(values, stored - 7.0)


def test_truncated_file_raises_naming_the_file_and_series(tmp_path):
  paths = write_mr_series(tmp_path, _volume(), _GEOMETRY, _TAGS)
  data = paths[3].read_bytes()
  paths[3].write_bytes(data[:len(data) - 50])
  with pytest.raises(dicom_io.DicomError, match=f"{paths[3].name}.*ax dyn pre.*pixel data"):
    dicom_io.load_series(_select(paths))
  paths[4].write_bytes(b"not a dicom file at all")
  with pytest.raises(dicom_io.DicomError, match=f"{paths[4].name}.*not a readable DICOM"):
    dicom_io.load_series(_select(paths))
  ds = pydicom.dcmread(paths[0])
  del ds.PixelData
  ds.save_as(paths[0])
  with pytest.raises(dicom_io.DicomError, match=f"{paths[0].name}.*no pixel data"):
    dicom_io.load_series(_select(paths[:3]))


def test_missing_slice_and_inconsistent_slices_raise(tmp_path):
  paths = write_mr_series(tmp_path / "a", _volume(), _GEOMETRY, _TAGS)
  with pytest.raises(dicom_io.DicomError, match="missing or extra slices"):
    dicom_io.load_series(_select(paths[:2] + paths[3:]))
  other = write_mr_series(tmp_path / "b", _volume(shape=(6, 10, 14)), _GEOMETRY, _TAGS)
  with pytest.raises(dicom_io.DicomError, match=f"{other[0].name}.*10x14 pixels"):
    dicom_io.load_series(_select(paths[:3] + other[:1]))
  tilted = write_mr_series(tmp_path / "c", _volume(),
                           dataclasses.replace(_GEOMETRY, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)),
                           _TAGS)
  with pytest.raises(dicom_io.DicomError, match=f"{tilted[0].name}.*ImageOrientationPatient"):
    dicom_io.load_series(_select(paths[:3] + tilted[:1]))
  ds = pydicom.dcmread(paths[1])
  ds.ImageOrientationPatient = [1, 0, 0, 0, 1]
  ds.save_as(paths[1])
  with pytest.raises(dicom_io.DicomError,
                     match=f"{paths[1].name}.*ImageOrientationPatient should hold 6 numbers"):
    dicom_io.load_series(_select(paths))
  del ds.ImagePositionPatient
  ds.save_as(paths[1])
  with pytest.raises(dicom_io.DicomError, match=f"{paths[1].name}.*missing ImagePositionPatient"):
    dicom_io.load_series(_select(paths))


def test_nifti_loads_with_the_same_lps_geometry(tmp_path):
  image = dicom_io.load_series(_select(write_mr_series(tmp_path, _volume(), _GEOMETRY, _TAGS)))
  path = tmp_path / "pre.nii.gz"
  sitk.WriteImage(image, str(path))
  nifti = dicom_io.load_nifti(path)
  np.testing.assert_array_equal(sitk.GetArrayFromImage(nifti), sitk.GetArrayFromImage(image))
  np.testing.assert_allclose(np.concatenate(_geometry(nifti)),
                             np.concatenate(_geometry(image)), atol=1e-4)
  (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
  with pytest.raises(dicom_io.PreprocessError, match="bad.nii.gz"):
    dicom_io.load_nifti(tmp_path / "bad.nii.gz")


# --------------------------------------------------------------------------------------------
# Transfer syntaxes: one file per syntax, written from a known 12-bit image.
# --------------------------------------------------------------------------------------------
_R, _C = np.mgrid[:64, :48]
_IMAGE = np.clip(2000 + 1500 * np.sin(_R / 7) * np.cos(_C / 5)
                 + np.random.default_rng(0).normal(0, 30, _R.shape), 0, 4095).astype(np.uint16)
_MG_TAGS = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.2"}
# pydicom writes these itself (RLE natively; JPEG-LS with pyjpegls, JPEG 2000 with openjpeg).
_POSSIBLE_BY_PYDICOM = {
    "implicit": (uid.ImplicitVRLittleEndian, {}),
    "explicit": (uid.ExplicitVRLittleEndian, {}),
    "deflated": (uid.DeflatedExplicitVRLittleEndian, {}),
    "rle": (uid.RLELossless, {}),
    "jpeg_ls": (uid.JPEGLSLossless, {}),
    "jpeg_ls_near": (uid.JPEGLSNearLossless, {"jls_error": 3}),
    "jpeg_2000_lossless": (uid.JPEG2000Lossless, {}),
    "jpeg_2000": (uid.JPEG2000, {"j2k_psnr": [50]}),
}
# pydicom cannot encode ISO 10918 JPEG: libjpeg-turbo (imagecodecs) writes the codestream,
# pydicom encapsulates it. (syntax, bits stored, encoder arguments)
_JPEG = {
    "jpeg_baseline": (uid.JPEGBaseline8Bit, 8, {"level": 90}),
    "jpeg_extended": (uid.JPEGExtended12Bit, 12, {"level": 90, "bitspersample": 12}),
    "jpeg_lossless": (uid.JPEGLossless, 12, {"lossless": True, "predictor": 6,
                                              "bitspersample": 12}),
    "jpeg_lossless_sv1": (uid.JPEGLosslessSV1, 12, {"lossless": True, "predictor": 1,
                                                     "bitspersample": 12}),
}


def _write_syntax(tmp_path, name: str):
  """(path, the values a decoder must give, tolerance: 0 exact, None see the test)."""
  path = tmp_path / f"{name}.dcm"
  if name in _POSSIBLE_BY_PYDICOM:
    syntax, encoding = _POSSIBLE_BY_PYDICOM[name]
    write_mammogram(path, _IMAGE, laterality="R", view="CC", tags=_MG_TAGS,
                    options=MammogramFileOptions(bits_stored=12, transfer_syntax=syntax,
                                                 encoding=encoding))
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    return path, _IMAGE, encoding.get("jls_error", 0 if name != "jpeg_2000" else None)
  syntax, bits, arguments = _JPEG[name]
  values = _IMAGE if bits == 12 else (_IMAGE >> 4).astype(np.uint8)
  codestream = imagecodecs.jpeg8_encode(values, **arguments)
  write_mammogram(path, _IMAGE, laterality="R", view="CC", tags=_MG_TAGS,
                  options=MammogramFileOptions(bits_stored=12))
  ds = pydicom.dcmread(path)
  ds.file_meta.TransferSyntaxUID = syntax
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8 if bits == 8 else 16, bits, bits - 1
  ds.PixelData = encapsulate([codestream])
  ds["PixelData"].VR = "OB"
  ds.save_as(path, enforce_file_format=True)
  # Lossy JPEG: what libjpeg-turbo itself decodes from the same codestream; two conforming
  # IDCTs may differ by one unit in the last place (ISO 10918-2 allows +-1).
  lossless = arguments.get("lossless", False)
  return path, values if lossless else imagecodecs.jpeg8_decode(codestream), 0 if lossless else 1


_SYNTAXES = sorted(_POSSIBLE_BY_PYDICOM) + sorted(_JPEG)


@pytest.mark.parametrize("name", _SYNTAXES)
def test_every_transfer_syntax_decodes_to_the_written_image(tmp_path, name):
  path, expected, tolerance = _write_syntax(tmp_path, name)
  decoded = mammogram.read_mammogram(path)  # float32, MONOCHROME2, no rescale: stored values
  error = np.abs(decoded.astype(np.float64) - expected)
  if tolerance is None:
    # JPEG 2000 at a 50 dB PSNR target: openjpeg's rate control reaches it within ~1 dB.
    psnr = 10 * np.log10(4095.0 ** 2 / np.mean(error ** 2))
    assert psnr > 48, psnr
  else:
    assert error.max() <= tolerance, error.max()
  if name == "jpeg_ls_near":
    assert error.max() > 0  # lossy indeed: the bound is what NEAR=3 guarantees


# pydicom warns as it drops a cut-off encapsulated element; the error below is the report.
@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize("name", _SYNTAXES)
def test_a_truncated_file_of_every_syntax_says_truncated(tmp_path, name):
  path, _, _ = _write_syntax(tmp_path, name)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) * 3 // 4])
  with pytest.raises(dicom_io.DicomError, match=f"{path.name}.*truncated"):
    mammogram.read_mammogram(path)


def test_a_deflated_series_loads_like_the_plain_one(tmp_path):
  volume = _volume()
  plain = dicom_io.load_series(_select(write_mr_series(tmp_path / "p", volume, _GEOMETRY, _TAGS)))
  deflated = dicom_io.load_series(_select(write_mr_series(
      tmp_path / "d", volume, _GEOMETRY, _TAGS,
      SeriesOptions(transfer_syntax=uid.DeflatedExplicitVRLittleEndian))))
  np.testing.assert_array_equal(sitk.GetArrayFromImage(deflated), sitk.GetArrayFromImage(plain))
  assert _geometry(deflated) == _geometry(plain)


def test_a_missing_decoder_plugin_is_named(tmp_path, monkeypatch):
  path, _, _ = _write_syntax(tmp_path, "jpeg_ls")
  decoder = pydicom.pixels.get_decoder(uid.JPEGLSLossless)
  # As on an installation without the plugins (pydicom keeps what each would need).
  monkeypatch.setattr(decoder, "_available", {})
  monkeypatch.setattr(decoder, "_unavailable", {"pyjpegls": ("pyjpegls>=1.3",)})
  with pytest.raises(dicom_io.DicomError, match=f"{path.name}: cannot decode.*JPEG-LS.*pyjpegls"):
    mammogram.read_mammogram(path)


def test_a_siemens_mosaic_series_is_refused_not_stacked(tmp_path):
  # Two mosaic files of one series (two time points, 2x2 tiles each) at the positions a scanner
  # gives them: stacked they would form a volume of two "slices" of tiles.
  paths = write_mr_series(tmp_path, _volume(shape=(2, 10, 12)), _GEOMETRY, _TAGS)
  for path in paths:
    ds = pydicom.dcmread(path)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "NORM", "MOSAIC"]
    ds.save_as(path)
  with pytest.raises(dicom_io.DicomError, match=f"{paths[0].name}.*ax dyn pre.*MOSAIC.*NIfTI"):
    dicom_io.load_series(_select(paths))
