"""Recurrent models: parameter counts, the cells against NumPy transcripts
of the reference formulas, carried state, padding, dropout masks."""

import keras
import numpy as np
import pytest

from tf_amended_darts.language import genotype as G
from tf_amended_darts.language import models, space

# Reference count, from github.com/quark0/darts rnn/model.py (RNNModel with
# DARTSCell, ntoken = 10,000, ninp = nhid = nhidlast = 850, DARTS_V2):
#   encoder  nn.Embedding(10000, 850)            10000 * 850 = 8,500,000
#   decoder  nn.Linear(850, 10000): weight tied to the encoder (the same
#            Parameter, counted once by model.parameters()), bias  10,000
#   _W0      (ninp + nhid) x 2 nhid = 1700 * 1700             = 2,890,000
#   _Ws      8 steps x nhid x 2 nhid = 8 * 850 * 1700         = 11,560,000
#   total    8,500,000 + 10,000 + 2,890,000 + 11,560,000      = 22,960,000
# (the paper's "23M").
DARTS_V2_PTB_PARAMS = 22_960_000
# Search model (rnn/model_search.py, 300 units; alphas are not
# Parameters): 10000 * 300 + 10000 + 600 * 600 + 8 * 300 * 600.
SEARCH_PTB_PARAMS = 4_810_000


def test_evaluation_model_has_the_reference_parameter_count():
    net = models.RNNModel(10000, 850, 850, "DARTS_V2")
    net.build()
    assert models.count_params(net) == DARTS_V2_PTB_PARAMS
    # Tied: the output layer reuses the embedding, no second matrix.
    assert [tuple(v.shape) for v in net.trainable_variables].count(
        (10000, 850)) == 1


def test_search_model_parameter_count_and_architecture():
    net = models.SearchRNNModel(10000, 300, 300)
    net.build()
    assert models.count_params(net) == SEARCH_PTB_PARAMS
    assert [tuple(v.shape) for v in net.arch_variables] == [(36, 5)]
    assert abs(float(np.std(net.alphas.numpy())) - 1e-3) < 5e-4


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


ACT = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0),
       "sigmoid": _sigmoid, "identity": lambda x: x}


def _eval_step_oracle(net, x, h):
    """rnn/model.py DARTSCell.cell, transcribed with NumPy (no masks)."""
    w0 = net.cell.w0.numpy()
    ws = [w.numpy() for w in net.cell.ws]
    nh = net.nhid
    c0, h0 = np.split(np.concatenate([x, h], -1) @ w0, [nh], -1)
    states = [h + _sigmoid(c0) * (np.tanh(h0) - h)]
    for i, (name, pred) in enumerate(net.genotype_value.recurrent):
        s = states[pred]
        c, hh = np.split(s @ ws[i], [nh], -1)
        states.append(s + _sigmoid(c) * (ACT[name](hh) - s))
    return np.mean([states[k] for k in net.genotype_value.concat], 0)


def _bn(x, eps=1e-5):
    return (x - x.mean(0)) / np.sqrt(x.var(0) + eps)


def _search_step_oracle(net, x, h):
    """rnn/model_search.py DARTSCellSearch.cell, transcribed (training
    batch statistics, no masks), one highway output per operator."""
    w0 = net.cell.w0.numpy()
    ws = [w.numpy() for w in net.cell.ws]
    nh = net.nhid
    logits = net.alphas.numpy()
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    c0, h0 = np.split(np.concatenate([x, h], -1) @ w0, [nh], -1)
    states = [_bn(h + _sigmoid(c0) * (np.tanh(h0) - h))]
    offset = 0
    for i in range(net.steps):
        s = np.zeros_like(states[0])
        for j in range(i + 1):
            c, hh = np.split(states[j] @ ws[i], [nh], -1)
            c = _sigmoid(c)
            for k, name in enumerate(space.PRIMITIVES):
                if name == "none":
                    continue
                s += probs[offset + j, k] * (
                    states[j] + c * (ACT[name](hh) - states[j]))
        states.append(_bn(s))
        offset += i + 1
    return np.mean(states[-space.CONCAT:], 0)


def _run_oracle(step, net, tokens, h):
    emb = net.embedding.numpy()
    outs = []
    for t in range(tokens.shape[1]):
        h = step(net, emb[tokens[:, t]], h)
        outs.append(h)
    return np.stack(outs, 1), h


