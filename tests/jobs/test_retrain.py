"""Re-training: launcher artefacts, exact resume, multi-seed summary, errors.

Tiny networks on the embedded digits (3 cells, C = 4, 16x16 images, a few
steps per epoch) keep the whole file at well under a minute on 2 cores.
"""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import (
    REPO_ROOT,
    RETRAIN_TINY,
    flags_with,
    h5_datasets,
    retrain_flag_values,
    run_retrain_launcher,
)
from tf_amended_darts.jobs import retrain, retrain_config, retrainer
from tf_amended_darts.vision import data, network
from tf_amended_darts.vision import genotype as G

TINY = flags_with(RETRAIN_TINY, steps_per_epoch=3, deterministic=True)


pytestmark = pytest.mark.usefixtures("restore_global_tf_state")


_flag_values = retrain_flag_values
_run = run_retrain_launcher


_weights = h5_datasets


def _rows(model_dir):
    with open(os.path.join(model_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 2-epoch run: ``(model_dir, result)``."""
    d = str(tmp_path_factory.mktemp("retrain") / "straight")
    return d, _run(TINY + [f"--model_dir={d}"])


# --------------------------------------------------------------------------
# Pieces.


def test_linear_schedule_is_per_epoch_and_reaches_the_final_lr():
    schedule = retrainer.EpochLinearDecay(0.5, 0.0, 4, 10)
    lrs = [float(schedule(step)) for step in (0, 9, 10, 25, 39, 40, 100)]
    np.testing.assert_allclose(lrs, [0.5, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0])
    config = retrainer.EpochLinearDecay(**schedule.get_config()).get_config()
    assert config == schedule.get_config()


def test_label_smoothed_cross_entropy_matches_the_darts_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7)).astype(np.float32)
    labels = np.array([0, 3, 6, 2, 2])
    eps = 0.1  # DARTS train_imagenet.py CrossEntropyLabelSmooth
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = (1 - eps) * np.eye(7)[labels] + eps / 7
    expected = (-target * log_p).sum(-1).mean()
    got = float(retrainer.cross_entropy(labels, logits, eps))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    plain = -log_p[np.arange(5), labels].mean()
    np.testing.assert_allclose(
        float(retrainer.cross_entropy(labels, logits)), plain, rtol=1e-6
    )


def test_training_loss_adds_the_weighted_auxiliary_loss():
    config = retrain_config.RetrainConfig(
        genotype="DARTS_V2",
        model_dir="unused",
        dataset="digits",
        image_size=8,
        layers=3,
        init_channels=4,
        auxiliary=False,
    )
    model = retrainer.Retrainer(
        retrainer.build_network(config),
        auxiliary_weight=0.4,
        label_smoothing=0.1,
    )
    rng = np.random.default_rng(1)
    logits, aux = (
        rng.normal(size=(4, 10)).astype(np.float32) for _ in range(2)
    )
    y = np.array([1, 2, 3, 4])
    loss, main = model.compute_training_loss(y, (logits, aux))
    expected = retrainer.cross_entropy(
        y, logits, 0.1
    ) + 0.4 * retrainer.cross_entropy(y, aux, 0.1)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
    np.testing.assert_array_equal(main, logits)


def test_imagenet_configs_build_the_imagenet_network():
    config = retrain_config.RetrainConfig(
        genotype="DARTS_V2",
        model_dir="unused",
        dataset="imagenet",
        image_size=64,
        layers=3,
        init_channels=4,
        auxiliary=False,
        lr_schedule="linear",
        label_smoothing=0.1,
    )
    net = retrainer.build_network(config)
    assert isinstance(net, network.NetworkImageNet)
    assert net.num_classes == 1000 and net.built
    with pytest.raises(ValueError, match="--init_channels"):
        retrain_config.RetrainConfig(
            genotype="DARTS_V2",
            model_dir="unused",
            dataset="imagenet",
            init_channels=5,
        )


def test_summary_mean_and_sample_std():
    results = [
        {"seed": s, "params": 10, "test_top1_error": e1, "test_top5_error": e5}
        for s, e1, e5 in ((0, 2.5, 0.5), (1, 2.75, 0.25), (2, 2.9, 0.75))
    ]
    summary = retrain.summarize(results)
    assert summary["seeds"] == [0, 1, 2] and summary["std_ddof"] == 1
    top1 = summary["test_top1_error"]
    assert top1["mean"] == pytest.approx(np.mean([2.5, 2.75, 2.9]))
    # Sample standard deviation: sqrt(sum (x - mean)^2 / (n - 1)).
    dev = np.array([2.5, 2.75, 2.9]) - np.mean([2.5, 2.75, 2.9])
    assert top1["std"] == pytest.approx(np.sqrt((dev**2).sum() / 2))
    assert summary["test_top5_error"]["std"] == pytest.approx(0.25)
    assert retrain.summarize(results[:1])["test_top1_error"]["std"] is None


def test_flagfiles_parse_into_valid_configs():
    root = REPO_ROOT
    expected = {
        "retrain_cifar10.cfg": dict(
            epochs=600,
            batch_size=96,
            layers=20,
            init_channels=36,
            cutout=16,
            learning_rate=0.025,
            lr_schedule="cosine",
            weight_decay=3e-4,
            drop_path_prob=0.2,
            auxiliary=True,
            auxiliary_weight=0.4,
        ),
        "retrain_imagenet.cfg": dict(
            epochs=250,
            batch_size=128,
            layers=14,
            init_channels=48,
            learning_rate=0.5,
            lr_schedule="linear",
            weight_decay=3e-5,
            label_smoothing=0.1,
            image_size=224,
            auxiliary=True,
        ),
        "retrain_quickstart.cfg": dict(
            dataset="digits", layers=3, init_channels=8
        ),
    }
    for name, values in expected.items():
        path = os.path.join(root, "flags", name)
        config = retrain_config.from_flags(
            _flag_values(
                [
                    f"--flagfile={path}",
                    "--genotype=DARTS_V2",
                    "--model_dir=unused",
                ]
            )
        )
        for key, value in values.items():
            assert getattr(config, key) == value, (name, key)


# --------------------------------------------------------------------------
# The launcher end to end.


def test_launcher_writes_the_run_directory(straight):
    d, result = straight
    for name in (
        "flags.txt",
        "config.json",
        "genotype.json",
        "metrics.csv",
        "final.weights.h5",
        "result.json",
        "checkpoints/ckpt-0001.weights.h5",
        "checkpoints/ckpt-0002.weights.h5",
    ):
        assert os.path.isfile(os.path.join(d, name)), name
    assert G.to_dict(G.load(os.path.join(d, "genotype.json"))) == G.to_dict(
        G.load_published("DARTS_V2")
    )
    config = json.load(open(os.path.join(d, "config.json")))
    assert config["epochs"] == 2 and config["dataset"] == "digits"
    rows = _rows(d)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert list(rows[0]) == list(retrain.METRIC_COLUMNS)
    # Cosine over 2 epochs (0.025, 0.0125); drop-path ramp 0.2 * e / 2.
    np.testing.assert_allclose(
        [float(r["learning_rate"]) for r in rows], [0.025, 0.0125], rtol=1e-6
    )
    assert [float(r["drop_path_prob"]) for r in rows] == [0.0, 0.1]
    assert json.load(open(os.path.join(d, "result.json"))) == result
    top1 = float(rows[-1]["test_top1"])
    assert result["test_top1_error"] == pytest.approx(100 * (1 - top1))
    assert 0 < result["params"] == result["params_with_aux"]
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        os.path.join(d, "tensorboard", "retrain")
    )
    acc.Reload()
    events = acc.Tensors("test_top1")
    assert [e.step for e in events] == [1, 2]
    assert float(tf.make_ndarray(events[-1].tensor_proto)) == pytest.approx(
        top1
    )


def test_resume_after_an_interruption_gives_the_same_weights(
    straight, tmp_path, monkeypatch
):
    d = str(tmp_path / "interrupted")
    real = retrain.train_data

    def dies_in_epoch_2(config, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")
        return real(config, epoch)

    monkeypatch.setattr(retrain, "train_data", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        _run(TINY + [f"--model_dir={d}"])
    assert sorted(os.listdir(os.path.join(d, "checkpoints"))) == [
        "ckpt-0001.weights.h5"
    ]
    assert not os.path.exists(os.path.join(d, "final.weights.h5"))
    monkeypatch.setattr(retrain, "train_data", real)
    result = _run(TINY + [f"--model_dir={d}"])

    expected = _weights(os.path.join(straight[0], "final.weights.h5"))
    got = _weights(os.path.join(d, "final.weights.h5"))
    assert got.keys() == expected.keys() and len(got) > 50
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert result == straight[1]

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(_rows(d)) == strip(_rows(straight[0]))


def test_rerun_of_a_finished_run_trains_no_more(straight, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(straight[0], d)
    ckpt = os.path.join(d, "checkpoints", "ckpt-0002.weights.h5")
    mtime = os.stat(ckpt).st_mtime_ns
    assert _run(TINY + [f"--model_dir={d}"]) == straight[1]
    assert os.stat(ckpt).st_mtime_ns == mtime
    assert len(_rows(d)) == 2
    with pytest.raises(ValueError, match="--epochs=1.*epoch 2"):
        _run(TINY + [f"--model_dir={d}", "--epochs=1"])
    assert len(_rows(d)) == 2


def test_multi_seed_run_writes_a_summary(tmp_path):
    d = str(tmp_path / "seeds")
    summary = _run(
        TINY
        + [
            f"--model_dir={d}",
            "--seeds=3,5",
            "--epochs=1",
            "--steps_per_epoch=2",
        ]
    )
    results = [
        json.load(open(os.path.join(d, f"seed_{s}", "result.json")))
        for s in (3, 5)
    ]
    assert [r["seed"] for r in results] == [3, 5]
    for s in (3, 5):
        config = json.load(open(os.path.join(d, f"seed_{s}", "config.json")))
        assert config["seed"] == s and config["seeds"] == []
    assert json.load(open(os.path.join(d, "summary.json"))) == summary
    errors = [r["test_top1_error"] for r in results]
    assert summary["test_top1_error"]["values"] == errors
    assert summary["test_top1_error"]["mean"] == pytest.approx(np.mean(errors))
    assert summary["test_top1_error"]["std"] == pytest.approx(
        np.std(errors, ddof=1)
    )


def test_auxiliary_head_label_smoothing_and_linear_schedule(tmp_path):
    d = str(tmp_path / "aux")
    result = _run(
        TINY
        + [
            f"--model_dir={d}",
            "--image_size=32",
            "--auxiliary",
            "--auxiliary_weight=0.4",
            "--label_smoothing=0.1",
            "--lr_schedule=linear",
            "--learning_rate=0.05",
            "--steps_per_epoch=2",
        ]
    )
    assert result["params_with_aux"] > result["params"]
    rows = _rows(d)
    np.testing.assert_allclose(
        [float(r["learning_rate"]) for r in rows], [0.05, 0.025], rtol=1e-6
    )
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)


# --------------------------------------------------------------------------
# Errors name the flag.


def test_bad_genotype_files_name_the_flag(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(
        json.dumps(G.to_dict(G.load_published("DARTS_V2")) | {"colour": "red"})
    )
    bad_op = tmp_path / "bad_op.json"
    entry = G.to_dict(G.load_published("DARTS_V2"))
    entry["normal"][0][0] = "conv_99x99"
    bad_op.write_text(json.dumps(entry))
    for path in (bad_json, unknown, bad_op, tmp_path / "missing.json"):
        with pytest.raises(ValueError, match="--genotype"):
            retrain_config.from_flags(
                _flag_values(
                    TINY + [f"--genotype={path}", "--model_dir=unused"]
                )
            )
    with pytest.raises(ValueError, match="--genotype='NOPE'"):
        retrain_config.RetrainConfig(genotype="NOPE", model_dir="unused")


def test_other_flag_errors_name_the_flag():
    for args, flag in (
        (["--lr_schedule=step"], "--lr_schedule"),
        (["--seeds=1,x"], "--seeds"),
        (["--layers=2"], "--layers"),
        (["--label_smoothing=1.0"], "--label_smoothing"),
        (["--learning_rate_min=1.0"], "--learning_rate_min"),
    ):
        with pytest.raises(ValueError, match=flag):
            retrain_config.from_flags(
                _flag_values(TINY + args + ["--model_dir=unused"])
            )


def test_too_small_images_name_the_image_size_flag(tmp_path):
    with pytest.raises(ValueError, match="--image_size=16.*auxiliary"):
        _run(TINY + [f"--model_dir={tmp_path / 'r'}", "--auxiliary"])


def test_another_genotype_in_the_same_model_dir_is_refused(straight, tmp_path):
    d = str(tmp_path / "copy")
    shutil.copytree(straight[0], d)
    with pytest.raises(ValueError, match="--genotype"):
        _run(TINY + [f"--model_dir={d}", "--genotype=DARTS_V1"])


def test_missing_data_names_the_data_dir(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="--data_dir"):
        _run(
            TINY
            + [
                f"--model_dir={tmp_path / 'r'}",
                "--dataset=cifar10",
                f"--data_dir={tmp_path / 'empty'}",
                "--image_size=0",
            ]
        )
