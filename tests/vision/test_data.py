"""Tests of `vision.data`: datasets, splits, pipelines, errors."""

import hashlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests.helpers import REPO_ROOT
from tf_amended_darts.vision import data

REPO = REPO_ROOT


def _collect(ds):
    """All batches of one iteration, concatenated per component."""
    batches = list(ds.as_numpy_iterator())
    return [np.concatenate(part) for part in zip(*batches, strict=True)]


def _pairs_epoch(pairs):
    """One epoch of a pairs dataset as (x_tr, y_tr, x_val, y_val)."""
    batches = [(a[0], a[1], b[0], b[1]) for a, b in pairs.as_numpy_iterator()]
    return [np.concatenate(part) for part in zip(*batches, strict=True)]


def _row_hashes(images):
    return [hashlib.sha256(im.tobytes()).hexdigest() for im in images]


# --- metadata and the embedded digits data ---------------------------------


def test_dataset_info():
    assert data.DATASETS == ("digits", "cifar10", "imagenet", "fashion_mnist")
    cifar = data.dataset_info("cifar10")
    assert (cifar.num_classes, cifar.image_size, cifar.channels) == (10, 32, 3)
    assert (cifar.num_train, cifar.num_test) == (50_000, 10_000)
    np.testing.assert_allclose(cifar.mean, (0.4914, 0.4822, 0.4465), atol=1e-4)
    np.testing.assert_allclose(cifar.std, (0.2470, 0.2435, 0.2616), atol=1e-4)
    imagenet = data.dataset_info("imagenet")
    assert (imagenet.num_classes, imagenet.image_size) == (1000, 224)
    assert imagenet.mean == (0.485, 0.456, 0.406)
    assert imagenet.std == (0.229, 0.224, 0.225)
    digits = data.dataset_info("digits")
    assert (digits.num_classes, digits.image_size, digits.channels) == (
        10,
        16,
        3,
    )
    assert (digits.num_train, digits.num_test) == (1437, 360)
    assert not digits.flip and cifar.flip and imagenet.flip
    assert data.dataset_info("digits", image_size=8).image_size == 8


def test_unknown_dataset_lists_accepted_names():
    with pytest.raises(ValueError, match="digits.*cifar10.*imagenet"):
        data.dataset_info("mnist")
    with pytest.raises(ValueError, match="accepted"):
        data.search_datasets("cifar100", 8)


def test_digits_arrays():
    x_train, y_train = data.load_arrays("digits", "train")
    x_test, y_test = data.load_arrays("digits", "test")
    assert x_train.shape == (1437, 16, 16, 3) and x_test.shape == (
        360,
        16,
        16,
        3,
    )
    assert x_train.dtype == np.float32 and y_train.dtype == np.int32
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert x_train.max() > 0.9
    np.testing.assert_array_equal(x_train[..., 0], x_train[..., 2])
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    # The split is fixed: not a function of any run seed.
    again = data.load_arrays("digits", "train")
    np.testing.assert_array_equal(again[0], x_train)
    # Train and test hold different images (digits has no duplicates).
    assert not set(_row_hashes(x_train)) & set(_row_hashes(x_test))
    small = data.load_arrays("digits", "test", image_size=8)[0]
    assert small.shape == (360, 8, 8, 3)
    with pytest.raises(ValueError, match="split"):
        data.load_arrays("digits", "validation")


