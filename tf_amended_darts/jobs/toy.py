"""The paper's toy bi-level problem (appendix A.2, Figure 4).

``L(w, a; x) = (w x - a)^2`` with scalars; ``L_train`` uses ``x = 1`` and
``L_val`` uses ``x = 2``. Then ``w*(a) = a``, ``L_val(w*(a), a) = a^2``, the
true hypergradient is ``2a`` and the optimum ``a = 0``.

At ``w = w*``: ``g1 = -2a`` (the wrong sign), ``H = 2``, ``D = -2``,
``v = 4a``, so the amended estimate is ``g1 - eta D H v = (16 eta - 2) a``:
it points the right way iff ``eta > 1/8``. Away from ``w*`` the amended
gradient is ``(16 eta - 2)(2w - a)``.

`critical_eta` adds the coupled weight decays of both optimisers: the
linearised joint dynamics of ``(w, a)`` have the gradient field
``M (w, a)`` with ``M = [[2 + wd_w, -2], [2c, wd_a - c]]``,
``c = 16 eta - 2``. Search converges to the fixed point ``(0, 0)`` only if
``det M > 0`` (a positive diagonal preconditioner, such as Adam's or the
learning rates, does not change the sign of the determinant; for
``det M < 0`` the origin is a saddle and ``|a|`` grows without bound).
``det M = (2 + wd_w) wd_a + c (2 - wd_w)``, zero at `critical_eta`.
"""

import keras
import numpy as np
import tensorflow as tf

from tf_amended_darts.core import engine

TRAIN_X = 1.0  # paper, appendix A.2: x_train = 1
VAL_X = 2.0  # paper, appendix A.2: x_val = 2


def critical_eta(weight_decay=0.0, arch_weight_decay=0.0):
    """The amending coefficient at which the toy search flips.

    Below it ``|a|`` diverges; above it the search converges to ``a = 0``.
    Without weight decay it is exactly ``1/8``.
    """
    wd_w, wd_a = float(weight_decay), float(arch_weight_decay)
    c_star = -(2.0 + wd_w) * wd_a / (2.0 - wd_w)
    return (c_star + 2.0) / 16.0


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class ToyModel(keras.Model):
    """``f(x) = w x - a``: one weight, one architecture parameter.

    With targets 0 and a squared-error loss, ``L = (w x - a)^2``.

    Args:
        w_init: initial weight.
        a_init: initial architecture parameter.
        **kwargs: passed to `keras.Model`.

    Reference: paper appendix A.2.
    """

    def __init__(self, w_init=0.0, a_init=1.0, **kwargs):
        super().__init__(**kwargs)
        self.w_init = float(w_init)
        self.a_init = float(a_init)

    def build(self, input_shape=None):
        self.w = self.add_weight(
            shape=(),
            name="w",
            initializer=keras.initializers.Constant(self.w_init),
        )
        self.a = self.add_weight(
            shape=(),
            name="a",
            initializer=keras.initializers.Constant(self.a_init),
        )
        self.built = True

    @property
    def weight_variables(self):
        return [self.w]

    @property
    def arch_variables(self):
        return [self.a]

    def call(self, x, training=False):
        return self.w * x - self.a

    def get_config(self):
        config = super().get_config()
        config.update(w_init=self.w_init, a_init=self.a_init)
        return config


def pairs_dataset(dtype="float32"):
    """Endless ``((x=1, y=0), (x=2, y=0))`` pairs, one sample per batch."""
    x_t = tf.constant([[TRAIN_X]], dtype)
    x_v = tf.constant([[VAL_X]], dtype)
    y = tf.zeros((1, 1), dtype)
    return tf.data.Dataset.from_tensors(((x_t, y), (x_v, y))).repeat()


def val_loss(w, a):
    """``L_val(w, a) = (2w - a)^2`` in closed form."""
    return (VAL_X * w - a) ** 2


