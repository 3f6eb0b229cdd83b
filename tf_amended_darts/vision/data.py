"""Datasets and tf.data pipelines for search, re-training and evaluation.

``digits`` is the embedded offline data: scikit-learn's bundled 8x8 digits
(1797 images, grey levels 0..16) scaled to [0, 1], upsampled (bilinear) to
``image_size`` (default 16), repeated to 3 channels, split once by a fixed
seeded shuffle into 1437 train / 360 test images, normalised with its train
statistics. ``cifar10`` (TFDS, decoded once and kept in memory: 150 MB of
uint8) and ``imagenet`` (TFDS ``imagenet2012``, a manual download, streamed
as JPEGs) are read from ``data_dir``; ``fashion_mnist`` (60,000 / 10,000
28x28 grey images, repeated to 3 channels, resized when ``image_size`` is
not 28; kept in memory as uint8) is read from its original idx files in
``data_dir`` (default: where Debian's ``dataset-fashion-mnist`` puts them,
`fashion_mnist.DEFAULT_DIR`). Absent data raises
``DatasetNotFoundError`` at once, saying how to provide it. That check is
TFDS's own (``as_dataset`` fails before reading; ``is_prepared()`` is False
under ``tfds.testing.mock_data``); ``download=True`` first checks that the
host is reachable instead of retrying for minutes.

Search split (DARTS ``train_search.py``): search-train is the first
``floor(train_portion * n)`` training indices, search-validation the rest.
DARTS cuts by index (its ``SubsetRandomSampler`` shuffles within a half);
here indices are first permuted with ``seed`` (``shuffle_split=False``: the
DARTS rule; TFDS's CIFAR-10 order differs from torchvision's anyway).
ImageNet is cut in TFDS record order. Both halves are reshuffled
independently every epoch and, as in DARTS (one dataset with the train
transform), both are augmented (``augment_val=False`` to not).

Augmentation (``augment``): random crop with zero padding ``image_size // 8``
(4 at 32x32, as DARTS), horizontal flip (off by default for digits, which
are not mirror-invariant), normalisation, optional Cutout; ImageNet: random
resized crop, flip, normalisation.

Determinism: seeded shuffles, and stateless augmentation keyed by a
per-element seed from a seeded ``Dataset.random`` (new every epoch), in
deterministic order: pipelines built with the same ``seed`` yield identical
batches epoch after epoch, whatever the parallelism, also under
``tf.config.experimental.enable_op_determinism``. All seeds derive from
``seed`` through ``numpy.random.SeedSequence``. TensorFlow pairs the seed of
``Dataset.shuffle`` and ``Dataset.random`` with its global seed, so the
batches depend on that too: the launchers set it from ``--seed``
(``keras.utils.set_random_seed``) before building any pipeline.
"""

import collections
import dataclasses
import functools
import socket

import numpy as np
import tensorflow as tf

from tf_amended_darts.nn.validate import check_int
from tf_amended_darts.vision import augment, fashion_mnist

DATASETS = ("digits", "cifar10", "imagenet", "fashion_mnist")
# Datasets held in memory as arrays (`load_arrays`).
IN_MEMORY = ("digits", "cifar10", "fashion_mnist")

# DARTS reference utils.py (_data_transforms_cifar10): CIFAR_MEAN, CIFAR_STD.
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
# DARTS train_imagenet.py normalize (the torchvision ImageNet statistics).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Mean and standard deviation of the 60,000 Fashion-MNIST training images
# in [0, 1] (computed from train-images-idx3-ubyte.gz; the same in each of
# the 3 channels the grey images are repeated to).
FASHION_MNIST_MEAN = (0.28604060,) * 3
FASHION_MNIST_STD = (0.35302424,) * 3
# sklearn.datasets.load_digits: 1797 8x8 images with grey levels 0..16.
DIGITS_MAX_VALUE = 16.0
DIGITS_NUM_TRAIN, DIGITS_NUM_TEST = 1437, 360
DIGITS_SPLIT_SEED = 0  # fixed: the train/test split never depends on `seed`
DIGITS_IMAGE_SIZE = 16  # two stride-2 reductions leave 4x4 maps
# Split sizes of TFDS cifar10 3.0.2 and imagenet2012 5.1.0.
CIFAR10_NUM_TRAIN, CIFAR10_NUM_TEST = 50_000, 10_000
IMAGENET_NUM_TRAIN, IMAGENET_NUM_TEST = 1_281_167, 50_000
# Host of the TFDS cifar10 download URL (image_classification/cifar.py).
CIFAR10_HOST = "www.cs.toronto.edu"
NETWORK_TIMEOUT_S = 5.0
# ImageNet shuffle buffer (encoded JPEGs, about 110 kB each: about 1 GB).
IMAGENET_SHUFFLE_BUFFER = 10_000

