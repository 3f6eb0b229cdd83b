"""The search network: cells, architecture variables, genotype derivation.

Parity with DARTS ``model_search.py``: a stem of ``3C`` channels (3x3 conv,
affine BN), ``layers`` cells with reduction cells at ``layers // 3`` and
``2 * layers // 3`` (channels doubled there), global average pooling and a
linear classifier. Architecture parameters are softmaxed over operators per
edge; shared by all cells of a type (S1, S3) or one set per cell (S2).

The network owns two explicit variable lists, ``weight_variables`` and
``arch_variables``, which is all `engine.BilevelSearch` needs.

Baselines' variants (../shared/baselines.md; each off by default, and then
the network is unchanged): ``edge_operators`` gives each edge its own
operator subset (P-DARTS' switches, R-DARTS' S1); ``partial_channels`` and
``edge_normalization`` are PC-DARTS' partial channel connections and edge
normalisation (betas softmaxed per node over its input edges, scaling each
edge's output, and multiplying the operator weights in the derivation);
``skip_dropout_prob`` is P-DARTS' dropout on skip-connections.

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
from tf_amended_darts.nn.contexts import statistics_frozen
from tf_amended_darts.nn.conv import Conv2D
from tf_amended_darts.nn.linear import Linear
from tf_amended_darts.nn.validate import check_bool, check_int, check_prob
from tf_amended_darts.vision import derive, stochastic_paths
from tf_amended_darts.vision import search_space as S
from tf_amended_darts.vision.auxiliary import AuxiliaryHeadCIFAR
from tf_amended_darts.vision.cells import SearchCell
from tf_amended_darts.vision.recomputed_cells import RecomputedCell
from tf_amended_darts.vision.stochastic_paths import StochasticPaths

# Weight-file entries of the seed-generator states (re-exported).
SEED_STATE_KEY = stochastic_paths.SEED_STATE_KEY
SKIP_SEED_STATE_KEY = stochastic_paths.SKIP_SEED_STATE_KEY
# Prefix of the node-normalised edge weights in `arch_weights` (PC-DARTS).
EDGE_NORM_PREFIX = "edge_norm_"


@keras.saving.register_keras_serializable(package="tf_amended_darts")
class SearchNetwork(StochasticPaths, keras.Model):
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
        edge_operators: optional ``{arch key: per-edge operator lists}``
            for every key of `arch_keys`: edge ``e`` of the key's cells
            mixes its own operators (all edges the same number k, a subset
            of ``operators`` each); its alphas have shape ``(edges, k)``,
            column ``j`` being the edge's ``j``-th operator. `arch_weights`
            expands them to one column per entry of ``operators`` (zeros
            for operators an edge lacks).
        partial_channels: PC-DARTS' K (1: off): every edge runs its
            operators on ``C // K`` channels (`PartialChannelEdge`).
        edge_normalization: PC-DARTS' betas: one logit per edge and arch
            key (``edge_beta_<key>``, in ``arch_variables``), softmaxed per
            node over its input edges; each edge's output is multiplied by
            its weight.
        skip_dropout_prob: initial P-DARTS dropout rate on stride-1
            ``skip_connect`` in [0, 1); above 0 it is built in, as a
            non-trainable variable assignable as
            ``net.skip_dropout_prob = p`` (a schedule), with its own seed
            generator.
        recompute_cells: run the cells through `RecomputedCell` in the
            estimator's passes (training mode, frozen statistics): much
            less memory for the second-order products, more time (random
            draws repeat in the recomputations). Cells whose nodes are
            alike (the normal cells of one resolution) share one
            recomputed body.
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
        edge_operators=None,
        partial_channels=1,
        edge_normalization=False,
        skip_dropout_prob=0.0,
        recompute_cells=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_bool("auxiliary", auxiliary)
        check_bool("recompute_cells", recompute_cells)
        check_bool("edge_normalization", edge_normalization)
        check_int("partial_channels", partial_channels)
        drop_path_prob = check_prob("drop_path_prob", drop_path_prob)
        skip_dropout_prob = check_prob("skip_dropout_prob", skip_dropout_prob)
        S.check_layout(edges)
        S.check_operators(operators)
        if edge_normalization and edges == "searched" and stage == 1:
            raise ValueError(
                "`edge_normalization` does not combine with the pair logits "
                "of `searched` stage 1 (both weigh a node's inputs)."
            )
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
        self.partial_channels = partial_channels
        self.edge_normalization = edge_normalization
        self.edge_operators = self._check_edge_operators(edge_operators)
        self._build_stochastic(drop_path_prob, skip_dropout_prob, seed)
        self.recompute_cells = recompute_cells
        self._recomputed = {}  # cell index -> RecomputedCell
        self._bodies = {}  # RecomputedCell.key_of -> the first cell of that key

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
                    edge_operators=(
                        self.edge_operators[self.arch_key(i)]
                        if self.edge_operators
                        else None
                    ),
                    partial_channels=partial_channels,
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

    # -- structure -------------------------------------------------------------

    def _check_edge_operators(self, edge_operators):
        """``edge_operators`` as ``{key: [[op, ...] per edge]}``, checked."""
        if edge_operators is None:
            return None
        keys = self.arch_keys()
        if not isinstance(edge_operators, dict) or set(edge_operators) != set(
            keys
        ):
            raise ValueError(
                f"Expected `edge_operators` to map each of the arch keys "
                f"{keys} to per-edge operator lists. Received: "
                f"edge_operators={edge_operators!r}"
            )
        out = {}
        for key in keys:
            lists = [list(ops) for ops in edge_operators[key]]
            expected = sum(map(len, self.cell_inputs(self._first_cell(key))))
            lengths = {len(ops) for ops in lists}
            if len(lists) != expected or len(lengths) != 1 or 0 in lengths:
                raise ValueError(
                    f"Expected `edge_operators[{key!r}]` to hold {expected} "
                    "non-empty operator lists of one length. Received: "
                    f"{lists!r}"
                )
            for ops in lists:
                if len(set(ops)) != len(ops) or not set(ops) <= set(
                    self.operators
                ):
                    raise ValueError(
                        f"Expected the operators of each edge of "
                        f"`edge_operators[{key!r}]` to be distinct names "
                        f"from {self.operators}. Received: {ops!r}"
                    )
            out[key] = lists
        return out

    def num_edge_operators(self, key):
        """Columns of the alphas of ``key`` (operators per edge)."""
        if self.edge_operators:
            return len(self.edge_operators[key][0])
        return len(self.operators)

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
        self.edge_betas = {}
        for key in self.arch_keys():
            cell = self.cells[self._first_cell(key)]
            init = self.arch_init_scale * rng.standard_normal(
                (cell.num_edges, self.num_edge_operators(key))
            )
            self.alphas[key] = self.add_weight(
                shape=init.shape,
                name=f"alpha_{key}",
                initializer=keras.initializers.Constant(init),
            )
            if self.edge_normalization:
                # PC-DARTS: betas start at 1e-3 * randn, as the alphas.
                init = self.arch_init_scale * rng.standard_normal(
                    (cell.num_edges,)
                )
                self.edge_betas[key] = self.add_weight(
                    shape=init.shape,
                    name=f"edge_beta_{key}",
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
        return (
            list(self.alphas.values())
            + list(self.betas.values())
            + list(self.edge_betas.values())
        )

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

    def _node_sizes(self, key):
        return [len(n) for n in self.cell_inputs(self._first_cell(key))]

    def _recomputed_cell(self, cell, num_pairs, edge_scales):
        """A `RecomputedCell` for ``cell``, sharing the body of an earlier
        one whose nodes are alike (`RecomputedCell.key_of`)."""
        key = RecomputedCell.key_of(cell, num_pairs, edge_scales)
        recomputed = RecomputedCell(
            cell,
            num_pairs=num_pairs,
            edge_scales=edge_scales,
            drop_path_seed=self.drop_path_seed,
            skip_seed=self.skip_dropout_seed,
            body=self._bodies.get(key),
        )
        self._bodies.setdefault(key, recomputed)
        return recomputed

    def _edge_scales(self, key):
        """PC-DARTS: softmax of the betas per node over its input edges."""
        parts = kops.split(
            self.edge_betas[key],
            np.cumsum(self._node_sizes(key))[:-1].tolist(),
        )
        return kops.concatenate([kops.softmax(p) for p in parts], axis=0)

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
        skip_prob, skip_seed = None, None
        if training and self.skip_dropout:
            skip_prob = kops.convert_to_tensor(self._skip_dropout_prob)
            skip_seed = self.skip_dropout_seed
        scales = {k: self._edge_scales(k) for k in self.edge_betas}
        s = self.stem_bn(self.stem_conv(x), training=training)
        s0 = s1 = s
        weights = {k: kops.softmax(a, axis=-1) for k, a in self.alphas.items()}
        pairs = (
            {k: self._pair_probs(k) for k in self.betas}
            if self.pair_logits
            else {}
        )
        aux_logits = None
        recompute = (
            self.recompute_cells and training and statistics_frozen()
        )
        for i, cell in enumerate(self.cells):
            key = self.arch_key(i)
            if recompute:
                if i not in self._recomputed:
                    self._recomputed[i] = self._recomputed_cell(
                        cell, len(pairs.get(key, ())), key in scales
                    )
                out = self._recomputed[i](
                    (s0, s1),
                    weights[key],
                    pairs.get(key),
                    scales.get(key),
                    drop_prob=drop_prob,
                    skip_drop_prob=skip_prob,
                )
            else:
                out = cell(
                    (s0, s1),
                    weights[key],
                    pairs.get(key),
                    training=training,
                    drop_prob=drop_prob,
                    seed=seed,
                    edge_scales=scales.get(key),
                    skip_drop_prob=skip_prob,
                    skip_seed=skip_seed,
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
        """``{key: softmax(alpha)}`` and the betas' probabilities.

        Per-edge operator subsets (``edge_operators``) are expanded to one
        column per entry of ``operators``, zero where an edge lacks the
        operator. Pair probabilities (``searched`` stage 1) are under
        ``beta_<key>``; the node-normalised edge weights of
        ``edge_normalization`` under ``edge_norm_<key>``.
        """
        out = {
            k: self._expand(k, _softmax(v.numpy()))
            for k, v in self.alphas.items()
        }
        for k, v in self.edge_betas.items():
            b = v.numpy()
            parts = np.split(b, np.cumsum(self._node_sizes(k))[:-1])
            out[EDGE_NORM_PREFIX + k] = np.concatenate(
                [_softmax(p) for p in parts]
            )
        for k, v in self.betas.items():
            b = v.numpy()
            start, parts = 0, []
            for pairs in self._pair_sizes():
                parts.append(_softmax(b[start : start + len(pairs)]))
                start += len(pairs)
            out[f"beta_{k}"] = np.concatenate(parts)
        return out

    def _expand(self, key, weights):
        if not self.edge_operators:
            return weights
        full = np.zeros((len(weights), len(self.operators)), weights.dtype)
        for e, ops in enumerate(self.edge_operators[key]):
            for j, op in enumerate(ops):
                full[e, self.operators.index(op)] = weights[e, j]
        return full

    def derivation_weights(self):
        """The weights the genotype is derived from, per arch key.

        ``arch_weights``, with each edge's row multiplied by its
        node-normalised beta under ``edge_normalization`` (PC-DARTS
        ``genotype``: the betas change which edges are kept, never the
        operator chosen on an edge).
        """
        w = self.arch_weights()
        for k in self.edge_betas:
            w[k] = w[k] * w[EDGE_NORM_PREFIX + k][:, None]
        return w

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
        w = self.derivation_weights()
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
            edge_operators=self.edge_operators,
            partial_channels=self.partial_channels,
            edge_normalization=self.edge_normalization,
            skip_dropout_prob=self.initial_skip_dropout_prob,
            recompute_cells=self.recompute_cells,
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
