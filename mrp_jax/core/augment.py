"""Image scaling and data augmentation on the accelerator, inside the jitted train step.

Host workers cannot resample 3D volumes at accelerator rate (a subtraction pair at 176 x 176 x 352
is 43.6 MB), so augmentation runs here, on the device, as a pure function of the batch and the
step's key. The paper augments MRI "geometrically, in intensity and
MRI-specifically as TorchIO does" and mammograms by flipping, brightness and contrast:

* MRI, one geometric transform per patient, shared by the baseline and the follow-up volume
  (they show one anatomy): flips (L-R by default), then a small affine (rotation about each axis,
  isotropic zoom, translation in voxels) about the volume centre, trilinear
  (``jax.scipy.ndimage.map_coordinates`` order 1, zero outside). Voxels are isotropic after
  preprocessing, so rotating in voxel space is rotating in space.
* MRI intensity, drawn independently per volume: a smooth multiplicative bias field (TorchIO's
  RandomBiasField: exp of a polynomial over coordinates in [-1, 1]), a sign-preserving gamma,
  a scale, additive Gaussian noise.
* Mammogram: vertical flip (the chest wall stays on the left, so horizontal flip is off by
  default), contrast about the breast mean and a brightness shift, on breast pixels only, clipped
  to [0, 1]; the background stays 0.
* The knowledge predictor's targets ('aux_targets', 'aux_masks') move with the flips that change
  their meaning, drawn from the same numbers as the image's flips: an MRI L-R flip swaps the
  laterality target, an S-I flip upper / lower location, a vertical mammogram flip masks the
  location (encoding.MRI_FLIP_TARGETS and MG_FLIP_TARGETS give the anatomy). Rotations of a few
  degrees change no quadrant and leave the targets alone.

Randomness: example ``i`` of the global batch draws from ``fold_in(key, i)`` alone, so its
augmentation depends only on (seed, step, i): not on the batch size or the device count. Each
transform draws from its own stream, so switching one on or off leaves the others' draws as they
were. Missing slots stay zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline import encoding
from input_pipeline.feed import batching
from mrp_jax import configuration

# Random streams of one example (fold_in constants), so that the geometry, each volume's
# intensities and the mammogram never share numbers.
_GEOMETRY, _MRI_INTENSITY, _MAMMOGRAM = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """What to augment and how much. Hashable: pass it to jit as a static argument.

  Every field is a config field of ``config.augment``, where each is defined once with its
  default and meaning (configs/common.py); build it with :meth:`from_config`. Probabilities are
  per example (geometry, mammogram) or per volume (MRI intensity); axes of a volume are
  (z, y, x) = (S-I, A-P, L-R).
  """
  enabled: bool  # False: augment_batch returns the batch unchanged
  # ---- MRI geometry (one draw per patient, applied to baseline and follow-up) ----
  mri_flip_probability: tuple[float, float, float]  # per axis z, y, x
  mri_affine_probability: float  # chance of the rotation + zoom + translation
  mri_rotation_degrees: tuple[float, float, float]  # max |angle| about z, y, x
  mri_zoom: float  # isotropic scale factor uniform in [1 - zoom, 1 + zoom]
  mri_translation_voxels: float  # max |shift| along each axis, voxels
  # ---- MRI intensity (independent per volume) ----
  mri_bias_field_probability: float
  mri_bias_field_coefficient: float  # polynomial coefficients uniform in [-c, c]
  mri_bias_field_order: int  # degree of the polynomial
  mri_gamma_probability: float
  mri_log_gamma: float  # gamma = exp(uniform(-g, g))
  mri_intensity_scale_probability: float
  mri_intensity_scale: float  # factor uniform in [1 - s, 1 + s]
  mri_noise_probability: float
  mri_noise_std: float  # std uniform in [0, std], units of the stored subtraction
  # ---- mammogram (intensities in [0, 1] after prepare_images) ----
  mg_vertical_flip_probability: float  # rows: cranial <-> caudal
  mg_horizontal_flip_probability: float  # columns: would put the chest wall on the right
  mg_contrast_probability: float
  mg_contrast: float  # factor uniform in [1 - c, 1 + c] about the breast mean
  mg_brightness_probability: float
  mg_brightness: float  # shift uniform in [-b, b]

  @classmethod
  def from_config(cls, augment: Mapping[str, Any]) -> "AugmentOptions":
    """From ``config.augment`` (lists become tuples, so the options stay hashable)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()})

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      values = value if isinstance(value, tuple) else (value,)
      if field.name == "enabled":
        continue
      if field.name.endswith("probability") and not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"augment.{field.name} must lie in [0, 1], got {value}")
      if not all(v >= 0 for v in values):
        raise ValueError(f"augment.{field.name} must be >= 0, got {value}")
    for name in ("mri_zoom", "mri_intensity_scale", "mg_contrast"):
      if getattr(self, name) >= 1.0:
        raise ValueError(f"augment.{name} must be < 1 (the factor 1 - {name} must stay "
                         f"positive), got {getattr(self, name)}")

  @property
  def mri_affine_active(self) -> bool:
    """Whether any example can be resampled (else flips are exact array reversals)."""
    return self.mri_affine_probability > 0 and (
        any(self.mri_rotation_degrees) or self.mri_zoom > 0 or self.mri_translation_voxels > 0)


