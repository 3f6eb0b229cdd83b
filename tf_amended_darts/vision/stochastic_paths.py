"""Drop-path and P-DARTS' skip dropout of the search network: their
probabilities and seed generators, and saving the generators' states.

A mixin of `supernet.SearchNetwork` (kept apart to keep that module one
idea). Each regulariser exists only when its constructor probability is
above 0; then its probability is a non-trainable variable (assignable,
for schedules) and its masks come from a `keras.random.SeedGenerator`
whose state is saved with the weights (Keras weight files skip seed
generators; without them a resumed search would draw other masks).
"""

import keras
from keras import ops as kops

from tf_amended_darts.nn.validate import check_prob

# Weight-file entry of the drop-path seed-generator state.
SEED_STATE_KEY = "drop_path_seed"
# Weight-file entry of the skip-dropout seed-generator state (P-DARTS).
SKIP_SEED_STATE_KEY = "skip_dropout_seed"


class StochasticPaths:
    """Drop-path and skip-dropout state of a `keras.Model` (a mixin)."""

    def _build_stochastic(self, drop_path_prob, skip_dropout_prob, seed):
        """Creates the variables and generators (call in ``__init__``)."""
        # The constructor's value: whether drop-path is built in (config).
        self.initial_drop_path_prob = drop_path_prob
        self._drop_path_prob = None
        self.drop_path_seed = None
        if drop_path_prob > 0.0:
            self._drop_path_prob = self.add_weight(
                shape=(),
                name="drop_path_prob",
                trainable=False,
                initializer=keras.initializers.Constant(drop_path_prob),
                dtype="float32",
            )
            self.drop_path_seed = keras.random.SeedGenerator(
                seed, name="drop_path_seed"
            )
        self.initial_skip_dropout_prob = skip_dropout_prob
        self._skip_dropout_prob = None
        self.skip_dropout_seed = None
        if skip_dropout_prob > 0.0:
            self._skip_dropout_prob = self.add_weight(
                shape=(),
                name="skip_dropout_prob",
                trainable=False,
                initializer=keras.initializers.Constant(skip_dropout_prob),
                dtype="float32",
            )
            self.skip_dropout_seed = keras.random.SeedGenerator(
                seed + 1, name="skip_dropout_seed"
            )

    @property
    def drop_path(self):
        """Whether drop-path is built in (``drop_path_prob`` > 0 at init)."""
        return self._drop_path_prob is not None

    @property
    def drop_path_prob(self):
        """Current drop-path probability (a float; assignable)."""
        if self._drop_path_prob is None:
            return 0.0
        # Shortest decimal that round-trips the float32 (0.1, not 0.100..1).
        return float(str(kops.convert_to_numpy(self._drop_path_prob)))

    @drop_path_prob.setter
    def drop_path_prob(self, value):
        value = check_prob("drop_path_prob", value)
        if self._drop_path_prob is None:
            if value == 0.0:
                return
            raise ValueError(
                "This SearchNetwork was built without drop-path: pass "
                "`drop_path_prob` > 0 to the constructor (the largest value "
                f"a schedule will set). Received: drop_path_prob={value}"
            )
        self._drop_path_prob.assign(value)

    @property
    def skip_dropout(self):
        """Whether P-DARTS' skip dropout is built in."""
        return self._skip_dropout_prob is not None

    @property
    def skip_dropout_prob(self):
        """Current skip-dropout rate (a float; assignable)."""
        if self._skip_dropout_prob is None:
            return 0.0
        return float(str(kops.convert_to_numpy(self._skip_dropout_prob)))

    @skip_dropout_prob.setter
    def skip_dropout_prob(self, value):
        value = check_prob("skip_dropout_prob", value)
        if self._skip_dropout_prob is None:
            if value == 0.0:
                return
            raise ValueError(
                "This SearchNetwork was built without skip dropout: pass "
                "`skip_dropout_prob` > 0 to the constructor. Received: "
                f"skip_dropout_prob={value}"
            )
        self._skip_dropout_prob.assign(value)


    def _named_seed_generators(self):
        """Weight-file entry -> seed generator, for those built in."""
        out = {}
        if self.drop_path_seed is not None:
            out[SEED_STATE_KEY] = self.drop_path_seed
        if self.skip_dropout_seed is not None:
            out[SKIP_SEED_STATE_KEY] = self.skip_dropout_seed
        return out

    def save_own_variables(self, store):
        """Keras' own variables, plus the seed-generator states.

        Keras weight files skip `keras.random.SeedGenerator` states; without
        them a resumed search would draw other drop-path (or skip-dropout)
        masks than an uninterrupted one. Without either nothing is added.
        """
        super().save_own_variables(store)
        for key, generator in self._named_seed_generators().items():
            store[key] = generator.state

    def load_own_variables(self, store):
        generators = self._named_seed_generators()
        if not generators:
            super().load_own_variables(store)
            return
        own = self._trainable_variables + self._non_trainable_variables
        expected = {str(i) for i in range(len(own))} | set(generators)
        if set(store.keys()) != expected:
            raise ValueError(
                f"The weights hold the entries {sorted(store.keys())}; this "
                f"SearchNetwork (with seed generators {sorted(generators)}) "
                f"expects {sorted(expected)}. They come from another network."
            )
        for i, v in enumerate(own):
            v.assign(store[str(i)])
        for key, generator in generators.items():
            generator.state.assign(store[key])
