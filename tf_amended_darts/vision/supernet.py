"""The search network: cells, architecture variables, genotype derivation.

Parity with DARTS ``model_search.py``: a stem of ``3C`` channels (3x3 conv,
affine BN), ``layers`` cells with reduction cells at ``layers // 3`` and
``2 * layers // 3`` (channels doubled there), global average pooling and a
linear classifier. Architecture parameters are softmaxed over operators per
edge; shared by all cells of a type (S1, S3) or one set per cell (S2).

The network owns two explicit variable lists, ``weight_variables`` and
``arch_variables``, which is all `engine.BilevelSearch` needs.

Hyper-parameter consistency (paper 2.4, B.1; method.md section 6): the
search network can train with the re-training network's regularisers, as
`network.NetworkCIFAR` applies them: an auxiliary head
(`AuxiliaryHeadCIFAR`) after cell ``2 * layers // 3`` and
drop-path on every candidate operator except identity. (The DARTS CIFAR
re-training network has no dropout layer, so there is none here either.)
"""

import keras
import numpy as np
from keras import ops as kops

from tf_amended_darts.core import hparams
from tf_amended_darts.nn.base import output_dtype_policy
from tf_amended_darts.nn.batch_norm import BatchNorm
from tf_amended_darts.nn.conv import Conv2D
from tf_amended_darts.nn.linear import Linear
from tf_amended_darts.nn.validate import check_bool, check_prob
from tf_amended_darts.vision import derive
from tf_amended_darts.vision import search_space as S
from tf_amended_darts.vision.auxiliary import AuxiliaryHeadCIFAR
from tf_amended_darts.vision.cells import SearchCell

