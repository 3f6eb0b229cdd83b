"""The bi-level search engine: `model.fit` over (train, validation) pairs.

`BilevelSearch` wraps any Keras model that exposes two explicit variable
lists, ``weight_variables`` and ``arch_variables`` (together: all of its
trainable variables). Each `train_step` does, as DARTS does:

1. an architecture step on the validation batch: the gradient estimator
   chosen by ``arch_grad`` (`bilevel.estimate`), then Adam on ``a``;
2. a weight step on the training batch with the new ``a``: SGD on ``w``.

Architecture warm-up (PC-DARTS, P-DARTS: the first epochs train the
weights only): with ``arch_updates`` False the step skips the estimator and
the architecture update, and evaluates the validation batch by one forward
pass for the logs (``g1_norm``, ``g2_norm``, ``arch_grad_norm`` read 0).
Setting the flag discards the traced step, so each setting has its own
graph (`ArchWarmup` sets it per epoch).

Batch-norm moving statistics: only the weight step's training-batch pass
updates them. The architecture step evaluates the network functionally
(``stateless_call``) and discards the statistics its passes would write, so
the extra passes of ``second_order`` and ``amended`` (virtual step,
perturbed weights, products) never touch them, and the moving statistics
evolve identically under every estimator given the same weights.

State carried across steps (recurrent networks): a network may expose
``validation_state_variables``, non-trainable variables that its
validation pass writes (a language model's hidden state of the validation
stream, carried from batch to batch). The architecture step keeps what
the first validation pass of the estimator wrote to them (at ``w`` for
``first_order`` and ``amended``, at the virtual ``w'`` for
``second_order``, as DARTS' recurrent ``architect.py`` returns the hidden
state of that pass) and discards every other value its passes compute.
Networks without the attribute are unaffected.

Distribution (`distribute.py` builds the strategy; ``train_step`` runs in
replica context, under ``fit`` or `custom_loop.custom_fit`): an update with
R replicas equals the one-replica update on the same global batch, for
every estimator and product mode (tests/core/test_distribute.py measures it):

* losses are per-replica means over equal per-replica batches (the search
  datasets drop the last partial batch);
* the estimator all-reduces (mean) the vectors that feed its products
  (``v``, ``H . v``, the virtual step's gradient), so ``D . H . v`` is the
  product of the global batch, not a sum of per-replica products;
* `replicas.apply_mean_gradients` applies the cross-replica mean of the
  architecture and weight gradients. The Keras 3 TensorFlow optimiser sums
  gradients across replicas, but clips them before that sum, per replica;
  so when an optimiser clips (the weight optimiser's global norm 5), the
  gradients are all-reduced and clipped here first (see `distribute`).
* batch norm: in training mode the statistics are those of the global
  batch, not of each replica's share (``sync_batch_norm=True``, the
  default: `layers.synchronized_statistics` around the whole step, one
  all-reduce per batch-norm call, differentiable to second order). Per-
  replica statistics (``sync_batch_norm=False``, what PyTorch DARTS'
  ``DataParallel`` does) make the loss itself depend on the replica count:
  each replica's loss normalises with its own share's statistics.
  Synchronization costs one small all-reduce per batch-norm call per pass
  (forward, backward, double backward); on the tiny 3-cell supernet with
  2 logical CPUs it grew the traced ``first_order`` step from 49k to 77k
  graph nodes (tracing 18 s -> 29 s).

Measured (tests/core/test_distribute.py, 2 logical CPUs, clipping active): after
three steps every variable and optimiser slot of 1 and 2 replicas agree to
1e-6 relative for all five estimator / product settings, and the float64
estimates through synchronized batch norm to 5e-15.
"""

import keras
import tensorflow as tf
from keras import ops

from tf_amended_darts.core import (
    bilevel,
    hparams,
    lean_function,
    replicas,
)
from tf_amended_darts.core.optimizers import TorchAdam, TorchSGD
from tf_amended_darts.nn import recompute
from tf_amended_darts.nn.contexts import (
    frozen_statistics,
    synchronized_statistics,
)


def unpack_pairs(data):
    """``((x_t, y_t), (x_v, y_v))`` from a dataset element, or a clear error."""
    try:
        (x_t, y_t), (x_v, y_v) = data
    except (TypeError, ValueError):
        structure = tf.nest.map_structure(
            lambda t: getattr(t, "shape", t), data
        )
        raise ValueError(
            "BilevelSearch.fit expects a dataset whose elements are pairs "
            "((x_train, y_train), (x_val, y_val)). Received an element with "
            f"structure: {structure}"
        ) from None
    return (x_t, y_t), (x_v, y_v)


