"""Phantoms of the synthetic export: bilateral breast DCE-MRI volumes and mammograms.

Anatomy lives in the patient frame of :class:`~input_pipeline.synthetic_cohort.ImageLatent`
(LPS axes, mm, origin on the midline at the chest wall); a study places it in scanner LPS with a
shift, and every voxel is rendered from its own LPS position, so any orientation (flipped,
oblique) shows the same anatomy. Tissues, as partial-volume fractions (soft edges one voxel
wide): two half-ellipsoidal breasts (fat + fibroglandular tissue from a smooth random field
thresholded to the density's fraction, denser near the centre), and behind the chest wall a body
block (subcutaneous fat rim, pectoral and chest-wall muscle, lungs, heart), the tumour a sphere
with a non-enhancing core.

Signal model (arbitrary scanner units, T1 gradient echo without fat saturation):
pre-contrast S = sum_tissue fraction * T1 value; post-contrast at t seconds after injection
S + sum_tissue fraction * T1 value * peak enhancement * kinetics(t); both times a smooth coil bias
field, then Rician noise. Kinetics: tumour fast uptake (tau 45 s) with mild washout after 90 s,
parenchyma / muscle / fat slow (tau 200 s), heart a first-pass peak.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import ndimage

from input_pipeline.synthetic.cohort import ImageLatent

T1 = {"fat": 520.0, "gland": 220.0, "muscle": 260.0, "lung": 30.0, "heart": 200.0,
      "tumour": 240.0}
T2 = {"fat": 420.0, "gland": 280.0, "muscle": 110.0, "lung": 20.0, "heart": 60.0,
      "tumour": 330.0}
_SLOW_ENHANCEMENT = {"fat": 0.02, "muscle": 0.15}  # gland: the patient's BPE
_HEART_ENHANCEMENT = 1.8
MG_MAX = 16383  # 14-bit detector range inside the 16-bit pixels
# The mass's added signal at contrast 1: twice a dense gland's (2600 x thickness), a high-density
# mass, as most invasive carcinomas are on a mammogram. At the gland's own signal a mass in
# dense tissue hid its outline at the demo's 64 x 32 (docs/experiments.md, "The mass's density").
MASS_SIGNAL = 5200.0


@dataclasses.dataclass(frozen=True)
class VolumeGeometry:
  """Voxel grid of one series in SimpleITK's convention (see synthetic/dicom_writer.py).

  Attributes:
    shape: [z, y, x] voxels.
    origin: LPS mm of voxel (0, 0, 0).
    spacing: (x, y, z) mm.
    direction: 3x3 row-major; columns are the LPS directions of the x, y, z index axes.
  """
  shape: tuple[int, int, int]
  origin: tuple[float, float, float]
  spacing: tuple[float, float, float]
  direction: tuple[float, ...]

  @classmethod
  def centred(cls, centre: np.ndarray, fov_mm: tuple[float, float, float],
              spacing: tuple[float, float, float], rotation: np.ndarray) -> "VolumeGeometry":
    """A grid of about ``fov_mm`` (x, y, z) centred on ``centre`` (LPS mm)."""
    counts = np.maximum(1, np.round(np.array(fov_mm) / np.array(spacing))).astype(int)
    extent = (counts - 1) * np.array(spacing)
    origin = np.asarray(centre, float) - rotation @ (extent / 2)
    return cls((int(counts[2]), int(counts[1]), int(counts[0])),
               tuple(float(v) for v in np.round(origin, 4)),
               tuple(float(v) for v in spacing),
               tuple(float(v) for v in np.round(rotation, 8).ravel()))

  @property
  def matrix(self) -> np.ndarray:
    return np.array(self.direction, float).reshape(3, 3)

  def points(self, z_start: int, z_stop: int) -> np.ndarray:
    """LPS mm of the voxels of slices [z_start, z_stop): float32 [3 (x, y, z), z, y, x]."""
    nz, ny, nx = z_stop - z_start, self.shape[1], self.shape[2]
    k, j, i = np.meshgrid(np.arange(z_start, z_stop), np.arange(ny), np.arange(nx),
                          indexing="ij", sparse=True)
    scaled = (i * self.spacing[0], j * self.spacing[1], k * self.spacing[2])
    m = self.matrix
    out = np.empty((3, nz, ny, nx), np.float32)
    for axis in range(3):
      out[axis] = self.origin[axis] + m[axis, 0] * scaled[0] + m[axis, 1] * scaled[1] + (
          m[axis, 2] * scaled[2])
    return out

  def to_json(self) -> dict[str, Any]:
    return {"shape_zyx": list(self.shape), "origin": list(self.origin),
            "spacing_xyz": list(self.spacing), "direction": list(self.direction)}


def _soft_inside(signed_depth_mm: np.ndarray, edge_mm: float) -> np.ndarray:
  """Partial-volume fraction of a region, given the depth inside its boundary (mm)."""
  return np.clip(0.5 + signed_depth_mm / edge_mm, 0.0, 1.0)


def _ellipsoid_depth(p, centre, axes) -> np.ndarray:
  """Approximate depth (mm) inside an ellipsoid: (1 - normalised radius) * smallest semi-axis."""
  rho = np.sqrt(sum(((p[a] - centre[a]) / axes[a]) ** 2 for a in range(3)))
  return (1.0 - rho) * min(axes)


class Phantom:
  """One patient's anatomy; renders any voxel grid at any phase.

  Args:
    latent: the patient's image truth.
    texture_mm: grid spacing of the fibroglandular random field (finer for finer geometries).
    rng: draws the random field (so the same patient has the same parenchyma at every phase).
  """

  def __init__(self, latent: ImageLatent, texture_mm: float, rng: np.random.Generator):
    self.latent = latent
    ax, ay, az = latent.breast_axes
    self._texture_origin = np.array([-(latent.breast_offset + ax + 10), -ay - 10,
                                     latent.breast_z - az - 10])
    top = np.array([latent.breast_offset + ax + 10, 5.0, latent.breast_z + az + 10])
    shape = tuple(int(v) for v in np.ceil((top - self._texture_origin) / texture_mm) + 1)
    self._texture_mm = texture_mm
    fine = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0 / texture_mm)
    coarse = ndimage.gaussian_filter(rng.standard_normal(shape), 12.0 / texture_mm)
    grid = [self._texture_origin[a] + texture_mm * np.arange(shape[a]) for a in range(3)]
    p = np.meshgrid(*grid, indexing="ij")
    depth = self._breast_depth(p)
    centrality = np.clip(depth / min(latent.breast_axes), 0.0, 1.0)
    score = 0.6 * fine / fine.std() + coarse / coarse.std() + 3.0 * centrality
    inside = depth > 0
    threshold = np.quantile(score[inside], 1.0 - latent.gland_fraction)
    self._gland = (1.0 / (1.0 + np.exp(-(score - threshold) / 0.3))).astype(np.float32)

  def _breast_depth(self, p) -> np.ndarray:
    """Depth (mm) inside the nearer breast; the chest wall plane y = 0 bounds both."""
    lat = self.latent
    depths = [_ellipsoid_depth(p, (side * lat.breast_offset, 0.0, lat.breast_z),
                               lat.breast_axes) for side in (1.0, -1.0)]
    return np.minimum(np.maximum(*depths), -p[1])

  def fractions(self, p: np.ndarray, phase: int, edge_mm: float) -> dict[str, np.ndarray]:
    """Partial-volume fraction of each tissue at patient-frame points p [3, ...] (mm)."""
    lat = self.latent
    breast = _soft_inside(self._breast_depth(p), edge_mm)
    body_depth = _ellipsoid_depth(p, (0.0, 60.0, 0.0), (190.0, 170.0, 400.0))
    body = _soft_inside(np.minimum(body_depth, p[1]), edge_mm)
    index = (p - self._texture_origin.reshape(3, *([1] * (p.ndim - 1)))) / self._texture_mm
    gland = ndimage.map_coordinates(self._gland, index.reshape(3, -1), order=1,
                                    mode="nearest").reshape(p.shape[1:])
    radius = lat.radius_mm[phase]
    distance = np.sqrt(sum((p[a] - lat.tumour_centre[a]) ** 2 for a in range(3)))
    tumour = _soft_inside(radius - distance, edge_mm) * np.clip(breast + body, 0, 1) if (
        radius > 0) else np.zeros_like(breast)
    rest = 1.0 - tumour
    subcutaneous = body * (1.0 - _soft_inside(body_depth - 14.0, edge_mm))
    lung = body * np.maximum(*[_soft_inside(_ellipsoid_depth(p, (s * 95.0, 100.0, 0.0),
                                                            (55.0, 70.0, 150.0)), edge_mm)
                               for s in (1.0, -1.0)])
    heart = body * (1.0 - lung) * _soft_inside(
        _ellipsoid_depth(p, (0.0, 95.0, -45.0), (45.0, 45.0, 50.0)), edge_mm)
    muscle = np.clip(body - subcutaneous - lung - heart, 0.0, 1.0)
    return {
        "fat": rest * (breast * (1.0 - gland) + subcutaneous),
        "gland": rest * breast * gland,
        "muscle": rest * muscle,
        "lung": rest * lung,
        "heart": rest * heart,
        "tumour": tumour,
        "core": tumour * _soft_inside(lat.heterogeneity * radius - distance, edge_mm),
    }


def kinetics(t_s: float) -> dict[str, float]:
  """Fraction of peak enhancement reached t_s seconds after injection, per kinetic class."""
  return {
      "tumour": (1 - math.exp(-t_s / 45.0)) * (1 - 0.12 * min(max((t_s - 90) / 300, 0), 1)),
      "slow": 1 - math.exp(-t_s / 200.0),
      "heart": (1 - math.exp(-t_s / 10.0)) * (0.55 + 0.45 * math.exp(-t_s / 90.0)),
  }


@dataclasses.dataclass
class DceMaps:
  """Noise-free components of one study's DCE signal on one grid, float32 [z, y, x].

  pre is the pre-contrast signal; tumour, slow and heart are peak enhancement amplitudes of each
  kinetic class (signal units), all already multiplied by the coil bias field.
  """
  pre: np.ndarray
  tumour: np.ndarray
  slow: np.ndarray
  heart: np.ndarray

  def at(self, t_s: float) -> np.ndarray:
    """Noise-free signal t_s seconds after injection (t_s = 0: pre-contrast)."""
    if t_s <= 0:
      return self.pre.copy()
    k = kinetics(t_s)
    return self.pre + k["tumour"] * self.tumour + k["slow"] * self.slow + k["heart"] * self.heart


def render_dce(phantom: Phantom, geometry: VolumeGeometry, shift: np.ndarray, phase: int,
               bias: tuple[float, float, float], contrast: str = "t1",
               chunk_voxels: int = 2_000_000) -> DceMaps:
  """Renders a study's anatomy on ``geometry``; patient frame = scanner LPS - ``shift`` (mm).

  Args:
    phase: 0 pre, 1 mid, 2 post (tumour size, enhancement, BPE).
    bias: coil field coefficients (x gradient, anterior gain, z curvature).
    contrast: 't1' (with enhancement maps) or 't2' (enhancement maps are zero).
  """
  lat = phantom.latent
  nz, ny, nx = geometry.shape
  values = T1 if contrast == "t1" else T2
  maps = DceMaps(*(np.zeros(geometry.shape, np.float32) for _ in range(4)))
  edge = float(np.prod(geometry.spacing) ** (1 / 3))
  step = max(1, chunk_voxels // (ny * nx))
  for z0 in range(0, nz, step):
    z1 = min(nz, z0 + step)
    p = geometry.points(z0, z1) - np.asarray(shift, np.float32).reshape(3, 1, 1, 1)
    f = phantom.fractions(p, phase, edge)
    field = (1 + bias[0] * p[0] / 200 + bias[1] * np.clip(-p[1], 0, None) / 150
             - bias[2] * (p[2] / 150) ** 2)
    maps.pre[z0:z1] = field * sum(f[t] * values[t] for t in values)
    if contrast != "t1":
      continue
    tumour_peak = lat.enhancement[phase] * (f["tumour"] - 0.8 * f["core"])
    maps.tumour[z0:z1] = field * values["tumour"] * tumour_peak
    maps.slow[z0:z1] = field * (f["gland"] * values["gland"] * lat.bpe[phase] + sum(
        f[t] * values[t] * e for t, e in _SLOW_ENHANCEMENT.items()))
    maps.heart[z0:z1] = field * f["heart"] * values["heart"] * _HEART_ENHANCEMENT
  return maps


def rician(rng: np.random.Generator, signal: np.ndarray, sigma: float) -> np.ndarray:
  """Magnitude image of ``signal`` with complex Gaussian noise of std ``sigma``."""
  real = signal + rng.normal(0.0, sigma, signal.shape).astype(np.float32)
  imaginary = rng.normal(0.0, sigma, signal.shape).astype(np.float32)
  return np.sqrt(real * real + imaginary * imaginary)


# --------------------------------------------------------------------------------------------
# Mammogram
# --------------------------------------------------------------------------------------------
def render_mammogram(rng: np.random.Generator, latent: ImageLatent, shape: tuple[int, int],
                     spacing_mm: float, view: str) -> tuple[np.ndarray, dict[str, Any]]:
  """Renders a 'for presentation' view of the tumour-side breast, MONOCHROME2 (bright = dense).

  The chest wall is the left image edge for a left breast and the right edge for a right one;
  rows run lateral (top) to medial (CC) or superior to inferior (MLO).

  Returns:
    image: uint16 [rows, columns], values up to :data:`MG_MAX`.
    truth: mass centre and radius in pixels; breast (soft edge at one half) and marker boxes
      [row0, row1, col0, col1), rows then columns.
  """
  rows, cols = shape
  work = max(1, int(round(0.5 / spacing_mm)))  # render on a ~0.5 mm grid, then upsample
  wr, wc = -(-rows // work), -(-cols // work)
  s = spacing_mm * work
  ax, ay, az = latent.breast_axes
  depth_mm = min(1.15 * ay, 0.85 * cols * spacing_mm) * (1.05 if view == "MLO" else 1.0)
  half_mm = min(1.25 * max(ax, az) * (1.15 if view == "MLO" else 1.0), 0.45 * rows * spacing_mm)
  centre_row_mm = rows * spacing_mm * (0.5 + rng.uniform(-0.05, 0.05))
  r, c = np.meshgrid(np.arange(wr) * s + s / 2, np.arange(wc) * s + s / 2, indexing="ij")
  left = latent.side == "left"
  u = c if left else cols * spacing_mm - c  # mm from the chest wall
  v = r - centre_row_mm
  q = (u / depth_mm) ** 2 + (v / half_mm) ** 2
  breast = _soft_inside((1 - np.sqrt(q)) * half_mm, 2 * s)
  thickness = np.clip(np.sqrt(np.clip(1 - q, 0, 1)) * 2.2, 0, 1)

  fine = ndimage.gaussian_filter(rng.standard_normal((wr, wc)), 1.5 / s)
  coarse = ndimage.gaussian_filter(rng.standard_normal((wr, wc)), 8.0 / s)
  score = 0.6 * fine / fine.std() + coarse / coarse.std() + 3.0 * np.clip(1 - np.sqrt(q), 0, 1)
  threshold = np.quantile(score[q < 1], 1 - latent.gland_fraction)
  gland = 1 / (1 + np.exp(-(score - threshold) / 0.3))
  image = 60.0 + breast * thickness * (1800.0 + 2600.0 * gland)

  if view == "MLO":  # pectoral muscle: a triangle in the upper chest-wall corner
    pectoral = _soft_inside(0.3 * depth_mm * (1 - r / (0.55 * rows * spacing_mm)) - u, 2 * s)
    image += 1200.0 * pectoral * breast

  tx, ty, tz = latent.tumour_centre
  centre_x = (1.0 if left else -1.0) * latent.breast_offset
  mass_u = -ty * 1.15
  mass_v = ((centre_x - tx) if left else (tx - centre_x)) * 1.25 if view == "CC" else (
      -(tz - latent.breast_z) * 1.25)
  mass_r = latent.radius_mm[0] * 1.2
  du, dv = u - mass_u, v - mass_v
  distance = np.hypot(du, dv)
  outline = mass_r * outline_factor(np.arctan2(dv, du), latent.irregularity,
                                    outline_harmonics(rng))
  if latent.margin == "indistinct":  # the edge fades over a third of the radius
    mass = _soft_inside(outline - distance, max(2.5 * s, 0.35 * mass_r))
  else:
    mass = _soft_inside(outline - distance, 1.0 * s)
  if latent.margin == "spiculated":
    for theta in rng.uniform(0, 2 * np.pi, int(rng.integers(8, 15))):
      along = du * np.cos(theta) + dv * np.sin(theta)
      across = np.abs(-du * np.sin(theta) + dv * np.cos(theta))
      length = mass_r * rng.uniform(1.6, 2.6)
      spicule = _soft_inside(0.6 - across, s) * (along > 0) * np.clip(1 - along / length, 0, 1)
      mass = np.maximum(mass, 0.7 * spicule)
  if latent.calcifications:  # punctate, within 1.3 radii of the centre
    count = int(rng.integers(6, 16))
    spot = max(0.4, 0.6 * s)
    for rho, phi in zip(1.3 * mass_r * np.sqrt(rng.random(count)),
                        rng.uniform(0, 2 * np.pi, count)):
      dot = _soft_inside(spot - np.hypot(du - rho * np.cos(phi), dv - rho * np.sin(phi)), s)
      image += 3000.0 * dot * breast
  image += MASS_SIGNAL * latent.mass_contrast * mass * breast

  row_of = lambda v_mm: (v_mm + centre_row_mm) / spacing_mm - 0.5
  col_of = lambda u_mm: (u_mm if left else cols * spacing_mm - u_mm) / spacing_mm - 0.5
  if work > 1:  # grid_mode keeps pixel centres where row_of / col_of put them
    image = ndimage.zoom(image, work, order=1, grid_mode=True, mode="nearest")[:rows, :cols]
  image = image + rng.normal(0.0, 20.0, image.shape) * (1 + image / 4000)

  markers = []
  for corner in ("top", "bottom"):
    if rng.random() < 0.3 and markers:
      continue
    height = max(3, int(round(rng.uniform(6, 12) / spacing_mm)))
    width = max(4, int(round(rng.uniform(10, 20) / spacing_mm)))
    margin = max(2, int(round(4 / spacing_mm)))
    r0 = margin if corner == "top" else rows - margin - height
    c0 = cols - margin - width if left else margin  # the side away from the chest wall
    box = (r0, r0 + height, c0, c0 + width)
    if _box_touches_breast(box, q, work):
      continue
    image[box[0]:box[1], box[2]:box[3]] = MG_MAX
    inner = max(1, height // 4)
    image[box[0] + inner:box[1] - inner, box[2] + inner:box[2] + max(2, width // 3)] = MG_MAX // 3
    markers.append([int(v) for v in box])
  inside = np.argwhere(ndimage.zoom(breast, work, order=1, grid_mode=True,
                                    mode="nearest")[:rows, :cols] >= 0.5)
  truth = {"view": view, "mass_centre_px": [float(row_of(mass_v)), float(col_of(mass_u))],
           "breast_box_px": [int(inside[:, 0].min()), int(inside[:, 0].max()) + 1,
                             int(inside[:, 1].min()), int(inside[:, 1].max()) + 1],
           "mass_radius_px": float(mass_r / spacing_mm), "markers": markers,
           "chest_wall_edge": "left" if left else "right"}
  return np.clip(np.rint(image), 0, MG_MAX).astype(np.uint16), truth


def outline_harmonics(rng: np.random.Generator) -> np.ndarray:
  """The lobulation pattern of one mass outline, [5, 2]: amplitude and phase of the harmonics
  k = 2..6 (a nuisance; their scale is normalised away in :func:`outline_factor`)."""
  amplitude = rng.uniform(0.5, 1.0, 5) / np.sqrt(np.arange(2, 7))
  return np.stack([amplitude, rng.uniform(0, 2 * np.pi, 5)], axis=1)


def outline_factor(angle: np.ndarray, irregularity: float, harmonics: np.ndarray) -> np.ndarray:
  """The outline's radius / the mass radius at ``angle``: 1 + irregularity x a unit-RMS sum of
  the harmonics (so the outline's RMS relative deviation from a circle is the irregularity),
  kept above 0.3 so a very irregular mass stays one piece."""
  amplitude, phase = harmonics[:, 0], harmonics[:, 1]
  wave = sum(a * np.cos(k * angle + p) for k, a, p in zip(range(2, 7), amplitude, phase))
  return np.maximum(0.3, 1.0 + irregularity * wave / np.sqrt(np.sum(amplitude ** 2) / 2))


def _box_touches_breast(box, q: np.ndarray, work: int) -> bool:
  r0, r1, c0, c1 = (v // work for v in box)
  return bool((q[max(0, r0 - 1):r1 + 2, max(0, c0 - 1):c1 + 2] < 1.1).any())


# --------------------------------------------------------------------------------------------
# Digitised film
# --------------------------------------------------------------------------------------------
FILM_MAX = 65535  # the scanner's 16-bit range


def digitised_film(rng: np.random.Generator, image: np.ndarray, breast: np.ndarray,
                   chest_wall: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """A digital mammogram as a film scan shows it (the DDSM / CBIS-DDSM kind).

  The breast's values are mapped affinely into the film's range (so a preprocessing that finds
  the same breast gives the same output); the air becomes film fog with grain; and around it:
  bright film-edge strips along the top and the bottom, slanted as a film lies on the scanner,
  each reaching into the breast's first and last rows at the chest wall (they touch it there);
  a scanner label in the corner away from the chest wall; a ruler with ticks along the far
  edge; a radiopaque skin marker on the skin line at the breast's deepest point (the nipple).

  Args:
    image: [rows, columns] display-ordered values (dense bright).
    breast: [rows, columns] bool, the breast.
    chest_wall: 'left' or 'right', the image edge the breast touches.

  Returns:
    uint16 film image (MONOCHROME2, 16 bits) and bool masks of 'breast' (without the marker),
    'strips', 'label', 'ruler', 'marker'.
  """
  rows, columns = image.shape
  r, c = np.mgrid[:rows, :columns]
  depth = c if chest_wall == "left" else columns - 1 - c  # columns from the chest wall
  tissue = image[breast].astype(np.float64)
  low, high = float(tissue.min()), float(tissue.max())
  film = 0.2 * FILM_MAX + (image - low) / max(high - low, 1e-9) * 0.5 * FILM_MAX
  fog = 0.06 * FILM_MAX + rng.normal(0.0, 0.006 * FILM_MAX, image.shape)
  film = np.where(breast, film, fog)

  chest_column = depth[0] == int(depth[0][breast.any(axis=0)].min())
  first, last = np.flatnonzero(breast[:, chest_column].any(axis=1))[[0, -1]]
  slope = 0.01 * rows / columns  # the film lies about half a degree off the scanner's axes
  thin = max(2, int(round(0.015 * rows)))
  top_edge = np.maximum(first + 1, thin) - slope * depth  # strip's inner edge per column
  bottom_edge = np.minimum(last - 1, rows - 1 - thin) + slope * depth
  strips = (r < np.maximum(top_edge, thin)) | (r > np.minimum(bottom_edge, rows - 1 - thin))
  film[strips] = 0.92 * FILM_MAX + rng.normal(0.0, 0.005 * FILM_MAX, int(strips.sum()))

  far = depth >= columns - max(2, int(round(0.012 * columns)))
  ticks = (r % max(4, rows // 40) < 2) & (depth >= columns - max(4, int(round(0.03 * columns))))
  ruler = (far | ticks) & ~strips
  film[ruler] = FILM_MAX

  label = ((r >= 2 * thin + 4) & (r < 2 * thin + 4 + rows // 10)
           & (depth >= columns - columns // 5) & (depth < columns - columns // 20))
  film[label] = FILM_MAX
  film[label & (r % 6 < 2) & (c % 5 < 3)] = 0.7 * FILM_MAX  # print on the label

  middle = (breast.sum(axis=0) > 0)
  nipple_depth = int(depth[0][middle].max())
  nipple_row = int(np.mean(np.flatnonzero(breast[:, depth[0] == nipple_depth].any(axis=1))))
  radius = max(2.0, 0.02 * rows)
  marker = (r - nipple_row) ** 2 + (depth - nipple_depth) ** 2 <= radius ** 2
  film[marker] = FILM_MAX
  film = np.clip(np.rint(film), 0, FILM_MAX).astype(np.uint16)
  return film, {"breast": breast & ~marker & ~strips, "strips": strips,
                "label": label, "ruler": ruler, "marker": marker}