# Weight-file entry of the drop-path seed-generator state.
SEED_STATE_KEY = "drop_path_seed"


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class SearchNetwork(keras.Model):
    """The DARTS super-network.

    Args:
        num_classes: classifier outputs.
        operators: candidate operators.
        layers: number of cells.
        init_channels: C of the first cells.
        edges: ``pruned``, ``fixed`` or ``searched``.
        stage: for ``searched``: 1 learns pair logits on all edges, 2
            searches operators on the kept ``node_inputs``.
        node_inputs: explicit per-node inputs (``searched`` stage 2), either
            one list for all cells (shared spaces) or ``{"normal": ...,
            "reduce": ...}``, or one list per cell (per-cell spaces).
        shared: one set of architecture parameters per cell type (True) or
            per cell (False).
        steps: intermediate nodes per cell.
        multiplier: nodes concatenated into the cell output.
        stem_multiplier: stem width is ``stem_multiplier * init_channels``.
        arch_init_scale: logits start at ``scale * N(0, 1)`` (DARTS 1e-3;
            0 gives the equal weights the paper describes).
        seed: seed of the architecture initialisation and of the
            drop-path masks.
        auxiliary: attach `AuxiliaryHeadCIFAR` after cell
            ``2 * layers // 3`` (as `network.NetworkCIFAR`); the call then
            returns ``(logits, aux_logits)`` in training mode. Needs at
            least 8x8 there (32x32 inputs).
        drop_path_prob: initial drop-path probability in [0, 1). Above 0,
            drop-path is built in: in training mode each candidate
            operator's output except identity (``skip_connect`` at stride 1;
            ``none`` is never computed) is multiplied by a per-sample
            Bernoulli(1 - p) mask and divided by 1 - p. The probability is a
            non-trainable variable, assignable as ``net.drop_path_prob = p``
            (`DropPathSchedule`). At 0 (default) no drop-path ops,
            variables or seed generator exist: the network is unchanged.
        **kwargs: passed to `keras.Model`.

    Drop-path masks come from one `keras.random.SeedGenerator` of the
    network, whose state is among ``non_trainable_variables``: passes
    through ``stateless_call`` given the same non-trainable values draw the
    same masks (as the bi-level engine's functional passes of one step do),
    and each stateful training call advances the state.
    """

    def __init__(
        self,
        num_classes,
        operators=S.DARTS_PRIMITIVES,
        layers=hparams.LAYERS,
        init_channels=hparams.INIT_CHANNELS,
        edges="pruned",
        stage=1,
        node_inputs=None,
        shared=True,
        steps=hparams.STEPS,
        multiplier=hparams.MULTIPLIER,
        stem_multiplier=hparams.STEM_MULTIPLIER,
        arch_init_scale=hparams.ARCH_INIT_SCALE,
        seed=0,
        auxiliary=False,
        drop_path_prob=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_bool("auxiliary", auxiliary)
        drop_path_prob = check_prob("drop_path_prob", drop_path_prob)
        S.check_layout(edges)
        S.check_operators(operators)
        if stage not in (1, 2):
            raise ValueError(f"Expected `stage` in (1, 2). Received: {stage}")
        if edges == "searched" and stage == 2 and node_inputs is None:
            raise ValueError(
                "`searched` stage 2 needs `node_inputs` (the "
                "pairs kept by stage 1)."
            )
        self.num_classes = num_classes
        self.operators = tuple(operators)
        self.num_layers = layers
        self.init_channels = init_channels
        self.edges = edges
        self.stage = stage
        self.node_inputs = node_inputs
        self.shared = shared
        self.steps = steps
        self.multiplier = multiplier
        self.stem_multiplier = stem_multiplier
        self.arch_init_scale = arch_init_scale
        self.seed = seed
        self.pair_logits = edges == "searched" and stage == 1
        self.reductions = S.reduction_indices(layers)
        self.auxiliary = auxiliary
        self.aux_index = 2 * layers // 3
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

        c_curr = stem_multiplier * init_channels
        self.stem_conv = Conv2D(c_curr, 3, 1, padding=1, name="stem_conv")
        self.stem_bn = BatchNorm(affine=True, name="stem_bn")
        self.cells = []
        reduction_prev = False
        c = init_channels
        for i in range(layers):
            reduction = i in self.reductions
            if reduction:
                c *= 2
            self.cells.append(
                SearchCell(
                    self.cell_inputs(i),
                    self.operators,
                    c,
                    reduction,
                    reduction_prev,
                    multiplier,
                    self.pair_logits,
                    name=f"cell_{i}",
                )
            )
            reduction_prev = reduction
        self.auxiliary_head = (
            AuxiliaryHeadCIFAR(
                num_classes, name="auxiliary_head", dtype=self.dtype_policy
            )
            if auxiliary
            else None
        )
        # torch.nn.Linear's initialisation, as every other layer here and
        # the re-training network's classifier (DARTS model_search.py:
        # `self.classifier = nn.Linear(C_prev, num_classes)`); float32
        # logits under a mixed policy (nn.base.output_dtype_policy).
        self.classifier = Linear(
            num_classes,
            name="classifier",
            dtype=output_dtype_policy(self.dtype_policy),
        )

    # -- drop-path -------------------------------------------------------------

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

    # -- structure -------------------------------------------------------------

    def arch_key(self, i):
        """The architecture-parameter set cell ``i`` uses."""
        if not self.shared:
            return f"cell_{i}"
        return "reduce" if i in self.reductions else "normal"

    def cell_inputs(self, i):
        """Per-node inputs of cell ``i``."""
        if self.edges == "searched" and self.stage == 2:
            spec = self.node_inputs
            if isinstance(spec, dict):
                return spec[self.arch_key(i)]
            if not self.shared and len(spec) == self.num_layers:
                return spec[i]
            return spec
        layout = "pruned" if self.edges == "searched" else self.edges
        return S.edge_list(layout, self.steps)

    def arch_keys(self):
        keys = []
        for i in range(self.num_layers):
            if self.arch_key(i) not in keys:
                keys.append(self.arch_key(i))
        return keys

    # -- variables -------------------------------------------------------------

    def build(self, input_shape):
        rng = np.random.default_rng(self.seed)
        self.alphas = {}
        self.betas = {}
        for key in self.arch_keys():
            cell = self.cells[self._first_cell(key)]
            init = self.arch_init_scale * rng.standard_normal(
                (cell.num_edges, len(self.operators))
            )
            self.alphas[key] = self.add_weight(
                shape=init.shape,
                name=f"alpha_{key}",
                initializer=keras.initializers.Constant(init),
            )
            if self.pair_logits:
                n = S.num_pairs(self.steps)
                init = self.arch_init_scale * rng.standard_normal((n,))
                self.betas[key] = self.add_weight(
                    shape=(n,),
                    name=f"beta_{key}",
                    initializer=keras.initializers.Constant(init),
                )
        input_shape = tuple(input_shape)
        self.stem_conv.build(input_shape)
        shape = self.stem_conv.compute_output_shape(input_shape)
        self.stem_bn.build(shape)
        s0 = s1 = tuple(shape)
        for i, cell in enumerate(self.cells):
            cell.build((s0, s1))
            n, h, w, _ = s1
            if cell.reduction:
                h, w = -(-h // 2), -(-w // 2)
            s0, s1 = s1, (n, h, w, self.multiplier * cell.channels)
            if i == self.aux_index and self.auxiliary_head is not None:
                self.auxiliary_head.build(s1)
        self.classifier.build((None, s1[-1]))
        self._arch_ids = {id(v) for v in self.arch_variables}
        self.built = True

    def _first_cell(self, key):
        return next(
            i for i in range(self.num_layers) if self.arch_key(i) == key
        )

    def _pair_sizes(self):
        return [S.input_pairs(j) for j in range(self.steps)]

    @property
    def arch_variables(self):
        return list(self.alphas.values()) + list(self.betas.values())

    @property
    def weight_variables(self):
        arch = {id(v) for v in self.arch_variables}
        return [v for v in self.trainable_variables if id(v) not in arch]

    # -- forward ---------------------------------------------------------------

    def _pair_probs(self, key):
        probs, start = [], 0
        beta = self.betas[key]
        for pairs in self._pair_sizes():
            logits = beta[start : start + len(pairs)]
            # one pair (node 0): probability 1, the logit has no effect
            probs.append(
                kops.softmax(logits)
                if len(pairs) > 1
                else kops.ones_like(logits)
            )
            start += len(pairs)
        return probs

    def call(self, x, training=False):
        """Runs the super-network.

        Args:
            x: NHWC images.
            training: training mode (batch statistics, drop-path,
                auxiliary head).

        Returns:
            ``(logits, aux_logits)`` in training mode with an auxiliary
            head, else ``logits``.
        """
        drop_prob, seed = None, None
        if training and self.drop_path:
            drop_prob = kops.convert_to_tensor(self._drop_path_prob)
            seed = self.drop_path_seed
        s = self.stem_bn(self.stem_conv(x), training=training)
        s0 = s1 = s
        weights = {k: kops.softmax(a, axis=-1) for k, a in self.alphas.items()}
        pairs = (
            {k: self._pair_probs(k) for k in self.betas}
            if self.pair_logits
            else {}
        )
        aux_logits = None
        for i, cell in enumerate(self.cells):
            key = self.arch_key(i)
            out = cell(
                (s0, s1),
                weights[key],
                pairs.get(key),
                training=training,
                drop_prob=drop_prob,
                seed=seed,
            )
            s0, s1 = s1, out
            if (
                i == self.aux_index
                and self.auxiliary_head is not None
                and training
            ):
                aux_logits = self.auxiliary_head(s1, training=training)
        pooled = kops.mean(s1, axis=(1, 2))
        logits = self.classifier(pooled)
        if aux_logits is not None:
            return logits, aux_logits
        return logits

    # -- architecture readout --------------------------------------------------

    def arch_weights(self):
        """``{key: softmax(alpha)}`` (and ``beta_<key>`` pair probabilities)."""
        out = {k: _softmax(v.numpy()) for k, v in self.alphas.items()}
        for k, v in self.betas.items():
            b = v.numpy()
            start, parts = 0, []
            for pairs in self._pair_sizes():
                parts.append(_softmax(b[start : start + len(pairs)]))
                start += len(pairs)
            out[f"beta_{k}"] = np.concatenate(parts)
        return out

    def stage1_pairs(self):
        """``searched`` stage 1: each node's argmax pair, per key."""
        w = self.arch_weights()
        return {
            k: [
                list(p)
                for p in derive.derive_pairs(w[f"beta_{k}"], self.steps)
            ]
            for k in self.betas
        }

    def genotype(self, metadata=None):
        """The discrete genotype by the DARTS rules for this layout."""
        w = self.arch_weights()
        if self.edges == "pruned" or self.pair_logits:
            layout, inputs = "pruned", {}
            if self.pair_logits:
                layout = "searched"
                inputs = self.stage1_pairs()
                # operator choice on the pair's edges, from the all-edge
                # weights rows of those edges
                w = {k: _rows_for_pairs(w[k], inputs[k]) for k in inputs}
        else:
            layout = self.edges
            inputs = {
                k: self.cell_inputs(self._first_cell(k))
                for k in self.arch_keys()
            }
        if self.shared:
            return derive.derive_shared(
                w["normal"],
                w["reduce"],
                self.operators,
                layout=layout,
                steps=self.steps,
                multiplier=self.multiplier,
                inputs_normal=inputs.get("normal"),
                inputs_reduce=inputs.get("reduce"),
                metadata=metadata,
            )
        keys = self.arch_keys()
        return derive.derive_per_cell(
            [w[k] for k in keys],
            self.operators,
            self.reductions,
            layout=layout,
            steps=self.steps,
            multiplier=self.multiplier,
            cell_inputs=[inputs.get(k) for k in keys] if inputs else None,
            metadata=metadata,
        )

    # -- saving ---------------------------------------------------------------

    def save_own_variables(self, store):
        """Keras' own variables, plus the drop-path seed-generator state.

        Keras weight files skip `keras.random.SeedGenerator` states; without
        it a resumed search would draw other drop-path masks than an
        uninterrupted one. Without drop-path nothing is added.
        """
        super().save_own_variables(store)
        if self.drop_path_seed is not None:
            store[SEED_STATE_KEY] = self.drop_path_seed.state

    def load_own_variables(self, store):
        if self.drop_path_seed is None:
            super().load_own_variables(store)
            return
        own = self._trainable_variables + self._non_trainable_variables
        expected = {str(i) for i in range(len(own))} | {SEED_STATE_KEY}
        if set(store.keys()) != expected:
            raise ValueError(
                f"The weights hold the entries {sorted(store.keys())}; this "
                f"SearchNetwork (with drop-path) expects {sorted(expected)}. "
                "They come from another network."
            )
        for i, v in enumerate(own):
            v.assign(store[str(i)])
        self.drop_path_seed.state.assign(store[SEED_STATE_KEY])

    def get_config(self):
        """The constructor arguments.

        ``drop_path_prob`` is the constructor's value (whether drop-path is
        built in, the most a schedule sets), not the variable's current
        value, which the weights hold.
        """
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            operators=list(self.operators),
            layers=self.num_layers,
            init_channels=self.init_channels,
            edges=self.edges,
            stage=self.stage,
            node_inputs=self.node_inputs,
            shared=self.shared,
            steps=self.steps,
            multiplier=self.multiplier,
            stem_multiplier=self.stem_multiplier,
            arch_init_scale=self.arch_init_scale,
            seed=self.seed,
            auxiliary=self.auxiliary,
            drop_path_prob=self.initial_drop_path_prob,
        )
        return config


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _rows_for_pairs(weights, pairs, steps=None):
    """Rows of the all-edge weights for each node's kept pair."""
    rows, offset = [], 0
    for j, pair in enumerate(pairs):
        for i in pair:
            rows.append(weights[offset + i])
        offset += j + 2
    return np.stack(rows)
