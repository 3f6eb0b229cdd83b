"""DARTS recurrent cells: the discrete cell of a genotype and the search cell.

Both run a whole sequence in one `tf.while_loop` over time (one trace for
every sequence length, exact derivatives of every order: TensorFlow
differentiates while loops by accumulating the loop's tensors, and the
double-backward passes of the bi-level estimators go through the same
mechanism; tests/language/test_cells.py compares them with float64 finite
differences). The input half of the first matrix product is taken for all
time steps at once, outside the loop (``x W0[:E]`` has no recurrence).

One time step (``space`` module docstring)::

    (c0, h0) = [x_t * mx, h_{t-1} * mh] W0
    s0       = h + sigmoid(c0) (tanh(h0) - h)
    (c, h)   = (s_j * mh) W_i
    s_{i+1}  = s_j + sigmoid(c) (op(h) - s_j)
    h_t      = mean(s_k for k in concat)

``mx`` and ``mh`` are the variational dropout masks of the input and of the
hidden states: drawn once per sequence (the caller draws them), the same
at every time step and, for ``mh``, every node.

The search cell mixes all predecessors and operators with softmax weights
``p`` and batch-normalises ``s0`` and every node without affine parameters,
as the reference ``DARTSCellSearch`` does. Per node it computes the
algebraically equal form
``sum_j [P_j (1 - c_j) s_j + c_j sum_k p_jk op_k(h_j)]`` (``P_j`` the total
non-``none`` weight of predecessor ``j``) instead of materialising one
highway output per operator: fewer saved activations for the backward and
double-backward passes.

Batch normalisation in the search cell: training mode normalises with the
batch statistics (``mean((x - mean)^2)``, differentiable to every order) and
updates the moving statistics at every call, as PyTorch does for the
reference's one shared ``BatchNorm1d`` (momentum 0.1, unbiased variance):
the statistics are carried through the time loop. Inside
`nn.contexts.frozen_statistics` (the engine's functional passes) nothing is
updated. Inference normalises with the moving statistics.

Reference: DARTS ``rnn/model.py`` (``DARTSCell``) and
``rnn/model_search.py`` (``DARTSCellSearch``).
"""

import keras
import tensorflow as tf

from tf_amended_darts.language import space
from tf_amended_darts.language.genotype import RecurrentGenotype
from tf_amended_darts.nn.contexts import statistics_frozen
from tf_amended_darts.nn.validate import invalid

INIT_RANGE = 0.04  # [darts] rnn/model.py INITRANGE (uniform +-0.04)
BN_EPSILON = 1e-5  # torch.nn.BatchNorm1d default eps
BN_MOMENTUM = 0.1  # torch.nn.BatchNorm1d default momentum (PyTorch units)

ACTIVATIONS = {
    "tanh": tf.tanh,
    "relu": tf.nn.relu,
    "sigmoid": tf.sigmoid,
    "identity": lambda x: x,
}


