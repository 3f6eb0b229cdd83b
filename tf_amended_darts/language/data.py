"""Batches for truncated back-propagation through time.

A token stream is cut into ``B`` contiguous rows (``batchify``), and a
batch is the next ``seq_len`` columns of every row: the rows continue from
batch to batch, which is why the model carries its hidden state across
batches. ``seq_len`` is drawn per batch as the reference does:

* search (``rnn/train_search.py``): ``bptt`` with probability 0.95, else
  ``bptt / 2``;
* evaluation training (``rnn/train.py``): the same base, then
  ``max(5, int(N(base, 5)))``, at most ``bptt + max_seq_len_delta``;

and the learning rate of that batch is scaled by ``seq_len / bptt``. A
batch is padded to a fixed width and carries its length (``length``), so
every length runs one traced graph: the model slices the padding off and
its time loop runs ``length`` steps (no compute is spent on padding). The
draws come from a generator seeded by ``(seed, epoch)``, so a resumed run
sees the same batches.

In search, the architecture step's validation batch starts at the training
batch's position modulo the validation rows and has ``bptt`` steps, as
``get_batch(search_data, i % (search_data.size(0) - 1))`` in the reference.

Every element is ``(x, y)`` with ``x = {"tokens", "length", "stream"}``
and ``y = {"targets"}``; search elements are pairs of them.

Reference: DARTS ``rnn/utils.py`` (``batchify``, ``get_batch``),
``rnn/train_search.py`` and ``rnn/train.py`` (``train()``).
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tf_amended_darts.language import models
from tf_amended_darts.nn.validate import invalid

HALF_BPTT_PROB = 0.05  # [darts] rnn/train*.py: bptt / 2 with prob. 0.05
SEQ_LEN_STD = 5  # [darts] rnn/train.py np.random.normal(bptt, 5)
MIN_SEQ_LEN = 5  # [darts] rnn/train.py max(5, ...)


class Batch(NamedTuple):
    """Where one batch starts, its length and its learning-rate scale."""

    start: int
    length: int
    lr_scale: float


def batchify(ids, batch_size) -> np.ndarray:
    """``[batch_size, rows]``: row ``b`` is the ``b``-th contiguous chunk.

    The tail that does not fill a column is dropped, as the reference's
    ``batchify`` does (which returns the transpose, time-major).

    Raises:
        ValueError: when the stream has fewer than 2 tokens per row.
    """
    ids = np.asarray(ids, np.int32)
    rows = len(ids) // batch_size
    if rows < 2:
        raise invalid(
            "batch_size",
            f"at most {len(ids) // 2} for a split of {len(ids)} tokens "
            "(every row needs 2 tokens)",
            batch_size,
        )
    return ids[: rows * batch_size].reshape(batch_size, rows)


def schedule(rows, bptt, rng, jitter=False, max_seq_len_delta=20):
    """The batches of one epoch over ``rows`` columns.

    Args:
        rows: columns of the batchified data.
        bptt: the base sequence length.
        rng: a `numpy.random.Generator`.
        jitter: ``rnn/train.py``'s normal jitter (else search's lengths).
        max_seq_len_delta: the jitter's cap above ``bptt``.

    Returns:
        A list of `Batch`; ``length`` is cut at the end of the data, the
        learning-rate scale is not (as the reference).
    """
    batches, i = [], 0
    while i < rows - 1 - 1:
        base = bptt if rng.random() >= HALF_BPTT_PROB else bptt / 2.0
        if jitter:
            seq_len = max(MIN_SEQ_LEN, int(rng.normal(base, SEQ_LEN_STD)))
            seq_len = min(seq_len, bptt + max_seq_len_delta)
        else:
            seq_len = int(base)
        seq_len = max(seq_len, 1)
        batches.append(Batch(i, min(seq_len, rows - 1 - i), seq_len / bptt))
        i += seq_len
    return batches


def epoch_rng(seed, epoch):
    """The generator of one epoch's draws."""
    return np.random.default_rng([int(seed), int(epoch), 0x5EED])


def make_batch(tokens, targets, length, stream, max_length):
    """One padded element ``(x, y)`` from ``[B, length]`` arrays."""
    tokens = np.asarray(tokens, np.int32)
    batch = tokens.shape[0]
    padded = np.zeros((2, batch, max_length), np.int32)
    padded[0, :, :length] = tokens[:, :length]
    padded[1, :, :length] = np.asarray(targets, np.int32)[:, :length]
    x = {
        "tokens": padded[0],
        "length": np.full((batch,), length, np.int32),
        "stream": np.full((batch,), stream, np.int32),
    }
    return x, {"targets": padded[1]}


def _elements(data, batches, stream, max_length):
    xs, ys = [], []
    for b in batches:
        x, y = make_batch(
            data[:, b.start : b.start + b.length],
            data[:, b.start + 1 : b.start + 1 + b.length],
            b.length, stream, max_length,
        )
        xs.append(x)
        ys.append(y)
    stack = lambda items: {  # noqa: E731
        k: np.stack([item[k] for item in items]) for k in items[0]
    }
    return stack(xs), stack(ys)


class EpochData(NamedTuple):
    """One epoch's dataset and the learning-rate scale of each step."""

    dataset: tf.data.Dataset
    lr_scales: list
    steps: int


def search_epoch(train, valid, bptt, seed, epoch, max_steps=0):
    """The search's pairs ``((x_t, y_t), (x_v, y_v))`` of one epoch.

    Args:
        train: batchified training data ``[B, rows]``.
        valid: batchified validation data ``[B, rows_v]`` (same ``B``).
        bptt: base sequence length.
        seed: run seed.
        epoch: epoch number (0-based).
        max_steps: cap on the steps (0: the whole epoch).
    """
    batches = schedule(train.shape[1], bptt, epoch_rng(seed, epoch))
    if max_steps:
        batches = batches[:max_steps]
    rows_v = valid.shape[1]
    val_batches = []
    for b in batches:
        start = b.start % (rows_v - 1)
        val_batches.append(Batch(start, min(bptt, rows_v - 1 - start), 1.0))
    width = bptt
    train_el = _elements(train, batches, models.TRAIN_STREAM, width)
    valid_el = _elements(valid, val_batches, models.VALID_STREAM, width)
    dataset = tf.data.Dataset.from_tensor_slices((train_el, valid_el))
    return EpochData(dataset, [b.lr_scale for b in batches], len(batches))


def train_epoch(train, bptt, seed, epoch, max_seq_len_delta=20, max_steps=0):
    """The evaluation model's training batches ``(x, y)`` of one epoch."""
    batches = schedule(
        train.shape[1], bptt, epoch_rng(seed, epoch), jitter=True,
        max_seq_len_delta=max_seq_len_delta,
    )
    if max_steps:
        batches = batches[:max_steps]
    width = bptt + max_seq_len_delta
    elements = _elements(train, batches, models.TRAIN_STREAM, width)
    dataset = tf.data.Dataset.from_tensor_slices(elements)
    return EpochData(dataset, [b.lr_scale for b in batches], len(batches))


def eval_batches(data, bptt):
    """Consecutive ``bptt``-step batches of ``[B, rows]`` data (no jitter).

    Yields:
        ``(x, y)`` elements as `make_batch` makes them (stream 0).
    """
    rows = data.shape[1]
    for i in range(0, rows - 1, bptt):
        length = min(bptt, rows - 1 - i)
        yield make_batch(
            data[:, i : i + length], data[:, i + 1 : i + 1 + length],
            length, models.TRAIN_STREAM, bptt,
        )
