"""SavedModel (and TFLite) export and test-error evaluation of a re-training.

`export_saved_model` rebuilds a run's network from ``model_dir/config.json``
and ``model_dir/genotype.json``, loads ``final.weights.h5`` (else the newest
checkpoint), and writes a SavedModel::

    export_dir/
        saved_model.pb, variables/, fingerprint.pb
        assets/genotype.json      the genotype (a tracked asset)
        model.tflite              with --tflite

Signature ``serving_default``: input ``images``, float32 ``[None, S, S,
3]`` (NHWC, normalised as the data pipeline does: ``(x - mean) / std`` per
channel, both in the ``metadata_json`` attribute); outputs ``logits`` and
``probabilities`` (softmax), inference mode (batch-norm moving statistics,
no drop-path, no auxiliary head). A run trained under a mixed
``--dtype_policy`` is exported under the same policy (the network's
``config.json`` says which): its convolutions compute in float16 /
bfloat16, but the signature still takes and returns float32 (the
classifier computes in float32). The loaded object also has the string
variables ``genotype_json`` (the genotype's JSON) and ``metadata_json``
(dataset, image size, classes, mean, std, weights file).

The graph tracks the raw `tf.Variable` of each Keras weight (as Keras'
``ExportArchive`` does): tracking the Keras variables themselves loads in
TF2 but not in TF1-style loaders such as ``saved_model_cli run``.

TFLite: the builtin runtime has no ``MaxPoolWithArgmax``, which the max
pool of `layers.MaxPool2D` uses (for exact second derivatives); the
converted function is traced under ``jit_compile=True``, where that layer
takes the maximum over strided slices instead (same outputs).

`evaluate` computes the test top-1/top-5 of a run directory or of a
SavedModel on a dataset's test split.
"""

import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from absl import flags

from tf_amended_darts.core import checkpoint
from tf_amended_darts.jobs import retrain, retrainer
from tf_amended_darts.vision import data
from tf_amended_darts.vision import genotype as G

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
OUTPUT_LOGITS = "logits"
OUTPUT_PROBABILITIES = "probabilities"
TFLITE_FILE = "model.tflite"
GENOTYPE_ASSET = "genotype.json"
EVAL_BATCH_SIZE = 100
TOP_K = retrainer.TOP_K


# --------------------------------------------------------------------------
# Loading a run.


def latest_checkpoint(model_dir):
    """The newest checkpoint in ``model_dir/checkpoints`` (an epoch's end
    or a step within an epoch), or None.

    Read-only (no `checkpoint.Checkpointer`, whose constructor clears the
    temporary files of a save that may be in progress).
    """
    return checkpoint.latest(os.path.join(model_dir, retrain.CHECKPOINT_DIR))


def load_run(model_dir):
    """A run's config and its network with the trained weights.

    Args:
        model_dir: a single-seed re-training directory.

    Returns:
        ``(config, network, weights_path)``: the `RetrainConfig`, the built
        network, and the file its weights came from (``final.weights.h5``,
        else the newest checkpoint).

    Raises:
        FileNotFoundError: naming ``--model_dir`` when it holds no run or
            no weights.
    """
    config = retrain.load_config(model_dir)
    net = retrainer.build_network(config)
    final = os.path.join(model_dir, retrain.FINAL_WEIGHTS)
    if os.path.isfile(final):
        net.load_weights(final)
        return config, net, final
    latest = latest_checkpoint(model_dir)
    if latest is None:
        raise FileNotFoundError(
            f"--model_dir={model_dir} holds no {retrain.FINAL_WEIGHTS} and "
            f"no checkpoint in {retrain.CHECKPOINT_DIR}/: train it first."
        )
    model = retrainer.build_retrainer(config, net, 1)
    model.load_weights(latest)
    return config, net, latest


def _metadata(config, weights):
    info = data.dataset_info(config.dataset, config.image_size or None)
    return {
        "dataset": config.dataset,
        "image_size": info.image_size,
        "num_classes": info.num_classes,
        "mean": list(info.mean),
        "std": list(info.std),
        "layers": config.layers,
        "init_channels": config.init_channels,
        "weights": os.path.basename(weights),
    }