@pytest.mark.parametrize("search", [False, True])
def test_cells_equal_numpy_transcripts_of_the_reference(search):
    keras.utils.set_random_seed(1)
    keras.config.set_dtype_policy("float64")
    try:
        if search:
            net = models.SearchRNNModel(11, 4, 4, arch_init_scale=1.0)
        else:
            net = models.RNNModel(11, 4, 4, "DARTS_V2")
        net.build()
    finally:
        keras.config.set_dtype_policy("float32")
    rng = np.random.default_rng(0)
    for w in net.weight_variables:  # larger than the 0.04 init
        w.assign(rng.normal(size=w.shape) * 0.5)
    tokens = rng.integers(0, 11, (5, 6))
    h0 = rng.normal(size=(5, 4))
    # training mode without dropout: batch statistics (search), no masks
    out = net({"tokens": tokens, "hidden": h0}, training=search)
    step = _search_step_oracle if search else _eval_step_oracle
    raw, h = _run_oracle(step, net, tokens, h0)
    np.testing.assert_allclose(out["hidden"], h, rtol=1e-10, atol=1e-12)
    logits = raw @ net.embedding.numpy().T + net.decoder_bias.numpy()
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-10,
                               atol=1e-12)


def _net(**kwargs):
    args = dict(vocab_size=13, emsize=6, nhid=6, genotype="DARTS_V1",
                batch_size=3)
    args.update(kwargs)
    net = models.RNNModel(**args)
    net.build()
    return net


def test_state_is_carried_per_stream_and_reset():
    net = _net()
    tokens = np.random.default_rng(0).integers(0, 13, (3, 8))
    whole = net({"tokens": tokens, "hidden": np.zeros((3, 6))})
    net({"tokens": tokens[:, :5]}, training=True)  # stream 0
    assert np.any(net.train_state.numpy())
    assert not np.any(net.valid_state.numpy())
    second = net({"tokens": tokens[:, 5:], "hidden": net.train_state.value})
    np.testing.assert_allclose(second["hidden"], whole["hidden"], rtol=1e-5)
    net({"tokens": tokens, "stream": np.ones(3, "int32")}, training=True)
    np.testing.assert_allclose(net.valid_state.numpy(), whole["hidden"],
                               rtol=1e-5)
    net.reset_states()
    assert not np.any(net.train_state.numpy())


def test_padding_with_a_length_equals_the_short_sequence():
    net = _net(dropout=0.5, dropouth=0.3, dropoutx=0.3, dropouti=0.2,
               dropoute=0.1, tar_beta=1.0)
    tokens = np.random.default_rng(1).integers(0, 13, (3, 9))
    padded = np.concatenate([tokens[:, :5], np.zeros((3, 4), int)], 1)
    short = net({"tokens": tokens[:, :5], "hidden": np.zeros((3, 6))},
                training=True)
    long = net({"tokens": padded, "length": np.full(3, 5),
                "hidden": np.zeros((3, 6))}, training=True)
    assert long["logits"].shape == (3, 5, 13)
    for key in ("logits", "hidden", "penalty"):
        np.testing.assert_allclose(long[key], short[key], rtol=1e-6)
    assert float(long["penalty"]) > 0


def test_masks_advance_with_the_training_stream_only():
    net = _net(dropout=0.5, dropoutx=0.5)
    x = {"tokens": np.ones((3, 4), "int32")}
    first = net(x, training=True)["logits"]
    assert int(net.mask_counter.numpy()) == 1
    net.reset_states()
    second = net(x, training=True)["logits"]
    assert not np.allclose(first, second)  # new masks
    net.mask_counter.assign(0)
    net.reset_states()
    np.testing.assert_allclose(net(x, training=True)["logits"], first)
    valid = dict(x, stream=np.ones(3, "int32"))
    net(valid, training=True)
    assert int(net.mask_counter.numpy()) == 1  # unchanged by stream 1
    state = net.train_state.numpy()
    inference = net(x)["logits"]  # no masks, no state update
    np.testing.assert_array_equal(net.train_state.numpy(), state)
    np.testing.assert_allclose(net(x)["logits"], inference)


def test_config_round_trip_and_bad_arguments():
    net = models.SearchRNNModel(13, 6, 6, steps=3, dropout=0.5, seed=4)
    clone = models.SearchRNNModel.from_config(net.get_config())
    assert clone.get_config() == net.get_config()
    ev = _net()
    assert G.from_dict(ev.get_config()["genotype"],
                       require_header=True) == G.load("DARTS_V1")
    with pytest.raises(ValueError, match="emsize"):
        models.RNNModel(13, 6, 7, "DARTS_V2")
    with pytest.raises(ValueError, match="dropouth"):
        models.RNNModel(13, 6, 6, "DARTS_V2", dropouth=1.0)
    with pytest.raises(ValueError, match="tokens"):
        _net()(np.ones((2, 3)))
