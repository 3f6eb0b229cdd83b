"""The language-model loss and perplexity over a whole split.

``language_loss`` is the loss of the bi-level problem and of training:
the mean negative log-likelihood of the batch's targets plus the model's
``penalty`` (temporal activation regularisation, on the training stream
only; ``models`` module docstring). It has exact derivatives of every
order (TensorFlow's sparse softmax cross-entropy).

``evaluate`` runs a model over consecutive ``bptt``-step batches of a split
in inference mode, carrying the hidden state explicitly from a zero state,
and returns the mean loss per predicted token (its ``exp`` is the
perplexity). The reference divides the summed loss by the number of rows
instead of the number of predicted tokens (one fewer per row), a 0.01%
difference on PTB's validation split; here the mean is exact.

Reference: DARTS ``rnn/train.py`` ``evaluate``.
"""

import math

import numpy as np
import tensorflow as tf

from tf_amended_darts.language import data


def _targets(y_true, logits):
    targets = y_true["targets"] if isinstance(y_true, dict) else y_true
    targets = tf.convert_to_tensor(targets)
    return tf.cast(targets[:, : tf.shape(logits)[1]], tf.int32)


def token_nll(y_true, outputs):
    """Mean negative log-likelihood of the targets (no penalty)."""
    logits = outputs["logits"]
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(
            _targets(y_true, logits), logits
        )
    )


def language_loss(y_true, outputs):
    """``token_nll + penalty``: the training and search loss."""
    return token_nll(y_true, outputs) + tf.cast(
        outputs["penalty"], outputs["logits"].dtype
    )


def perplexity(loss):
    """``exp(loss)``; ``inf`` when that overflows."""
    try:
        return math.exp(float(loss))
    except OverflowError:
        return float("inf")


def make_eval_step(model):
    """A traced ``(x, y, hidden) -> (summed nll, tokens, new hidden)``."""

    @tf.function(reduce_retracing=True)
    def step(x, y, hidden):
        inputs = dict(x, hidden=hidden)
        outputs = model(inputs, training=False)
        logits = outputs["logits"]
        nll = tf.nn.sparse_softmax_cross_entropy_with_logits(
            _targets(y, logits), logits
        )
        return tf.reduce_sum(nll), tf.size(nll), outputs["hidden"]

    return step


def evaluate(model, split, batch_size, bptt, max_steps=0, step=None):
    """Mean loss per predicted token of ``model`` on a token split.

    Args:
        model: an `RNNModel` (or search model).
        split: 1-D token ids.
        batch_size: rows (the reference evaluates with 10, tests with 1).
        bptt: steps per batch.
        max_steps: cap on the batches (0: all).
        step: a `make_eval_step` function to reuse (one trace).

    Returns:
        The mean negative log-likelihood (nats per token).
    """
    batches = data.batchify(split, batch_size)
    step = step or make_eval_step(model)
    hidden = model.initial_hidden(batch_size)
    total, count = 0.0, 0
    for k, (x, y) in enumerate(data.eval_batches(batches, bptt)):
        if max_steps and k >= max_steps:
            break
        nll, n, hidden = step(x, y, hidden)
        total += float(nll)
        count += int(n)
    return total / max(count, 1)


def log_probabilities(model, tokens, hidden=None):
    """Next-token log-probabilities ``[B, T, V]`` and the last state."""
    tokens = np.asarray(tokens, np.int32)
    if hidden is None:
        hidden = model.initial_hidden(tokens.shape[0])
    outputs = model({"tokens": tokens, "hidden": hidden}, training=False)
    return tf.nn.log_softmax(outputs["logits"], axis=-1), outputs["hidden"]
