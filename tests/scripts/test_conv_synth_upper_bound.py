"""scripts/conv_synth_upper_bound.py: the least-squares conv fit, on cases with a
known answer."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import script_module

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "conv_synth_upper_bound.py"


@pytest.fixture(scope="module")
def ub():
    """The script as a module; its absl flags are removed afterwards, so that
    other scripts' tests can define their own."""
    with script_module(SCRIPT, "conv_synth_upper_bound") as module:
        yield module


def _inputs(seed=0, shape=(6, 9, 8, 3)):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_patch_rows_are_the_zero_padded_windows_in_kernel_order(ub):
    x = _inputs(shape=(2, 4, 5, 3))
    rows = ub.patch_rows(x, 3, (np.array([1, 0]), np.array([0, 2]), np.array([4, 1])))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # Pixel (0, 4) of example 1: its window covers padded rows 0..2, cols 4..6.
    np.testing.assert_array_equal(rows[0, :-1], padded[1, 0:3, 4:7, :].ravel())
    np.testing.assert_array_equal(rows[1, :-1], padded[0, 2:5, 1:4, :].ravel())
    assert rows[0, -1] == 1.0 and rows.shape == (2, 3 * 3 * 3 + 1)


def test_a_linear_conv_target_is_fitted_exactly(ub):
    x = _inputs()
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 3, 2)).astype("float32")
    bias = np.array([0.7, -1.3], "float32")
    target = tf.nn.conv2d(x, kernel, 1, "SAME").numpy() + bias
    fit, held_out = ub.upper_bound_cosine(x, target, 3)
    assert fit == pytest.approx(1.0, abs=1e-9)
    assert held_out == pytest.approx(1.0, abs=1e-9)
    index = ub._pixels(np.arange(3), 9, 8, None, rng)
    weights = ub.fit_linear_conv(x, target, 3, index)
    np.testing.assert_allclose(weights[:-1], kernel.reshape(-1, 2), atol=1e-5)
    np.testing.assert_allclose(weights[-1], bias, atol=1e-5)


def test_the_fit_is_numpy_lstsq_and_its_cosine_the_projection(ub):
    x = _inputs(2)
    target = np.random.default_rng(3).normal(size=x.shape[:3] + (2,))
    index = ub._pixels(np.arange(6), 9, 8, 200, np.random.default_rng(4))
    weights = ub.fit_linear_conv(x, target, 3, index, chunk=64)
    design = ub.patch_rows(x, 3, index)
    y = target[index]
    expected = np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(weights, expected, rtol=1e-6, atol=1e-8)
    pred = design @ expected
    cosine = np.sum(pred * y) / np.sqrt(np.sum(pred**2) * np.sum(y**2))
    assert ub.conv_cosine(x, target, weights, 3, index, chunk=64) == pytest.approx(
        cosine, rel=1e-9
    )
    # Noise: 28 columns fit 200 rows of 2 channels to about sqrt(28 / 200).
    assert 0.2 < cosine < 0.55


def test_a_position_dependent_target_needs_position_planes(ub):
    x = _inputs(5, shape=(8, 12, 12, 2))
    rows = ub.position_planes(8, 12, 12)
    target = 2.0 * rows[..., :1] - rows[..., 1:] + 0.1 * x[..., :1]
    without, _ = ub.upper_bound_cosine(x, target, 3)
    with_planes, held_out = ub.upper_bound_cosine(
        np.concatenate([x, rows], axis=-1), target, 3
    )
    assert without < 0.5
    assert with_planes == pytest.approx(1.0, abs=1e-9)
    assert held_out == pytest.approx(1.0, abs=1e-9)


def test_position_planes_run_from_minus_one_to_one(ub):
    planes = ub.position_planes(2, 3, 5)
    assert planes.shape == (2, 3, 5, 2)
    np.testing.assert_allclose(planes[1, :, 0, 0], [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(planes[0, 2, :, 1], [-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(ub.position_planes(1, 1, 1), np.zeros((1, 1, 1, 2)))


def test_upper_bound_names_mismatched_shapes(ub):
    with pytest.raises(ValueError, match=r"target.shape=\(2, 4, 3, 1\)"):
        ub.upper_bound_cosine(np.zeros((2, 4, 4, 1)), np.zeros((2, 4, 3, 1)), 3)
    with pytest.raises(ValueError, match="kernel_size=4"):
        ub.patch_rows(np.zeros((1, 4, 4, 1)), 4, ([0], [0], [0]))


def test_a_dilated_conv_target_is_fitted_exactly_at_its_rate_only(ub):
    x = _inputs(6, shape=(6, 11, 10, 3))
    rng = np.random.default_rng(7)
    kernel = rng.normal(size=(3, 3, 3, 2)).astype("float32")
    target = tf.nn.conv2d(x, kernel, 1, "SAME", dilations=2).numpy() + 0.5
    fit, held_out = ub.upper_bound_cosine(x, target, 3, dilation_rate=2)
    assert fit == pytest.approx(1.0, abs=1e-9)
    assert held_out == pytest.approx(1.0, abs=1e-9)
    index = ub._pixels(np.arange(3), 11, 10, None, rng)
    weights = ub.fit_linear_conv(x, target, 3, index, dilation_rate=2)
    np.testing.assert_allclose(weights[:-1], kernel.reshape(-1, 2), atol=1e-5)
    # A plain 3x3 kernel sees other pixels: it explains part of the target.
    plain, _ = ub.upper_bound_cosine(x, target, 3)
    assert plain < 0.6