def test_digits_normalisation_uses_train_statistics():
    (x, y) = _collect(data.eval_dataset("digits", 100, split="train"))
    assert x.shape == (1437, 16, 16, 3) and x.dtype == np.float32
    assert y.dtype == np.int32
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(x64.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(x64.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    # Eval keeps the order and the last partial batch.
    sizes = [len(b[1]) for b in data.eval_dataset("digits", 64)]
    assert sizes == [64] * 5 + [40]
    raw, labels = data.load_arrays("digits", "test")
    info = data.dataset_info("digits")
    x_test, y_test = _collect(data.eval_dataset("digits", 64))
    expected = (raw - np.array(info.mean)) / np.array(info.std)
    np.testing.assert_allclose(x_test, expected, atol=1e-5)
    np.testing.assert_array_equal(y_test, labels)


# --- the search split ------------------------------------------------------


def test_search_split_structure_and_sizes():
    pairs, steps, info = data.search_datasets("digits", 32, seed=1)
    assert (info.num_search_train, info.num_search_val) == (718, 719)
    assert steps == 718 // 32 == info.steps_per_epoch
    assert info.num_classes == 10 and info.image_size == 16
    assert info.crop_padding == 2 and info.flip is False
    assert pairs.element_spec == (
        (
            tf.TensorSpec([32, 16, 16, 3], tf.float32),
            tf.TensorSpec([32], tf.int32),
        ),
        (
            tf.TensorSpec([32, 16, 16, 3], tf.float32),
            tf.TensorSpec([32], tf.int32),
        ),
    )
    assert int(pairs.cardinality()) == steps
    assert len(list(pairs)) == steps
    _, _, half = data.search_datasets("digits", 10, train_portion=0.25)
    assert (half.num_search_train, half.num_search_val) == (359, 1078)


def _match(images, reference):
    """Index of the nearest reference image of each image, and the distance."""
    a = images.reshape(len(images), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    dist = (a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T
    nearest = dist.argmin(axis=1)
    return nearest, np.sqrt(np.maximum(dist.min(axis=1), 0.0)).max()


def _normalised_digits(image_size):
    raw, _ = data.load_arrays("digits", "train", image_size=image_size)
    info = data.dataset_info("digits", image_size)
    return (raw - np.array(info.mean)) / np.array(info.std)


def test_search_halves_are_disjoint_and_cover_the_train_set():
    # image_size 7: crop padding 7 // 8 = 0 and no flip, so the "augmented"
    # images are the normalised raw ones and can be traced back.
    reference = _normalised_digits(7)
    pairs, _, info = data.search_datasets("digits", 1, seed=5, image_size=7)
    x_tr, _, x_val, _ = _pairs_epoch(pairs)  # 718 pairs: one val left out
    # The halves of the seeded permutation (as documented).
    order = np.random.default_rng(data._seeds(5, 1)[0]).permutation(1437)
    idx_tr, idx_val = set(order[:718]), set(order[718:])
    assert info.num_search_train == 718 and not idx_tr & idx_val
    got_tr, err_tr = _match(x_tr, reference)
    got_val, err_val = _match(x_val, reference)
    assert err_tr < 1e-3 and err_val < 1e-3
    assert set(got_tr) == idx_tr and len(got_tr) == 718  # each exactly once
    assert set(got_val) <= idx_val and len(set(got_val)) == 718


def test_search_split_without_shuffle_is_the_darts_rule():
    reference = _normalised_digits(7)
    pairs, _, _ = data.search_datasets(
        "digits", 1, image_size=7, shuffle_split=False
    )
    got, err = _match(_pairs_epoch(pairs)[0], reference)
    assert err < 1e-3 and set(got) == set(range(718))


def test_search_validation_half_without_augmentation():
    reference = _normalised_digits(16)
    pairs, _, info = data.search_datasets(
        "digits", 64, cutout=8, augment_val=False
    )
    assert info.augment_val is False and info.cutout == 8
    x_tr, _, x_val, _ = _pairs_epoch(pairs)
    assert _match(x_val, reference)[1] < 1e-3  # exactly the normalised data
    assert _match(x_tr, reference)[1] > 1.0  # cropped and cut out


def test_search_pipeline_is_deterministic_and_reshuffles():
    def epochs(seed):
        pairs, _, _ = data.search_datasets(
            "digits", 64, seed=seed, cutout=4, flip=True
        )
        return [_pairs_epoch(pairs) for _ in range(2)]

    first, second = epochs(3), epochs(3)
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    # Each epoch reshuffles and re-augments; another seed differs.
    assert not np.array_equal(first[0][1], first[1][1])
    assert not np.array_equal(first[0][0], epochs(4)[0][0])


_DETERMINISM_SCRIPT = """
import hashlib, sys
import numpy as np
import tensorflow as tf
tf.config.experimental.enable_op_determinism()
from tf_amended_darts.vision import data
pairs, _, _ = data.search_datasets("digits", 64, seed=3, cutout=4, flip=True)
h = hashlib.sha256()
for _ in range(2):
    for (a, b), (c, d) in pairs.as_numpy_iterator():
        for x in (a, b, c, d):
            h.update(np.ascontiguousarray(x).tobytes())
print(h.hexdigest())
"""


def test_same_batches_in_another_process_with_op_determinism():
    # TF pairs tf.data seeds with its global seed (module docstring): start
    # from a fresh process's state (no global seed), as the script does.
    tf.random.set_seed(None)
    pairs, _, _ = data.search_datasets(
        "digits", 64, seed=3, cutout=4, flip=True
    )
    h = hashlib.sha256()
    for _ in range(2):
        for (a, b), (c, d) in pairs.as_numpy_iterator():
            for x in (a, b, c, d):
                h.update(np.ascontiguousarray(x).tobytes())
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", _DETERMINISM_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == h.hexdigest()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"train_portion": 0.0}, "train_portion"),
        ({"train_portion": 1.0}, "train_portion"),
        ({"train_portion": 1.5}, "train_portion"),
        ({"train_portion": "half"}, "train_portion"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1000}, "batch_size=1000 is larger"),
        ({"batch_size": 8, "train_portion": 0.001}, "search-train"),
        ({"cutout": -1}, "cutout"),
        ({"image_size": 0}, "image_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_search_argument_errors(kwargs, match):
    kwargs = {"batch_size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        data.search_datasets("digits", **kwargs)


def test_argument_type_errors():
    with pytest.raises(ValueError, match="batch_size"):
        data.search_datasets("digits", 8.0)
    with pytest.raises(ValueError, match="batch_size"):
        data.train_dataset("digits", True)


def test_train_dataset_digits():
    ds = data.train_dataset("digits", 64, seed=2)
    assert int(ds.cardinality()) == 23  # ceil(1437 / 64): last batch kept
    first, second = _collect(ds), _collect(ds)
    assert first[0].shape == (1437, 16, 16, 3) and first[1].dtype == np.int32
    np.testing.assert_array_equal(np.sort(first[1]), np.sort(second[1]))
    assert not np.array_equal(first[1], second[1])  # reshuffled per epoch
    again = _collect(data.train_dataset("digits", 64, seed=2))
    np.testing.assert_array_equal(again[0], first[0])
    dropped = data.train_dataset("digits", 64, drop_remainder=True)
    assert int(dropped.cardinality()) == 22


# --- CIFAR-10 through the TFDS mock ----------------------------------------


@pytest.fixture(name="mock_cifar")
def fixture_mock_cifar(tmp_path):
    with tfds.testing.mock_data(num_examples=20):
        yield str(tmp_path)


def test_cifar10_mock_search(mock_cifar):
    pairs, steps, info = data.search_datasets(
        "cifar10", 4, data_dir=mock_cifar, seed=0
    )
    assert (info.num_search_train, info.num_search_val, steps) == (10, 10, 2)
    assert info.crop_padding == 4 and info.flip and info.image_size == 32
    (x_tr, _y_tr), (x_val, y_val) = next(iter(pairs))
    assert x_tr.shape == (4, 32, 32, 3) and x_val.shape == (4, 32, 32, 3)
    assert x_tr.dtype == tf.float32 and y_val.dtype == tf.int32


def test_cifar10_mock_normalisation(mock_cifar):
    raw, labels = data.load_arrays("cifar10", "test", data_dir=mock_cifar)
    assert raw.shape == (20, 32, 32, 3) and raw.dtype == np.uint8
    x, y = _collect(data.eval_dataset("cifar10", 8, data_dir=mock_cifar))
    mean, std = np.array(data.CIFAR10_MEAN), np.array(data.CIFAR10_STD)
    np.testing.assert_allclose(x, (raw / 255.0 - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(y, labels)
    small = data.load_arrays("cifar10", "train", mock_cifar, image_size=16)
    assert small[0].shape == (20, 16, 16, 3) and small[0].dtype == np.uint8


def test_cifar10_mock_augmentation_is_crop_and_flip(mock_cifar):
    raw, labels = data.load_arrays("cifar10", "train", data_dir=mock_cifar)
    mean, std = np.array(data.CIFAR10_MEAN), np.array(data.CIFAR10_STD)
    padded = np.pad(raw / 255.0, ((0, 0), (4, 4), (4, 4), (0, 0)))
    ds = data.train_dataset("cifar10", 5, data_dir=mock_cifar, seed=1)
    x, y = _collect(ds)
    assert x.shape == (20, 32, 32, 3)
    moved = flipped = 0
    for image, label in zip(x, y, strict=True):
        raw_view = image * std + mean  # back to [0, 1]
        found = None
        for k in np.flatnonzero(labels == label):
            for dy in range(9):
                for dx in range(9):
                    crop = padded[k, dy : dy + 32, dx : dx + 32]
                    for flip in (False, True):
                        candidate = crop[:, ::-1] if flip else crop
                        if np.allclose(raw_view, candidate, atol=1e-5):
                            found = (dy, dx, flip)
                            break
                    if found:
                        break
                if found:
                    break
            if found:
                break
        assert found is not None  # a padded translation, maybe mirrored
        moved += found[:2] != (4, 4)
        flipped += found[2]
    assert moved > 10 and 0 < flipped < 20


# --- absent data -----------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "imagenet"])
def test_missing_data_fails_fast_with_instructions(tmp_path, name):
    empty = str(tmp_path / "nothing_here")
    for build in (data.search_datasets, data.train_dataset, data.eval_dataset):
        start = time.monotonic()
        with pytest.raises(data.DatasetNotFoundError) as err:
            build(name, 8, data_dir=empty)
        assert time.monotonic() - start < 5.0
        message = str(err.value)
        assert f"--data_dir={empty}" in message
        assert "--dataset=digits" in message
        assert isinstance(err.value, ValueError)
    if name == "cifar10":
        assert 'tfds.load("cifar10"' in message and "copy" in message
        with pytest.raises(data.DatasetNotFoundError):
            data.load_arrays("cifar10", data_dir=empty)
    else:
        assert "manual_dir" in message and "ILSVRC2012_img_train" in message


def test_imagenet_download_needs_manual_dir(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="manual_dir"):
        data.train_dataset("imagenet", 8, data_dir=str(tmp_path), download=True)


def test_imagenet_not_in_memory():
    with pytest.raises(ValueError, match="digits, cifar10, fashion_mnist"):
        data.load_arrays("imagenet")


# --- ImageNet through the TFDS mock ----------------------------------------


def test_imagenet_mock_pipelines(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        kwargs = {"data_dir": str(tmp_path), "image_size": 32}
        x, y = next(iter(data.train_dataset("imagenet", 3, seed=0, **kwargs)))
        assert x.shape == (3, 32, 32, 3) and x.dtype == tf.float32
        assert y.dtype == tf.int32
        x, _ = _collect(data.eval_dataset("imagenet", 4, **kwargs))
        assert x.shape == (6, 32, 32, 3)
        # Normalised: a [0, 1] image maps into this range.
        low = (0 - np.array(data.IMAGENET_MEAN)) / data.IMAGENET_STD
        high = (1 - np.array(data.IMAGENET_MEAN)) / data.IMAGENET_STD
        assert np.all(x >= low - 1e-4) and np.all(x <= high + 1e-4)
        pairs, steps, info = data.search_datasets("imagenet", 2, **kwargs)
        (x_tr, _), (x_val, _) = next(iter(pairs))
        assert x_tr.shape == x_val.shape == (2, 32, 32, 3)
        assert steps >= 1 and info.num_classes == 1000


# --- Fashion-MNIST from small idx files ------------------------------------


def _fashion_files(folder, n_train=40, n_test=12):
    """Writes the four idx files of a small Fashion-MNIST; its arrays."""
    from tf_amended_darts.vision import fashion_mnist as fm

    rng = np.random.default_rng(0)
    arrays = {
        "train": (
            rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            (np.arange(n_train) % 10).astype(np.uint8),
        ),
        "test": (
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            (np.arange(n_test) % 10).astype(np.uint8),
        ),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in arrays.items():
        image_file, label_file = fm.FILES[split]
        fm.write_idx(str(folder / image_file), images)
        fm.write_idx(str(folder / label_file), labels)
    return arrays


def test_fashion_mnist_info():
    info = data.dataset_info("fashion_mnist")
    assert (info.num_classes, info.image_size, info.channels) == (10, 28, 3)
    assert (info.num_train, info.num_test) == (60_000, 10_000)
    assert info.flip
    np.testing.assert_allclose(info.mean, (0.2860,) * 3, atol=1e-4)
    np.testing.assert_allclose(info.std, (0.3530,) * 3, atol=1e-4)


def test_fashion_mnist_idx_files(tmp_path):
    folder = tmp_path / "fm"
    arrays = _fashion_files(folder)
    for split in ("train", "test"):
        x, y = data.load_arrays("fashion_mnist", split, data_dir=str(folder))
        images, labels = arrays[split]
        assert x.dtype == np.uint8 and x.shape == (len(labels), 28, 28, 3)
        for c in range(3):
            np.testing.assert_array_equal(x[..., c], images)
        np.testing.assert_array_equal(y, labels.astype(np.int32))
    small, _ = data.load_arrays(
        "fashion_mnist", "train", data_dir=str(folder), image_size=14
    )
    assert small.shape == (40, 14, 14, 3)
    # a 2x2 mean, up to rounding and the antialiasing filter's edges
    means = arrays["train"][0].reshape(40, 14, 2, 14, 2).mean(axis=(2, 4))
    inner = np.abs(small[:, 2:-2, 2:-2, 0] - means[:, 2:-2, 2:-2])
    assert np.median(inner) < 40


def test_fashion_mnist_search_pipeline(tmp_path):
    folder = tmp_path / "fm"
    _fashion_files(folder)
    pairs, steps, info = data.search_datasets(
        "fashion_mnist", 8, data_dir=str(folder), image_size=16
    )
    assert steps == 2 and info.num_search_train == 20
    (x_t, y_t), (x_v, y_v) = next(iter(pairs))
    assert x_t.shape == (8, 16, 16, 3) and x_v.shape == (8, 16, 16, 3)
    assert y_t.dtype == tf.int32
    test = data.eval_dataset("fashion_mnist", 5, data_dir=str(folder))
    assert sum(len(y) for _, y in test) == 12


def test_fashion_mnist_missing_fails_fast(tmp_path):
    empty = str(tmp_path / "none")
    for build in (data.search_datasets, data.train_dataset, data.eval_dataset):
        with pytest.raises(data.DatasetNotFoundError) as err:
            build("fashion_mnist", 8, data_dir=empty)
        message = str(err.value)
        assert f"--data_dir={empty}" in message
        assert "apt-get install dataset-fashion-mnist" in message
        assert "--dataset=digits" in message
        assert "train-images-idx3-ubyte.gz" in message
        assert "\n" not in message


def test_idx_reader_errors(tmp_path):
    from tf_amended_darts.vision import fashion_mnist as fm

    bad = tmp_path / "bad.gz"
    fm.write_idx(str(bad), np.zeros((2, 3), np.uint8))
    raw = tmp_path / "short"
    raw.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ValueError, match="announces 5"):
        fm.read_idx(str(raw))
    raw.write_bytes(bytes([1, 2, 8, 1]))
    with pytest.raises(ValueError, match="magic"):
        fm.read_idx(str(raw))
    raw.write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="0x0d"):
        fm.read_idx(str(raw))
    np.testing.assert_array_equal(fm.read_idx(str(bad)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="uint8"):
        fm.write_idx(str(bad), np.zeros(3))


@pytest.mark.skipif(
    not os.path.exists(
        "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
    ),
    reason="dataset-fashion-mnist is not installed",
)
def test_installed_fashion_mnist_matches_the_constants():
    x, y = data.load_arrays("fashion_mnist", "train")
    assert x.shape == (60_000, 28, 28, 3)
    assert np.bincount(y).tolist() == [6000] * 10
    grey = x[..., 0].astype(np.float64) / 255.0
    info = data.dataset_info("fashion_mnist")
    assert grey.mean() == pytest.approx(info.mean[0], abs=1e-7)
    assert grey.std() == pytest.approx(info.std[0], abs=1e-7)
