"""SavedModel / TFLite export and evaluation of a tiny re-trained network."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from tf_amended_darts.jobs import export, retrain, retrain_config
from tf_amended_darts.vision import genotype as G

SIZE = 16
TINY = dict(
    genotype="DARTS_V2",
    dataset="digits",
    image_size=SIZE,
    layers=3,
    init_channels=4,
    batch_size=16,
    epochs=1,
    steps_per_epoch=3,
    auxiliary=False,
    cutout=0,
    verbose=0,
)


pytestmark = pytest.mark.usefixtures("restore_global_tf_state")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("export") / "run")
    retrain.run(retrain_config.RetrainConfig(model_dir=d, **TINY))
    return d


def _launch(module, define, args):
    fv = flags.FlagValues()
    define(fv)
    fv([module.__name__] + args)
    return module.main([module.__name__], fv)


@pytest.fixture(scope="module")
def exported(run_dir):
    """The SavedModel written by launchers/export.py (with --tflite)."""
    from launchers import export as launcher

    e = os.path.join(os.path.dirname(run_dir), "exported")
    out = _launch(
        launcher,
        export.define_export_flags,
        [f"--model_dir={run_dir}", f"--export_dir={e}", "--tflite"],
    )
    assert out["export_dir"] == e and out["tflite"].endswith("model.tflite")
    return e


def _images(n=5, seed=0):
    return (
        np.random.default_rng(seed)
        .normal(size=(n, SIZE, SIZE, 3))
        .astype(np.float32)
    )


def _keras_logits(run_dir, x):
    _, net, _ = export.load_run(run_dir)
    return net(x, training=False).numpy()


def test_saved_model_round_trip(run_dir, exported):
    loaded = tf.saved_model.load(exported)
    signature = loaded.signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert list(inputs) == ["images"]
    assert inputs["images"].shape.as_list() == [None, SIZE, SIZE, 3]
    assert inputs["images"].dtype == tf.float32
    assert sorted(signature.structured_outputs) == ["logits", "probabilities"]
    x = _images()
    out = signature(images=tf.constant(x))
    expected = _keras_logits(run_dir, x)
    np.testing.assert_allclose(out["logits"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(
        out["probabilities"].numpy(), tf.nn.softmax(expected).numpy(), atol=1e-5
    )
    # Any batch size.
    one = signature(images=tf.constant(x[:1]))["logits"].numpy()
    np.testing.assert_allclose(one, expected[:1], atol=1e-5)
    # The genotype travels with the model, as an attribute and an asset.
    genotype = G.from_json(loaded.genotype_json.numpy().decode())
    assert genotype == G.load(os.path.join(run_dir, "genotype.json"))
    with open(os.path.join(exported, "assets", "genotype.json")) as f:
        assert G.from_json(f.read()) == genotype
    metadata = json.loads(loaded.metadata_json.numpy().decode())
    assert metadata["dataset"] == "digits" and metadata["image_size"] == SIZE
    assert metadata["weights"] == "final.weights.h5"


def test_saved_model_cli_runs_the_signature(run_dir, exported):
    cli = shutil.which("saved_model_cli")
    if cli is None:
        pytest.skip("saved_model_cli (installed with tensorflow) not on PATH")
    # TF 2.21's saved_model_cli evaluates --input_exprs with
    # ast.literal_eval, so `np.zeros((1,16,16,3))` is refused ("not a valid
    # python literal"); the same zeros as a nested-list literal work.
    zeros = repr(np.zeros((1, SIZE, SIZE, 3)).tolist())
    proc = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            exported,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--input_exprs",
            f"images={zeros}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    number = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
    found = {
        key: np.array([float(v) for v in re.findall(number, text)])
        for key, text in re.findall(
            r"Result for output key (\w+):\n(\[\[.*?\]\])", proc.stdout, re.S
        )
    }
    assert sorted(found) == ["logits", "probabilities"], proc.stdout
    expected = _keras_logits(run_dir, np.zeros((1, SIZE, SIZE, 3), np.float32))
    np.testing.assert_allclose(found["logits"], expected[0], atol=1e-5)
    np.testing.assert_allclose(found["probabilities"].sum(), 1.0, atol=1e-5)


@pytest.mark.filterwarnings(
    "ignore:.*tf.lite.Interpreter is deprecated:UserWarning"
)
def test_tflite_matches_the_saved_model(exported):
    interpreter = tf.lite.Interpreter(
        model_path=os.path.join(exported, "model.tflite")
    )
    runner = interpreter.get_signature_runner("serving_default")
    x = _images(3, seed=1)
    got = runner(images=x)
    want = tf.saved_model.load(exported).signatures["serving_default"](
        images=tf.constant(x)
    )
    for key in ("logits", "probabilities"):
        np.testing.assert_allclose(got[key], want[key].numpy(), atol=1e-4)


def test_evaluate_saved_model_and_checkpoint_agree(
    run_dir, exported, capsys, tmp_path
):
    from launchers import evaluate as launcher

    from_saved = _launch(
        launcher, export.define_evaluate_flags, [f"--saved_model={exported}"]
    )
    assert json.loads(capsys.readouterr().out) == from_saved
    from_run = export.evaluate(model_dir=run_dir)
    assert from_saved["num_examples"] == from_run["num_examples"] == 360
    assert from_saved["top1_accuracy"] == from_run["top1_accuracy"]
    assert from_saved["top5_accuracy"] == from_run["top5_accuracy"]
    result = json.load(open(os.path.join(run_dir, "result.json")))
    assert from_run["top1_error"] == pytest.approx(
        result["test_top1_error"], abs=1e-4
    )
    # Without final weights, the newest checkpoint (same weights here).
    d = str(tmp_path / "no_final")
    shutil.copytree(run_dir, d)
    os.remove(os.path.join(d, "final.weights.h5"))
    from_ckpt = export.evaluate(model_dir=d)
    assert from_ckpt["weights"].endswith("ckpt-0001.weights.h5")
    assert from_ckpt["top1_accuracy"] == from_run["top1_accuracy"]


def test_wrong_input_shapes_are_clear_errors(run_dir, exported):
    with pytest.raises(ValueError, match="--image_size=8"):
        export.evaluate(saved_model=exported, image_size=8)
    with pytest.raises(ValueError, match="--image_size=32"):
        export.evaluate(model_dir=run_dir, image_size=32)
    with pytest.raises(ValueError, match=r"shape \(None, 16, 16, 3\)"):
        export.predict_saved_model(exported, np.zeros((1, 8, 8, 3)))
    out = export.predict_saved_model(exported, np.zeros((2, SIZE, SIZE, 3)))
    assert out["logits"].shape == (2, 10)
    signature = tf.saved_model.load(exported).signatures["serving_default"]
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"Expected images of shape \[N, 16, 16, 3\]",
    ):
        signature(images=tf.zeros((1, 8, 8, 3)))


def test_export_errors_name_the_flag(run_dir, exported, tmp_path):
    with pytest.raises(FileExistsError, match="--export_dir"):
        export.export_saved_model(run_dir, exported)
    with pytest.raises(FileNotFoundError, match="--model_dir"):
        export.export_saved_model(
            str(tmp_path / "nothing"), str(tmp_path / "e")
        )
    multi = tmp_path / "multi"
    multi.mkdir()
    config = json.load(open(os.path.join(run_dir, "config.json")))
    (multi / "config.json").write_text(json.dumps(config | {"seeds": [0, 1]}))
    shutil.copy(os.path.join(run_dir, "genotype.json"), multi)
    with pytest.raises(ValueError, match="multi-seed.*seed_0"):
        export.export_saved_model(str(multi), str(tmp_path / "e"))
    with pytest.raises(ValueError, match="exactly one"):
        export.evaluate()