class TrajectoryRecorder(keras.callbacks.Callback):
    """Records ``(step, a, w, val_loss)`` after every search step."""

    def __init__(self, toy_model):
        super().__init__()
        self.toy_model = toy_model
        self.rows = []

    def on_train_batch_end(self, batch, logs=None):
        w = float(self.toy_model.w.numpy())
        a = float(self.toy_model.a.numpy())
        logs = logs or {}
        self.rows.append(
            {
                "step": len(self.rows) + 1,
                "a": a,
                "w": w,
                "val_loss": val_loss(w, a),
                "g1_norm": float(logs.get("g1_norm", np.nan)),
                "g2_norm": float(logs.get("g2_norm", np.nan)),
            }
        )


def run(
    arch_grad,
    eta,
    steps,
    hvp="exact",
    w_init=0.0,
    a_init=1.0,
    weight_optimizer=None,
    arch_optimizer=None,
):
    """Searches the toy problem with the bi-level engine.

    Args:
        arch_grad: estimator name.
        eta: amending coefficient.
        steps: number of search steps.
        hvp: product mode.
        w_init: initial ``w``.
        a_init: initial ``a``.
        weight_optimizer: default `optimizers.TorchSGD` with the engine's
            defaults; pass one for other settings.
        arch_optimizer: default `optimizers.TorchAdam`.

    Returns:
        A list of dicts (step, a, w, val_loss, g1_norm, g2_norm); the first
        row is step 0, the initial point.
    """
    network = ToyModel(w_init=w_init, a_init=a_init)
    network.build()
    search = engine.BilevelSearch(
        network,
        arch_grad=arch_grad,
        eta=eta,
        hvp=hvp,
        loss=engine.mean_squared_error,
        classification=False,
    )
    search.compile(
        weight_optimizer=weight_optimizer, arch_optimizer=arch_optimizer
    )
    recorder = TrajectoryRecorder(network)
    start = {
        "step": 0,
        "a": a_init,
        "w": w_init,
        "val_loss": val_loss(w_init, a_init),
        "g1_norm": np.nan,
        "g2_norm": np.nan,
    }
    search.fit(
        pairs_dataset(),
        steps_per_epoch=steps,
        epochs=1,
        verbose=0,
        callbacks=[recorder],
    )
    return [start] + recorder.rows


# --- artefacts ---------------------------------------------------------------

CSV_COLUMNS = ("step", "a", "w", "val_loss", "g1_norm", "g2_norm")


def write_csv(path, rows, extra=None):
    """Writes trajectory rows (one per step) atomically.

    Args:
        path: output CSV path.
        rows: `run` output for the main estimator.
        extra: optional ``{label: rows}`` of other estimators; their
            ``a``, ``w`` and ``val_loss`` become columns ``a_<label>``...
    """
    import csv
    import io
    import os

    extra = extra or {}
    header = list(CSV_COLUMNS)
    for label in extra:
        header += [f"{k}_{label}" for k in ("a", "w", "val_loss")]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for i, row in enumerate(rows):
        line = [row[k] for k in CSV_COLUMNS]
        for other in extra.values():
            line += [other[i][k] for k in ("a", "w", "val_loss")]
        writer.writerow(line)
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def plot(path, trajectories):
    """Figure 4 of the paper: ``a``, ``w`` and ``L_val`` per estimator.

    Args:
        path: PNG path (written atomically).
        trajectories: ``{title: rows}``, one panel each.
    """
    import os

    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(trajectories), 4), dpi=100)
    axes = fig.subplots(1, len(trajectories), squeeze=False)[0]
    for ax, (title, rows) in zip(axes, trajectories.items(), strict=True):
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["a"] for r in rows], color="red", label="a")
        ax.plot(steps, [r["w"] for r in rows], color="green", label="w")
        ax.set_xlabel("search step")
        ax.set_ylabel("a, w")
        ax.set_title(title)
        twin = ax.twinx()
        twin.plot(
            steps,
            [r["val_loss"] for r in rows],
            color="blue",
            label="validation loss",
        )
        twin.set_ylabel("validation loss")
        handles = ax.get_legend_handles_labels()
        twin_handles = twin.get_legend_handles_labels()
        ax.legend(
            handles[0] + twin_handles[0],
            handles[1] + twin_handles[1],
            loc="upper left",
        )
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp)
    os.replace(tmp, path)
