"""On-device augmentation: determinism, per-example keys, geometry, intensity, masks, retracing."""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import EPS32, assert_close_at_scale, gamma

from configs import common
from input_pipeline import clinical_table, encoding, records, schema
from input_pipeline.feed import batching
from mrp_jax.core import augment
from mrp_jax.models import dummy_batch

MRI_SHAPE = (10, 12, 14)  # [z, y, x]
MG_SHAPE = (16, 8)  # [rows, cols]

# The defaults of config.augment (configs/common.py).
DEFAULT = augment.AugmentOptions.from_config(common.get_config().augment)
# Every MRI / mammogram option off; tests switch on what they look at.
OFF = dataclasses.replace(DEFAULT, 
    mri_flip_probability=(0.0, 0.0, 0.0), mri_affine_probability=0.0,
    mri_bias_field_probability=0.0, mri_gamma_probability=0.0,
    mri_intensity_scale_probability=0.0, mri_noise_probability=0.0,
    mg_vertical_flip_probability=0.0, mg_contrast_probability=0.0,
    mg_brightness_probability=0.0)
# Everything drawn for every example, with large magnitudes.
ALL = dataclasses.replace(DEFAULT, 
    mri_flip_probability=(0.5, 0.5, 0.5), mri_affine_probability=1.0,
    mri_rotation_degrees=(20.0, 20.0, 20.0), mri_zoom=0.2, mri_translation_voxels=2.0,
    mri_bias_field_probability=1.0, mri_bias_field_coefficient=0.5, mri_gamma_probability=1.0,
    mri_intensity_scale_probability=1.0, mri_noise_probability=1.0, mri_noise_std=0.1,
    mg_vertical_flip_probability=0.5, mg_horizontal_flip_probability=0.5,
    mg_contrast_probability=1.0, mg_contrast=0.5, mg_brightness_probability=1.0,
    mg_brightness=0.3)


def resampling_ulps(shape) -> float:
  """Tolerance, in ulps of a volume's scale, between two evaluations of one augmentation that
  vectorise differently (another batch size, another sharding).

  Each sample coordinate is ~8 roundings (sin/cos of the drawn angles, a 3x3 product, zoom,
  shift) of values up to the volume's extent; trilinear interpolation moves a value by at most
  twice its scale per voxel of coordinate error, on each of three axes; the intensity steps
  add a few roundings of the value itself.
  """
  return 8 * max(shape) * 2 * 3 + 16


@functools.cache
def jitted(options: augment.AugmentOptions):
  return jax.jit(functools.partial(augment.augment_batch, options=options))


def mri_batch(b: int, seed: int = 0, shape=MRI_SHAPE, same: bool = False) -> dict:
  """Prepared iMRrhpc batch of signed random volumes (all examples equal when ``same``)."""
  batch = dummy_batch("iMRrhpc", b, mri_shape=shape)
  rng = np.random.default_rng(seed)
  volumes = rng.normal(size=(1 if same else b, 2, *shape)).astype(np.float16)
  batch["mri"] = np.broadcast_to(volumes, (b, 2, *shape)).copy()
  return augment.prepare_images(batch)


def mg_batch(b: int, seed: int = 0) -> dict:
  """Prepared iMGrhpc batch: a breast (random, > 0) in the left half, background 0."""
  batch = dummy_batch("iMGrhpc", b, mg_shape=MG_SHAPE)
  rng = np.random.default_rng(seed)
  images = rng.integers(1, 65536, size=(b, 1, *MG_SHAPE)).astype(np.uint16)
  images[..., MG_SHAPE[1] // 2:] = 0
  batch["mg"] = images
  return augment.prepare_images(batch)


def blob(shape, centre, sigma=1.0) -> np.ndarray:
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
  return np.exp(-np.sum((grid - np.asarray(centre)) ** 2, axis=-1) / (2 * sigma**2))


def centroid(volume) -> np.ndarray:
  volume = np.asarray(volume, np.float64)
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), axis=-1)
  return np.tensordot(volume, grid, axes=volume.ndim) / volume.sum()


