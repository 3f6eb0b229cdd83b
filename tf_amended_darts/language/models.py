"""Recurrent language models: the evaluation model and the search model.

``RNNModel`` (a genotype's cell) and ``SearchRNNModel`` (the mixed search
cell and its architecture logits) share everything else, as the reference
``RNNModel`` / ``RNNModelSearch`` do: a word embedding tied to the output
layer, the regularisers of AWD-LSTM as DARTS uses them, and a one-layer
recurrent cell with ``emsize == nhid``::

    emb    = embedding(tokens)            dropoute: whole words dropped
    x      = emb * locked mask            dropouti: one mask per sequence
    h_1..T = cell(x, h_0)                 dropoutx, dropouth: in the cell
    out    = h * locked mask              dropout (output)
    logits = out E^T + b                  E: the embedding (tied)

There is no DropConnect on the recurrent weights: the DARTS reference uses
none (its recurrent regulariser is the hidden-state mask ``dropouth``).

**Inputs** are a dict: ``tokens`` ``[B, T]`` int; optional ``length``
``[B]`` (every entry equal: the steps to run, <= T; the rest is padding,
so that every sequence length runs one traced graph), ``stream`` ``[B]``
(every entry equal: 0 the training stream, 1 the validation stream) and
``hidden`` ``[B, H]``. **Outputs** are a dict: ``logits`` ``[B, L, V]``,
``hidden`` (the last state) and ``penalty`` (the temporal activation
regulariser ``tar_beta * mean((h_{t+1} - h_t)^2)``, on the training stream
only, as the reference adds it to the training loss only).

**Hidden state carried across batches.** Without ``hidden`` in the
inputs, the model starts from its own state of the input's stream (a
non-trainable ``[batch_size, H]`` variable per stream) and, in training
mode, writes the last state back: truncated back-propagation through time,
detached (the state is a variable's value, a constant of every pass). The
bi-level engine's functional passes (``stateless_call``) all read the same
state and their writes are discarded, except the validation pass's write
of the validation stream's state, which the engine keeps
(``validation_state_variables``, `engine.BilevelSearch`): one step
advances each stream once, as the reference's ``hidden`` and
``hidden_valid`` do. `reset_states` zeroes both (every epoch, as the
reference's ``train()`` does).

**Dropout masks** are drawn statelessly from ``(seed, stream, counter)``,
``counter`` a non-trainable variable advanced by each training-mode call of
the training stream. Within one search step every pass of the
architecture step (validation pass, products on the training batch) and the
weight step see the same masks, so ``v``, ``H`` and ``D`` are derivatives
of one function (the CNN search does the same with drop-path); the
validation stream draws its own masks; the next step draws new ones. The
counter is saved with the weights, so a resumed run draws the same masks.

Reference: DARTS ``rnn/model.py``, ``rnn/model_search.py``,
``rnn/utils.py`` (``embedded_dropout``, ``LockedDropout``, ``mask2d``).
"""

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts.language import cells, space
from tf_amended_darts.language import genotype as G
from tf_amended_darts.nn.validate import invalid

TRAIN_STREAM = 0
VALID_STREAM = 1
# Offsets of the mask kinds in the stateless seed (any distinct values).
_MASKS = {"e": 0, "i": 1, "x": 2, "h": 3, "o": 4}


def _check_rate(name, value):
    if isinstance(value, bool) or not 0.0 <= float(value) < 1.0:
        raise invalid(name, "a number in [0, 1)", value)
    return float(value)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid(name, f"an integer >= {minimum}", value)
    return value