# name: num_classes, image_size, num_train, num_test, flip, TFDS name.
_SPECS = {
    "digits": (10, DIGITS_IMAGE_SIZE, DIGITS_NUM_TRAIN, 360, False, None),
    "cifar10": (10, 32, CIFAR10_NUM_TRAIN, CIFAR10_NUM_TEST, True, "cifar10"),
    "imagenet": (1000, 224, IMAGENET_NUM_TRAIN, 50_000, True, "imagenet2012"),
    "fashion_mnist": (
        fashion_mnist.NUM_CLASSES,
        fashion_mnist.IMAGE_SIZE,
        fashion_mnist.NUM_TRAIN,
        fashion_mnist.NUM_TEST,
        True,  # clothes are mirror-symmetric enough (the usual augmentation)
        None,
    ),
}
_STATS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "fashion_mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD),
}

# Where TFDS data lives and whether it may be downloaded/prepared.
_Where = collections.namedtuple("_Where", "data_dir download manual_dir")


class DatasetNotFoundError(ValueError):
    """The requested dataset is absent and cannot be obtained."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a dataset at a given image size.

    ``mean``/``std`` are the per-channel normalisation statistics (CIFAR-10:
    DARTS ``utils.py``; ImageNet: torchvision; digits: its train split).
    ``flip`` is the default of the horizontal-flip augmentation.
    """

    name: str
    num_classes: int
    image_size: int
    num_train: int
    num_test: int
    flip: bool
    tfds_name: str | None
    mean: tuple = ()
    std: tuple = ()
    channels: int = 3


@dataclasses.dataclass(frozen=True)
class SearchInfo:
    """What ``search_datasets`` built; delegates to ``dataset`` otherwise.

    ``flip`` here is the flip actually used.
    """

    dataset: DatasetInfo
    num_search_train: int
    num_search_val: int
    batch_size: int
    steps_per_epoch: int
    seed: int
    crop_padding: int
    flip: bool
    cutout: int
    augment_val: bool

    def __getattr__(self, attr):  # num_classes, image_size, mean, ...
        if attr == "dataset":
            raise AttributeError(attr)
        return getattr(self.dataset, attr)


def _check_name(name):
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is unknown; accepted: {DATASETS}")


def _check_split(split):
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is unknown; accepted: train, test")


@functools.lru_cache(maxsize=4)
def _digits(image_size):
    """Digits at ``image_size``: ``(x_train, y_train, x_test, y_test)``."""
    from sklearn.datasets import load_digits  # pylint: disable=C0415

    digits = load_digits()
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    order = rng.permutation(len(digits.target))
    images = digits.images[order, :, :, None] / DIGITS_MAX_VALUE
    images = tf.image.resize(images, [image_size, image_size], "bilinear")
    images = np.clip(images.numpy(), 0.0, 1.0).astype(np.float32)
    images = np.repeat(images, 3, axis=-1)
    labels = digits.target[order].astype(np.int32)
    n = DIGITS_NUM_TRAIN
    return images[:n], labels[:n], images[n:], labels[n:]


