"""NT-ASGD: the averaged optimiser and the switching rule."""

import keras
import numpy as np
import pytest

from tf_amended_darts.language import asgd


def _torch_asgd(params, grads, lr, wd):
    """torch.optim.ASGD(lr, t0=0, lambd=0, weight_decay=wd), transcribed:
    p -= lr (g + wd p); ax = p if mu == 1 else ax + mu (p - ax);
    mu = 1 / max(1, step)."""
    p, ax, mu = params.copy(), np.zeros_like(params), 1.0
    for step, g in enumerate(grads, 1):
        p = p - lr * (g + wd * p)
        ax = p.copy() if mu == 1 else ax + mu * (p - ax)
        mu = 1 / max(1, step)
    return p, ax


def test_averaged_sgd_equals_torch_asgd_after_the_switch():
    rng = np.random.default_rng(0)
    start = rng.normal(size=5).astype("float32")
    grads = [rng.normal(size=5).astype("float32") for _ in range(9)]
    var = keras.Variable(start)
    opt = asgd.AveragedSGD(0.1, 0.01)
    opt.build([var])
    for g in grads[:3]:  # plain SGD phase
        opt.apply([g], [var])
    assert not opt.is_averaging
    before = var.numpy()
    opt.switch_on()
    for g in grads[3:]:
        opt.apply([g], [var])
    p, ax = _torch_asgd(before, grads[3:], 0.1, 0.01)
    np.testing.assert_allclose(var.numpy(), p, rtol=1e-5)
    np.testing.assert_allclose(opt.average_of(var).numpy(), ax, rtol=1e-5)
    with opt.swapped_in([var]) as swapped:
        assert swapped
        np.testing.assert_allclose(var.numpy(), ax, rtol=1e-5)
    np.testing.assert_allclose(var.numpy(), p, rtol=1e-5)


def test_nothing_is_swapped_before_averaging():
    var = keras.Variable(np.ones(2, "float32"))
    opt = asgd.AveragedSGD(0.1)
    opt.build([var])
    opt.apply([np.ones(2, "float32")], [var])
    with opt.swapped_in([var]) as swapped:
        assert not swapped
    np.testing.assert_allclose(var.numpy(), 0.9)


@pytest.mark.parametrize("history,loss,switch", [
    ([5, 4, 3, 2, 1], 9, False),  # not more than nonmono checks yet
    ([5, 4, 3, 2, 1, 1], 5.5, True),  # worse than the best before the last 5
    ([5, 4, 3, 2, 1, 1], 4.5, False),
])
def test_non_monotonic_trigger(history, loss, switch):
    assert asgd.should_switch(history, loss, 5) == switch