def _keep_mask(shape, rate, seed, dtype):
    """Bernoulli(1 - rate) / (1 - rate), as the reference's masks."""
    keep = 1.0 - rate
    noise = tf.random.stateless_uniform(shape, seed=seed, dtype=dtype)
    return tf.floor(noise + keep) / keep


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class RNNModel(keras.Model):
    """DARTS' recurrent language model for one genotype (evaluation).

    Args:
        vocab_size: tokens ``V``.
        emsize: embedding width (= ``nhid``; the embedding is tied).
        nhid: hidden width.
        genotype: a `RecurrentGenotype`, its JSON object or a published
            name (``DARTS_V2``).
        dropout: output (locked) dropout.
        dropouth: hidden-state (variational) dropout in the cell.
        dropoutx: input (variational) dropout in the cell.
        dropouti: embedding-output (locked) dropout.
        dropoute: embedding (whole-word) dropout.
        tar_beta: temporal activation regularisation coefficient.
        batch_size: rows of the carried hidden state of each stream.
        seed: seed of the dropout masks.
        **kwargs: passed to `keras.Model`.

    Reference: DARTS ``rnn/model.py`` ``RNNModel`` with ``DARTSCell``.
    """

    def __init__(
        self,
        vocab_size,
        emsize,
        nhid,
        genotype=None,
        dropout=0.0,
        dropouth=0.0,
        dropoutx=0.0,
        dropouti=0.0,
        dropoute=0.0,
        tar_beta=0.0,
        batch_size=1,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = _check_int("vocab_size", vocab_size, 2)
        self.emsize = _check_int("emsize", emsize, 1)
        self.nhid = _check_int("nhid", nhid, 1)
        if emsize != nhid:
            raise invalid(
                "emsize",
                f"equal to nhid={nhid} (tied embedding, as the reference "
                "asserts ninp == nhid)",
                emsize,
            )
        self.dropout = _check_rate("dropout", dropout)
        self.dropouth = _check_rate("dropouth", dropouth)
        self.dropoutx = _check_rate("dropoutx", dropoutx)
        self.dropouti = _check_rate("dropouti", dropouti)
        self.dropoute = _check_rate("dropoute", dropoute)
        if isinstance(tar_beta, bool) or float(tar_beta) < 0:
            raise invalid("tar_beta", "a number >= 0", tar_beta)
        self.tar_beta = float(tar_beta)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)
        self.cell = self._make_cell(genotype)

    # -- construction ---------------------------------------------------------

    def _make_cell(self, genotype):
        if genotype is None:
            raise invalid("genotype", "a recurrent genotype", genotype)
        if isinstance(genotype, dict):
            genotype = G.from_dict(genotype, require_header=False)
        elif isinstance(genotype, str):
            genotype = G.load(genotype)
        self.genotype_value = genotype
        return cells.RecurrentCell(
            self.emsize, self.nhid, genotype, name="cell"
        )

    def build(self, input_shape=None):
        init = keras.initializers.RandomUniform(
            -cells.INIT_RANGE, cells.INIT_RANGE
        )
        self.embedding = self.add_weight(
            shape=(self.vocab_size, self.emsize), initializer=init,
            name="embedding",
        )
        self.cell.build()
        self.decoder_bias = self.add_weight(
            shape=(self.vocab_size,), initializer="zeros", name="decoder_bias"
        )
        rows = (self.batch_size, self.nhid)
        self.train_state = self.add_weight(
            shape=rows, initializer="zeros", trainable=False,
            name="train_state",
        )
        self.valid_state = self.add_weight(
            shape=rows, initializer="zeros", trainable=False,
            name="valid_state",
        )
        self.mask_counter = self.add_weight(
            shape=(), dtype="int64", initializer="zeros", trainable=False,
            name="mask_counter",
        )
        self.built = True

    # -- state ----------------------------------------------------------------

    @property
    def validation_state_variables(self):
        """What the engine keeps from the validation pass (its state)."""
        return [self.valid_state]

    def reset_states(self):
        """Zeroes the carried hidden state of both streams."""
        for v in (self.train_state, self.valid_state):
            v.assign(tf.zeros_like(v))

    def initial_hidden(self, batch_size):
        """Zeros ``[batch_size, nhid]`` (an explicit starting state)."""
        return tf.zeros((batch_size, self.nhid), self.compute_dtype)

    # -- variable lists (bi-level engine) -------------------------------------

    @property
    def weight_variables(self):
        arch = {id(v) for v in self.arch_variables}
        return [v for v in self.trainable_variables if id(v) not in arch]

    @property
    def arch_variables(self):
        return []

    # -- forward --------------------------------------------------------------

    def _masks(self, batch, stream, training):
        """The step's dropout masks (None where off or not training)."""
        masks = dict.fromkeys(_MASKS)
        if not training:
            return masks
        counter = tf.convert_to_tensor(self.mask_counter)
        base = (self.seed * 2 + tf.cast(stream, tf.int64)) * len(_MASKS)
        dtype = self.compute_dtype
        shapes = {
            "e": ((self.vocab_size,), self.dropoute),
            "i": ((batch, 1, self.emsize), self.dropouti),
            "x": ((batch, self.emsize), self.dropoutx),
            "h": ((batch, self.nhid), self.dropouth),
            "o": ((batch, 1, self.nhid), self.dropout),
        }
        for key, (shape, rate) in shapes.items():
            if rate:
                seed = tf.stack([counter, base + _MASKS[key]])
                masks[key] = _keep_mask(shape, rate, seed, dtype)
        return masks

    def run_cell(self, x, h0, length, masks, training):
        """The cell over the sequence; subclasses mix operators."""
        return self.cell(
            x, h0, length=length, x_mask=masks["x"], h_mask=masks["h"]
        )

    def call(self, inputs, training=False):
        """Runs the model over a batch of sequences (see the module doc)."""
        if not isinstance(inputs, dict) or "tokens" not in inputs:
            raise ValueError(
                "RNNModel expects a dict with `tokens` [batch, time] (and "
                "optional `length`, `stream`, `hidden`). Received: "
                f"{type(inputs).__name__}"
            )
        tokens = tf.convert_to_tensor(inputs["tokens"])
        batch = tf.shape(tokens)[0]
        length = (
            tf.cast(inputs["length"][0], tf.int32)
            if "length" in inputs
            else tf.shape(tokens)[1]
        )
        tokens = tokens[:, :length]
        stream = (
            tf.cast(inputs["stream"][0], tf.int32)
            if "stream" in inputs
            else tf.constant(TRAIN_STREAM)
        )
        explicit = "hidden" in inputs
        if explicit:
            h0 = tf.cast(inputs["hidden"], self.compute_dtype)
        else:
            h0 = tf.where(
                tf.equal(stream, TRAIN_STREAM),
                tf.convert_to_tensor(self.train_state),
                tf.convert_to_tensor(self.valid_state),
            )
        masks = self._masks(batch, stream, training)
        emb = tf.gather(self.embedding, tokens)
        if masks["e"] is not None:
            emb = emb * tf.gather(masks["e"], tokens)[..., None]
        if masks["i"] is not None:
            emb = emb * masks["i"]
        raw, h_last = self.run_cell(emb, h0, length, masks, training)
        out = raw if masks["o"] is None else raw * masks["o"]
        logits = tf.einsum("bth,vh->btv", out, self.embedding)
        logits = logits + self.decoder_bias
        penalty = tf.zeros((), self.compute_dtype)
        if training and self.tar_beta:
            diff = raw[:, 1:] - raw[:, :-1]
            count = tf.maximum(tf.size(diff), 1)
            tar = tf.reduce_sum(tf.square(diff)) / tf.cast(count, diff.dtype)
            on_train = tf.cast(tf.equal(stream, TRAIN_STREAM), tar.dtype)
            penalty = self.tar_beta * tar * on_train
        if training and not explicit:
            on_train = tf.equal(stream, TRAIN_STREAM)
            self.train_state.assign(
                tf.where(on_train, h_last, self.train_state)
            )
            self.valid_state.assign(
                tf.where(on_train, self.valid_state, h_last)
            )
            self.mask_counter.assign_add(tf.cast(on_train, tf.int64))
        return {"logits": logits, "hidden": h_last, "penalty": penalty}

    # -- config ---------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            emsize=self.emsize,
            nhid=self.nhid,
            dropout=self.dropout,
            dropouth=self.dropouth,
            dropoutx=self.dropoutx,
            dropouti=self.dropouti,
            dropoute=self.dropoute,
            tar_beta=self.tar_beta,
            batch_size=self.batch_size,
            seed=self.seed,
        )
        if self.genotype_value is not None:
            config["genotype"] = G.to_dict(self.genotype_value)
        return config


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class SearchRNNModel(RNNModel):
    """The recurrent super-network: `RNNModel` with the DARTS search cell.

    Architecture: one logit per (predecessor, operator) pair,
    ``[space.num_edges(steps), len(operators)]``, initialised to
    ``arch_init_scale * N(0, 1)`` (DARTS: 1e-3).

    Args:
        vocab_size, emsize, nhid, dropout, dropouth, dropoutx, dropouti,
        dropoute, tar_beta, batch_size, seed: as `RNNModel`.
        steps: intermediate nodes (8).
        operators: the candidate operators (`space.PRIMITIVES`).
        arch_init_scale: standard deviation of the initial logits.
        **kwargs: passed to `keras.Model`.

    Reference: DARTS ``rnn/model_search.py`` ``RNNModelSearch``.
    """

    def __init__(
        self,
        vocab_size,
        emsize,
        nhid,
        steps=space.STEPS,
        operators=space.PRIMITIVES,
        arch_init_scale=1e-3,
        **kwargs,
    ):
        self.steps = space.check_steps(steps)
        self.operators = tuple(operators)
        if isinstance(arch_init_scale, bool) or float(arch_init_scale) < 0:
            raise invalid("arch_init_scale", "a number >= 0", arch_init_scale)
        self.arch_init_scale = float(arch_init_scale)
        super().__init__(vocab_size, emsize, nhid, genotype=None, **kwargs)

    def _make_cell(self, genotype):
        del genotype
        self.genotype_value = None
        return cells.SearchCell(
            self.emsize, self.nhid, self.steps, self.operators, name="cell"
        )

    def build(self, input_shape=None):
        super().build(input_shape)
        rng = np.random.default_rng(self.seed)
        shape = (space.num_edges(self.steps), len(self.operators))
        init = rng.normal(size=shape) * self.arch_init_scale
        self.alphas = self.add_weight(
            shape=shape,
            initializer=keras.initializers.Constant(init.astype("float32")),
            name="alphas",
        )

    @property
    def arch_variables(self):
        return [self.alphas] if self.built else []

    def arch_weights(self):
        """Softmax weights ``[edges, operators]`` as a NumPy array."""
        return keras.ops.convert_to_numpy(
            keras.ops.softmax(self.alphas, axis=-1)
        )

    def genotype(self, metadata=None):
        """The genotype DARTS derives from the current weights."""
        return G.from_weights(self.arch_weights(), metadata=metadata)

    def run_cell(self, x, h0, length, masks, training):
        probs = tf.nn.softmax(tf.convert_to_tensor(self.alphas), axis=-1)
        return self.cell(
            x, h0, probs, length=length, x_mask=masks["x"],
            h_mask=masks["h"], training=training,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            steps=self.steps,
            operators=list(self.operators),
            arch_init_scale=self.arch_init_scale,
        )
        return config


def count_params(model):
    """Trainable parameters, architecture logits excluded.

    The tied output layer shares the embedding, so it is counted once, as
    ``sum(p.nelement() for p in model.parameters())`` counts it in the
    reference.
    """
    return int(sum(np.prod(v.shape) for v in model.weight_variables))