def dataset_info(name, image_size=None):
    """Returns the ``DatasetInfo`` of ``name`` at ``image_size``.

    Args:
        name: One of ``DATASETS``.
        image_size: Side of the square images the pipelines produce
            (default: 16 for digits, 32 for CIFAR-10, 224 for ImageNet).

    Returns:
        A ``DatasetInfo``: ``num_classes``, ``image_size``, ``channels``,
        ``num_train``, ``num_test``, ``mean``, ``std``, ``flip``,
        ``tfds_name``. Digits mean/std are computed at this image size.
    """
    _check_name(name)
    info = DatasetInfo(name, *_SPECS[name])
    if image_size is None:
        image_size = info.image_size
    check_int("image_size", image_size, 1)
    if name == "digits":
        x_train = _digits(int(image_size))[0].astype(np.float64)
        mean, std = x_train.mean(axis=(0, 1, 2)), x_train.std(axis=(0, 1, 2))
    else:
        mean, std = _STATS[name]
    mean, std = tuple(map(float, mean)), tuple(map(float, std))
    return dataclasses.replace(
        info, image_size=int(image_size), mean=mean, std=std
    )


def _missing_message(name, data_dir):
    d = data_dir or "<TFDS default: $TFDS_DATA_DIR or ~/tensorflow_datasets>"
    offline = "or pass --dataset=digits for the embedded offline data."
    if name == "fashion_mnist":
        return fashion_mnist.missing_message(data_dir, offline)
    if name == "cifar10":
        return (
            f"CIFAR-10 not found in --data_dir={d}. Download it on a machine "
            "with internet with `python -c 'import tensorflow_datasets as "
            f'tfds; tfds.load("cifar10", data_dir="{d}")\'` and copy {d} '
            f"here, {offline}"
        )
    return (
        f"ImageNet (TFDS imagenet2012) not found in --data_dir={d}. It needs "
        "a manual download: put ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar (from https://image-net.org) in a folder M "
        "and prepare it with `python -c 'import tensorflow_datasets as tfds;"
        f' tfds.builder("imagenet2012", data_dir="{d}").download_and_prepare'
        '(download_config=tfds.download.DownloadConfig(manual_dir="M"))\'` '
        f"(or download=True, manual_dir=M), {offline}"
    )


def _builder(name, where):
    """TFDS builder of ``name``; prepares it if ``where.download``."""
    import tensorflow_datasets as tfds  # pylint: disable=C0415 (slow import)

    builder = tfds.builder(_SPECS[name][-1], data_dir=where.data_dir)
    if not where.download or builder.is_prepared():
        return builder
    missing = _missing_message(name, where.data_dir)
    if name == "cifar10":
        try:  # fail fast instead of TFDS's minutes of download retries
            address = (CIFAR10_HOST, 443)
            socket.create_connection(address, NETWORK_TIMEOUT_S).close()
        except OSError as err:
            raise DatasetNotFoundError(
                f"download=True but {CIFAR10_HOST} is unreachable ({err}). "
                + missing
            ) from err
    elif where.manual_dir is None:
        raise DatasetNotFoundError("download=True needs manual_dir. " + missing)
    config = tfds.download.DownloadConfig(manual_dir=where.manual_dir)
    builder.download_and_prepare(download_config=config)
    return builder


def _as_dataset(builder, name, where, split, **kwargs):
    """``builder.as_dataset`` as (image, label) pairs, or a clear error."""
    try:
        return builder.as_dataset(split=split, as_supervised=True, **kwargs)
    except AssertionError as err:  # TFDS: "could not find data in ..."
        message = _missing_message(name, where.data_dir)
        raise DatasetNotFoundError(message) from err


