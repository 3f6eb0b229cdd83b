"""Image augmentation as small pure functions on one image tensor.

Every random function is *stateless*: it takes a ``seed`` (an int32/int64
tensor of shape ``[2]``) and returns the same output for the same seed, so
that input pipelines are reproducible whatever their parallelism.

CIFAR-style transform (DARTS ``utils._data_transforms_cifar10``):
``RandomCrop(32, padding=4)`` (zero padding of the raw image), then
``RandomHorizontalFlip()``, ``ToTensor()`` (to [0, 1]), ``Normalize``, then
``Cutout(length)`` (zeros in the normalised space). ``cifar_train_transform``
applies them in that order.

ImageNet transforms (DARTS ``train_imagenet.py``, torchvision defaults):
``RandomResizedCrop(224)`` with scale (0.08, 1) and ratio (3/4, 4/3) and a
flip for training; ``Resize(256)`` (shorter side) and ``CenterCrop(224)`` for
evaluation.
"""

import functools

import tensorflow as tf

# torchvision ``RandomResizedCrop`` defaults (used by DARTS train_imagenet.py).
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Evaluation resize/crop ratio of the ImageNet reference: Resize(256),
# CenterCrop(224).
EVAL_RESIZE_RATIO = 256.0 / 224.0


def split_seed(seed, num):
    """Splits a stateless seed into ``num`` independent seeds.

    Args:
        seed: Tensor of shape ``[2]`` (int32 or int64).
        num: Number of seeds wanted.

    Returns:
        Tensor of shape ``[num, 2]``.
    """
    return tf.random.experimental.stateless_split(seed, num)


def to_float(image):
    """Converts a uint8 image to float32 in [0, 1]; casts float inputs."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def normalize(image, mean, std):
    """Per-channel ``(image - mean) / std`` (torchvision ``Normalize``)."""
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)
    return (image - mean) / std


def crop_at(image, padding, offset):
    """Zero-pads by ``padding`` on each side, then crops at ``offset``.

    The result is ``image`` translated by ``padding - offset`` pixels (rows,
    columns), with zeros shifted in.

    Args:
        image: ``[H, W, C]`` tensor.
        padding: Non-negative int.
        offset: ``[2]`` int tensor (row, column), each in ``[0, 2 padding]``.

    Returns:
        ``[H, W, C]`` tensor of the same dtype.
    """
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    offset = tf.cast(offset, tf.int32)
    return tf.slice(padded, tf.stack([offset[0], offset[1], 0]), shape)


def random_crop(image, padding, seed):
    """Random crop with zero padding (torchvision ``RandomCrop(size, p)``).

    Offsets are uniform in ``[0, 2 padding]`` for rows and columns.
    """
    if padding == 0:
        return image
    offset = tf.random.stateless_uniform(
        [2], seed, minval=0, maxval=2 * padding + 1, dtype=tf.int32
    )
    return crop_at(image, padding, offset)


def flip(image):
    """Left-right mirror of an ``[H, W, C]`` image."""
    return tf.reverse(image, axis=[1])


def random_flip(image, seed):
    """Mirrors left-right with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def cutout_at(image, length, center):
    """Zeros a square of side ``length`` centred at ``center``, all channels.

    DARTS ``utils.Cutout``: rows ``[y - length // 2, y + length // 2)`` and
    the same for columns, clipped at the borders (so an odd ``length`` gives a
    side of ``length - 1``, as in the reference).

    Args:
        image: ``[H, W, C]`` float tensor.
        length: Side of the square in pixels (0 disables).
        center: ``[2]`` int tensor (row, column).

    Returns:
        The image with the square set to zero.
    """
    if length <= 0:
        return image
    shape = tf.shape(image)
    center = tf.cast(center, tf.int32)
    half = length // 2
    rows = tf.range(shape[0])
    cols = tf.range(shape[1])
    in_rows = (rows >= center[0] - half) & (rows < center[0] + half)
    in_cols = (cols >= center[1] - half) & (cols < center[1] + half)
    mask = in_rows[:, None, None] & in_cols[None, :, None]
    return tf.where(mask, tf.zeros_like(image), image)


def random_cutout(image, length, seed):
    """DARTS Cutout with a centre uniform over the pixels of the image."""
    if length <= 0:
        return image
    shape = tf.shape(image)
    hw = shape[:2]
    unit = tf.random.stateless_uniform([2], seed)  # in [0, 1)
    center = tf.cast(tf.floor(unit * tf.cast(hw, tf.float32)), tf.int32)
    center = tf.minimum(center, hw - 1)
    return cutout_at(image, length, center)