def _check_dim(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(name, "an integer >= 1", value)
    return value


def highway(s, ch, activation):
    """``s + sigmoid(c) * (activation(h) - s)`` with ``(c, h) = ch``."""
    c, h = tf.split(ch, 2, axis=-1)
    return s + tf.sigmoid(c) * (activation(h) - s)


def run_recurrence(step, xw, h0, length, extra=()):
    """Runs ``step`` over time in a `tf.while_loop`.

    Args:
        step: ``step(xw_t, h, *extra) -> (h_t, *extra)``.
        xw: ``[T, B, 2H]``, the input's part of the first product.
        h0: ``[B, H]`` initial hidden state.
        length: scalar int32, the number of steps (<= T).
        extra: loop-carried tensors (moving statistics).

    Returns:
        ``(outputs [T', B, H], h_T, extra)`` with ``T' = length``.
    """
    outputs = tf.TensorArray(h0.dtype, size=length, element_shape=h0.shape)
    # Read through a TensorArray, not `xw[t]`: the gradient of a slice of
    # a loop-invariant tensor is a full-size tensor per step (quadratic in
    # the length, in time and memory, and worse in the double backward).
    inputs = tf.TensorArray(xw.dtype, size=length).unstack(xw[:length])

    def body(t, h, out, *carried):
        h, *carried = step(inputs.read(t), h, *carried)
        return (t + 1, h, out.write(t, h), *carried)

    _, h, outputs, *extra = tf.while_loop(
        lambda t, *_: t < length,
        body,
        (tf.constant(0), h0, outputs, *extra),
    )
    return outputs.stack(), h, tuple(extra)


class _CellBase(keras.layers.Layer):
    """Weights shared by both cells: ``W0`` and one ``W_i`` per node."""

    def __init__(self, input_dim, hidden_dim, steps, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = _check_dim("input_dim", input_dim)
        self.hidden_dim = _check_dim("hidden_dim", hidden_dim)
        self.steps = space.check_steps(steps)

    def build(self, input_shape=None):
        init = keras.initializers.RandomUniform(-INIT_RANGE, INIT_RANGE)
        h = self.hidden_dim
        self.w0 = self.add_weight(
            shape=(self.input_dim + h, 2 * h), initializer=init, name="w0"
        )
        self.ws = [
            self.add_weight(shape=(h, 2 * h), initializer=init, name=f"w{i+1}")
            for i in range(self.steps)
        ]
        self.built = True

    def input_projection(self, x, x_mask=None):
        """``(x_t * mx) W0[:E]`` for every step: ``[B, T, E] -> [T, B, 2H]``.

        Args:
            x: ``[B, T, E]`` inputs.
            x_mask: ``[B, E]`` input dropout mask, or None.
        """
        if x_mask is not None:
            x = x * x_mask[:, None, :]
        xw = tf.einsum("bte,ef->tbf", x, self.w0[: self.input_dim])
        return xw

    def first_state(self, xw_t, h, h_mask):
        """``s0`` from the step's input part and the previous state."""
        masked = h if h_mask is None else h * h_mask
        ch = xw_t + tf.matmul(masked, self.w0[self.input_dim :])
        c0, h0 = tf.split(ch, 2, axis=-1)
        return h + tf.sigmoid(c0) * (tf.tanh(h0) - h)

    def get_config(self):
        config = super().get_config()
        config.update(
            input_dim=self.input_dim,
            hidden_dim=self.hidden_dim,
            steps=self.steps,
        )
        return config


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class RecurrentCell(_CellBase):
    """The discrete DARTS recurrent cell of a genotype.

    Args:
        input_dim: ``E``, the input (embedding) width.
        hidden_dim: ``H``, the hidden width.
        genotype: a `RecurrentGenotype` or its JSON object.
        **kwargs: passed to `keras.layers.Layer`.

    Reference: DARTS ``rnn/model.py`` ``DARTSCell``.
    """

    def __init__(self, input_dim, hidden_dim, genotype, **kwargs):
        if isinstance(genotype, dict):
            from tf_amended_darts.language import genotype as G

            genotype = G.from_dict(genotype, require_header=False)
        if not isinstance(genotype, RecurrentGenotype):
            raise invalid("genotype", "a RecurrentGenotype", genotype)
        self.genotype = genotype
        super().__init__(input_dim, hidden_dim, genotype.steps, **kwargs)

    def step(self, xw_t, h, h_mask=None):
        """One time step: ``h_t`` from the input part and ``h_{t-1}``."""
        states = [self.first_state(xw_t, h, h_mask)]
        for i, (name, pred) in enumerate(self.genotype.recurrent):
            s = states[pred]
            masked = s if h_mask is None else s * h_mask
            ch = tf.matmul(masked, self.ws[i])
            states.append(highway(s, ch, ACTIVATIONS[name]))
        return tf.add_n([states[k] for k in self.genotype.concat]) / len(
            self.genotype.concat
        )

    def call(self, x, h0, length=None, x_mask=None, h_mask=None):
        """Runs the cell over a sequence.

        Args:
            x: ``[B, T, E]`` inputs.
            h0: ``[B, H]`` initial hidden state.
            length: steps to run (default T).
            x_mask: ``[B, E]`` input dropout mask or None.
            h_mask: ``[B, H]`` hidden-state dropout mask or None.

        Returns:
            ``(outputs [B, T, H], h_T [B, H])``.
        """
        if length is None:
            length = tf.shape(x)[1]
        xw = self.input_projection(x, x_mask)
        outputs, h, _ = run_recurrence(
            lambda xw_t, h: (self.step(xw_t, h, h_mask),), xw, h0, length
        )
        return tf.transpose(outputs, [1, 0, 2]), h

    def get_config(self):
        from tf_amended_darts.language import genotype as G

        config = super().get_config()
        config.pop("steps")
        config["genotype"] = G.to_dict(self.genotype)
        return config


def batch_norm(x, stats=None, moving=None, momentum=BN_MOMENTUM):
    """Non-affine batch normalisation over the batch axis of ``[B, H]``.

    Args:
        x: ``[B, H]``.
        stats: training mode: ``(mean, var)`` moving statistics to update
            (returned updated), or None not to update; ignored when
            ``moving`` is given.
        moving: inference mode: ``(mean, var)`` to normalise with.
        momentum: PyTorch-unit momentum of the moving statistics.

    Returns:
        ``(y, stats)``.
    """
    if moving is not None:
        mean, var = moving
        return (x - mean) * tf.math.rsqrt(var + BN_EPSILON), stats
    mean = tf.reduce_mean(x, axis=0)
    centred = x - mean
    var = tf.reduce_mean(tf.square(centred), axis=0)
    if stats is not None:
        n = tf.cast(tf.shape(x)[0], x.dtype)
        unbiased = tf.stop_gradient(var * n / tf.maximum(n - 1, 1))
        m_mean, m_var = stats
        stats = (
            (1 - momentum) * m_mean + momentum * tf.stop_gradient(mean),
            (1 - momentum) * m_var + momentum * unbiased,
        )
    return centred * tf.math.rsqrt(var + BN_EPSILON), stats


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class SearchCell(_CellBase):
    """The DARTS recurrent search cell (all predecessors, all operators).

    Args:
        input_dim: ``E``.
        hidden_dim: ``H``.
        steps: intermediate nodes (8).
        operators: the columns of the weights (default `space.PRIMITIVES`).
        **kwargs: passed to `keras.layers.Layer`.

    Reference: DARTS ``rnn/model_search.py`` ``DARTSCellSearch``.
    """

    def __init__(
        self,
        input_dim,
        hidden_dim,
        steps=space.STEPS,
        operators=space.PRIMITIVES,
        **kwargs,
    ):
        super().__init__(input_dim, hidden_dim, steps, **kwargs)
        operators = tuple(operators)
        unknown = [o for o in operators if o not in space.PRIMITIVES]
        if unknown or not any(o != space.NONE for o in operators):
            raise invalid(
                "operators",
                f"names from {space.PRIMITIVES}, one of them not 'none'",
                operators,
            )
        self.operators = operators

    def build(self, input_shape=None):
        super().build(input_shape)
        h = self.hidden_dim
        self.moving_mean = self.add_weight(
            shape=(h,), initializer="zeros", trainable=False,
            name="moving_mean",
        )
        self.moving_var = self.add_weight(
            shape=(h,), initializer="ones", trainable=False,
            name="moving_variance",
        )

    def node_weights(self, probs):
        """Per node: the operator weights ``[i + 1, ops]`` of its active
        operators and their total ``[i + 1, 1, 1]`` (computed once per
        sequence, outside the time loop)."""
        active = [k for k, o in enumerate(self.operators) if o != space.NONE]
        chosen = tf.gather(probs, active, axis=1)
        nodes = []
        for i, start in enumerate(space.edge_offsets(self.steps)):
            p = chosen[start : start + i + 1]
            nodes.append((p, tf.reduce_sum(p, axis=1)[:, None, None]))
        return nodes

    def step(self, xw_t, h, nodes, h_mask=None, stats=None, moving=None):
        """One time step of the mixed cell.

        Args:
            xw_t: ``[B, 2H]`` input part of the first product.
            h: ``[B, H]`` previous hidden state.
            nodes: `node_weights` of the softmax architecture weights.
            h_mask: hidden dropout mask or None.
            stats: moving statistics to update (training), or None.
            moving: moving statistics to normalise with (inference).

        Returns:
            ``(h_t, stats)``.
        """
        s0, stats = batch_norm(self.first_state(xw_t, h, h_mask), stats,
                               moving)
        states = [s0]
        masked = [s0 if h_mask is None else s0 * h_mask]
        activations = [
            ACTIVATIONS[o] for o in self.operators if o != space.NONE
        ]
        hdim = self.hidden_dim
        for i, (p, total) in enumerate(nodes):
            stacked = tf.stack(states)  # [i + 1, B, H]
            ch = tf.matmul(tf.concat(masked, 0), self.ws[i])
            ch = tf.reshape(ch, [i + 1, -1, 2 * hdim])
            c, hh = tf.split(ch, 2, axis=-1)
            c = tf.sigmoid(c)
            acts = tf.stack([f(hh) for f in activations], axis=-1)
            mixed = tf.einsum("jbhk,jk->jbh", acts, p)
            s = tf.reduce_sum(total * (1 - c) * stacked + c * mixed, axis=0)
            s, stats = batch_norm(s, stats, moving)
            states.append(s)
            masked.append(s if h_mask is None else s * h_mask)
        concat = states[-min(space.CONCAT, self.steps) :]
        return tf.add_n(concat) / len(concat), stats

    def call(
        self, x, h0, probs, length=None, x_mask=None, h_mask=None,
        training=False,
    ):
        """Runs the mixed cell over a sequence.

        Args:
            x: ``[B, T, E]`` inputs.
            h0: ``[B, H]`` initial hidden state.
            probs: softmax architecture weights.
            length: steps to run (default T).
            x_mask: input dropout mask or None.
            h_mask: hidden dropout mask or None.
            training: batch statistics (and their moving averages) or the
                moving statistics.

        Returns:
            ``(outputs [B, T, H], h_T)``.
        """
        if length is None:
            length = tf.shape(x)[1]
        xw = self.input_projection(x, x_mask)
        moving = None
        extra = ()
        if not training:
            moving = (
                tf.convert_to_tensor(self.moving_mean),
                tf.convert_to_tensor(self.moving_var),
            )
        elif not statistics_frozen():
            extra = (
                tf.convert_to_tensor(self.moving_mean),
                tf.convert_to_tensor(self.moving_var),
            )

        nodes = self.node_weights(probs)

        def step(xw_t, h, *stats):
            h, stats = self.step(xw_t, h, nodes, h_mask, stats or None,
                                 moving)
            return (h, *(stats or ()))

        outputs, h, extra = run_recurrence(step, xw, h0, length, extra)
        if extra:
            self.moving_mean.assign(extra[0])
            self.moving_var.assign(extra[1])
        return tf.transpose(outputs, [1, 0, 2]), h

    def get_config(self):
        config = super().get_config()
        config["operators"] = list(self.operators)
        return config