def load_arrays(
    name, split="train", data_dir=None, image_size=None, download=False
):
    """Loads a whole in-memory dataset split as numpy arrays (the cache).

    Args:
        name: ``"digits"``, ``"cifar10"`` or ``"fashion_mnist"`` (ImageNet
            does not fit).
        split: ``"train"`` or ``"test"``.
        data_dir: TFDS data directory (CIFAR-10), or the folder of the
            Fashion-MNIST idx files (None: `fashion_mnist.DEFAULT_DIR`).
        image_size: Resize to this side (default: the dataset's own).
        download: Let TFDS download CIFAR-10 if absent.

    Returns:
        ``(images, labels)``: un-augmented, un-normalised ``[N, S, S, 3]``
        images (float32 in [0, 1] for digits, uint8 for CIFAR-10 and
        Fashion-MNIST) and int32 labels.

    Raises:
        DatasetNotFoundError: CIFAR-10 or Fashion-MNIST is absent from
            ``data_dir``.
    """
    info = dataset_info(name, image_size)
    _check_split(split)
    if name == "digits":
        arrays = _digits(info.image_size)
        return arrays[:2] if split == "train" else arrays[2:]
    if name == "fashion_mnist":
        return _fashion_mnist(data_dir, split, info.image_size)
    if name != "cifar10":
        raise ValueError(
            f"load_arrays takes {', '.join(IN_MEMORY)}, not {name}"
        )
    where = _Where(data_dir, download, None)
    ds = _as_dataset(_builder(name, where), name, where, split)
    images, labels = [], []
    for x, y in ds.batch(10_000):
        if info.image_size != _SPECS[name][1]:
            x = tf.image.resize(x, [info.image_size] * 2, antialias=True)
            x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
        images.append(x.numpy())
        labels.append(y.numpy().astype(np.int32))
    if not images:
        raise DatasetNotFoundError(_missing_message(name, data_dir))
    return np.concatenate(images), np.concatenate(labels)


def _fashion_mnist(data_dir, split, image_size):
    try:
        return fashion_mnist.arrays(data_dir, split, image_size)
    except FileNotFoundError as err:
        message = _missing_message("fashion_mnist", data_dir)
        raise DatasetNotFoundError(message) from err


def _seeds(seed, num):
    """``num`` independent int seeds derived from ``seed``."""
    check_int("seed", seed, 0)
    state = np.random.SeedSequence(int(seed)).generate_state(num)
    return [int(s) for s in state]


def _epoch_seeds(seed, epoch, num):
    """``num`` seeds for the shuffles and augmentation of one epoch.

    A fresh pipeline built for epoch ``e`` yields exactly the batches that
    epoch ``e`` of a run gets, so a search resumed at ``e`` sees the same
    data as an uninterrupted one.
    """
    check_int("epoch", epoch, 0)
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(num)
    return [int(x) for x in state]


def _pipeline(src, transform, lookup, batch_size, buffer, seeds, drop):
    """Shuffles, transforms each element (after ``lookup``), batches.

    Each element is paired with a stateless seed drawn from a seeded
    ``Dataset.random`` that changes every epoch.
    """
    if buffer:
        src = src.shuffle(buffer, seed=seeds[0], reshuffle_each_iteration=True)
    rng = tf.data.Dataset.random(seed=seeds[1], rerandomize_each_iteration=True)

    def fn(element, rng_seed):
        image, label = lookup(element) if lookup else element
        return transform(image, rng_seed), tf.cast(label, tf.int32)

    ds = tf.data.Dataset.zip((src, rng.batch(2)))
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _sources(info, split, portion, where, seed, shuffle):
    """Un-augmented data of ``split``, whole or cut at ``portion``.

    Returns:
        ``(sources, counts, lookup)``: one dataset per part (two if
        ``portion`` is set), their sizes, and ``lookup`` mapping an element
        to ``(raw_image, label)``. In-memory data yields indices into the
        cached arrays (``lookup`` gathers; ``shuffle`` permutes them before
        the cut); ImageNet yields (JPEG string, label) records, files
        shuffled if ``shuffle``, and ``lookup`` is None.
    """
    if info.name == "imagenet":
        import tensorflow_datasets as tfds  # pylint: disable=C0415

        splits = [{"train": "train", "test": "validation"}[split]]
        if portion is not None:
            cut = int(np.floor(portion * IMAGENET_NUM_TRAIN))
            splits = [f"train[:{cut}]", f"train[{cut}:]"]
        builder = _builder("imagenet", where)
        decoders = {"image": tfds.decode.SkipDecoding()}
        sources = []
        for i, part in enumerate(splits):
            read = tfds.ReadConfig(
                shuffle_seed=seed + i, shuffle_reshuffle_each_iteration=True
            )
            kwargs = {"decoders": decoders, "read_config": read}
            kwargs["shuffle_files"] = shuffle
            sources.append(
                _as_dataset(builder, "imagenet", where, part, **kwargs)
            )
        return sources, [int(d.cardinality()) for d in sources], None
    images, labels = load_arrays(
        info.name, split, where.data_dir, info.image_size, where.download
    )
    n = len(labels)
    order = np.arange(n)
    if shuffle and portion is not None:
        order = np.random.default_rng(seed).permutation(n)
    parts = [order]
    if portion is not None:
        parts = np.split(order, [int(np.floor(portion * n))])
    images_t = tf.constant(images)
    labels_t = tf.constant(labels, tf.int32)

    def lookup(index):
        return tf.gather(images_t, index), labels_t[index]

    sources = [tf.data.Dataset.from_tensor_slices(p) for p in parts]
    return sources, [len(p) for p in parts], lookup


