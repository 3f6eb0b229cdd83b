"""Tests of `vision.augment`: crop, flip, Cutout, ImageNet crops."""

import numpy as np
import pytest
import tensorflow as tf

from tf_amended_darts.vision import augment

SIZE = 12


def _image(size=SIZE, channels=3):
    """A float image whose pixels are all distinct and non-zero."""
    values = np.arange(1, size * size * channels + 1, dtype=np.float32)
    return tf.constant(values.reshape(size, size, channels))


def _seed(i):
    return tf.constant([i, 7], tf.int64)


def _translated(image, padding, dy, dx):
    """Numpy reference: zero pad, then crop at (dy, dx)."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    pad = ((padding, padding), (padding, padding), (0, 0))
    return np.pad(image, pad)[dy : dy + h, dx : dx + w]


def test_crop_at_is_a_translation_with_zeros():
    image = _image()
    for dy, dx in [(0, 0), (4, 4), (8, 0), (3, 7)]:
        out = augment.crop_at(image, 4, tf.constant([dy, dx]))
        np.testing.assert_array_equal(out, _translated(image, 4, dy, dx))
    centred = augment.crop_at(image, 4, tf.constant([4, 4]))
    np.testing.assert_array_equal(centred, image)


def test_random_crop_shape_translation_and_determinism():
    image = _image()
    offsets = set()
    for i in range(30):
        out = augment.random_crop(image, 2, _seed(i)).numpy()
        assert out.shape == image.shape and out.dtype == np.float32
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(out, _translated(image, 2, dy, dx))
        ]
        assert len(matches) == 1  # exactly one translation in [0, 2p]^2
        offsets.add(matches[0])
        again = augment.random_crop(image, 2, _seed(i))
        np.testing.assert_array_equal(out, again)
    assert len(offsets) > 5  # offsets vary with the seed
    np.testing.assert_array_equal(
        augment.random_crop(image, 0, _seed(0)), image
    )


def test_crop_keeps_uint8():
    image = tf.cast(_image() % 250, tf.uint8)
    out = augment.random_crop(image, 3, _seed(1))
    assert out.dtype == tf.uint8 and out.shape == image.shape


def test_flip():
    image = _image()
    flipped = augment.flip(image).numpy()
    np.testing.assert_array_equal(flipped, np.asarray(image)[:, ::-1])
    np.testing.assert_array_equal(augment.flip(flipped), image)
    seen = set()
    for i in range(20):
        out = augment.random_flip(image, _seed(i)).numpy()
        if np.array_equal(out, image):
            seen.add("same")
        else:
            np.testing.assert_array_equal(out, flipped)
            seen.add("flipped")
    assert seen == {"same", "flipped"}


@pytest.mark.parametrize(
    "length, center, rows, cols",
    [
        (4, (6, 6), (4, 8), (4, 8)),  # interior: a 4x4 square
        (5, (6, 6), (4, 8), (4, 8)),  # odd length: side 4, as DARTS
        (8, (0, 0), (0, 4), (0, 4)),  # clipped at the top-left corner
        (8, (11, 2), (7, 12), (0, 6)),  # clipped at two borders
        (16, (5, 5), (0, 12), (0, 12)),  # larger than the image
    ],
)
def test_cutout_at_zeroes_exactly_the_clipped_square(
    length, center, rows, cols
):
    ones = tf.ones([SIZE, SIZE, 3])
    out = augment.cutout_at(ones, length, tf.constant(center)).numpy()
    expected = np.ones([SIZE, SIZE, 3], np.float32)
    expected[rows[0] : rows[1], cols[0] : cols[1], :] = 0.0
    np.testing.assert_array_equal(out, expected)


def test_cutout_zero_length_is_identity():
    image = _image()
    np.testing.assert_array_equal(augment.cutout_at(image, 0, [3, 3]), image)
    out = augment.random_cutout(image, 0, _seed(0))
    np.testing.assert_array_equal(out, image)


def test_random_cutout_is_one_clipped_square():
    ones = tf.ones([SIZE, SIZE, 3])
    areas = set()
    for i in range(30):
        out = augment.random_cutout(ones, 6, _seed(i)).numpy()
        zero = out == 0.0
        assert np.array_equal(zero[..., 0], zero[..., 2])  # all channels
        rows = np.flatnonzero(zero[..., 0].any(axis=1))
        cols = np.flatnonzero(zero[..., 0].any(axis=0))
        # A full rectangle of side <= 6 (clipped), nothing outside it.
        assert len(rows) <= 6 and len(cols) <= 6
        assert zero[..., 0].sum() == len(rows) * len(cols)
        assert np.all(zero[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
        areas.add(len(rows) * len(cols))
        again = augment.random_cutout(ones, 6, _seed(i)).numpy()
        np.testing.assert_array_equal(out, again)
    assert 36 in areas and len(areas) > 1  # unclipped and clipped squares


def test_normalize_and_to_float():
    image = tf.constant([[[0, 255, 51]]], tf.uint8)
    as_float = augment.to_float(image)
    np.testing.assert_allclose(as_float, [[[0.0, 1.0, 0.2]]], rtol=1e-6)
    out = augment.normalize(as_float, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1))
    np.testing.assert_allclose(out, [[[-1.0, 2.0, 0.0]]], atol=1e-6)


def test_cifar_train_transform_order():
    """Crop pads the raw image with zeros, before normalisation."""
    mean, std = (0.25, 0.5, 0.75), (0.5, 0.5, 0.25)
    ones = tf.ones([SIZE, SIZE, 3], tf.uint8) * 255
    kwargs = {
        "padding": 3,
        "do_flip": True,
        "mean": mean,
        "std": std,
        "cutout": 0,
    }
    allowed = [(1 - np.array(mean)) / std, -np.array(mean) / std]
    padded_seen = False
    for i in range(10):
        out = augment.cifar_train_transform(ones, _seed(i), **kwargs).numpy()
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.float32
        is_one = np.isclose(out, allowed[0]).all(axis=-1)
        is_pad = np.isclose(out, allowed[1]).all(axis=-1)
        assert np.all(is_one | is_pad)
        padded_seen |= bool(is_pad.any())
    assert padded_seen
    kwargs["cutout"] = 4  # Cutout zeros come after normalisation
    out = augment.cifar_train_transform(ones, _seed(0), **kwargs).numpy()
    assert np.any(np.all(out == 0.0, axis=-1))


def test_imagenet_crop_window_ranges():
    scale, ratio = augment.RESIZED_CROP_SCALE, augment.RESIZED_CROP_RATIO
    shape = tf.constant([300, 400, 3])
    for i in range(20):
        begin, size = augment._crop_window(shape, _seed(i), scale, ratio)
        h, w = int(size[0]), int(size[1])
        assert 0 <= int(begin[0]) and int(begin[0]) + h <= 300
        assert 0 <= int(begin[1]) and int(begin[1]) + w <= 400
        assert scale[0] - 0.01 <= h * w / (300 * 400) <= 1.0
        assert ratio[0] - 0.05 <= w / h <= ratio[1] + 0.05


def _jpeg(h, w, value=None):
    if value is None:
        pixels = tf.random.stateless_uniform([h, w, 3], [1, 2], 0, 255)
    else:
        pixels = tf.fill([h, w, 3], float(value))
    return tf.io.encode_jpeg(tf.cast(pixels, tf.uint8))


def test_random_resized_crop_shapes_and_determinism():
    image = tf.cast(
        tf.reshape(tf.range(60 * 80 * 3) % 251, [60, 80, 3]), tf.uint8
    )
    out = augment.random_resized_crop(image, 24, _seed(1))
    assert out.shape == (24, 24, 3) and out.dtype == tf.float32
    jpeg = _jpeg(60, 80)
    a = augment.random_resized_crop_jpeg(jpeg, 24, _seed(3))
    b = augment.random_resized_crop_jpeg(jpeg, 24, _seed(3))
    assert a.shape == (24, 24, 3)
    np.testing.assert_array_equal(a, b)
    c = augment.random_resized_crop_jpeg(jpeg, 24, _seed(4))
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("shape", [(300, 400), (400, 300), (47, 17)])
def test_resize_center_crop(shape):
    image = tf.zeros(list(shape) + [3], tf.uint8)
    assert augment.resize_center_crop(image, 32).shape == (32, 32, 3)


def test_resize_center_crop_takes_the_centre():
    # A 256x512 image whose centre 256x256 square is white, sides black.
    image = np.zeros([256, 512, 3], np.float32)
    image[:, 128:384] = 1.0
    out = augment.resize_center_crop(tf.constant(image), 224, 256).numpy()
    np.testing.assert_allclose(out, 1.0, atol=1e-6)


def test_imagenet_transforms_normalise():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    jpeg = _jpeg(50, 70, value=128)
    expected = (128 / 255 - np.array(mean)) / np.array(std)
    train = augment.imagenet_train_transform(
        jpeg, _seed(0), size=32, mean=mean, std=std
    ).numpy()
    evaluation = augment.imagenet_eval_transform(
        jpeg, size=32, mean=mean, std=std
    ).numpy()
    for out in (train, evaluation):
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        np.testing.assert_allclose(
            out, np.broadcast_to(expected, out.shape), atol=0.05
        )


def test_make_transform():
    norm = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    image = tf.fill([8, 8, 3], tf.constant(255, tf.uint8))
    evaluate = augment.make_transform("cifar", False, 8, 1, True, 2, **norm)
    np.testing.assert_allclose(evaluate(image, _seed(0)), 1.0)
    train = augment.make_transform("cifar", True, 8, 1, True, 2, **norm)
    assert train(image, _seed(0)).shape == (8, 8, 3)
    jpeg = _jpeg(40, 30)
    for is_train in (True, False):
        fn = augment.make_transform(
            "imagenet", is_train, 16, 0, True, 0, **norm
        )
        assert fn(jpeg, _seed(0)).shape == (16, 16, 3)
