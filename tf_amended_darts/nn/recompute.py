"""Recomputation of a block's forward pass, exact to second order.

`recompute(fn, xs)` returns ``fn(xs)`` without keeping the block's
activations for its backward pass: the first backward pass recomputes the
block under its own tape, and that backward pass is itself a
`tf.custom_gradient` whose gradient (the double backward of the nested
tapes in `core.bilevel`) recomputes the block's forward and backward pass
again. A tape, inner or outer, therefore keeps only the block's inputs,
output and incoming gradient, never its interior.

`tf.recompute_grad` is not enough for the nested tapes of the amended
product: its gradient function runs the recomputation under the outer
tape, which then keeps the recomputed activations for the double backward
(as many as without recomputation).

Values are those of the plain block (the same ops run on the same
inputs); tests/nn/test_recompute.py checks ``H v`` and ``D H v`` against
explicit Hessians in float64. Each recomputation waits (control
dependency) for the gradient it serves.

Measured, not used by the package (issue 13; benchmarks/s1_cpu.md
section 8, "Recomputed cells"): recomputing the supernet's cells in the
amended exact step (benchmarks/probe/recompute_cells.py) nearly doubles
the graph, and on S1 at batch 32 raises the peak RSS (18.3 GB against
15.2 GB) and nearly doubles the time per step.

Third and higher derivatives through a recomputed block are not
supported (the second-level gradient is not itself recorded for a
further tape).
"""

import tensorflow as tf


def _zeros_for_none(grads, like):
    return [
        tf.zeros_like(x) if g is None else g
        for g, x in zip(grads, like, strict=True)
    ]


def _distinct(xs, after):
    """Fresh tensors for ``xs`` that exist only once the tensors ``after``
    do. Fresh: a tensor passed twice (a cell's two inputs are one tensor
    after the stem) gets one gradient per position, not the total twice.
    After: the executor runs every op whose inputs are ready, so without
    the dependency each recomputation would run as soon as the block's
    inputs exist (early in the forward pass) and hold its activations as
    long as without recomputation."""
    with tf.control_dependencies(list(after)):
        return [tf.identity(x) for x in xs]


def _vjp(fn, xs, dy):
    """``(d fn / d xs)^T dy`` from one recomputed forward and backward,
    started when ``dy`` exists."""
    xs = _distinct(xs, [dy])
    with tf.GradientTape() as tape:
        tape.watch(xs)
        y = fn(xs)
    return _zeros_for_none(tape.gradient(y, xs, output_gradients=dy), xs)


def _recomputed_vjp(fn, xs, dy):
    """`_vjp` whose own gradient recomputes it (second level)."""
    n = len(xs)

    @tf.custom_gradient
    def vjp(*args):
        grads = _vjp(fn, list(args[:n]), args[n])

        def grad(*upstream):
            upstream = _zeros_for_none(list(upstream), grads)
            ins = _distinct(args, upstream)
            with tf.GradientTape() as tape:
                tape.watch(ins)
                again = _vjp(fn, ins[:n], ins[n])
            out = tape.gradient(again, ins, output_gradients=upstream)
            return _zeros_for_none(out, ins)

        return grads, grad

    return vjp(*xs, dy)


def recompute(fn, xs):
    """``fn(xs)``, recomputed when its first or second derivative is needed.

    Args:
        fn: a pure function of a list of floating tensors returning one
            floating tensor (any state it reads must come through ``xs``).
        xs: the list of input tensors (activations and parameters).

    Returns:
        ``fn(xs)``.
    """
    xs = [tf.convert_to_tensor(x) for x in xs]

    @tf.custom_gradient
    def forward(*args):
        y = fn(list(args))

        def grad(dy):
            return _recomputed_vjp(fn, list(args), dy)

        return y, grad

    return forward(*xs)