# --------------------------------------------------------------------------
# Export.


def _serving_fn(net, image_size, jit_compile=False):
    spec = tf.TensorSpec(
        [None, image_size, image_size, 3], tf.float32, name=INPUT_NAME
    )

    def serve(images):
        # Loaded signatures do not check the fed shape against the spec;
        # the fully convolutional network would run on any size.
        tf.debugging.assert_equal(
            tf.shape(images)[1:],
            tf.constant([image_size, image_size, 3]),
            message=f"Expected {INPUT_NAME} of shape [N, {image_size}, "
            f"{image_size}, 3] (NHWC)",
        )
        # float32 under every --dtype_policy (the network's classifier
        # computes in float32 under mixed precision; a no-op cast then).
        logits = tf.cast(net(images, training=False), tf.float32)
        return {
            OUTPUT_LOGITS: logits,
            OUTPUT_PROBABILITIES: tf.nn.softmax(logits),
        }

    return tf.function(
        serve, input_signature=[spec], autograph=False, jit_compile=jit_compile
    )


def _module(net, genotype_json, metadata, asset_path=None, jit=False):
    module = tf.Module()
    module.model_variables = [v.value for v in net.weights]
    module.genotype_json = tf.Variable(genotype_json, trainable=False)
    module.metadata_json = tf.Variable(
        json.dumps(metadata, sort_keys=True), trainable=False
    )
    if asset_path is not None:
        module.genotype_file = tf.saved_model.Asset(asset_path)
    module.serve = _serving_fn(net, metadata["image_size"], jit)
    return module


def convert_tflite(net, genotype_json, metadata):
    """The TFLite flatbuffer of the serving function (builtin ops only)."""
    module = _module(net, genotype_json, metadata, jit=True)
    concrete = module.serve.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [concrete], module
    )
    return converter.convert()


def export_saved_model(model_dir, export_dir, tflite=False, overwrite=False):
    """Exports a run's network as a SavedModel (see the module docstring).

    The SavedModel is written to a temporary sibling directory and renamed
    into place, so ``export_dir`` is complete or absent.

    Args:
        model_dir: a single-seed re-training directory.
        export_dir: where to write the SavedModel.
        tflite: also write ``export_dir/model.tflite``.
        overwrite: replace an existing ``export_dir``.

    Returns:
        ``{"export_dir", "weights", "tflite"}`` (``tflite`` None unless
        asked).

    Raises:
        FileExistsError: naming ``--export_dir`` if it exists and
            ``overwrite`` is False.
    """
    export_dir = os.path.abspath(export_dir)
    if os.path.exists(export_dir) and not overwrite:
        raise FileExistsError(
            f"--export_dir={export_dir} exists; pass --overwrite to "
            "replace it, or another directory."
        )
    config, net, weights = load_run(model_dir)
    genotype_json = G.to_json(net.genotype)
    metadata = _metadata(config, weights)
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
    try:
        asset = os.path.join(tmp, "asset", GENOTYPE_ASSET)
        G.atomic_write(asset, genotype_json)
        module = _module(net, genotype_json, metadata, asset)
        out = os.path.join(tmp, "saved_model")
        tf.saved_model.save(
            module, out, signatures={SIGNATURE_KEY: module.serve}
        )
        if tflite:
            flatbuffer = convert_tflite(net, genotype_json, metadata)
            G.atomic_write(os.path.join(out, TFLITE_FILE), flatbuffer)
        if os.path.exists(export_dir):
            shutil.rmtree(export_dir)
        os.replace(out, export_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "export_dir": export_dir,
        "weights": weights,
        "tflite": os.path.join(export_dir, TFLITE_FILE) if tflite else None,
    }


# --------------------------------------------------------------------------
# Evaluation.


