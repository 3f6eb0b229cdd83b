"""Helpers for replica context (call them inside `strategy.run`, i.e. in a
``train_step``): the replica count, cross-replica means, and the one way
the search and re-training apply averaged gradients.

Gradients (`apply_mean_gradients`): every ``train_step`` here computes a
per-replica loss (a mean over the replica's examples) and its gradients in
replica context. A Keras 3 optimiser's ``apply`` on the TensorFlow backend
all-reduces the gradients it gets with a SUM (``_all_reduce_sum_gradients``
in ``keras/src/backend/tensorflow/optimizer.py``), but it clips them
(``global_clipnorm``, ``clipnorm``, ``clipvalue``) BEFORE that all-reduce,
i.e. per replica. Dividing by the number of replicas thus gives the mean
gradient only without clipping; with clipping the update would depend on
the replica count. `apply_mean_gradients` therefore all-reduces the
gradients itself when the optimiser clips, clips the mean, and hands the
optimiser ``clipped / replicas`` (whose norm is below the threshold, so the
optimiser's own clip leaves it unchanged up to rounding, and whose sum is
the clipped mean).
"""

import keras
import tensorflow as tf


def num_replicas():
    """Replicas in sync of the current replica context (1 outside one)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def cross_replica_mean(values):
    """The cross-replica mean of a list of tensors (replica context).

    The identity with one replica or outside a replica context.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return list(values)
    return list(context.all_reduce(tf.distribute.ReduceOp.MEAN, list(values)))


def _clips(optimizer):
    return any(
        getattr(optimizer, key, None)
        for key in ("global_clipnorm", "clipnorm", "clipvalue")
    )


def _clip(optimizer, grads):
    """Clips as ``optimizer`` would (Keras precedence), on global values."""
    if optimizer.clipnorm:
        return [tf.clip_by_norm(g, optimizer.clipnorm) for g in grads]
    if optimizer.global_clipnorm:
        return tf.clip_by_global_norm(grads, optimizer.global_clipnorm)[0]
    v = optimizer.clipvalue
    return [tf.clip_by_value(g, -v, v) for g in grads]


def apply_mean_gradients(optimizer, grads, variables):
    """Applies the cross-replica mean of per-replica gradients.

    In replica context, with equal per-replica batches: the update equals
    the one-replica update on the global batch, clipping included (see the
    module docstring). With one replica it is ``optimizer.apply``.

    A `keras.optimizers.LossScaleOptimizer` (mixed_float16) gets gradients
    of the scaled loss; its inner optimiser's clip must act on the unscaled
    cross-replica mean, so under several replicas the mean is unscaled,
    clipped and rescaled here. The wrapper then checks finiteness (every
    replica sees the same gradients, so all skip or apply a step together)
    and unscales; the inner optimiser's own per-replica clip leaves the
    already clipped values alone.

    Args:
        optimizer: a Keras optimiser built on ``variables`` (possibly a
            `LossScaleOptimizer`).
        grads: this replica's gradients of its mean loss (of the scaled
            loss for a `LossScaleOptimizer`; ``None``: zeros).
        variables: the variables, in the order of ``grads``.
    """
    variables = list(variables)
    grads = [
        tf.zeros_like(v) if g is None else g
        for g, v in zip(grads, variables, strict=True)
    ]
    replicas = num_replicas()
    if replicas > 1:
        clipper = optimizer
        scale = None
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            clipper = optimizer.inner_optimizer
            scale = tf.convert_to_tensor(optimizer.dynamic_scale)
        if _clips(clipper):
            grads = cross_replica_mean(grads)
            if scale is not None:
                grads = [g / scale for g in grads]
            grads = _clip(clipper, grads)
            if scale is not None:
                grads = [g * scale for g in grads]
        # The optimiser sums over the replicas.
        grads = [g / replicas for g in grads]
    optimizer.apply(grads, variables)