def config_problems(config: Mapping[str, Any]) -> list[str]:
  """The problems of ``config.augment`` (none when the config has no such section), as
  :class:`AugmentOptions` finds them."""
  if configuration.lookup(config, "augment") is configuration.MISSING:
    return []
  try:
    AugmentOptions.from_config(config["augment"])
  except (TypeError, ValueError) as error:
    return [f"config.{error}" if str(error).startswith("augment.") else
            f"config.augment: {error}"]
  return []


def prepare_images(batch: Mapping[str, Any]) -> dict[str, Any]:
  """Images at the scale the model sees, in training and in evaluation alike.

  Args:
    batch: 'mri' [B, 2, z, y, x] float16 / int16 subtraction intensities (relative to the
      pre-contrast scale); 'mg' [B, 1, rows, cols] uint16 (0..65535) or float16 (0..1).
      Either may come as the input pipeline's views (per row, a tuple of its slots' arrays),
      stacked here: inside a jitted step the stack fuses with the conversion below, so the
      images are read once, from where the pipeline left them.

  Returns:
    The batch with 'mri' float32 (values unchanged) and 'mg' float32 in [0, 1].
  """
  batch = {key: jnp.stack([jnp.stack(row) for row in value]) if batching.is_views(value)
           else value for key, value in batch.items()}
  if "mri" in batch:
    batch["mri"] = jnp.asarray(batch["mri"]).astype(jnp.float32)
  if "mg" in batch:
    mg = jnp.asarray(batch["mg"])
    if mg.dtype == jnp.uint16:
      mg = mg.astype(jnp.float32) / 65535.0
    elif not jnp.issubdtype(mg.dtype, jnp.floating):
      raise TypeError(f"batch['mg'] must be uint16 (0..65535) or float (0..1), got {mg.dtype}")
    batch["mg"] = mg.astype(jnp.float32)
  return batch


def _signed(u: jax.Array) -> jax.Array:
  """Uniform [0, 1) -> uniform [-1, 1)."""
  return 2.0 * u - 1.0


# ---- MRI geometry ------------------------------------------------------------------------------

class Geometry(NamedTuple):
  """A point p (voxel index [z, y, x]) moves to ``centre + matrix @ (p - centre) + translation``.

  matrix [3, 3] = zoom * rotation @ flip; inverse [3, 3] its exact inverse; translation [3]
  voxels; centre = (shape - 1) / 2.
  """
  matrix: jax.Array
  inverse: jax.Array
  translation: jax.Array