def sparse_cross_entropy(y_true, logits):
    """Mean softmax cross-entropy of integer labels (per replica, unscaled)."""
    return ops.mean(
        keras.losses.sparse_categorical_crossentropy(
            y_true, logits, from_logits=True
        )
    )


def mean_squared_error(y_true, y_pred):
    """Mean squared error (per replica, unscaled)."""
    return ops.mean(ops.square(y_pred - ops.cast(y_true, y_pred.dtype)))


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class BilevelSearch(keras.Model):
    """Searches a model's architecture parameters with `fit`.

    Args:
        network: a built Keras model with attributes ``weight_variables`` and
            ``arch_variables`` (lists of variables that partition its
            trainable variables). Its call may return logits, or a tuple
            ``(logits, aux_logits)`` in training mode.
        arch_grad: ``first_order``, ``second_order`` or ``amended``.
        eta: amending coefficient (``amended``), >= 0.
        hvp: ``exact`` or ``finite_difference`` products.
        loss: ``loss(y_true, y_pred) -> scalar`` per-replica mean; default
            sparse softmax cross-entropy.
        classification: track accuracy metrics.
        aux_weight: weight of the auxiliary-head loss when the network
            returns ``(logits, aux_logits)``.
        sync_batch_norm: under several replicas, training-mode batch norms
            (`BatchNorm` built with ``synchronized=None``) use the
            statistics of the global batch (see the module docstring).
        virtual_step_clip_norm: ``second_order`` only: clip the virtual
            step's gradient to this global norm (`bilevel.VirtualStep`;
            DARTS' recurrent search does, at 0.25); None: no clipping
            (DARTS' CNN search).
        lean_graph: ``fit`` runs the step through `lean_function` (the
            traced graph is freed before the first step runs: 0.5-1.4 GB
            less on S1; README, Benchmarks). False: Keras' own
            ``tf.function``, which keeps the graph. Keras' function is
            used anyway when ``run_eagerly`` or ``steps_per_execution``
            > 1.
        **kwargs: passed to `keras.Model`.

    Reference: DARTS ``train_search.py`` / ``architect.py`` (step order and
    optimiser semantics); ../shared/method.md sections 1-4.
    """

    def __init__(
        self,
        network,
        arch_grad="amended",
        eta=hparams.ETA,
        hvp="exact",
        loss=None,
        classification=True,
        aux_weight=0.0,
        sync_batch_norm=True,
        virtual_step_clip_norm=None,
        lean_graph=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.lean_graph = bool(lean_graph)
        # A callable taking a line of text, told before and after the lean
        # step traces (jobs set it when verbose); not part of the config.
        self.announce_traces = None
        if virtual_step_clip_norm is not None and not (
            float(virtual_step_clip_norm) > 0
        ):
            raise ValueError(
                "Expected `virtual_step_clip_norm` > 0 or None. Received: "
                f"virtual_step_clip_norm={virtual_step_clip_norm!r}"
            )
        self.virtual_step_clip_norm = virtual_step_clip_norm
        bilevel.validate_estimator(arch_grad, eta, hvp)
        recomputes = getattr(network, "recompute_cells", False)
        recompute.check_hvp(recomputes, hvp)
        recompute.check_replicas(
            recomputes, tf.distribute.get_strategy().num_replicas_in_sync
        )
        self.network = network
        self.arch_grad = arch_grad
        self.eta = float(eta)
        self.hvp = hvp
        self.search_loss = loss or sparse_cross_entropy
        self.classification = classification
        self.aux_weight = float(aux_weight)
        self.sync_batch_norm = bool(sync_batch_norm)
        names = ["loss", "val_loss", "g1_norm", "g2_norm", "arch_grad_norm"]
        if classification:
            names += ["accuracy", "val_accuracy"]
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}
        self.weight_optimizer = None
        self.arch_optimizer = None
        self._arch_updates = True

    @property
    def arch_updates(self):
        """Whether a step updates the architecture (False: warm-up)."""
        return self._arch_updates

    @arch_updates.setter
    def arch_updates(self, value):
        value = bool(value)
        if value != self._arch_updates:
            self._arch_updates = value
            if self.train_function is not None:  # in fit: a new graph
                self.make_train_function(force=True)

    def make_train_function(self, force=False):
        """Keras' train function, with the step run by `lean_function`.

        As Keras 3 does with ``steps_per_execution=1``: one
        ``strategy.run(train_step)`` per batch, the logs' replica mean
        (Keras' "auto" reduction off TPUs); the batch is taken from the
        iterator eagerly, so that the traced step takes tensors, not the
        iterator. ``StopIteration`` ends the epoch, as in Keras.
        """
        if self.train_function is not None and not force:
            return self.train_function
        if (not self.lean_graph or self.run_eagerly
                or self.steps_per_execution != 1):
            super().make_train_function(force=True)
            return self.train_function
        strategy = self.distribute_strategy

        @tf.autograph.experimental.do_not_convert
        def one_step_on_data(data):
            logs = strategy.run(self.train_step, args=(data,))
            return tf.nest.map_structure(
                lambda v: tf.reduce_mean(
                    strategy.experimental_local_results(v), axis=0)
                if isinstance(v, tf.distribute.DistributedValues) else v,
                logs,
            )

        jit = self.jit_compile if isinstance(self.jit_compile, bool) else None
        step = lean_function.LeanFunction(
            one_step_on_data, jit_compile=jit, autograph=False,
            announce=self.announce_traces, name="the search step",
        )

        def function(iterator):
            if isinstance(iterator, (tf.data.Iterator,
                                     tf.distribute.DistributedIterator)):
                return step(next(iterator))
            return step(next(iter(iterator)))

        function.lean_step = step  # trace_count, last_trace
        self.train_function = function
        return function

    # -- variables ------------------------------------------------------------

    @property
    def drop_path_prob(self):
        """The wrapped network's drop-path probability (for schedules)."""
        return self.network.drop_path_prob

    @drop_path_prob.setter
    def drop_path_prob(self, value):
        self.network.drop_path_prob = value

    @property
    def weight_variables(self):
        return list(self.network.weight_variables)

    @property
    def arch_variables(self):
        return list(self.network.arch_variables)

    def _variable_layout(self):
        """Where each of the network's trainable variables comes from."""
        if not getattr(self.network, "built", False):
            raise ValueError(
                "BilevelSearch needs a built network: call "
                "`network.build(input_shape)` or run it on a batch first."
            )
        for attr in ("weight_variables", "arch_variables"):
            if not hasattr(self.network, attr):
                raise ValueError(
                    f"The network must expose `{attr}` (a list of "
                    f"variables). {type(self.network).__name__} has none."
                )
        weights, arch = self.weight_variables, self.arch_variables
        if not arch:
            raise ValueError(
                "The network has no architecture variables: "
                "`arch_variables` is empty. Bi-level search needs at least "
                "one architecture parameter."
            )
        if not weights:
            raise ValueError(
                "The network has no weights: `weight_variables` is empty."
            )
        index = {id(v): ("w", i) for i, v in enumerate(weights)}
        for i, v in enumerate(arch):
            if id(v) in index:
                raise ValueError(
                    f"Variable {v.path} is in both `weight_variables` and "
                    "`arch_variables`."
                )
            index[id(v)] = ("a", i)
        trainable = self.network.trainable_variables
        missing = [v.path for v in trainable if id(v) not in index]
        if missing or len(trainable) != len(index):
            raise ValueError(
                "`weight_variables` and `arch_variables` must partition the "
                f"network's trainable variables; not covered: {missing}"
            )
        return [index[id(v)] for v in trainable]

    # -- compile --------------------------------------------------------------

    def compile(self, weight_optimizer=None, arch_optimizer=None, **kwargs):
        """Builds both optimisers, each on its own variable list.

        Args:
            weight_optimizer: default `TorchSGD` (lr 0.025, momentum 0.9,
                coupled weight decay 3e-4, global-norm clip 5).
            arch_optimizer: default `TorchAdam` (lr 3e-4, betas 0.5/0.999,
                coupled weight decay 1e-3).
            **kwargs: passed to `keras.Model.compile` (no optimizer, loss or
                metrics: the engine owns them).
        """
        for key in ("optimizer", "loss", "metrics"):
            if kwargs.get(key) is not None:
                raise ValueError(
                    f"BilevelSearch.compile does not take `{key}`; pass "
                    "weight_optimizer / arch_optimizer, and the loss to the "
                    "constructor."
                )
        self._layout = self._variable_layout()
        self.built = True  # no variables of its own; the network is built
        self.weight_optimizer = weight_optimizer or TorchSGD(
            global_clipnorm=hparams.GRAD_CLIP_NORM
        )
        self.arch_optimizer = arch_optimizer or TorchAdam()
        self.weight_optimizer.build(self.weight_variables)
        self.arch_optimizer.build(self.arch_variables)
        super().compile(optimizer=self.weight_optimizer, **kwargs)

    @property
    def metrics(self):
        return list(self._trackers.values())

    # -- forward --------------------------------------------------------------

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def compute_search_loss(self, y_true, outputs):
        """The task loss; adds ``aux_weight`` x the auxiliary-head loss."""
        if isinstance(outputs, (tuple, list)):
            loss = self.search_loss(y_true, outputs[0])
            if self.aux_weight and len(outputs) > 1:
                loss += self.aux_weight * self.search_loss(y_true, outputs[1])
            return loss
        return self.search_loss(y_true, outputs)

    def functional_loss(self, x, y, record=None):
        """``L(w, a)`` on one batch as a function of variable values.

        The network runs in training mode through ``stateless_call``; the
        updated non-trainable values (BN statistics) are discarded.

        Args:
            x: inputs.
            y: targets.
            record: optional dict; the first call stores its outputs there.
        """
        layout = self._layout
        non_trainable = [v.value for v in self.network.non_trainable_variables]

        def loss_fn(w, a):
            values = [w[i] if kind == "w" else a[i] for kind, i in layout]
            # Batch statistics, no moving-statistic updates (they would be
            # discarded): a smaller graph.
            with frozen_statistics():
                outputs, non_trainable_out = self.network.stateless_call(
                    values, non_trainable, x, training=True
                )
            if record is not None and "outputs" not in record:
                record["outputs"] = outputs
                record["non_trainable"] = non_trainable_out
            return self.compute_search_loss(y, outputs)

        return loss_fn

    def virtual_step(self):
        """What DARTS' virtual step reads from the weight optimiser."""
        opt = self.weight_optimizer
        return bilevel.VirtualStep(
            learning_rate=opt.current_learning_rate(
                self.weight_variables[0].dtype
            ),
            momentum=getattr(opt, "momentum", 0.0),
            momentum_buffers=(
                [opt.momentum_buffer(v) for v in self.weight_variables]
                if hasattr(opt, "momentum_buffer")
                else None
            ),
            weight_decay=getattr(opt, "coupled_weight_decay", 0.0),
            grad_clip_norm=self.virtual_step_clip_norm,
        )

    # -- one search step ------------------------------------------------------

    def arch_gradient(self, train_batch, val_batch, record=None):
        """The estimator's `bilevel.EstimatorResult` at the current values.

        Args:
            train_batch: ``(x_t, y_t)``.
            val_batch: ``(x_v, y_v)``.
            record: optional dict; receives the first validation pass's
                ``outputs`` and ``non_trainable`` values.

        Returns:
            ``(result, outputs of the first validation pass)``.
        """
        (x_t, y_t), (x_v, y_v) = train_batch, val_batch
        record = {} if record is None else record
        weights = [v.value for v in self.weight_variables]
        arch = [v.value for v in self.arch_variables]
        result = bilevel.estimate(
            self.arch_grad,
            self.functional_loss(x_t, y_t),
            self.functional_loss(x_v, y_v, record),
            weights,
            arch,
            eta=self.eta,
            hvp=self.hvp,
            virtual_step=(
                self.virtual_step()
                if self.arch_grad == "second_order"
                else None
            ),
            reduce_mean=replicas.cross_replica_mean,
        )
        return result, record.get("outputs")

    def train_step(self, data):
        if self.weight_optimizer is None:
            raise ValueError("Call BilevelSearch.compile() before fit().")
        with synchronized_statistics(self.sync_batch_norm):
            return self._train_step(data)

    def _frozen_arch_result(self, val_batch, record):
        """The logs' validation loss with no architecture step (warm-up).

        ``record`` receives the validation pass's outputs and
        non-trainable values, as `arch_gradient` fills it.
        """
        x_v, y_v = val_batch
        weights = [v.value for v in self.weight_variables]
        arch = [v.value for v in self.arch_variables]
        loss = self.functional_loss(x_v, y_v, record)(weights, arch)
        zeros = [ops.zeros_like(a) for a in arch]
        return bilevel.EstimatorResult(zeros, zeros, zeros, loss), record[
            "outputs"
        ]

    def _train_step(self, data):
        train_batch, val_batch = unpack_pairs(data)
        record = {}
        if self._arch_updates:
            result, val_outputs = self.arch_gradient(
                train_batch, val_batch, record
            )
            replicas.apply_mean_gradients(
                self.arch_optimizer, result.arch_grads, self.arch_variables
            )
        else:
            result, val_outputs = self._frozen_arch_result(val_batch, record)
        self._keep_validation_state(record.get("non_trainable"))

        x_t, y_t = train_batch
        # The weight step's forward pass waits for the architecture step's
        # result: otherwise the executor starts its first layers (which do
        # not read the architecture) beside the estimator's passes and holds
        # their activations through them (benchmarks/s1_cpu.md, sections 7
        # and 8).
        with bilevel.waiting_for([*result.arch_grads, result.val_loss]):
            x_t = tf.nest.map_structure(  # inputs may be nested (language)
                lambda t: None if t is None else tf.identity(
                    t, name="weight_step_input"),
                x_t,
            )
        lr = ops.convert_to_tensor(
            self.weight_optimizer.current_learning_rate()
        )  # the learning rate of this step's weight update
        with tf.GradientTape() as tape:
            outputs = self.network(x_t, training=True)
            loss = self.compute_search_loss(y_t, outputs)
        grads = tape.gradient(loss, self.weight_variables)
        replicas.apply_mean_gradients(
            self.weight_optimizer, grads, self.weight_variables
        )

        t = self._trackers
        t["loss"].update_state(loss)
        t["val_loss"].update_state(result.val_loss)
        t["g1_norm"].update_state(bilevel.global_norm(result.g1))
        t["g2_norm"].update_state(bilevel.global_norm(result.g2))
        t["arch_grad_norm"].update_state(bilevel.global_norm(result.arch_grads))
        if self.classification:
            _, y_v = val_batch
            t["accuracy"].update_state(_accuracy(y_t, outputs))
            t["val_accuracy"].update_state(_accuracy(y_v, val_outputs))
        logs = {name: m.result() for name, m in t.items()}
        logs["lr"] = lr
        return logs

    def _keep_validation_state(self, values):
        """Assigns the validation pass's values of the carried state."""
        carried = getattr(self.network, "validation_state_variables", None)
        if not carried or values is None:
            return
        index = {
            id(v): i
            for i, v in enumerate(self.network.non_trainable_variables)
        }
        for variable in carried:
            if id(variable) not in index:
                raise ValueError(
                    f"`validation_state_variables` holds {variable.path}, "
                    "which is not a non-trainable variable of the network."
                )
            variable.assign(values[index[id(variable)]])

    def test_step(self, data):
        x, y = data
        outputs = self.network(x, training=False)
        loss = self.compute_search_loss(y, outputs)
        self._trackers["loss"].update_state(loss)
        logs = {"loss": self._trackers["loss"].result()}
        if self.classification:
            self._trackers["accuracy"].update_state(_accuracy(y, outputs))
            logs["accuracy"] = self._trackers["accuracy"].result()
        return logs

    def get_config(self):
        config = super().get_config()
        config.update(
            network=keras.saving.serialize_keras_object(self.network),
            arch_grad=self.arch_grad,
            eta=self.eta,
            hvp=self.hvp,
            classification=self.classification,
            aux_weight=self.aux_weight,
            sync_batch_norm=self.sync_batch_norm,
            virtual_step_clip_norm=self.virtual_step_clip_norm,
            lean_graph=self.lean_graph,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(
            config["network"]
        )
        return cls(**config)


class ArchWarmup(keras.callbacks.Callback):
    """No architecture updates before epoch ``start`` (0-based).

    PC-DARTS train_search.py updates the architecture from ``epoch >= 15``;
    P-DARTS from epoch ``eps_no_arch = 10`` of each stage. Sets
    ``model.arch_updates`` at the start of every epoch.

    Args:
        start: the first epoch with architecture steps (0: every epoch).
    """

    def __init__(self, start):
        super().__init__()
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(
                "Expected `start` to be an integer >= 0 (the first epoch "
                f"with architecture steps). Received: start={start!r}"
            )
        self.start = start

    def on_epoch_begin(self, epoch, logs=None):
        self.model.arch_updates = epoch >= self.start


def _accuracy(y_true, outputs):
    if isinstance(outputs, (tuple, list)):
        outputs = outputs[0]
    predicted = ops.argmax(outputs, axis=-1)
    y = ops.reshape(ops.cast(y_true, predicted.dtype), ops.shape(predicted))
    return ops.mean(ops.cast(ops.equal(predicted, y), "float32"))