def _counts(predict, dataset, num_classes):
    """Examples, top-1 and top-k hits of ``predict`` over ``dataset``."""
    k = min(TOP_K, num_classes)
    total = top1 = topk = 0
    for images, labels in dataset:
        logits = tf.convert_to_tensor(predict(images))
        labels = tf.cast(labels, tf.int32)
        top1 += int(
            tf.reduce_sum(
                tf.cast(tf.math.in_top_k(labels, logits, 1), tf.int32)
            )
        )
        topk += int(
            tf.reduce_sum(
                tf.cast(tf.math.in_top_k(labels, logits, k), tf.int32)
            )
        )
        total += int(labels.shape[0])
    return total, top1, topk


def _saved_model_predictor(path):
    """``(predict, image_size, num_classes, metadata)`` of a SavedModel."""
    loaded = tf.saved_model.load(path)
    if SIGNATURE_KEY not in loaded.signatures:
        raise ValueError(
            f"--saved_model={path} has no {SIGNATURE_KEY!r} signature."
        )
    signature = loaded.signatures[SIGNATURE_KEY]
    inputs = signature.structured_input_signature[1]
    if INPUT_NAME not in inputs:
        raise ValueError(
            f"--saved_model={path}: the {SIGNATURE_KEY!r} signature takes "
            f"{sorted(inputs)}, not {INPUT_NAME!r}."
        )
    shape = inputs[INPUT_NAME].shape
    outputs = signature.structured_outputs
    metadata = {}
    if hasattr(loaded, "metadata_json"):
        metadata = json.loads(loaded.metadata_json.numpy().decode("utf-8"))

    def predict(images):
        return signature(**{INPUT_NAME: images})[OUTPUT_LOGITS]

    predict.loaded = loaded  # keep the resources alive
    return predict, shape[1], outputs[OUTPUT_LOGITS].shape[-1], metadata


def evaluate(
    model_dir=None,
    saved_model=None,
    dataset=None,
    data_dir=None,
    image_size=0,
    batch_size=EVAL_BATCH_SIZE,
    manual_dir=None,
    download=False,
):
    """Test top-1/top-5 of a run directory or of a SavedModel.

    Args:
        model_dir: a single-seed re-training directory (its final weights,
            else the newest checkpoint).
        saved_model: a SavedModel from `export_saved_model` (exactly one
            of ``model_dir`` and ``saved_model``).
        dataset: the dataset whose test split to use (default: the run's,
            or the one recorded in the SavedModel).
        data_dir, manual_dir, download: as in `data.eval_dataset`.
        image_size: image side; 0: the model's. Must equal the model's.
        batch_size: evaluation batch size.

    Returns:
        ``{"source", "path", "weights", "dataset", "split", "image_size",
        "num_examples", "top1_accuracy", "top5_accuracy", "top1_error",
        "top5_error"}``: accuracies are fractions, errors percentages.

    Raises:
        ValueError: naming the flag at fault (``--model_dir`` /
            ``--saved_model``, ``--dataset``, ``--image_size``).
    """
    if (model_dir is None) == (saved_model is None):
        raise ValueError(
            "Pass exactly one of --model_dir and --saved_model. Received: "
            f"model_dir={model_dir!r}, saved_model={saved_model!r}"
        )
    if model_dir is not None:
        config, net, weights = load_run(model_dir)
        size = data.dataset_info(config.dataset, config.image_size or None)
        size, classes = size.image_size, size.num_classes
        dataset = dataset or config.dataset
        data_dir = data_dir or config.data_dir
        predict = tf.function(
            lambda x: net(x, training=False),
            autograph=False,
            reduce_retracing=True,
        )
        source, path = "checkpoint", model_dir
    else:
        if not os.path.isdir(saved_model):
            raise FileNotFoundError(
                f"No SavedModel at --saved_model={saved_model}"
            )
        predict, size, classes, metadata = _saved_model_predictor(saved_model)
        dataset = dataset or metadata.get("dataset")
        weights = metadata.get("weights")
        source, path = "saved_model", saved_model
    if dataset not in data.DATASETS:
        raise ValueError(
            f"Invalid --dataset={dataset!r}. Accepted values: "
            f"{', '.join(data.DATASETS)}."
        )
    if image_size and size is not None and image_size != size:
        raise ValueError(
            f"Invalid --image_size={image_size}: the model takes "
            f"{size}x{size} images (pass --image_size=0 or {size})."
        )
    info = data.dataset_info(dataset, image_size or size)
    if info.num_classes != classes:
        raise ValueError(
            f"Invalid --dataset={dataset}: it has {info.num_classes} "
            f"classes, the model outputs {classes} logits."
        )
    test = data.eval_dataset(
        dataset,
        batch_size,
        data_dir=data_dir,
        image_size=info.image_size,
        download=download,
        manual_dir=manual_dir,
    )
    total, top1, top5 = _counts(predict, test, classes)
    acc1, acc5 = top1 / total, top5 / total
    return {
        "source": source,
        "path": path,
        "weights": weights,
        "dataset": dataset,
        "split": "test",
        "image_size": info.image_size,
        "num_examples": total,
        "top1_accuracy": acc1,
        "top5_accuracy": acc5,
        "top1_error": 100.0 * (1.0 - acc1),
        "top5_error": 100.0 * (1.0 - acc5),
    }