def rotation_matrix(angles: jax.Array) -> jax.Array:
  """[3] radians about the z, y, x axes -> [3, 3] acting on [z, y, x] vectors.

  About axis a, the plane (b, c) of the next two axes in cyclic order (z: (y, x), y: (x, z),
  x: (z, y)) turns by the angle: b' = b cos - c sin, c' = b sin + c cos. R = Rz @ Ry @ Rx: about x
  first.
  """
  matrix = None
  for axis in (0, 1, 2):
    b, c = (axis + 1) % 3, (axis + 2) % 3
    cos, sin = jnp.cos(angles[axis]), jnp.sin(angles[axis])
    # Rows built by stacking (not .at[].set on an eye), so that it also traces under vmap over
    # an Explicit-sharded batch.
    entries = {(axis, axis): 1.0, (b, b): cos, (b, c): -sin, (c, b): sin, (c, c): cos}
    turn = jnp.stack([jnp.stack([jnp.asarray(entries.get((row, col), 0.0), cos.dtype)
                                 for col in range(3)]) for row in range(3)])
    matrix = turn if matrix is None else matrix @ turn
  return matrix


def _geometry_numbers(key: jax.Array) -> jax.Array:
  """Every number of one patient's geometry in one draw (one threefry call compiles and runs
  faster than eleven): [0:3] flips, [3] affine applied, [4:7] angles, [7] zoom, [8:11]
  translation."""
  return jax.random.uniform(key, (11,))


def mri_flips(key: jax.Array, options: AugmentOptions) -> jax.Array:
  """bool [3]: whether the patient's volumes are flipped along z, y, x (``key``: its geometry
  key); the flips sample_geometry and the exact reversals apply."""
  return _geometry_numbers(key)[0:3] < jnp.asarray(options.mri_flip_probability)


def sample_geometry(key: jax.Array, options: AugmentOptions) -> Geometry:
  """One patient's geometric transform (flips, then rotation and zoom, then translation)."""
  u = _geometry_numbers(key)
  signs = jnp.where(mri_flips(key, options), -1.0, 1.0)
  applied = u[3] < options.mri_affine_probability
  limits = jnp.deg2rad(jnp.asarray(options.mri_rotation_degrees, jnp.float32))
  angles = jnp.where(applied, _signed(u[4:7]) * limits, 0.0)
  zoom = jnp.where(applied, 1.0 + options.mri_zoom * _signed(u[7]), 1.0)
  translation = jnp.where(applied, options.mri_translation_voxels * _signed(u[8:11]), 0.0)
  rotation = rotation_matrix(angles)
  # Built from the parts, not by inverting, so that an identity draw is exactly the identity.
  return Geometry(matrix=zoom * rotation * signs[None, :],
                  inverse=(signs[:, None] * rotation.T) / zoom, translation=translation)


def warp_volumes(volumes: jax.Array, geometry: Geometry) -> jax.Array:
  """Resamples volumes [S, z, y, x] by one geometry (trilinear, zero outside) -> [S, z, y, x]."""
  shape = volumes.shape[1:]
  centre = (jnp.asarray(shape, jnp.float32) - 1.0) / 2.0
  # Output voxel o samples the input at centre + inverse @ (o - centre - translation). The grid
  # axes broadcast ([z,1,1], [1,y,1], [1,1,x]), so XLA fuses the coordinates into the gathers.
  offsets = [jnp.arange(n, dtype=jnp.float32).reshape([-1 if a == i else 1 for a in range(3)])
             - centre[i] - geometry.translation[i] for i, n in enumerate(shape)]
  coordinates = [
      jnp.broadcast_to(centre[a] + sum(geometry.inverse[a, i] * offsets[i] for i in range(3)),
                       shape) for a in range(3)]

  def resample(volume):
    return jax.scipy.ndimage.map_coordinates(volume, coordinates, order=1, mode="constant",
                                             cval=0.0)
  return jax.vmap(resample)(volumes)  # one set of coordinates gathers every slot


def _flip_volumes(volumes: jax.Array, key: jax.Array, options: AugmentOptions) -> jax.Array:
  """sample_geometry's flips as exact reversals (used when no affine can be drawn)."""
  flips = mri_flips(key, options)
  for axis, probability in enumerate(options.mri_flip_probability):
    if probability > 0:
      volumes = jnp.where(flips[axis], jnp.flip(volumes, axis + 1), volumes)
  return volumes


