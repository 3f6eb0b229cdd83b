"""SavedModel export, evaluation and text generation of a language model.

The SavedModel of a trained recurrent model (``launchers/export.py
--model_dir=D``, ``D`` a ``--task=ptb`` training run) has two signatures:

* ``serving_default(tokens)``: ``tokens`` int32 ``[batch, time]`` ->
  ``log_probs`` ``[batch, time, vocab]`` (next-token log-probabilities
  after each position, from a zero state) and ``hidden`` (the last state);
* ``step(tokens, hidden)``: the same from a given state, for generation
  one token at a time.

``assets/vocab.txt`` holds the words (line ``i`` is token ``i``) and
``assets/genotype.json`` the cell. The weights are the run's best
validation weights (the averaged ones once NT-ASGD switched).
"""

import json
import os
import shutil

import numpy as np
import tensorflow as tf

from tf_amended_darts.core.jsonio import atomic_write
from tf_amended_darts.jobs import language_train
from tf_amended_darts.language import corpus, evaluation, models
from tf_amended_darts.language import genotype as G

META_FILE = "metadata.json"


def is_language_run(path):
    """Whether ``path`` is a ``--task=ptb`` run dir or its SavedModel."""
    if not path:
        return False
    for name in ("config.json", os.path.join("assets", META_FILE)):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file) as handle:
                try:
                    return json.load(handle).get("task") == "ptb"
                except (ValueError, AttributeError):
                    return False
    return False


class _Exported(tf.Module):
    def __init__(self, network, vocab_size):
        super().__init__()
        self.network = network
        h = network.nhid

        @tf.function(input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="tokens"),
            tf.TensorSpec([None, h], tf.float32, name="hidden")])
        def step(tokens, hidden):
            out = self.network({"tokens": tokens, "hidden": hidden},
                               training=False)
            return {"log_probs": tf.nn.log_softmax(out["logits"], axis=-1),
                    "hidden": out["hidden"]}

        @tf.function(input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="tokens")])
        def serve(tokens):
            zeros = tf.zeros([tf.shape(tokens)[0], h], tf.float32)
            return step(tokens, zeros)

        self.step = step
        self.serve = serve


def export_saved_model(model_dir, export_dir, overwrite=False):
    """Writes the SavedModel of a training run; returns a summary dict."""
    config, network, text = language_train.load_run(model_dir)
    if os.path.exists(export_dir):
        if not overwrite:
            raise FileExistsError(
                f"--export_dir={export_dir} exists; pass --overwrite.")
        shutil.rmtree(export_dir)
    module = _Exported(network, text.vocab_size)
    tf.saved_model.save(module, export_dir, signatures={
        "serving_default": module.serve, "step": module.step})
    assets = os.path.join(export_dir, "assets")
    os.makedirs(assets, exist_ok=True)
    atomic_write(os.path.join(assets, "vocab.txt"),
                 "\n".join(text.vocab) + "\n")
    G.save(network.genotype_value, os.path.join(assets, "genotype.json"))
    meta = {"task": "ptb", "dataset": config.dataset,
            "vocab_size": text.vocab_size, "nhid": network.nhid,
            "bptt": config.bptt,
            "params": models.count_params(network),
            "signatures": ["serving_default", "step"]}
    atomic_write(os.path.join(assets, META_FILE), json.dumps(meta, indent=1))
    return {"export_dir": export_dir, **meta}


def read_vocab(saved_model):
    """The words of an exported model (index = token id)."""
    with open(os.path.join(saved_model, "assets", "vocab.txt")) as handle:
        return [line.rstrip("\n") for line in handle]


def _saved_model_loss(saved_model, split, batch_size, bptt, max_steps):
    step = tf.saved_model.load(saved_model).signatures["step"]
    with open(os.path.join(saved_model, "assets", META_FILE)) as handle:
        nhid = json.load(handle)["nhid"]
    rows = split[: len(split) // batch_size * batch_size].reshape(
        batch_size, -1)
    hidden = tf.zeros([batch_size, nhid])
    total, count = 0.0, 0
    for k, i in enumerate(range(0, rows.shape[1] - 1, bptt)):
        if max_steps and k >= max_steps:
            break
        length = min(bptt, rows.shape[1] - 1 - i)
        out = step(tokens=tf.constant(rows[:, i:i + length]), hidden=hidden)
        hidden = out["hidden"]
        targets = rows[:, i + 1:i + 1 + length]
        logp = np.take_along_axis(out["log_probs"].numpy(),
                                  targets[..., None], -1)
        total -= float(logp.sum())
        count += targets.size
    return total / max(count, 1)


def evaluate(model_dir=None, saved_model=None, data_dir=None, split="test",
             batch_size=None, max_steps=0):
    """Perplexity of a training run (best weights) or of its SavedModel."""
    if saved_model:
        with open(os.path.join(saved_model, "assets", META_FILE)) as handle:
            meta = json.load(handle)
        text = corpus.load(meta["dataset"], data_dir, meta["vocab_size"])
        words = read_vocab(saved_model)
        if list(text.vocab) != words:
            raise ValueError(
                f"The corpus of --dataset={meta['dataset']} has another "
                f"vocabulary than the model's ({len(text.vocab)} against "
                f"{len(words)} words).")
        loss = _saved_model_loss(saved_model, getattr(text, split),
                                 batch_size or 1, meta["bptt"], max_steps)
        source = saved_model
    else:
        config, network, text = language_train.load_run(model_dir)
        if data_dir:
            text = corpus.load(config.dataset, data_dir, config.vocab_size)
        size = batch_size or (config.test_batch_size if split == "test"
                              else config.eval_batch_size)
        loss = evaluation.evaluate(network, getattr(text, split), size,
                                   config.bptt, max_steps)
        source = model_dir
    return {"source": source, "split": split, "loss": loss,
            "ppl": evaluation.perplexity(loss)}


def generate(saved_model, prompt, num_words=20, temperature=1.0, seed=0):
    """Samples ``num_words`` words after ``prompt`` (a string) from a
    SavedModel; unknown prompt words become ``<unk>``."""
    model = tf.saved_model.load(saved_model)
    step = model.signatures["step"]
    words = read_vocab(saved_model)
    index = {w: i for i, w in enumerate(words)}
    unk = index.get(corpus.UNK, 0)
    ids = [index.get(w, unk) for w in corpus.tokenize(prompt) or
           [corpus.EOS]]
    with open(os.path.join(saved_model, "assets", META_FILE)) as handle:
        nhid = json.load(handle)["nhid"]
    out = step(tokens=tf.constant([ids], tf.int32),
               hidden=tf.zeros([1, nhid]))
    rng = np.random.default_rng(seed)
    generated = []
    for _ in range(num_words):
        logits = out["log_probs"][0, -1].numpy() / max(temperature, 1e-6)
        probs = np.exp(logits - logits.max())
        token = int(rng.choice(len(probs), p=probs / probs.sum()))
        generated.append(words[token])
        out = step(tokens=tf.constant([[token]], tf.int32),
                   hidden=out["hidden"])
    return " ".join(generated)


def evaluate_from_flags(fv):
    """`evaluate` from the evaluation launcher's flags (test split).

    ``--batch_size`` counts only when given (default: the reference's test
    batch 1 for a run directory and for a SavedModel).
    """
    batch = fv.batch_size if fv["batch_size"].present else None
    if batch is not None and batch < 1:
        raise ValueError(f"Invalid --batch_size={batch}. Accepted values: "
                         "an integer >= 1.")
    return evaluate(model_dir=fv.model_dir, saved_model=fv.saved_model,
                    data_dir=fv.data_dir, batch_size=batch)
