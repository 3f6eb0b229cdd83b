"""The re-training model: the network from a genotype inside a Keras model
with the reference's loss (cross-entropy, auxiliary head 0.4, label
smoothing on ImageNet), top-1/top-5 metrics, the optimiser with PyTorch
semantics and its schedule (cosine per epoch on CIFAR, linear per epoch on
ImageNet), and loss scaling for ``mixed_float16``.
"""

import keras
import tensorflow as tf
from keras import ops

from tf_amended_darts.core import replicas
from tf_amended_darts.core.optimizers import EpochCosineDecay, TorchSGD
from tf_amended_darts.vision import data, network

# keras.optimizers.LossScaleOptimizer defaults (Keras 3.15, the values of
# TF2's tf.keras.mixed_precision.LossScaleOptimizer): initial loss scale
# 2^15, doubled after 2000 steps with finite gradients.
INITIAL_LOSS_SCALE = 2.0**15


LOSS_SCALE_GROWTH_STEPS = 2000


# --dtype_policy values that need loss scaling (float16's narrow exponent
# range: gradients below 6e-8 underflow to zero without it).
LOSS_SCALED_POLICIES = ("mixed_float16",)


TOP_K = 5  # top-5 accuracy, as DARTS utils.accuracy(topk=(1, 5))


def cross_entropy(labels, logits, label_smoothing=0.0):
    """Mean softmax cross-entropy of integer labels, optionally smoothed.

    The mean of `per_example_cross_entropy`.

    With smoothing ``e`` and ``K`` classes the target is ``(1 - e) *
    one_hot + e / K``, as DARTS ``CrossEntropyLabelSmooth``
    (``train_imagenet.py``).

    Args:
        labels: int labels ``[B]``.
        logits: ``[B, K]``.
        label_smoothing: ``e`` in [0, 1).

    Returns:
        A scalar (mean over the batch of this replica).
    """
    return tf.reduce_mean(
        per_example_cross_entropy(labels, logits, label_smoothing)
    )


