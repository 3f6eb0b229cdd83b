"""NT-ASGD: SGD that switches to iterate averaging when validation stalls.

DARTS trains its recurrent evaluation model as AWD-LSTM does: plain SGD
(no momentum, coupled weight decay, global-norm clipping) until the
validation loss has not improved on the best of all but the last
``nonmono`` checks, then ``torch.optim.ASGD(lr, t0=0, lambd=0)``: the
same SGD steps, plus a running average ``ax`` of the iterates, which is
what is evaluated and kept as the best snapshot.

`AveragedSGD` is `TorchSGD` (PyTorch SGD semantics) with that average
switched on by `switch_on`. With ``t0 = 0`` and ``lambd = 0`` PyTorch's
ASGD sets ``ax`` to the iterate after the first two averaged steps and
then averages (``mu = 1 / max(1, step - t0)`` is computed after each
step), i.e. ``ax`` after ``n >= 2`` averaged steps is the mean of the
iterates 2..n; the same here. (PyTorch's ASGD takes the step size of a
step from the learning rate of the previous step, its ``eta`` state, which
under DARTS' per-batch rescaling by ``seq_len / bptt`` lags one batch; here
each step uses its own rescaled learning rate.)

`should_switch` is the non-monotonic trigger of ``rnn/train.py``.

Reference: DARTS ``rnn/train.py``; Merity et al. 2018 (AWD-LSTM).
"""

import contextlib

import keras
import tensorflow as tf
from keras import ops

from tf_amended_darts.core.optimizers import TorchSGD

NONMONO = 5  # [darts] rnn/train.py --nonmono


def should_switch(history, val_loss, nonmono=NONMONO):
    """Whether NT-ASGD switches to averaging after this check.

    Args:
        history: validation losses of the earlier checks (SGD phase).
        val_loss: this check's validation loss.
        nonmono: the patience.

    Returns:
        ``len(history) > nonmono and val_loss > min(history[:-nonmono])``,
        the reference's test.
    """
    history = list(history)
    return len(history) > nonmono and val_loss > min(history[:-nonmono])


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class AveragedSGD(TorchSGD):
    """`TorchSGD` with an iterate average that `switch_on` starts.

    Args:
        learning_rate: step size (the job rescales it per batch).
        coupled_weight_decay: L2 coefficient added to the gradient.
        **kwargs: passed to `TorchSGD` (``global_clipnorm``, ...).

    Reference: ``torch.optim.ASGD(params, lr, t0=0, lambd=0.,
    weight_decay)`` after ``torch.optim.SGD(params, lr, weight_decay)``.
    """

    def __init__(
        self,
        learning_rate=20.0,
        coupled_weight_decay=0.0,
        name="averaged_sgd",
        **kwargs,
    ):
        kwargs.pop("momentum", None)
        super().__init__(
            learning_rate=learning_rate,
            momentum=0.0,
            coupled_weight_decay=coupled_weight_decay,
            name=name,
            **kwargs,
        )

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.averages = [
            self.add_variable_from_reference(v, "average") for v in variables
        ]
        self.averaging = self.add_variable(
            (), initializer="zeros", dtype="int64", name="averaging"
        )
        self.averaged_steps = self.add_variable(
            (), initializer="zeros", dtype="int64", name="averaged_steps"
        )

    @property
    def is_averaging(self):
        """Whether the average is on (Python bool)."""
        return bool(ops.convert_to_numpy(self.averaging))

    def switch_on(self):
        """Starts averaging from the next step (NT-ASGD's switch)."""
        self.averaging.assign(1)
        self.averaged_steps.assign(0)

    def apply(self, grads, trainable_variables=None):
        result = super().apply(grads, trainable_variables)
        self._update_averages()
        return result

    def _update_averages(self):
        on = ops.equal(self.averaging, 1)
        n = self.averaged_steps + 1
        for variable, average in zip(
            self._trainable_variables, self.averages, strict=True
        ):
            weight = ops.where(
                n <= 2,
                ops.ones((), variable.dtype),
                ops.cast(1.0, variable.dtype)
                / ops.cast(n - 1, variable.dtype),
            )
            updated = average + weight * (variable - average)
            self.assign(average, ops.where(on, updated, average))
        self.assign(self.averaged_steps, ops.where(on, n, n - 1))

    def average_of(self, variable):
        return self.averages[self._get_variable_index(variable)]

    @contextlib.contextmanager
    def swapped_in(self, variables):
        """The averages in place of ``variables`` inside the block.

        Outside averaging (or before the first averaged step) nothing is
        swapped.
        """
        if not self.is_averaging or not int(
            ops.convert_to_numpy(self.averaged_steps)
        ):
            yield False
            return
        saved = [tf.identity(v.value) for v in variables]
        for v in variables:
            v.assign(self.average_of(v))
        try:
            yield True
        finally:
            for v, value in zip(variables, saved, strict=True):
                v.assign(value)