def test_prepare_images_scales_to_what_the_model_sees():
  batch = {"mri": np.asarray([[[-1.5, 0.25]]], np.float16),
           "mg": np.asarray([[[0, 32768, 65535]]], np.uint16), "label": np.ones(1)}
  out = augment.prepare_images(batch)
  assert out["mri"].dtype == jnp.float32 and out["mg"].dtype == jnp.float32
  np.testing.assert_array_equal(out["mri"], [[[-1.5, 0.25]]])
  np.testing.assert_allclose(out["mg"], [[[0.0, 32768 / 65535, 1.0]]], rtol=1e-7)
  float_mg = augment.prepare_images({"mg": np.asarray([[[0.5]]], np.float16)})["mg"]
  assert float_mg.dtype == jnp.float32 and float(float_mg[0, 0, 0]) == 0.5
  with pytest.raises(TypeError, match="prepare_images"):
    augment.augment_batch({"mg": batch["mg"], "mg_mask": np.ones((1, 1), bool)},
                          jax.random.key(0), ALL)


def test_deterministic_per_key_and_different_per_example():
  batch = mri_batch(4, same=True)
  first = jitted(ALL)(batch, jax.random.key(3))["mri"]
  again = jitted(ALL)(batch, jax.random.key(3))["mri"]
  other = jitted(ALL)(batch, jax.random.key(4))["mri"]
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other)
  for i in range(4):  # the inputs are equal, so any difference is the augmentation's
    for j in range(i):
      assert not np.allclose(first[i], first[j]), (i, j)


def test_example_augmentation_depends_only_on_its_global_index():
  key = jax.random.key(7)
  four = mri_batch(4, seed=1)
  two = {k: v[:2] for k, v in four.items()}
  last_two = {k: v[2:] for k, v in four.items()}
  out4 = jitted(ALL)(four, key)["mri"]
  # Same compiled program for both halves: first_index is traced.
  # Up to rounding: another batch size vectorises the resampling differently.
  assert_close_at_scale(jitted(ALL)(two, key)["mri"], out4[:2], resampling_ulps(MRI_SHAPE))
  assert_close_at_scale(jitted(ALL)(last_two, key, first_index=2)["mri"], out4[2:],
                        resampling_ulps(MRI_SHAPE))


def test_disabled_and_zero_magnitude_are_the_identity():
  batch = {**mri_batch(2), **mg_batch(2)}
  key = jax.random.key(0)
  disabled = augment.augment_batch(batch, key, dataclasses.replace(DEFAULT, enabled=False))
  zero = dataclasses.replace(DEFAULT, 
      mri_flip_probability=(0.0, 0.0, 0.0), mri_affine_probability=1.0,
      mri_rotation_degrees=(0.0, 0.0, 0.0), mri_zoom=0.0, mri_translation_voxels=0.0,
      mri_bias_field_probability=1.0, mri_bias_field_coefficient=0.0,
      mri_gamma_probability=1.0, mri_log_gamma=0.0, mri_intensity_scale_probability=1.0,
      mri_intensity_scale=0.0, mri_noise_probability=1.0, mri_noise_std=0.0,
      mg_vertical_flip_probability=0.0, mg_contrast_probability=1.0, mg_contrast=0.0,
      mg_brightness_probability=1.0, mg_brightness=0.0)
  for out in (disabled, jitted(zero)(batch, key), jitted(OFF)(batch, key)):
    np.testing.assert_array_equal(out["mri"], batch["mri"])
    np.testing.assert_array_equal(out["mg"], batch["mg"])
  # The resampler itself at the identity geometry (what an example without an affine gets).
  # Exactly: every sample coordinate is a whole voxel (sums of small integers and halves), so
  # trilinear weights are exactly 1 and 0.
  identity = augment.Geometry(jnp.eye(3), jnp.eye(3), jnp.zeros(3))
  np.testing.assert_array_equal(augment.warp_volumes(batch["mri"][0], identity), batch["mri"][0])