def predict_saved_model(saved_model, images):
    """``{"logits", "probabilities"}`` of a SavedModel on numpy images.

    Raises:
        ValueError: when ``images`` is not ``[N, S, S, 3]`` of the
            signature's size.
    """
    loaded = tf.saved_model.load(saved_model)
    signature = loaded.signatures[SIGNATURE_KEY]
    spec = signature.structured_input_signature[1][INPUT_NAME]
    images = np.asarray(images, dtype=np.float32)
    if not spec.shape.is_compatible_with(images.shape):
        raise ValueError(
            f"Expected images of shape {tuple(spec.shape)} (NHWC). "
            f"Received: images.shape={images.shape}"
        )
    out = signature(**{INPUT_NAME: tf.constant(images)})
    return {k: v.numpy() for k, v in out.items()}


# --------------------------------------------------------------------------
# Flags.


def define_export_flags(fv=flags.FLAGS):
    """Defines the export launcher's flags on ``fv``."""
    d = dict(flag_values=fv)
    flags.DEFINE_string(
        "model_dir", None, "A re-training run directory (one seed).", **d
    )
    flags.DEFINE_string(
        "export_dir", None, "Where to write the SavedModel.", **d
    )
    flags.DEFINE_bool("tflite", False, f"Also write {TFLITE_FILE}.", **d)
    flags.DEFINE_bool(
        "overwrite", False, "Replace an existing --export_dir.", **d
    )


def define_evaluate_flags(fv=flags.FLAGS):
    """Defines the evaluation launcher's flags on ``fv``."""
    d = dict(flag_values=fv)
    flags.DEFINE_string(
        "model_dir",
        None,
        "A re-training run directory (one seed); or pass --saved_model.",
        **d,
    )
    flags.DEFINE_string(
        "saved_model",
        None,
        "A SavedModel directory from launchers/export.py.",
        **d,
    )
    flags.DEFINE_string(
        "dataset",
        None,
        f"One of {', '.join(data.DATASETS)}; default: the model's.",
        **d,
    )
    flags.DEFINE_string("data_dir", None, "TFDS data directory.", **d)
    flags.DEFINE_string("manual_dir", None, "ImageNet tar files.", **d)
    flags.DEFINE_bool("download", False, "Let TFDS download the data.", **d)
    flags.DEFINE_integer("image_size", 0, "Image side; 0: the model's.", **d)
    flags.DEFINE_integer("batch_size", EVAL_BATCH_SIZE, "Batch size.", **d)


def evaluate_from_flags(fv=flags.FLAGS):
    """`evaluate` with the values of `define_evaluate_flags`' flags."""
    if fv.batch_size < 1:
        raise ValueError(
            f"Invalid --batch_size={fv.batch_size}. Accepted values: an "
            "integer >= 1."
        )
    return evaluate(
        model_dir=fv.model_dir,
        saved_model=fv.saved_model,
        dataset=fv.dataset,
        data_dir=fv.data_dir,
        image_size=fv.image_size,
        batch_size=fv.batch_size,
        manual_dir=fv.manual_dir,
        download=fv.download,
    )