def example_geometry(key: jax.Array, index: int | jax.Array,
                     options: AugmentOptions) -> Geometry:
  """The geometric transform augment_batch gives global example ``index`` (e.g. to move
  annotations with the volumes); with ``not options.mri_affine_active`` only its flips apply."""
  return sample_geometry(jax.random.fold_in(jax.random.fold_in(key, index), _GEOMETRY), options)


# ---- MRI intensity -----------------------------------------------------------------------------

def bias_field(coefficients: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
  """exp(polynomial) over coordinates in [-1, 1], divided by its mean -> [z, y, x], mean 1.

  Args:
    coefficients: [n, n, n], [i, j, k] the coefficient of z^i y^j x^k (n = order + 1).
    shape: (z, y, x) voxels.
  """
  n = coefficients.shape[0]
  powers = [jnp.linspace(-1.0, 1.0, size)[:, None] ** jnp.arange(n) for size in shape]
  field = jnp.exp(jnp.einsum("ijk,zi,yj,xk->zyx", coefficients, *powers))
  # A global gain is the intensity scale's job: the field only redistributes intensity.
  return field / jnp.mean(field)


def sample_bias_coefficients(key: jax.Array, options: AugmentOptions) -> jax.Array:
  """[n, n, n] coefficients uniform in [-c, c] on the terms 0 < i + j + k <= order, else 0."""
  n = options.mri_bias_field_order + 1
  i, j, k = np.meshgrid(*[np.arange(n)] * 3, indexing="ij")
  terms = ((i + j + k > 0) & (i + j + k <= options.mri_bias_field_order)).astype(np.float32)
  return terms * options.mri_bias_field_coefficient * _signed(jax.random.uniform(key, (n, n, n)))


def _augment_mri_intensity(volume: jax.Array, peak: jax.Array, key: jax.Array,
                           options: AugmentOptions) -> jax.Array:
  """One volume [z, y, x]: gamma, bias field, scale, noise, each with its probability.

  Performance: a draw that does not apply sets its parameter to the neutral value (gamma 1,
  field 1, factor 1, std 0) instead of selecting between two volumes, and nothing reduces over
  the warped volume (``peak`` is max |volume| before warping; trilinear weights are convex, so
  the warped |volume| stays below it). XLA then fuses every step into the resampling's output
  loop. Selecting between whole volumes made XLA:CPU materialise eight gather-index arrays
  instead: 174 ms against 45 ms for the default options at B=4, 44 x 44 x 88
  (docs/performance.md, "On-device augmentation").
  """
  o = options
  # [0] gamma applied, [1] log gamma, [2] bias applied, [3] scale applied, [4] scale,
  # [5] noise applied, [6] noise std.
  u = jax.random.uniform(jax.random.fold_in(key, 0), (7,))
  if o.mri_gamma_probability > 0 and o.mri_log_gamma > 0:
    # Subtractions are signed: gamma acts on |x| / peak, so sign and peak survive. Not drawn,
    # gamma is 1 and x comes back to within an ulp.
    gamma = jnp.where(u[0] < o.mri_gamma_probability, jnp.exp(o.mri_log_gamma * _signed(u[1])),
                      1.0)
    peak = jnp.maximum(peak, jnp.finfo(jnp.float32).tiny)
    volume = jnp.sign(volume) * peak * (jnp.abs(volume) / peak) ** gamma
  if o.mri_bias_field_probability > 0 and o.mri_bias_field_coefficient > 0:
    # Zero coefficients give a field of exactly 1.
    coefficients = sample_bias_coefficients(jax.random.fold_in(key, 1), o)
    applied = u[2] < o.mri_bias_field_probability
    volume = volume * bias_field(jnp.where(applied, coefficients, 0.0), volume.shape)
  if o.mri_intensity_scale_probability > 0 and o.mri_intensity_scale > 0:
    volume = volume * jnp.where(u[3] < o.mri_intensity_scale_probability,
                                1.0 + o.mri_intensity_scale * _signed(u[4]), 1.0)
  if o.mri_noise_probability > 0 and o.mri_noise_std > 0:
    std = jnp.where(u[5] < o.mri_noise_probability, o.mri_noise_std * u[6], 0.0)
    volume = volume + std * jax.random.normal(jax.random.fold_in(key, 2), volume.shape)
  return volume


def _augment_mri_example(volumes: jax.Array, mask: jax.Array, key: jax.Array,
                         options: AugmentOptions) -> jax.Array:
  """One patient's volumes [S, z, y, x] and slot mask [S] bool -> [S, z, y, x]."""
  peaks = jnp.max(jnp.abs(volumes), axis=(1, 2, 3))
  geometry_key = jax.random.fold_in(key, _GEOMETRY)
  if options.mri_affine_active:
    volumes = warp_volumes(volumes, sample_geometry(geometry_key, options))
  elif any(options.mri_flip_probability):
    volumes = _flip_volumes(volumes, geometry_key, options)
  slot_keys = jax.vmap(jax.random.fold_in, (None, 0))(
      jax.random.fold_in(key, _MRI_INTENSITY), jnp.arange(volumes.shape[0]))
  volumes = jax.vmap(lambda v, p, k: _augment_mri_intensity(v, p, k, options))(
      volumes, peaks, slot_keys)
  return jnp.where(mask[:, None, None, None], volumes, 0.0)


# ---- mammogram ---------------------------------------------------------------------------------

def _mammogram_numbers(key: jax.Array) -> jax.Array:
  """One patient's mammogram draw (``key``: the example's key): [0] vertical flip, [1]
  horizontal flip, [2] contrast applied, [3] contrast, [4] brightness applied, [5] brightness."""
  return jax.random.uniform(jax.random.fold_in(key, _MAMMOGRAM), (6,))


def mg_flips(key: jax.Array, options: AugmentOptions) -> jax.Array:
  """bool [2]: whether the patient's mammogram is flipped vertically (rows) and horizontally."""
  return _mammogram_numbers(key)[0:2] < jnp.asarray(
      (options.mg_vertical_flip_probability, options.mg_horizontal_flip_probability))


def _augment_mg_example(images: jax.Array, mask: jax.Array, key: jax.Array,
                        options: AugmentOptions) -> jax.Array:
  """One patient's mammograms [S, rows, cols] in [0, 1] and mask [S] bool -> [S, rows, cols]."""
  o = options
  u = _mammogram_numbers(key)
  flips = mg_flips(key, options)
  for axis, probability, flip in ((1, o.mg_vertical_flip_probability, flips[0]),
                                  (2, o.mg_horizontal_flip_probability, flips[1])):
    if probability > 0:
      images = jnp.where(flip, jnp.flip(images, axis), images)
  contrast = o.mg_contrast_probability > 0 and o.mg_contrast > 0
  brightness = o.mg_brightness_probability > 0 and o.mg_brightness > 0
  if contrast or brightness:
    breast = images > 0  # preprocessing leaves background and padding exactly 0
    factor, shift = jnp.ones(()), jnp.zeros(())  # neutral values when not drawn (exact)
    if contrast:
      factor = jnp.where(u[2] < o.mg_contrast_probability, 1.0 + o.mg_contrast * _signed(u[3]),
                         1.0)
    if brightness:
      shift = jnp.where(u[4] < o.mg_brightness_probability, o.mg_brightness * _signed(u[5]), 0.0)
    count = jnp.maximum(jnp.sum(breast, axis=(1, 2), keepdims=True), 1)
    mean = jnp.sum(jnp.where(breast, images, 0.0), axis=(1, 2), keepdims=True) / count
    # (x - mean) * factor + mean + shift, written so that factor 1, shift 0 give x exactly.
    changed = images * factor + (mean * (1.0 - factor) + shift)
    images = jnp.where(breast, jnp.clip(changed, 0.0, 1.0), 0.0)
  return jnp.where(mask[:, None, None], images, 0.0)


# ---- auxiliary targets -------------------------------------------------------------------------

def _move_targets(targets: jax.Array, masks: jax.Array, flips: jax.Array,
                  maps: tuple[encoding.TargetMap, ...],
                  probabilities: tuple[float, ...]) -> tuple[jax.Array, jax.Array]:
  """One example's targets and masks [AUX_DIM] after its flips (bool [len(maps)])."""
  for flip, target_map, probability in zip(flips, maps, probabilities):
    if probability > 0 and target_map is not encoding.IDENTITY_TARGETS:
      # 0/1 matrix: exact in float32 at HIGHEST precision (the default may round to bf16).
      moved = jnp.matmul(targets, jnp.asarray(target_map.matrix),
                         precision=jax.lax.Precision.HIGHEST)
      targets = jnp.where(flip, moved, targets)
      masks = jnp.where(flip, masks * jnp.asarray(target_map.keep), masks)
  return targets, masks


def _flips_and_maps(name: str, options: AugmentOptions):
  """(flips of one example from its key, their target maps, their probabilities) of image
  ``name``."""
  if name == "mri":
    return (lambda key: mri_flips(jax.random.fold_in(key, _GEOMETRY), options),
            encoding.MRI_FLIP_TARGETS, options.mri_flip_probability)
  return (lambda key: mg_flips(key, options), encoding.MG_FLIP_TARGETS,
          (options.mg_vertical_flip_probability, options.mg_horizontal_flip_probability))


# ---- the batch ---------------------------------------------------------------------------------

def augment_batch(batch: Mapping[str, Any], key: jax.Array, options: AugmentOptions,
                  first_index: int | jax.Array = 0) -> dict[str, Any]:
  """Augments the images of a prepared batch (jittable with static options).

  Args:
    batch: after prepare_images: 'mri' [B, S, z, y, x] float32 with 'mri_mask' [B, S] bool,
      and/or 'mg' [B, S, rows, cols] float32 in [0, 1] with 'mg_mask' [B, S] bool; optionally
      'aux_targets' and 'aux_masks' [B, encoding.AUX_DIM], moved with the flips (a batch has
      the images of one model, whose targets they are). Other keys pass through.
    key: the step's key (the caller folds the seed with the step); typed, or raw uint32 [2].
    options: what to draw; ``enabled=False`` returns the batch unchanged.
    first_index: global index of example 0 (nonzero when a global batch is fed in chunks).

  Returns:
    The batch with 'mri' / 'mg' augmented (float32), slots whose mask is False 0, and the
    auxiliary targets and masks of the flipped examples transformed.
  """
  batch = dict(batch)
  present = [name for name in ("mri", "mg") if name in batch]
  if not options.enabled or not present:
    return batch
  indices = first_index + jnp.arange(jnp.shape(batch[present[0]])[0])
  # With an Explicit-axes mesh vmap needs the keys split like the images' batch axis.
  images_sharding = jax.typeof(jnp.asarray(batch[present[0]])).sharding
  if images_sharding.spec[0] is not None:
    indices = jax.sharding.reshard(indices, jax.sharding.NamedSharding(
        images_sharding.mesh, jax.sharding.PartitionSpec(images_sharding.spec[0])))
  example_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, indices)
  augment_one = {"mri": _augment_mri_example, "mg": _augment_mg_example}
  for name in present:
    images = jnp.asarray(batch[name])
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise TypeError(f"batch[{name!r}] is {images.dtype}: call prepare_images before "
                      "augment_batch")
    batch[name] = jax.vmap(lambda x, m, k, f=augment_one[name]: f(x, m, k, options))(
        images.astype(jnp.float32), jnp.asarray(batch[f"{name}_mask"], bool), example_keys)
    if "aux_targets" in batch:
      draw, maps, probabilities = _flips_and_maps(name, options)
      batch["aux_targets"], batch["aux_masks"] = jax.vmap(
          lambda t, m, k: _move_targets(t, m, draw(k), maps, probabilities))(
              jnp.asarray(batch["aux_targets"]), jnp.asarray(batch["aux_masks"]), example_keys)
  return batch
