import numpy as np
import pytest

from edge.runtime.preprocess import Normalisation, to_model_input


def reference(images_bgr: np.ndarray, norm: Normalisation) -> np.ndarray:
    """The preprocessing written out plainly: RGB, [0, 1], (x - mean) / std, NCHW."""
    x = images_bgr[..., ::-1].astype(np.float64) / 255.0
    x = (x - np.asarray(norm.mean)) / np.asarray(norm.std)
    return x.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("shape", [(1, 8, 8, 3), (5, 17, 31, 3), (2, 256, 256, 3)])
def test_matches_the_plain_formula(shape):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    norm = Normalisation(mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))
    x = to_model_input(images, None, norm)
    assert x.dtype == np.float32 and x.shape == (shape[0], 3, shape[1], shape[2])
    assert x.flags.c_contiguous
    np.testing.assert_allclose(x, reference(images, norm), atol=1e-5)


def test_strided_views_are_accepted():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    view = frame[:, ::2, 1::2]
    np.testing.assert_allclose(to_model_input(view, None, Normalisation()),
                               reference(np.ascontiguousarray(view), Normalisation()), atol=1e-5)


def test_resizes_when_asked():
    images = np.full((2, 30, 20, 3), 128, dtype=np.uint8)
    x = to_model_input(images, (16, 8), Normalisation())
    assert x.shape == (2, 3, 16, 8)
    np.testing.assert_allclose(x, reference(np.full((2, 16, 8, 3), 128, np.uint8), Normalisation()),
                               atol=1e-5)


def test_empty_batch_keeps_its_shape():
    x = to_model_input(np.zeros((0, 12, 10, 3), np.uint8), None, Normalisation())
    assert x.shape == (0, 3, 12, 10) and x.dtype == np.float32


def test_refuses_what_is_not_a_batch_of_bgr_images():
    with pytest.raises(ValueError, match="BGR"):
        to_model_input(np.zeros((4, 4, 3), np.uint8), None, Normalisation())