def _transform(info, train, padding=0, flip=False, cutout=0):
    kind = "imagenet" if info.name == "imagenet" else "cifar"
    size, norm = info.image_size, {"mean": info.mean, "std": info.std}
    return augment.make_transform(
        kind, train, size, padding, flip, cutout, **norm
    )


def _buffer(count, lookup):
    return count if lookup else min(count, IMAGENET_SHUFFLE_BUFFER)


def _resolve(name, batch_size, cutout, image_size, flip):
    info = dataset_info(name, image_size)
    check_int("batch_size", batch_size, 1)
    check_int("cutout", cutout, 0)
    flip = info.flip if flip is None else bool(flip)
    return info, flip, info.image_size // 8


def search_datasets(
    name,
    batch_size,
    train_portion=0.5,
    data_dir=None,
    seed=0,
    cutout=0,
    image_size=None,
    *,
    flip=None,
    augment_val=True,
    shuffle_split=True,
    download=False,
    manual_dir=None,
    epoch=0,
):
    """Search-train / search-validation batches for the bi-level search.

    Args:
        name: One of ``DATASETS``.
        batch_size: Batch size of each half (DARTS: 64; the paper: 96).
        train_portion: Fraction in (0, 1) of the training set used for
            search-train; the rest is search-validation.
        data_dir: TFDS data directory (``cifar10``, ``imagenet``), or
            the folder of the Fashion-MNIST idx files.
        seed: Seed of the split permutation, shuffles and augmentation.
        cutout: Cutout length in pixels (0: none), applied to both halves.
        image_size: Image side (default: the dataset's own).
        flip: Random horizontal flip (default: True, False for digits).
        augment_val: Augment the validation half too (DARTS does).
        shuffle_split: Permute indices before the cut (False: the DARTS
            first-``train_portion``-by-index rule).
        download: Let TFDS download/prepare the data if absent.
        manual_dir: ImageNet tar files, for ``download=True``.
        epoch: the epoch whose shuffles and augmentation to produce (the
            split depends on ``seed`` only).

    Returns:
        ``(pairs_ds, steps_per_epoch, info)``: ``pairs_ds`` yields
        ``((x_train, y_train), (x_val, y_val))`` with float32 images
        ``[batch_size, S, S, 3]`` and int32 labels ``[batch_size]``,
        ``steps_per_epoch = min(n_train, n_val) // batch_size`` batches per
        iteration (one epoch, no repeat); ``info`` is a ``SearchInfo``.

    Raises:
        ValueError: An invalid argument, or a half smaller than a batch.
        DatasetNotFoundError: The data is absent from ``data_dir``.
    """
    info, flip, padding = _resolve(name, batch_size, cutout, image_size, flip)
    portion = train_portion
    number = isinstance(portion, (int, float, np.floating))
    if not number or isinstance(portion, bool) or not 0.0 < portion < 1.0:
        raise ValueError(f"train_portion must be in (0, 1), got {portion!r}")
    # split; then train shuffle/aug, val shuffle/aug of this epoch
    s = _seeds(seed, 1) + _epoch_seeds(seed, epoch, 4)
    seed = int(seed)
    train_tf = _transform(info, True, padding, flip, cutout)
    val_tf = train_tf if augment_val else _transform(info, False)
    where = _Where(data_dir, download, manual_dir)
    sources, counts, lookup = _sources(
        info, "train", float(portion), where, s[0], shuffle_split
    )
    halves = ("search-train", "search-val")
    for half, count in zip(halves, counts, strict=True):
        if count < batch_size:
            raise ValueError(
                f"batch_size={batch_size} is larger than the {half} half "
                f"({count} examples of {name}, train_portion={portion})"
            )
    ds_tr, ds_val = (
        _pipeline(src, fn, lookup, batch_size, _buffer(n, lookup), ss, True)
        for src, fn, n, ss in zip(
            sources, (train_tf, val_tf), counts, (s[1:3], s[3:5]), strict=True
        )
    )
    pairs = tf.data.Dataset.zip((ds_tr, ds_val)).prefetch(tf.data.AUTOTUNE)
    steps = min(counts) // batch_size
    aug_val = bool(augment_val)
    search_info = SearchInfo(
        info, *counts, batch_size, steps, seed, padding, flip, cutout, aug_val
    )
    return pairs, steps, search_info


