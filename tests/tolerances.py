"""The one place test tolerances live.

TOL: kernel vs reference, per dtype. TORCH_*: reference vs torch, float64 (different summation orders over
a few time steps). FD_*: central finite differences against an analytical gradient, float64.
"""
import numpy as np

TOL = {
    np.float32: dict(rtol=1e-4, atol=1e-5),
    np.float64: dict(rtol=1e-10, atol=1e-12),
}

TORCH_RTOL = 1e-7
TORCH_ATOL = 1e-9

# Central differences: truncation error ~ eps**2 * f''' ~ 1e-12, rounding ~ 1e-16 * |loss| / eps ~ 1e-10 * |loss|.
FD_EPS = 1e-6
FD_RTOL = 1e-6
FD_ATOL = 1e-8


def tol(dtype):
    """The kernel-vs-reference tolerance dict for a dtype (anything np.dtype accepts)."""
    return TOL[np.dtype(dtype).type]


def assert_close(actual, expected, dtype, err_msg=""):
    """assert_allclose with the tolerance of `dtype`; also checks the shape, and that None matches None."""
    if expected is None or actual is None:
        assert actual is None and expected is None, f"{err_msg}: {actual!r} vs {expected!r}"
        return
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{err_msg}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, err_msg=err_msg, **tol(dtype))
