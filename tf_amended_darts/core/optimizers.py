"""Optimisers with the exact semantics of the PyTorch DARTS reference.

Keras' built-in optimisers differ from PyTorch's in three places that matter
for parity (../shared/design.md, "Parity"):

* SGD momentum: PyTorch keeps ``buf <- mu * buf + g; w <- w - lr * buf``;
  Keras keeps the velocity in learning-rate units. The DARTS virtual step
  reads the momentum buffer, so we keep PyTorch's units.
* Weight decay: PyTorch's ``weight_decay`` is coupled L2 added to the
  gradient (after clipping); Keras' is decoupled.
* Adam's epsilon: PyTorch adds it to ``sqrt(v_hat)``; Keras to ``sqrt(v)``
  scaled by the bias correction.

Global-norm clipping uses Keras' ``global_clipnorm``, which clips the raw
gradients before ``update_step`` adds the coupled decay, as
``torch.nn.utils.clip_grad_norm_`` followed by ``optimizer.step()`` does.
"""

import math

import keras
from keras import ops

from tf_amended_darts.core import hparams


def _check_non_negative(name, value):
    if value is None or value < 0:
        raise ValueError(f"Expected `{name}` >= 0. Received: {name}={value}")


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with momentum and coupled weight decay, as ``torch.optim.SGD``.

    Update per variable: ``g <- g + weight_decay * w``;
    ``buf <- momentum * buf + g``; ``w <- w - lr * buf``.

    Args:
        learning_rate: float or `keras.optimizers.schedules` schedule.
        momentum: momentum coefficient ``mu`` (PyTorch units).
        coupled_weight_decay: L2 coefficient added to the gradient.
        **kwargs: passed to `keras.optimizers.Optimizer` (e.g.
            ``global_clipnorm``).

    Reference: PyTorch ``torch.optim.SGD`` (dampening 0, no Nesterov), as
    used by DARTS ``train_search.py``.
    """

    def __init__(
        self,
        learning_rate=hparams.WEIGHT_LR,
        momentum=hparams.WEIGHT_MOMENTUM,
        coupled_weight_decay=hparams.WEIGHT_DECAY,
        name="torch_sgd",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self._python_learning_rate = (
            float(learning_rate)
            if isinstance(learning_rate, (int, float))
            else None
        )
        if not 0 <= momentum < 1:
            raise ValueError(
                f"Expected `momentum` in [0, 1). Received: momentum={momentum}"
            )
        _check_non_negative("coupled_weight_decay", coupled_weight_decay)
        self.momentum = momentum
        self.coupled_weight_decay = coupled_weight_decay

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentum_buffers = [
            self.add_variable_from_reference(v, "momentum_buffer")
            for v in variables
        ]

    def momentum_buffer(self, variable):
        """The PyTorch-unit momentum buffer of `variable` (zeros at first)."""
        return self.momentum_buffers[self._get_variable_index(variable)]

    def current_learning_rate(self, dtype=None):
        """The learning rate the next `apply` will use.

        Args:
            dtype: if given, the value in this dtype, computed in it where
                possible: Keras keeps a constant learning rate in a float32
                variable (0.025 reads 0.02500000037 in float64), so a
                float64 search would take DARTS' virtual step ``xi`` 3e-9
                off. A constant given as a Python number is returned exactly
                as long as the variable still holds it; `EpochCosineDecay`
                is evaluated in ``dtype``.
        """
        if dtype is None:
            return self._get_current_learning_rate()
        schedule = self._learning_rate
        if isinstance(schedule, EpochCosineDecay):
            return schedule.value(self.iterations, dtype)
        value = ops.cast(self._get_current_learning_rate(), dtype)
        if self._python_learning_rate is None:
            return value
        exact = ops.convert_to_tensor(self._python_learning_rate, dtype)
        stored = ops.cast(self._python_learning_rate, self._learning_rate.dtype)
        unchanged = ops.equal(self._learning_rate, stored)
        return ops.where(unchanged, exact, value)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        if self.coupled_weight_decay:
            g = g + ops.cast(self.coupled_weight_decay, dtype) * variable
        buf = self.momentum_buffer(variable)
        self.assign(buf, ops.cast(self.momentum, dtype) * buf + g)
        self.assign_sub(variable, lr * buf)

    def get_config(self):
        config = super().get_config()
        config.update(
            momentum=self.momentum,
            coupled_weight_decay=self.coupled_weight_decay,
        )
        return config


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class TorchAdam(keras.optimizers.Optimizer):
    """Adam with coupled weight decay, as ``torch.optim.Adam``.

    ``g <- g + weight_decay * a``; ``m <- b1 m + (1 - b1) g``;
    ``v <- b2 v + (1 - b2) g^2``;
    ``a <- a - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

    Args:
        learning_rate: float or schedule.
        beta_1: first-moment decay.
        beta_2: second-moment decay.
        epsilon: added to the bias-corrected ``sqrt(v)`` (PyTorch placement).
        coupled_weight_decay: L2 coefficient added to the gradient.
        **kwargs: passed to `keras.optimizers.Optimizer`.

    Reference: PyTorch ``torch.optim.Adam``; DARTS ``architect.py`` uses
    lr 3e-4, betas (0.5, 0.999), weight decay 1e-3.
    """

    def __init__(
        self,
        learning_rate=hparams.ARCH_LR,
        beta_1=hparams.ARCH_BETA_1,
        beta_2=hparams.ARCH_BETA_2,
        epsilon=hparams.ADAM_EPSILON,
        coupled_weight_decay=hparams.ARCH_WEIGHT_DECAY,
        name="torch_adam",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        for key, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0 <= value < 1:
                raise ValueError(
                    f"Expected `{key}` in [0, 1). Received: {key}={value}"
                )
        if not epsilon > 0:
            raise ValueError(f"Expected `epsilon` > 0. Received: {epsilon}")
        _check_non_negative("coupled_weight_decay", coupled_weight_decay)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.coupled_weight_decay = coupled_weight_decay

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.first_moments = [
            self.add_variable_from_reference(v, "m") for v in variables
        ]
        self.second_moments = [
            self.add_variable_from_reference(v, "v") for v in variables
        ]

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        if self.coupled_weight_decay:
            g = g + ops.cast(self.coupled_weight_decay, dtype) * variable
        index = self._get_variable_index(variable)
        m, v = self.first_moments[index], self.second_moments[index]
        b1 = ops.cast(self.beta_1, dtype)
        b2 = ops.cast(self.beta_2, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        self.assign(m, b1 * m + (1 - b1) * g)
        self.assign(v, b2 * v + (1 - b2) * ops.square(g))
        bias_1 = 1 - ops.power(b1, t)
        bias_2 = 1 - ops.power(b2, t)
        denom = ops.sqrt(v) / ops.sqrt(bias_2) + ops.cast(self.epsilon, dtype)
        self.assign_sub(variable, lr / bias_1 * m / denom)

    def get_config(self):
        config = super().get_config()
        config.update(
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            coupled_weight_decay=self.coupled_weight_decay,
        )
        return config


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class EpochCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine annealing stepped once per epoch, as DARTS' scheduler.

    ``lr(e) = lr_min + (lr_max - lr_min) * (1 + cos(pi * e / epochs)) / 2``
    with ``e = floor(step / steps_per_epoch)``, constant within an epoch.

    Args:
        initial_learning_rate: ``lr_max``.
        final_learning_rate: ``lr_min`` (``eta_min``).
        epochs: the annealing period ``T_max`` in epochs.
        steps_per_epoch: optimizer steps per epoch.

    Reference: ``torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs,
    eta_min)`` stepped per epoch in DARTS ``train_search.py``.
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
        return self.value(step, "float32")

    def value(self, step, dtype):
        """The learning rate at ``step``, computed in ``dtype``."""
        epoch = ops.floor_divide(ops.cast(step, "int64"), self.steps_per_epoch)
        epoch = ops.cast(epoch, dtype)
        half = ops.convert_to_tensor(0.5, dtype)
        cosine = half * (1.0 + ops.cos(math.pi * epoch / self.epochs))
        span = self.initial_learning_rate - self.final_learning_rate
        return self.final_learning_rate + span * cosine

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "final_learning_rate": self.final_learning_rate,
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
        }
