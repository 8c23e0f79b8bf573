"""Float tolerances derived from the computation, so that a test holds on any x86-64 CPU.

Two float32 evaluations of the same function differ by their rounding, and how they round
depends on the summation order that a CPU's kernels choose (vector width, blocking, threads).
A tolerance tuned on one machine (``rtol=2e-5, atol=1e-6``) therefore fails on another. The
tests compare instead with a float64 evaluation of the same function and allow what float32
arithmetic can produce:

* :func:`assert_reduction_close`: one reduction (a convolution, a matmul, a sum). Evaluated in
  any order, a sum of ``n`` products in a format of unit roundoff ``u`` lies within
  ``gamma_n * sum(|products|)`` of the exact value, ``gamma_n = n u / (1 - n u)`` (Higham,
  *Accuracy and Stability of Numerical Algorithms*, 2nd ed., Lemma 3.1 and eq. 3.4). The bound
  holds for every order, so it holds on every CPU; a wrong tap, a wrong padding or a missing
  term moves a result by a whole product, far outside it.
* :func:`assert_as_accurate_as`: a deep computation (a network's forward pass and gradient),
  where a worst-case bound through every layer would be vacuous. Two float32 implementations of
  one function are each compared with the float64 evaluation; the one under test may be at most
  ``factor`` times further from it than the reference implementation is on the same machine,
  plus a floor of a few units in the last place of the tensor's scale. The reference's own
  error is the machine's rounding, measured where the test runs.

Exact equality stays where the property is exact (the same program twice on one machine:
resume, determinism, masking by multiplying with zero).
"""

from __future__ import annotations

import jax
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
UNIT_ROUNDOFF32 = EPS32 / 2


def gamma(n: int, unit_roundoff: float = UNIT_ROUNDOFF32) -> float:
  """Higham's gamma_n: the relative error bound of a sum of ``n`` terms."""
  nu = n * unit_roundoff
  assert nu < 1, n
  return nu / (1 - nu)


def assert_reduction_close(actual, exact, abs_sum, terms: int, err_msg: str = "") -> None:
  """``actual`` (float32) is within the rounding bound of ``exact`` (float64).

  Args:
    actual: the float32 result, any shape.
    exact: the same reduction evaluated in float64, same shape.
    abs_sum: per element, the sum of the absolute values of the reduced products (float64),
      e.g. the convolution of ``|x|`` with ``|w|``.
    terms: number of products summed into each element (kernel taps x input channels).
  """
  actual, exact = np.asarray(actual, np.float64), np.asarray(exact, np.float64)
  bound = gamma(terms) * np.asarray(abs_sum, np.float64)
  # The float32 inputs are the same values in both evaluations; one more rounding stores the
  # result: |exact| * u.
  bound = bound + UNIT_ROUNDOFF32 * np.abs(exact)
  excess = np.abs(actual - exact) - bound
  assert np.all(excess <= 0), (
      f"{err_msg} {int((excess > 0).sum())} of {excess.size} elements beyond the float32 "
      f"rounding bound; worst by {excess.max():.3g} "
      f"(bound there {bound.flat[excess.argmax()]:.3g})")


def assert_as_accurate_as(actual, reference, exact, factor: float = 4.0, ulps: float = 16.0,
                          err_msg: str = "") -> None:
  """Per leaf of a pytree: ``max|actual - exact| <= factor * max|reference - exact| + floor``.

  ``actual`` and ``reference`` are float32 evaluations of one function by two implementations,
  ``exact`` its float64 evaluation; floor = ``ulps`` x EPS32 x ``max|exact|`` of that leaf (a
  tensor whose reference happens to round exactly still allows a few ulps of its scale).
  """
  def check(path, a, r, e):
    a, r, e = (np.asarray(v, np.float64) for v in (a, r, e))
    scale = float(np.abs(e).max()) if e.size else 0.0
    allowed = factor * float(np.abs(r - e).max(initial=0.0)) + ulps * EPS32 * scale
    error = float(np.abs(a - e).max(initial=0.0))
    assert error <= allowed, (f"{err_msg} {jax.tree_util.keystr(path)}: error {error:.3g} "
                              f"against float64, allowed {allowed:.3g} (scale {scale:.3g})")
  jax.tree_util.tree_map_with_path(check, actual, reference, exact)


def assert_close_at_scale(actual, expected, ulps: float, err_msg: str = "") -> None:
  """Per leaf: ``max|actual - expected| <= ulps * EPS32 * max|expected|``.

  For two float32 evaluations of one function that differ only in summation order, when no
  float64 evaluation is at hand: the tolerance scales with the tensor, not with each element,
  so values that cancel to near zero are not held to their own relative precision.
  """
  def check(path, a, e):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    allowed = ulps * EPS32 * float(np.abs(e).max(initial=0.0))
    error = float(np.abs(a - e).max(initial=0.0))
    assert error <= allowed, (f"{err_msg} {jax.tree_util.keystr(path)}: differ by {error:.3g}, "
                              f"allowed {allowed:.3g} ({ulps} ulps of the leaf's scale)")
  jax.tree_util.tree_map_with_path(check, actual, expected)
