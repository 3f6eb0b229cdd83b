"""Fashion-MNIST from its original idx files (no TFDS, no download).

Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) is 60,000 training and
10,000 test greyscale 28x28 images of 10 kinds of clothing. Its original
distribution is four gzipped idx files, which Debian packages as
``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``; the
files land in `DEFAULT_DIR`). They are read here with numpy: the idx format
is a big-endian header (two zero bytes, a type code, the number of
dimensions, one uint32 per dimension) followed by the raw array.
"""

import functools
import gzip
import os
import struct

import numpy as np
import tensorflow as tf

# Where Debian's dataset-fashion-mnist package installs the files
# (`dpkg -L dataset-fashion-mnist`).
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
# The original file names (github.com/zalandoresearch/fashion-mnist, data/).
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
NUM_TRAIN, NUM_TEST = 60_000, 10_000
IMAGE_SIZE = 28
NUM_CLASSES = 10
# idx type code of unsigned bytes (the only type these files use).
_IDX_UBYTE = 0x08
INSTALL_COMMAND = "apt-get install dataset-fashion-mnist"
_RESIZE_CHUNK = 10_000  # images resized at once (bounded memory)


def data_dir_or_default(data_dir):
    """``data_dir``, or `DEFAULT_DIR` when it is None or empty."""
    return data_dir or DEFAULT_DIR


def paths(data_dir, split):
    """``(images_path, labels_path)`` of ``split`` under ``data_dir``."""
    d = data_dir_or_default(data_dir)
    return tuple(os.path.join(d, name) for name in FILES[split])


def missing(data_dir):
    """The file names of either split absent from ``data_dir``."""
    return [
        os.path.basename(p)
        for split in FILES
        for p in paths(data_dir, split)
        if not os.path.exists(p)
    ]


def read_idx(path):
    """Reads one (gzipped) idx file into a numpy array of uint8.

    Args:
        path: an idx file, gzipped if its name ends in ``.gz``.

    Returns:
        The array, with the shape the header gives.

    Raises:
        ValueError: a malformed header, another type than unsigned bytes,
            or fewer bytes than the header announces.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic number).")
    code, ndim = raw[2], raw[3]
    if code != _IDX_UBYTE:
        raise ValueError(
            f"{path}: idx type 0x{code:02x} is not supported; Fashion-MNIST "
            f"files hold unsigned bytes (0x{_IDX_UBYTE:02x})."
        )
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(shape)) if shape else 1
    if len(raw) - header != size:
        raise ValueError(
            f"{path}: the header announces {size} values of shape {shape}, "
            f"the file holds {len(raw) - header}."
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def write_idx(path, array):
    """Writes a uint8 array as a gzipped idx file (tests, small subsets)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx takes uint8 arrays, not {array.dtype}.")
    header = bytes([0, 0, _IDX_UBYTE, array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def load_split(data_dir, split):
    """``(images [N, 28, 28] uint8, labels [N] int32)`` of one split.

    Raises:
        FileNotFoundError: a file of the split is absent.
        ValueError: the files are malformed or disagree in length.
    """
    images_path, labels_path = paths(data_dir, split)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{images_path} and {labels_path}: expected images [N, H, W] "
            f"and labels [N]; found {images.shape} and {labels.shape}."
        )
    return images, labels.astype(np.int32)


def missing_message(data_dir, offline):
    """The one-line error of absent files, ending with ``offline``."""
    d = data_dir_or_default(data_dir)
    absent = ", ".join(missing(data_dir)) or "none"
    return (
        f"Fashion-MNIST not found in --data_dir={d} (missing: {absent}). "
        f"Install it with `{INSTALL_COMMAND}` (files in {DEFAULT_DIR}) or "
        f"copy its four idx .gz files to {d}, {offline}"
    )


@functools.lru_cache(maxsize=4)
def arrays(data_dir, split, image_size=IMAGE_SIZE):
    """``split`` as ``[N, S, S, 3]`` uint8 images and int32 labels.

    The grey images are resized (bilinear, antialiased, rounded) when
    ``image_size`` is not 28, and repeated to 3 channels. Cached; the arrays
    are read-only.

    Raises:
        FileNotFoundError: a file of either split is absent.
    """
    if missing(data_dir):
        raise FileNotFoundError(missing_message(data_dir, ""))
    images, labels = load_split(data_dir, split)
    images = images[..., None]
    if image_size != IMAGE_SIZE:
        resized = []
        for start in range(0, len(images), _RESIZE_CHUNK):
            x = tf.image.resize(
                images[start : start + _RESIZE_CHUNK],
                [image_size] * 2,
                antialias=True,
            )
            x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
            resized.append(x.numpy())
        images = np.concatenate(resized)
    images = np.repeat(images, 3, axis=-1)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels
