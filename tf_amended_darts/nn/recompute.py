"""Recomputation of a block's forward pass, exact to second order.

`Recomputed(fn)(xs)` returns ``fn(xs)`` without keeping the block's
activations for its backward passes: the first backward pass recomputes the
block under its own tape, and that backward pass is itself a
`tf.custom_gradient` whose gradient (the double backward of the nested
tapes in `core.bilevel`) recomputes the block's forward and backward pass
again. A tape, inner or outer, therefore keeps only the block's inputs,
output and incoming gradient, never its interior.

The block's call and each recomputation is a call of one of three traced
functions per block and input signature, not a fresh copy of the block's
ops: the forward, the first-level VJP (forward + backward) and the
second-level product (forward + backward + its backward). Blocks alike but
for their inputs' values (e.g. cells of one shape) can share them: one
`Recomputed` called with each block's values. They are marked
``_noinline``, so that TensorFlow's runtime instantiates each once and
runs every call on it (inlined, as function
calls are by default, each call would be a copy again: the graph of an
S1 step with all cells recomputed grew from 268k to 503k nodes, whose
memory ate what the activations saved; benchmarks/s1_cpu.md, sections 8
and 10). The ``H v`` and ``D H v`` passes of the amended product call the
same second-level function. Intermediate tensors of a call die when the
call returns.

`tf.recompute_grad` is not enough for the nested tapes of the amended
product: its gradient function runs the recomputation under the outer
tape, which then keeps the recomputed activations for the double backward
(as many as without recomputation).

A block that draws random numbers passes its generators' state through
``state`` (in and out, no derivatives): every recomputation starts from the
state its forward call received and draws the same numbers.

Values are those of the plain block (the same ops run on the same
inputs); tests/nn/test_recompute.py checks ``H v`` and ``D H v`` against
explicit Hessians in float64. A recomputation runs when its call's inputs
exist, i.e. once the gradient it serves does.

Third and higher derivatives through a recomputed block are not
supported (the second-level product is called with the tapes stopped).
"""

import tensorflow as tf

try:  # Private: stops every active tape (the calls below record nothing).
    from tensorflow.python.eager import record as _tape_record
except ImportError:  # pragma: no cover - layout of a future TF
    _tape_record = None

# Function attribute that keeps TensorFlow's runtime from inlining a call
# (tf.function's experimental_attributes; TF 2.21).
_NO_INLINE = {"_noinline": True}


def check_hvp(recompute, hvp):
    """Raises a ValueError when ``hvp`` needs forward-mode derivatives of
    recomputed blocks, which have reverse-mode ones only (`Recomputed`).

    Args:
        recompute: whether the network recomputes blocks
            (``--recompute_cells``).
        hvp: the estimator's product mode (``--hvp``).
    """
    if recompute and hvp == "forward":
        raise ValueError(
            "--hvp=forward does not combine with --recompute_cells "
            "(recomputed cells have reverse-mode derivatives only); use "
            "--hvp=exact or --hvp=finite_difference."
        )


def check_replicas(recompute, num_replicas):
    """Raises a ValueError when recomputed blocks would run on several
    replicas: their functions are traced and called inside each replica,
    where a cross-replica reduction (the search's synchronized batch
    norms) is a `merge_call` that TensorFlow's distribution strategies do
    not support inside a nested function.

    Args:
        recompute: whether the network recomputes blocks
            (``--recompute_cells``).
        num_replicas: the strategy's ``num_replicas_in_sync``.
    """
    if recompute and num_replicas > 1:
        raise ValueError(
            f"--recompute_cells does not combine with {num_replicas} "
            "replicas (--strategy=mirrored or multi_worker): the batch "
            "norms' cross-replica statistics would synchronise inside the "
            "recomputed cells' functions, which TensorFlow's distribution "
            "strategies do not support. Use one replica or drop "
            "--recompute_cells."
        )


def _zeros_for_none(grads, like):
    return [
        tf.zeros_like(x) if g is None else g
        for g, x in zip(grads, like, strict=True)
    ]


def _vjp(fn, xs, dy):
    """``(d fn / d xs)^T dy`` by one forward and one backward pass."""
    with tf.GradientTape() as tape:
        tape.watch(xs)
        y = fn(xs)
    return _zeros_for_none(tape.gradient(y, xs, output_gradients=dy), xs)


def _call_unrecorded(function, args, name):
    """``function(*args)`` that no active tape records.

    Traced first, with the tapes running (the traced body differentiates
    with its own tape); called with every tape stopped: a call that a tape
    watched would make TensorFlow trace a variant returning the
    function's intermediate tensors, to differentiate it later.

    Raises:
        ValueError: when the traced body captures a tensor from outside
            (a later call with the same signature would silently reuse the
            first call's tensor, and no derivative would reach it).
    """
    concrete = function.get_concrete_function(*args)
    if concrete.captured_inputs:
        captured = [t.name for t in concrete.graph.internal_captures]
        raise ValueError(
            f"The recomputed block {name!r} reads tensors that are not "
            f"among its inputs: {captured}. Pass every tensor it reads "
            "(variable values included) through its input list."
        )
    if _tape_record is None:  # pragma: no cover - layout of a future TF
        return concrete(*args)
    with _tape_record.stop_recording():
        return concrete(*args)


class Recomputed:
    """A block ``fn`` whose derivatives recompute it (see the module).

    A block that draws random numbers takes the state of its generators
    as ``state`` (a nest of tensors of any dtype, e.g. a dict of lists):
    ``fn(xs, state)`` returns ``(y, new_state)``, and every
    recomputation calls ``fn`` with the state its forward call received,
    so that it draws the same numbers (`vision.recomputed_cells` passes
    its seed generators' states).

    Args:
        fn: a pure function of a list of floating tensors returning one
            floating tensor, or, for calls with ``state``, of that list and
            the state returning ``(y, new_state)`` (any other state it
            reads must come through its arguments; tensors it captures get
            no derivative).
        name: a name for the traced functions (debugging and profiles).
    """

    def __init__(self, fn, name="recomputed"):
        self.fn = fn
        self.name = name
        options = dict(autograph=False, experimental_attributes=_NO_INLINE)
        self._forward = tf.function(self._forward_level, **options)
        self._first = tf.function(self._first_level, **options)
        self._second = tf.function(self._second_level, **options)

    def _output(self, state):
        """``xs -> y`` of ``fn`` for a call with ``state`` (or None)."""
        if state is None:
            return self.fn
        return lambda xs: self.fn(xs, state)[0]

    def _forward_level(self, xs, state):
        """``fn(xs)``, or ``fn(xs, state)`` for a call with ``state``."""
        if state is None:
            return self.fn(list(xs))
        return self.fn(list(xs), state)

    def _first_level(self, xs, dy, state):
        """The VJP of ``fn`` at ``xs`` along ``dy``."""
        return _vjp(self._output(state), list(xs), dy)

    def _second_level(self, xs, dy, state, upstream):
        """The VJP of `_first_level` at ``(xs, dy)`` along ``upstream``."""
        ins = list(xs) + [dy]
        with tf.GradientTape() as tape:
            tape.watch(ins)
            again = _vjp(self._output(state), ins[:-1], ins[-1])
        return _zeros_for_none(
            tape.gradient(again, ins, output_gradients=list(upstream)), ins
        )

    def __call__(self, xs, state=None):
        """``fn(xs)``, recomputed when a derivative is needed; with
        ``state`` (a nest of tensors, no derivatives), ``fn(xs, state)``:
        ``(y, new_state)``."""
        xs = [tf.convert_to_tensor(x) for x in xs]
        if state is not None:
            state = tf.nest.map_structure(tf.convert_to_tensor, state)
        new_state = []

        @tf.custom_gradient
        def forward(*args):
            out = _call_unrecorded(self._forward, (list(args), state),
                                   self.name)
            if state is None:
                y = out
            else:
                y, after = out
                # Not an output of the op: a state has no derivative.
                new_state.append(tf.nest.map_structure(tf.stop_gradient, after))

            def grad(dy):
                return self._vjp(list(args), dy, state)

            return y, grad

        y = forward(*xs)
        if state is None:
            return y
        return y, new_state[0]

    def _vjp(self, xs, dy, state):
        """The first-level VJP as one recorded op whose own gradient is
        the second-level function."""
        n = len(xs)

        @tf.custom_gradient
        def vjp(*args):
            ins, dy = list(args[:n]), args[n]
            grads = _call_unrecorded(self._first, (ins, dy, state), self.name)

            def grad(*upstream):
                upstream = _zeros_for_none(list(upstream), grads)
                return _call_unrecorded(
                    self._second, (ins, dy, state, upstream), self.name
                )

            return grads, grad

        return vjp(*xs, dy)


def recompute(fn, xs):
    """``fn(xs)``, recomputed when its first or second derivative is needed.

    One-off form of `Recomputed`: the traced functions are reused within
    this call's derivatives (the ``H v`` and ``D H v`` passes); build a
    `Recomputed` once to reuse them across calls of the same signature.

    Args:
        fn: a pure function of a list of floating tensors returning one
            floating tensor (any state it reads must come through ``xs``).
        xs: the list of input tensors (activations and parameters).

    Returns:
        ``fn(xs)``.
    """
    return Recomputed(fn)(xs)
