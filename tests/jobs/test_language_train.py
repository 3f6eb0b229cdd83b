"""Training a recurrent genotype (NT-ASGD), export, evaluation, generation,
and the info launcher."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from tf_amended_darts.jobs import (
    language_config,
    language_export,
    language_train,
    retrain_config,
)
from tf_amended_darts.language import asgd, evaluation

pytestmark = pytest.mark.usefixtures("restore_global_tf_state")

TINY = [
    "--task=ptb", "--dataset=pydoc", "--vocab_size=300", "--emsize=8",
    "--nhid=8", "--batch_size=4", "--bptt=6", "--epochs=3",
    "--steps_per_epoch=4", "--eval_batch_size=2", "--eval_steps=3",
    "--verbose=0", "--genotype=DARTS_V2", "--nonmono=1",
]


def _train(args):
    from launchers import retrain as launcher

    fv = flags.FlagValues()
    retrain_config.define_flags(fv)
    language_config.define_train_flags(fv)
    fv(["retrain"] + args)
    return launcher.main(["retrain"], fv)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, restore_global_tf_state):
    d = tmp_path_factory.mktemp("train") / "run"
    original = asgd.should_switch
    # Force the switch after the first check, to run both phases.
    asgd.should_switch = lambda history, loss, nonmono: bool(history)
    try:
        result = _train(TINY + [f"--model_dir={d}"])
    finally:
        asgd.should_switch = original
    return d, result


def test_training_writes_its_run_directory(trained):
    d, result = trained
    for name in ("config.json", "genotype.json", "vocab.txt", "metrics.csv",
                 "best.weights.h5", "best.json", "nt_asgd.json",
                 "result.json", "checkpoints/ckpt-0003.weights.h5"):
        assert (d / name).exists(), name
    assert result["params"] == 300 * 8 + 300 + 16 * 16 + 8 * 8 * 16
    assert result["test_ppl"] == pytest.approx(np.exp(result["test_loss"]))
    rows = json.loads((d / "nt_asgd.json").read_text())
    assert [r["phase"] for r in rows] == ["sgd", "sgd", "asgd"]
    best = json.loads((d / "best.json").read_text())
    assert best["valid_loss"] == min(r["valid_loss"] for r in rows)
    header = (d / "metrics.csv").read_text().splitlines()[0]
    for column in ("loss", "nll", "valid_ppl", "averaging", "lr"):
        assert column in header


def test_best_weights_reproduce_their_validation_loss(trained):
    d, _ = trained
    config, network, text = language_train.load_run(str(d))
    loss = evaluation.evaluate(network, text.valid, 2, 6, 3)
    rows = json.loads((d / "nt_asgd.json").read_text())
    best = json.loads((d / "best.json").read_text())
    # The best weights reproduce the validation loss recorded for them.
    assert loss == pytest.approx(best["valid_loss"], rel=1e-5)
    assert rows[best["epoch"] - 1]["valid_loss"] == best["valid_loss"]


def test_export_evaluate_and_generate(trained, tmp_path):
    d, _ = trained
    out = tmp_path / "export"
    summary = language_export.export_saved_model(str(d), str(out))
    assert summary["vocab_size"] == 300 and summary["task"] == "ptb"
    assert language_export.is_language_run(str(out))
    assert language_export.is_language_run(str(d))
    model = tf.saved_model.load(str(out))
    tokens = tf.constant([[3, 4, 5]], tf.int32)
    served = model.signatures["serving_default"](tokens=tokens)
    assert served["log_probs"].shape == (1, 3, 300)
    np.testing.assert_allclose(
        tf.reduce_logsumexp(served["log_probs"], -1), 0.0, atol=1e-5)
    _, network, _ = language_train.load_run(str(d))
    want, _ = evaluation.log_probabilities(network, tokens.numpy())
    np.testing.assert_allclose(served["log_probs"], want, rtol=1e-5,
                               atol=1e-6)
    # step() continues from a state: two halves equal the whole.
    step = model.signatures["step"]
    half = step(tokens=tokens[:, :2], hidden=tf.zeros([1, 8]))
    rest = step(tokens=tokens[:, 2:], hidden=half["hidden"])
    np.testing.assert_allclose(rest["log_probs"][:, 0],
                               served["log_probs"][:, 2], rtol=1e-5,
                               atol=1e-6)
    from_dir = language_export.evaluate(model_dir=str(d), batch_size=2,
                                        max_steps=5)
    from_saved = language_export.evaluate(saved_model=str(out),
                                          batch_size=2, max_steps=5)
    assert from_dir["ppl"] == pytest.approx(from_saved["ppl"], rel=1e-5)
    words = language_export.generate(str(out), "the function", 7, seed=1)
    assert len(words.split()) == 7
    assert set(words.split()) <= set(language_export.read_vocab(str(out)))
    with pytest.raises(FileExistsError, match="overwrite"):
        language_export.export_saved_model(str(d), str(out))


def test_info_prints_the_reference_parameter_count():
    from launchers import info

    fv = flags.FlagValues()
    info.define_flags(fv)
    fv(["info", "--genotype=DARTS_V2", "--task=ptb"])
    result = info.info(fv)
    assert result["params"] == 22_960_000 and result["emsize"] == 850
    assert result["vocab_size"] == 10_000


def test_resumed_training_keeps_earlier_rows(trained, tmp_path):
    d, _ = trained
    copy = tmp_path / "copy"
    os.system(f"cp -r {d} {copy}")
    # One more epoch: the three recorded ones stay, one is added.
    _train(TINY + [f"--model_dir={copy}", "--epochs=4"])
    rows = json.loads((copy / "nt_asgd.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["phase"] == "asgd"


def test_run_directory_belongs_to_one_genotype_and_configuration(tmp_path):
    from tf_amended_darts.jobs import run_dir

    d = tmp_path / "run"
    d.mkdir()
    (d / "flags.txt").write_text("the first run's flags\n")
    fv = flags.FlagValues()
    retrain_config.define_flags(fv)
    language_config.define_train_flags(fv)
    fv(["retrain"] + TINY + [f"--model_dir={d}"])
    config = language_config.train_from_flags(fv)
    run_dir.record(str(d), config.to_json())
    genotype = language_train.G.load("DARTS_V2")
    language_train.G.save(genotype, str(d / "genotype.json"))
    assert language_train.check_run_dir(config) == []
    with pytest.raises(run_dir.ConfigMismatchError,
                       match="--emsize 8 -> 12, --nhid 8 -> 12"):
        _train(TINY + [f"--model_dir={d}", "--nhid=12", "--emsize=12"])
    # the same cell under another name resumes; another cell does not
    other = [a for a in TINY if not a.startswith("--genotype")]
    path = tmp_path / "v2.json"
    language_train.G.save(genotype, str(path))
    fv(["retrain"] + other + [f"--model_dir={d}", f"--genotype={path}"])
    assert language_train.check_run_dir(
        language_config.train_from_flags(fv)) == []
    with pytest.raises(run_dir.ConfigMismatchError, match="another genotype"):
        _train(other + [f"--model_dir={d}", "--genotype=DARTS_V1"])
    assert (d / "flags.txt").read_text() == "the first run's flags\n"