def train_dataset(
    name,
    batch_size,
    data_dir=None,
    seed=0,
    cutout=0,
    image_size=None,
    *,
    flip=None,
    drop_remainder=False,
    download=False,
    manual_dir=None,
    epoch=0,
):
    """Augmented, shuffled training batches for re-training (one epoch).

    Args:
        name, batch_size, data_dir, seed, cutout, image_size, flip,
        download, manual_dir: As in ``search_datasets`` (DARTS re-training
            uses ``cutout=16`` on CIFAR-10).
        drop_remainder: Drop the last partial batch (DARTS keeps it).
        epoch: the epoch whose shuffle and augmentation to produce.

    Returns:
        A ``tf.data.Dataset`` of ``(images, labels)`` batches, float32
        ``[B, S, S, 3]`` and int32 ``[B]``, without repeat: each iteration
        is one epoch, reshuffled.
    """
    info, flip, padding = _resolve(name, batch_size, cutout, image_size, flip)
    s = _seeds(seed, 1) + _epoch_seeds(seed, epoch, 2)
    where = _Where(data_dir, download, manual_dir)
    (src,), (n,), lookup = _sources(info, "train", None, where, s[0], True)
    if drop_remainder and n < batch_size:
        raise ValueError(f"batch_size={batch_size} > {n} examples of {name}")
    transform = _transform(info, True, padding, flip, cutout)
    buffer = _buffer(n, lookup)
    return _pipeline(
        src, transform, lookup, batch_size, buffer, s[1:], drop_remainder
    )


def eval_dataset(
    name,
    batch_size,
    data_dir=None,
    image_size=None,
    *,
    split="test",
    download=False,
    manual_dir=None,
):
    """Un-augmented, unshuffled batches for evaluation (last batch kept).

    ImageNet images are resized to ``image_size * 256 / 224`` (shorter side)
    and center-cropped to ``image_size``.

    Args:
        name, batch_size, data_dir, image_size, download, manual_dir: As in
            ``search_datasets``.
        split: ``"test"`` (ImageNet: its validation set) or ``"train"``.

    Returns:
        A ``tf.data.Dataset`` of ``(images, labels)`` batches, float32
        ``[B, S, S, 3]`` and int32 ``[B]``.
    """
    info, _, _ = _resolve(name, batch_size, 0, image_size, None)
    _check_split(split)
    where = _Where(data_dir, download, manual_dir)
    (src,), _, lookup = _sources(info, split, None, where, 0, False)
    transform = _transform(info, False)
    return _pipeline(src, transform, lookup, batch_size, 0, _seeds(0, 2), False)