def per_example_cross_entropy(labels, logits, label_smoothing=0.0):
    """The cross-entropy of each example (see `cross_entropy`), ``[B]``."""
    log_probs = tf.nn.log_softmax(tf.cast(logits, "float32"), axis=-1)
    labels = tf.cast(tf.reshape(labels, [-1]), "int32")
    nll = -tf.gather(log_probs, labels, axis=-1, batch_dims=1)
    if label_smoothing:
        uniform = -tf.reduce_mean(log_probs, axis=-1)
        nll = (1.0 - label_smoothing) * nll + label_smoothing * uniform
    return nll


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class EpochLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear decay stepped once per epoch.

    ``lr(e) = lr_min + (lr_max - lr_min) * (1 - e / epochs)`` with ``e =
    floor(step / steps_per_epoch)``: ``lr_max`` in the first epoch,
    ``lr_min + (lr_max - lr_min) / epochs`` in the last, ``lr_min`` after.

    Args:
        initial_learning_rate: ``lr_max``.
        final_learning_rate: ``lr_min`` (0 for the paper's schedule).
        epochs: epochs of the decay.
        steps_per_epoch: optimizer steps per epoch.

    Reference: the paper's ImageNet setting ("SGD lr 0.5 decayed linearly",
    ../shared/method.md section 7); DARTS ``train_imagenet.py`` itself uses
    ``StepLR(optimizer, 1, gamma=0.97)``.
    """

    def __init__(
        self,
        initial_learning_rate,
        final_learning_rate,
        epochs,
        steps_per_epoch,
    ):
        if epochs < 1 or steps_per_epoch < 1:
            raise ValueError(
                "Expected `epochs` >= 1 and `steps_per_epoch` >= 1. "
                f"Received: epochs={epochs}, steps_per_epoch={steps_per_epoch}"
            )
        self.initial_learning_rate = float(initial_learning_rate)
        self.final_learning_rate = float(final_learning_rate)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)

    def __call__(self, step):
        epoch = ops.floor_divide(ops.cast(step, "int64"), self.steps_per_epoch)
        epoch = ops.minimum(ops.cast(epoch, "float32"), float(self.epochs))
        span = self.initial_learning_rate - self.final_learning_rate
        return self.final_learning_rate + span * (1.0 - epoch / self.epochs)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "final_learning_rate": self.final_learning_rate,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
        }


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class Retrainer(keras.Model):
    """Trains a re-training network with its auxiliary loss; `fit` model.

    Tracks ``loss``, ``top1`` and ``top5`` (on the main logits); `fit` with
    ``validation_data`` adds ``val_loss`` (plain CE), ``val_top1``,
    ``val_top5``.

    Args:
        network: a built `network.NetworkCIFAR` / `NetworkImageNet` (or any
            model returning logits, or ``(logits, aux_logits)`` in training
            mode).
        auxiliary_weight: weight of the auxiliary-head loss.
        label_smoothing: smoothing of the training losses, in [0, 1).
        **kwargs: passed to `keras.Model`.

    Reference: DARTS ``train.py`` / ``train_imagenet.py`` ``train()``.
    """

    def __init__(
        self, network, auxiliary_weight=0.0, label_smoothing=0.0, **kwargs
    ):
        super().__init__(**kwargs)
        if not getattr(network, "built", False):
            raise ValueError(
                "Retrainer needs a built network: call "
                "`network.build(input_shape)` first."
            )
        if auxiliary_weight < 0:
            raise ValueError(
                "Expected `auxiliary_weight` >= 0. Received: "
                f"auxiliary_weight={auxiliary_weight}"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                "Expected `label_smoothing` in [0, 1). Received: "
                f"label_smoothing={label_smoothing}"
            )
        self.network = network
        self.auxiliary_weight = float(auxiliary_weight)
        self.label_smoothing = float(label_smoothing)
        self._trackers = {
            "loss": keras.metrics.Mean(name="loss"),
            "top1": keras.metrics.SparseTopKCategoricalAccuracy(
                k=1, name="top1"
            ),
            "top5": keras.metrics.SparseTopKCategoricalAccuracy(
                k=TOP_K, name="top5"
            ),
        }
        self.built = True  # no variables of its own; the network is built

    @property
    def metrics(self):
        return list(self._trackers.values())

    @property
    def drop_path_prob(self):
        """The network's drop-path probability (`DropPathSchedule` sets it)."""
        return self.network.drop_path_prob

    @drop_path_prob.setter
    def drop_path_prob(self, value):
        self.network.drop_path_prob = value

    def seed_states(self):
        """The network's variables that Keras weight files skip.

        Keras' ``Layer.save_own_variables`` stores trainable and
        non-trainable weights only, not the `keras.random.SeedGenerator`
        states of the drop-path masks; without them a resumed run would
        draw other masks than an uninterrupted one.
        """
        saved = {id(v) for v in self.network.weights}
        return [v for v in self.network.variables if id(v) not in saved]

    def save_own_variables(self, store):
        for i, v in enumerate(self.seed_states()):
            store[f"{i}"] = v

    def load_own_variables(self, store):
        states = self.seed_states()
        if len(store.keys()) != len(states):
            raise ValueError(
                f"The checkpoint holds {len(store.keys())} seed-generator "
                f"states; this network has {len(states)}. It comes from "
                "another network: use a new --model_dir."
            )
        for i, v in enumerate(states):
            v.assign(store[f"{i}"])

    def compile(self, optimizer, **kwargs):
        """Compiles with ``optimizer``, built on the network's weights."""
        super().compile(optimizer=optimizer, jit_compile=False, **kwargs)
        self.optimizer.build(self.network.trainable_variables)

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def compute_training_loss(self, labels, outputs):
        """``CE(logits) + auxiliary_weight * CE(aux_logits)``, smoothed."""
        smoothing = self.label_smoothing
        if isinstance(outputs, (tuple, list)):
            logits, aux_logits = outputs
            loss = cross_entropy(labels, logits, smoothing)
            if self.auxiliary_weight:
                aux = cross_entropy(labels, aux_logits, smoothing)
                loss = loss + self.auxiliary_weight * aux
            return loss, logits
        return cross_entropy(labels, outputs, smoothing), outputs

    def _update(self, labels, loss, logits):
        t = self._trackers
        t["loss"].update_state(loss)
        t["top1"].update_state(labels, logits)
        t["top5"].update_state(labels, logits)
        return {name: m.result() for name, m in t.items()}

    def train_step(self, data):
        x, y = data
        variables = self.network.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.network(x, training=True)
            loss, logits = self.compute_training_loss(y, outputs)
            # The identity unless the optimiser scales the loss
            # (`LossScaleOptimizer`, mixed_float16), which unscales the
            # gradients itself.
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        # Per-replica mean losses: the cross-replica mean gradient.
        replicas.apply_mean_gradients(self.optimizer, grads, variables)
        return self._update(y, loss, logits)

    def test_step(self, data):
        x, y = data
        logits = self.network(x, training=False)
        # Per-example losses: the mean over the test set, whatever the batch
        # split (a replica may get an empty last batch).
        losses = per_example_cross_entropy(y, logits)
        return self._update(y, losses, logits)

    def get_config(self):
        config = super().get_config()
        config.update(
            network=keras.saving.serialize_keras_object(self.network),
            auxiliary_weight=self.auxiliary_weight,
            label_smoothing=self.label_smoothing,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(
            config["network"]
        )
        return cls(**config)


def base_optimizer(optimizer):
    """The optimiser that updates the weights (inside a loss scaler)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


def build_network(config, genotype=None):
    """The built re-training network of ``config`` (training drop-path 0).

    Args:
        config: a `retrain_config.RetrainConfig`.
        genotype: the `Genotype` (default: ``config.load_genotype()``).

    Returns:
        A built `NetworkImageNet` for ``imagenet``, else `NetworkCIFAR`.

    Raises:
        ValueError: naming ``--image_size`` when the images are too small
            for the network (e.g. for its auxiliary head).
    """
    genotype = genotype or config.load_genotype()
    info = data.dataset_info(config.dataset, config.image_size or None)
    cls = (
        network.NetworkImageNet
        if config.dataset == "imagenet"
        else network.NetworkCIFAR
    )
    net = cls(
        genotype,
        num_classes=info.num_classes,
        layers=config.layers,
        init_channels=config.init_channels,
        auxiliary=config.auxiliary,
        drop_path_prob=0.0,
        seed=config.seed,
        dtype=config.dtype_policy,
    )
    size = info.image_size
    try:
        net.build((None, size, size, info.channels))
    except (ValueError, ZeroDivisionError) as err:
        head = (
            f" The auxiliary head (after cell {net.aux_index}) needs at "
            "least 8x8 features (CIFAR network) or 7x7 (ImageNet network);"
            " use a larger --image_size or --noauxiliary."
            if config.auxiliary
            else ""
        )
        raise ValueError(
            f"Invalid --image_size={config.image_size} ({size}x{size} "
            f"images of --dataset={config.dataset}) for --layers="
            f"{config.layers}: {err or type(err).__name__}.{head}"
        ) from None
    return net


def build_retrainer(config, net, steps_per_epoch):
    """The compiled `Retrainer` of ``config`` around the built ``net``."""
    args = (
        config.learning_rate,
        config.learning_rate_min,
        config.epochs,
        steps_per_epoch,
    )
    if config.lr_schedule == "cosine":
        schedule = EpochCosineDecay(*args)
    else:
        schedule = EpochLinearDecay(*args)
    model = Retrainer(
        net,
        auxiliary_weight=config.auxiliary_weight if config.auxiliary else 0.0,
        label_smoothing=config.label_smoothing,
    )
    optimizer = TorchSGD(
        schedule,
        config.momentum,
        config.weight_decay,
        global_clipnorm=config.grad_clip or None,
    )
    if config.dtype_policy in LOSS_SCALED_POLICIES:
        # Unscales before the inner optimiser clips (see module docstring).
        optimizer = keras.optimizers.LossScaleOptimizer(
            optimizer,
            initial_scale=INITIAL_LOSS_SCALE,
            dynamic_growth_steps=LOSS_SCALE_GROWTH_STEPS,
        )
    model.compile(optimizer)
    return model
