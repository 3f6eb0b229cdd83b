"""Per-epoch stability indicators of a search, as Keras callbacks.

Both callbacks add values to the epoch's ``logs`` (Keras hands the same
dict to every callback of the list), so they go before
`callbacks.SearchArtifacts`, which writes the logs to ``metrics.csv`` and
TensorBoard:

* `IndicatorMonitor`, every epoch: ``skip_connections_normal`` and
  ``mean_max_weight`` (`vision.indicators.stability_stats`);
* `FidelityMonitor`, every ``--fidelity_every`` epochs: the cosines of the
  second-order terms of DARTS (``fidelity_cosine_second_order``) and of the
  amended estimator (``fidelity_cosine_amended``) with the true
  ``g2 = -D (H + lambda I)^-1 v`` on one fixed batch pair, the CG relative
  residual ``cg_residual`` and the damping ``cg_damping`` (`core.fidelity`).
  Other epochs leave these cells empty in ``metrics.csv``.

The fidelity is measured by the chief, outside the replicas, on the current
weights and architecture; the fixed pair is the first batch pair of the
search's epoch-0 pipeline, the same after a resume.
"""

from __future__ import annotations

import keras

from tf_amended_darts.core import fidelity
from tf_amended_darts.jobs import stopping
from tf_amended_darts.nn.validate import check_int
from tf_amended_darts.vision import indicators

COSINE_SECOND_ORDER = "fidelity_cosine_second_order"
COSINE_AMENDED = "fidelity_cosine_amended"
CG_RESIDUAL = "cg_residual"
CG_DAMPING = "cg_damping"
FIDELITY_KEYS = (COSINE_SECOND_ORDER, COSINE_AMENDED, CG_RESIDUAL, CG_DAMPING)


class IndicatorMonitor(keras.callbacks.Callback):
    """Adds the stability indicators of the network to the epoch's logs.

    Args:
        network: the `supernet.SearchNetwork`.
    """

    def __init__(self, network):
        super().__init__()
        self.network = network

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        stats = indicators.stability_stats(
            self.network.arch_weights(), self.network.genotype()
        )
        logs.update(stats)


class FidelityMonitor(keras.callbacks.Callback):
    """Measures the gradient fidelity every ``every`` epochs.

    Args:
        search: the compiled `engine.BilevelSearch`.
        batch_pair: ``((x_train, y_train), (x_val, y_val))``, fixed.
        every: measure after epochs ``every, 2 every, ...`` (1-based).
        eta: the amended term's coefficient (its cosine does not depend on
            it).
        iterations, tolerance, damping: of the CG solve
            (`fidelity.GradientFidelity`).
    """

    def __init__(
        self,
        search,
        batch_pair,
        every,
        eta=0.1,
        iterations=fidelity.CG_ITERATIONS,
        tolerance=fidelity.CG_TOLERANCE,
        damping=0.0,
    ):
        super().__init__()
        check_int("fidelity_every", every, 1)
        self.search = search
        self.every = int(every)
        (x_t, y_t), (x_v, y_v) = batch_pair
        self.measure = fidelity.GradientFidelity(
            search.functional_loss(x_t, y_t),
            search.functional_loss(x_v, y_v),
            eta=eta if eta > 0 else 0.1,
            hvp="exact",
            iterations=iterations,
            tolerance=tolerance,
            damping=damping,
        )
        self.last = None

    def due(self, epoch_number: int) -> bool:
        """Whether 1-based epoch ``epoch_number`` is a fidelity epoch."""
        return epoch_number % self.every == 0

    def on_epoch_end(self, epoch, logs=None):
        if not self.due(int(epoch) + 1):
            return
        w = [v.value for v in self.search.weight_variables]
        a = [v.value for v in self.search.arch_variables]
        result = self.measure(w, a, self.search.virtual_step())
        self.last = result
        if logs is not None:
            logs[COSINE_SECOND_ORDER] = result.cosines["second_order"]
            logs[COSINE_AMENDED] = result.cosines["amended"]
            logs[CG_RESIDUAL] = result.residual
            logs[CG_DAMPING] = result.damping


def stage_callbacks(config, search, stopper, chief, batch_pair_fn):
    """The monitors of one search stage, in callback order.

    Args:
        config: the `search_config.SearchConfig` (``fidelity_*``, ``eta``).
        search: the compiled `engine.BilevelSearch`.
        stopper: the stage's `stopping.StableGenotypeStop`.
        chief: whether this process writes the run directory (it alone
            measures indicators and fidelity; every worker counts).
        batch_pair_fn: ``() -> ((x_t, y_t), (x_v, y_v))``, the fixed pair,
            called only when fidelity is on.

    Returns:
        A list of callbacks to put before `callbacks.SearchArtifacts`.
    """
    out = [stopping.StabilityMonitor(search.network, stopper, save=chief)]
    if not chief:
        return out
    out.append(IndicatorMonitor(search.network))
    if config.fidelity_every:
        out.append(
            FidelityMonitor(
                search,
                batch_pair_fn(),
                config.fidelity_every,
                eta=config.eta,
                iterations=config.fidelity_cg_iterations,
                damping=config.fidelity_damping,
            )
        )
    return out
