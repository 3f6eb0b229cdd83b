"""Corpora and truncated-BPTT batches."""

import numpy as np
import pytest

from tf_amended_darts.language import corpus, data, models


def write_ptb(directory, lines=None):
    """Small PTB-format files (what the tests use instead of PTB)."""
    lines = lines or {
        "train": ["the cat sat on the mat", "a dog <unk> N times"] * 20,
        "valid": ["the dog sat", "a cat"] * 6,
        "test": ["the mat", "N dogs sat"] * 6,
    }
    for split, text in lines.items():
        (directory / f"ptb.{split}.txt").write_text(
            "".join(f" {line} \n" for line in text))
    return directory


def test_ptb_reader_follows_the_reference_dictionary(tmp_path):
    text = corpus.read_ptb(str(write_ptb(tmp_path)))
    # Words in order of first appearance over train, valid, test; <eos>
    # after every line, as rnn/data.py Corpus.
    assert text.vocab[:7] == ("the", "cat", "sat", "on", "mat", "<eos>",
                              "a")
    assert text.vocab[-1] == "dogs"  # first seen in test
    assert len(text.train) == 20 * (6 + 1 + 5 + 1)
    words = [text.vocab[i] for i in text.valid[:4]]
    assert words == ["the", "dog", "sat", "<eos>"]


def test_missing_ptb_files_give_one_line_naming_them(tmp_path):
    (tmp_path / "ptb.train.txt").write_text("a b\n")
    with pytest.raises(corpus.MissingCorpusError) as error:
        corpus.load("ptb", str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    for name in corpus.PTB_FILES:
        assert name in message
    assert "--data_dir" in message and "--dataset=pydoc" in message
    with pytest.raises(ValueError, match="--dataset='wiki'.*ptb, pydoc"):
        corpus.load("wiki")


def test_offline_corpus_is_real_deterministic_english():
    a = corpus.pydoc_corpus(2000)
    b = corpus.pydoc_corpus(2000)
    assert a.vocab == b.vocab and np.array_equal(a.train, b.train)
    assert a.vocab[:2] == ("<unk>", "<eos>") and a.vocab_size == 2000
    assert len(a.train) > 50_000 and len(a.valid) > 2_000
    assert len(a.test) > 2_000
    for word in ("the", "of", "is", "function", "N"):
        assert word in a.vocab
    assert corpus.tokenize("Call f(x, 3.5) twice; it's 10") == [
        "call", "f", "x", "N", "twice", "it's", "N"]
    train, valid, test = corpus.split_lines([[str(i)] for i in range(40)])
    assert valid == [["18"], ["38"]] and test == [["19"], ["39"]]


def test_batchify_keeps_contiguous_rows():
    ids = np.arange(23)
    rows = data.batchify(ids, 4)
    assert rows.shape == (4, 5)
    np.testing.assert_array_equal(rows[1], [5, 6, 7, 8, 9])
    with pytest.raises(ValueError, match="batch_size"):
        data.batchify(np.arange(5), 4)


def test_schedules_follow_the_reference_draws():
    rng = np.random.default_rng(0)
    batches = data.schedule(10_000, 35, rng)
    lengths = [b.length for b in batches[:-1]]
    assert set(lengths) == {35, 17}
    assert 0.02 < lengths.count(17) / len(lengths) < 0.09
    starts = [b.start for b in batches]
    assert starts[0] == 0 and all(
        b.start + b.length == n.start
        for b, n in zip(batches[:-1], batches[1:], strict=True))
    assert batches[-1].start + batches[-1].length <= 10_000 - 1
    scales = {round(b.lr_scale, 4) for b in batches}
    assert scales == {1.0, round(17 / 35, 4)}
    jitter = data.schedule(10_000, 35, rng, jitter=True,
                           max_seq_len_delta=20)
    lengths = [b.length for b in jitter[:-1]]
    assert min(lengths) >= 5 and max(lengths) <= 55
    assert 30 < np.mean(lengths) < 36 and len(set(lengths)) > 10


def test_search_epoch_pairs_and_padding():
    train = data.batchify(np.arange(4 * 200), 4)
    valid = data.batchify(np.arange(4 * 30) + 10_000, 4)
    epoch = data.search_epoch(train, valid, 10, seed=1, epoch=0)
    assert epoch.steps == len(epoch.lr_scales)
    elements = list(epoch.dataset.as_numpy_iterator())
    assert len(elements) == epoch.steps
    ((xt, yt), (xv, yv)) = elements[0]
    assert xt["tokens"].shape == (4, 10)
    np.testing.assert_array_equal(yt["targets"][:, :-1], xt["tokens"][:, 1:])
    assert (xt["stream"] == models.TRAIN_STREAM).all()
    assert (xv["stream"] == models.VALID_STREAM).all()
    start = 0
    for (xt, _), (xv, _) in elements:
        length = int(xt["length"][0])
        np.testing.assert_array_equal(xt["tokens"][:, :length],
                                      train[:, start:start + length])
        assert not xt["tokens"][:, length:].any()  # padding
        v_start = start % (30 - 1)
        assert int(xv["length"][0]) == min(10, 30 - 1 - v_start)
        assert xv["tokens"][0, 0] == valid[0, v_start]
        start += length
    again = data.search_epoch(train, valid, 10, seed=1, epoch=0)
    assert again.lr_scales == epoch.lr_scales
    other = data.search_epoch(train, valid, 10, seed=1, epoch=1)
    assert data.search_epoch(train, valid, 10, 1, 0, max_steps=3).steps == 3
    assert other.steps > 0