def cifar_train_transform(image, seed, *, padding, do_flip, mean, std, cutout):
    """DARTS CIFAR train transform on one raw image.

    Args:
        image: ``[H, W, C]`` uint8 (0..255) or float (0..1) image.
        seed: ``[2]`` stateless seed.
        padding: Zero padding of the random crop (0 disables the crop).
        do_flip: Whether to apply the random horizontal flip.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        cutout: Cutout length in pixels (0 disables).

    Returns:
        ``[H, W, C]`` float32 normalised image.
    """
    seeds = split_seed(seed, 3)
    image = random_crop(to_float(image), padding, seeds[0])
    if do_flip:
        image = random_flip(image, seeds[1])
    image = normalize(image, mean, std)
    return random_cutout(image, cutout, seeds[2])


def eval_transform(image, *, mean, std):
    """No augmentation: ``to_float`` then ``normalize``."""
    return normalize(to_float(image), mean, std)


def _crop_window(image_shape, seed, scale, ratio):
    """Samples a RandomResizedCrop window; returns ``(begin, size)``."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=scale,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, size


def random_resized_crop(
    image, size, seed, scale=RESIZED_CROP_SCALE, ratio=RESIZED_CROP_RATIO
):
    """RandomResizedCrop of a decoded ``[H, W, 3]`` image to ``size``.

    Returns a float32 image with values in the input's range (0..255 for
    uint8 input).
    """
    begin, crop_size = _crop_window(tf.shape(image), seed, scale, ratio)
    crop = tf.slice(image, begin, crop_size)
    return tf.image.resize(crop, [size, size], method="bilinear")


def random_resized_crop_jpeg(
    jpeg, size, seed, scale=RESIZED_CROP_SCALE, ratio=RESIZED_CROP_RATIO
):
    """RandomResizedCrop decoding only the window of a JPEG string.

    ``tf.image.decode_and_crop_jpeg`` avoids decoding the whole image, which
    matters for ImageNet throughput.
    """
    shape = tf.image.extract_jpeg_shape(jpeg)
    begin, crop_size = _crop_window(shape, seed, scale, ratio)
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    crop = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
    return tf.image.resize(crop, [size, size], method="bilinear")


def resize_center_crop(image, size, resize_size=None):
    """Resize the shorter side to ``resize_size``, then center-crop ``size``.

    ``resize_size`` defaults to ``round(size * 256 / 224)``.
    """
    if resize_size is None:
        resize_size = round(size * EVAL_RESIZE_RATIO)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    factor = resize_size / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * factor), tf.int32)
    new_shape = tf.maximum(new_shape, resize_size)
    resized = tf.image.resize(image, new_shape, method="bilinear")
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    return tf.slice(resized, tf.stack([top, left, 0]), [size, size, 3])


def imagenet_train_transform(
    jpeg, seed, *, size, mean, std, do_flip=True, cutout=0
):
    """ImageNet train transform on a JPEG string: crop, flip, normalise."""
    seeds = split_seed(seed, 3)
    image = random_resized_crop_jpeg(jpeg, size, seeds[0]) / 255.0
    if do_flip:
        image = random_flip(image, seeds[1])
    image = normalize(image, mean, std)
    return random_cutout(image, cutout, seeds[2])


def imagenet_eval_transform(jpeg, *, size, mean, std):
    """ImageNet eval transform on a JPEG string: resize, center crop."""
    image = tf.image.decode_jpeg(jpeg, channels=3)
    image = resize_center_crop(image, size) / 255.0
    return normalize(image, mean, std)


def make_transform(kind, train, size, padding, flip, cutout, *, mean, std):
    """Per-element transform ``fn(raw_image, seed) -> float32 image``.

    Args:
        kind: ``"imagenet"`` (raw images are JPEG strings) or ``"cifar"``
            (raw images are decoded uint8 or [0, 1] float arrays).
        train: Augment (True) or only resize/normalise (False; ``seed`` is
            then ignored).
        size: Output side (ImageNet; CIFAR-style images keep their size).
        padding: Random-crop zero padding (CIFAR-style).
        flip: Random horizontal flip.
        cutout: Cutout length (0: none).
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.

    Returns:
        The transform.
    """
    norm = {"mean": mean, "std": std}
    if kind == "imagenet" and not train:
        return lambda jpeg, seed: imagenet_eval_transform(
            jpeg, size=size, **norm
        )
    if not train:
        return lambda image, seed: eval_transform(image, **norm)
    if kind == "imagenet":
        fn, kwargs = imagenet_train_transform, {"size": size}
    else:
        fn, kwargs = cifar_train_transform, {"padding": padding}
    kwargs.update(do_flip=flip, cutout=cutout, **norm)
    return functools.partial(fn, **kwargs)