def test_flips_mirror_exactly_and_through_the_resampler():
  batch = {**mri_batch(2), **mg_batch(2)}
  key = jax.random.key(0)
  flip_x = dataclasses.replace(OFF, mri_flip_probability=(0.0, 0.0, 1.0),
                               mg_vertical_flip_probability=1.0)
  out = jitted(flip_x)(batch, key)
  np.testing.assert_array_equal(out["mri"], batch["mri"][..., ::-1])
  np.testing.assert_array_equal(out["mg"], batch["mg"][:, :, ::-1, :])  # rows only
  # Affine possible (so the flip is folded into the resampling) but never drawn.
  folded = dataclasses.replace(flip_x, mri_flip_probability=(1.0, 0.0, 1.0),
                               mri_affine_probability=1e-9)
  assert folded.mri_affine_active
  # Exactly, as at the identity: mirrored coordinates are whole voxels too.
  np.testing.assert_array_equal(jitted(folded)(batch, key)["mri"],
                                batch["mri"][:, :, ::-1, :, ::-1])


def test_translation_and_rotation_move_a_blob_where_the_matrix_says():
  shape = (20, 20, 20)
  centre = (np.asarray(shape) - 1) / 2
  start = centre + np.asarray([4.0, 0.0, 0.0])
  volume = jnp.asarray(blob(shape, start))[None]
  shift = np.asarray([1.5, -2.0, 0.75])
  moved = augment.warp_volumes(
      volume, augment.Geometry(jnp.eye(3), jnp.eye(3), jnp.asarray(shift, jnp.float32)))
  np.testing.assert_allclose(centroid(moved[0]), start + shift, atol=0.05)
  # 90 degrees about x turns z into y (rotation_matrix's convention): (4, 0, 0) -> (0, 4, 0).
  rotation = augment.rotation_matrix(jnp.asarray([0.0, 0.0, np.pi / 2]))
  np.testing.assert_allclose(rotation @ jnp.asarray([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0], atol=1e-6)
  turned = augment.warp_volumes(
      volume, augment.Geometry(rotation, rotation.T, jnp.zeros(3)))
  np.testing.assert_allclose(centroid(turned[0]), centre + [0.0, 4.0, 0.0], atol=0.05)


def test_random_geometry_is_the_one_reported_and_shared_by_both_slots():
  shape = (20, 20, 20)
  centre = (np.asarray(shape) - 1) / 2
  start = centre + np.asarray([3.0, -2.0, 1.0])
  batch = dummy_batch("iMRrhpc", 3, mri_shape=shape)
  batch["mri"] = np.broadcast_to(blob(shape, start), batch["mri"].shape).astype(np.float32)
  geometric = dataclasses.replace(
      OFF, mri_flip_probability=(0.5, 0.5, 0.5), mri_affine_probability=1.0,
      mri_rotation_degrees=(20.0, 20.0, 20.0), mri_zoom=0.1, mri_translation_voxels=2.0)
  key = jax.random.key(11)
  out = np.asarray(jitted(geometric)(batch, key)["mri"])
  for i in range(3):
    np.testing.assert_array_equal(out[i, 0], out[i, 1])  # baseline and follow-up alike
    geometry = augment.example_geometry(key, i, geometric)
    expected = centre + np.asarray(geometry.matrix) @ (start - centre) + geometry.translation
    np.testing.assert_allclose(centroid(out[i, 0]), expected, atol=0.1)
    assert np.linalg.norm(expected - start) > 0.5  # the draw did move the blob
  # Intensity draws are independent per volume, the geometry is not: a cube of ones keeps one
  # support in both slots (gamma, scale and bias field keep zeros and non-zeros), new values.
  cube = np.zeros(shape, np.float32)
  cube[6:14, 5:13, 7:15] = 1.0
  batch["mri"] = np.broadcast_to(cube, batch["mri"].shape).copy()
  both = dataclasses.replace(geometric, mri_gamma_probability=1.0, mri_intensity_scale=0.5,
                             mri_intensity_scale_probability=1.0,
                             mri_bias_field_probability=1.0)
  out = np.asarray(jitted(both)(batch, key)["mri"])
  np.testing.assert_array_equal(out[:, 0] != 0, out[:, 1] != 0)
  assert not np.allclose(out[:, 0], out[:, 1])
  # Switching intensity transforms on does not change the geometry drawn.
  geometry_only = np.asarray(jitted(geometric)(batch, key)["mri"])
  np.testing.assert_array_equal(out != 0, geometry_only != 0)


def _targets(location: str, laterality: str, b: int) -> tuple[np.ndarray, np.ndarray]:
  """Auxiliary targets and masks [b, AUX_DIM] of b patients with one tumour site."""
  codes = np.full((b, len(schema.VARIABLES)), schema.UNKNOWN, np.int32)
  for name, value in (("location", location), ("laterality", laterality)):
    codes[:, schema.VARIABLE_NAMES.index(name)] = schema.BY_NAME[name].category_names.index(
        value)
  return encoding.aux_targets(clinical_table.ParsedRhpc(codes, np.full(codes.shape, np.nan)))


def _category(targets: np.ndarray, masks: np.ndarray, name: str) -> str | None:
  """The one-hot category of variable ``name`` in one example's targets, None if masked."""
  start, stop = encoding.AUX_SLICES[schema.VARIABLE_NAMES.index(name)]
  if not masks[start:stop].any():
    return None
  assert np.sort(targets[start:stop]).tolist() == [0.0] * (stop - start - 1) + [1.0]
  return schema.BY_NAME[name].category_names[int(np.argmax(targets[start:stop]))]


@pytest.mark.parametrize("location, upside_down", [("C50.4", "C50.5"), ("C50.3", "C50.2"),
                                                   ("C50.6", "C50.5"), ("C50.1", "C50.1")])
def test_targets_follow_the_flips_the_volumes_got(location, upside_down):
  """A tumour in the upper-outer left breast, flipped at random along every axis (with the
  affine on): where the blob ends up says which flips were drawn, and the targets must say
  the same side and quadrant."""
  b = 24
  shape = (16, 12, 20)  # z = S-I (index up = superior), y = A-P, x = R->L (LPS)
  centre = (np.asarray(shape) - 1) / 2
  start = centre + np.asarray([4.0, 0.0, 5.0])  # superior, patient's left
  batch = dummy_batch("iMRrhpc", b, mri_shape=shape)
  batch["mri"] = np.broadcast_to(blob(shape, start), batch["mri"].shape).astype(np.float32)
  batch["aux_targets"], batch["aux_masks"] = _targets(location, "left", b)
  geometric = dataclasses.replace(
      OFF, mri_flip_probability=(0.5, 0.5, 0.5), mri_affine_probability=1.0,
      mri_rotation_degrees=(5.0, 5.0, 5.0), mri_zoom=0.1, mri_translation_voxels=1.0)
  out = jax.device_get(jitted(geometric)(batch, jax.random.key(5)))
  seen = set()
  for i in range(b):
    z, _, x = centroid(out["mri"][i, 0]) - centre
    upper, left = z > 0, x > 0
    seen.add((upper, left))
    targets, masks = out["aux_targets"][i], out["aux_masks"][i]
    assert _category(targets, masks, "laterality") == ("left" if left else "right"), i
    assert _category(targets, masks, "location") == (location if upper else upside_down), i
    np.testing.assert_array_equal(masks, batch["aux_masks"][i])  # MRI masks nothing
  assert len(seen) == 4  # every combination of the two flips was drawn
  np.testing.assert_array_equal(  # switched off: the targets stay as they were
      jitted(OFF)(batch, jax.random.key(5))["aux_targets"], batch["aux_targets"])


def test_mammogram_targets_hide_the_side_and_a_flipped_location():
  """The chest-wall-left mammogram shows no side: laterality is masked for iMGrhpc at collate;
  a vertical flip (CC: inner <-> outer, MLO: upper-outer <-> lower-inner; the records do not
  say which view) masks the location of that draw only."""
  b = 16
  batch = mg_batch(b)
  images = np.array(batch["mg"])
  images[:, :, : MG_SHAPE[0] // 2] = 0  # breast in the bottom half only
  batch["mg"] = images
  batch["aux_targets"], batch["aux_masks"] = _targets("C50.4", "left", b)
  flipping = dataclasses.replace(OFF, mg_vertical_flip_probability=0.5)
  out = jax.device_get(jitted(flipping)(batch, jax.random.key(1)))
  flipped = [bool(np.any(out["mg"][i, 0, : MG_SHAPE[0] // 2])) for i in range(b)]
  assert 0 < sum(flipped) < b
  for i in range(b):
    location = _category(out["aux_targets"][i], out["aux_masks"][i], "location")
    assert location == (None if flipped[i] else "C50.4"), i
    assert _category(out["aux_targets"][i], out["aux_masks"][i], "laterality") == "left"
  # collate masks the side of every iMGrhpc example, and of no iMRrhpc one.
  records_batch = {name: batching.collate(
      [batching.Example(_record(), None, None)], name,
      batching.BatchSpec(mri_shape=(2, 2, 2), mri_dtype="float16", mg_shape=MG_SHAPE,
                         mg_dtype="uint16")) for name in ("iMGrhpc", "iMRrhpc")}
  assert _category(records_batch["iMGrhpc"]["aux_targets"][0],
                   records_batch["iMGrhpc"]["aux_masks"][0], "laterality") is None
  assert _category(records_batch["iMRrhpc"]["aux_targets"][0],
                   records_batch["iMRrhpc"]["aux_masks"][0], "laterality") == "right"
  assert _category(records_batch["iMGrhpc"]["aux_targets"][0],
                   records_batch["iMGrhpc"]["aux_masks"][0], "location") == "C50.2"


def _record() -> records.PatientRecord:
  codes = np.full(len(schema.VARIABLES), schema.UNKNOWN, np.int32)
  codes[schema.VARIABLE_NAMES.index("laterality")] = 1  # right
  codes[schema.VARIABLE_NAMES.index("location")] = 2  # C50.2
  return records.PatientRecord(
      patient_id="P000000000001", split="train", label=1, mri={},
      mammograms={"CC": np.ones(MG_SHAPE, np.uint16)}, rhpc_raw=("",) * len(schema.VARIABLES),
      rhpc_codes=codes,
      rhpc_values=np.full(len(schema.VARIABLES), np.nan, np.float32), spacing_mm=None)


def test_missing_slots_stay_zero():
  batch = {**mri_batch(3), **mg_batch(3)}
  batch["mri_mask"] = np.asarray([[True, False], [True, True], [False, False]])
  batch["mri"] = batch["mri"] * batch["mri_mask"][:, :, None, None, None]
  batch["mg_mask"] = np.asarray([[True], [False], [True]])
  out = jitted(ALL)(batch, jax.random.key(2))
  for name in ("mri", "mg"):
    missing = ~batch[f"{name}_mask"]
    assert np.all(np.asarray(out[name])[missing] == 0), name  # noise and shifts add nothing
    assert np.all(np.any(np.asarray(out[name])[~missing] != 0, axis=(1, 2)))


def test_bias_field_is_smooth_and_averages_one():
  batch = dummy_batch("iMRrhpc", 3, mri_shape=MRI_SHAPE)
  batch["mri"] = np.ones_like(batch["mri"])
  bias = dataclasses.replace(OFF, mri_bias_field_probability=1.0,
                             mri_bias_field_coefficient=0.5)
  fields = np.asarray(jitted(bias)(batch, jax.random.key(5))["mri"], np.float64).reshape(
      -1, *MRI_SHAPE)
  for field in fields:  # a unit volume comes back as the field itself
    assert field.min() > 0 and field.std() > 0.02
    # Divided by its float32 mean over N voxels: within gamma_N of 1 in any summation order.
    np.testing.assert_allclose(field.mean(), 1.0, rtol=gamma(field.size) + 2 * EPS32)
    # log(field) is a cubic polynomial: its fourth difference along every axis vanishes, which
    # no voxel-wise noise would do.
    for axis in range(3):
      fourth = np.diff(np.log(field), n=4, axis=axis)
      assert np.abs(fourth).max() < 1e-4, axis
  assert not np.allclose(fields[0], fields[1])  # per volume, not one field for all


def test_gamma_keeps_sign_and_peak_and_order():
  batch = mri_batch(2)
  gamma = dataclasses.replace(OFF, mri_gamma_probability=1.0, mri_log_gamma=0.5)
  x = np.asarray(batch["mri"]).reshape(4, -1)
  y = np.asarray(jitted(gamma)(batch, jax.random.key(1))["mri"]).reshape(4, -1)
  assert not np.allclose(x, y)
  np.testing.assert_array_equal(np.sign(y), np.sign(x))
  # Exactly: the peak maps to peak * 1 ** gamma.
  np.testing.assert_array_equal(np.abs(y).max(axis=1), np.abs(x).max(axis=1))
  for xv, yv in zip(x, y, strict=True):  # monotone in |x|
    order = np.argsort(np.abs(xv), kind="stable")
    assert np.all(np.diff(np.abs(yv)[order]) >= -1e-6)


def test_mammogram_stays_in_range_with_background_zero():
  batch = mg_batch(4)
  chest_wall_left = dataclasses.replace(ALL, mg_horizontal_flip_probability=0.0)
  out = np.asarray(jitted(chest_wall_left)(batch, jax.random.key(9))["mg"])
  assert out.min() >= 0.0 and out.max() <= 1.0
  assert np.all(out[..., MG_SHAPE[1] // 2:] == 0)  # the background half stays 0
  assert not np.allclose(out, batch["mg"])
  assert not np.allclose(out[0], out[1])


def test_compiled_once_for_repeated_calls():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(batch, key):
    return augment.augment_batch(batch, key, DEFAULT)

  for seed in range(3):
    batch = {**mri_batch(2, seed=seed), **mg_batch(2, seed=seed)}
    key = jax.random.fold_in(jax.random.key(0), seed)
    out = step(batch, key)
    assert out["mri"].shape == batch["mri"].shape and out["mg"].shape == batch["mg"].shape


def test_invalid_options_name_the_field():
  with pytest.raises(ValueError, match="mri_affine_probability"):
    dataclasses.replace(DEFAULT, mri_affine_probability=1.5)
  with pytest.raises(ValueError, match="mri_zoom"):
    dataclasses.replace(DEFAULT, mri_zoom=1.0)
  with pytest.raises(ValueError, match="mg_brightness"):
    dataclasses.replace(DEFAULT, mg_brightness=-0.1)



SHARDED = textwrap.dedent("""
    import dataclasses, functools, re, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
    from mrp_jax.core import augment
    assert jax.device_count() == 4
    from configs import common
    options = dataclasses.replace(
        augment.AugmentOptions.from_config(common.get_config().augment),
        mri_affine_probability=1.0, mri_noise_probability=1.0)
    rng = np.random.default_rng(0)
    batch = {"mri": rng.normal(size=(8, 2, 6, 6, 8)).astype(np.float32),
             "mri_mask": np.ones((8, 2), bool)}
    augment_fn = jax.jit(functools.partial(augment.augment_batch, options=options))
    single = np.asarray(augment_fn(batch, jax.random.key(1))["mri"])
    for axis_type in (AxisType.Auto, AxisType.Explicit):
      mesh = Mesh(np.asarray(jax.devices()), ("data",), axis_types=(axis_type,))
      sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
      compiled = augment_fn.lower(sharded, jax.random.key(1)).compile()
      out = compiled(sharded, jax.random.key(1))["mri"]
      assert out.sharding.spec[0] == "data", out.sharding
      # Up to rounding (another vectorisation): test_augment.resampling_ulps for 6x6x8.
      tolerance = (8 * 8 * 2 * 3 + 16) * np.finfo(np.float32).eps * np.abs(single).max()
      np.testing.assert_allclose(np.asarray(out), single, rtol=0, atol=tolerance)
      collectives = re.findall(r"all-gather|all-reduce|all-to-all|collective-permute",
                               compiled.as_text())
      assert not collectives, (axis_type, collectives)
    print("ok")
""")


def test_sharded_batch_augments_in_place_like_one_device():
  """Batch split over 4 (fake) devices, Auto and Explicit mesh axes: same values, no
  collectives (every device augments its own examples)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4 "
                      "--xla_backend_optimization_level=0"}
  result = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True,
                          check=False, text=True, timeout=300,
                          cwd=pathlib.Path(__file__).parents[1])
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
