"""Word-level corpora: Penn Treebank files and an offline English corpus.

**Penn Treebank** (``--dataset=ptb``): Mikolov's preprocessed files
``ptb.train.txt``, ``ptb.valid.txt`` and ``ptb.test.txt`` in ``--data_dir``
(lower-case words, numbers as ``N``, rare words as ``<unk>``: a closed
10,000-word vocabulary). Every line's words plus ``<eos>``; the dictionary
takes words in order of first appearance over train, valid, test, as the
reference ``rnn/data.py`` ``Corpus`` does.

**Offline corpus** (``--dataset=pydoc``): the English prose of Python's
own help topics, ``pydoc_data.topics.topics``, which ships with every
CPython installation (no download, no system package: the quick start runs
on a fresh machine and in CI). About 8,300 lines and 66,000 words (3,300
distinct) of technical English; tokenised like PTB (lower case, words with
an inner apostrophe kept, every number as ``N``, punctuation dropped), one
sentence-like unit per non-empty line plus ``<eos>``. The split is
deterministic: topics in sorted order, and of every 20 lines 18 go to
train, 1 to valid, 1 to test (so all three see every topic). The
vocabulary is the ``vocab_size - 2`` most frequent training words (ties by
spelling) plus ``<unk>`` and ``<eos>``. Chosen over Debian's ``fortunes``
(needs ``apt-get``) and over the standard library's sources (code, not
language): it is real English prose that every install has.

No TensorFlow import.
"""

from __future__ import annotations

import collections
import os
import re
from typing import NamedTuple

import numpy as np

from tf_amended_darts.nn.validate import invalid

DATASETS = ("ptb", "pydoc")
PTB_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
EOS = "<eos>"
UNK = "<unk>"
PTB_VOCAB_SIZE = 10000  # Mikolov's PTB vocabulary, <unk> and <eos> included
SPLIT_BLOCK = 20  # pydoc: of every 20 lines, 18 train, 1 valid, 1 test
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+(?:[.,][0-9]+)*")


class Corpus(NamedTuple):
    """A tokenised corpus.

    Attributes:
        train: int32 token ids of the training split.
        valid: int32 ids of the validation split.
        test: int32 ids of the test split.
        vocab: the words, index = id.
        name: where it comes from (``ptb``, ``pydoc``).
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    vocab: tuple
    name: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


class MissingCorpusError(FileNotFoundError):
    """The Penn Treebank files are not where ``--data_dir`` says."""


def _lines_of(path):
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            yield line.split() + [EOS]


def read_ptb(data_dir) -> Corpus:
    """Reads ``ptb.{train,valid,test}.txt`` from ``data_dir``.

    Raises:
        MissingCorpusError: one line naming the files expected, where, and
            where to get them.
    """
    paths = [os.path.join(data_dir or "", name) for name in PTB_FILES]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not data_dir or missing:
        raise MissingCorpusError(
            f"Penn Treebank not found: --data_dir={data_dir!r} must hold "
            f"{', '.join(PTB_FILES)} (Mikolov's preprocessed PTB: folder "
            f"data/ of {PTB_URL}); or use --dataset=pydoc (offline corpus)."
        )
    index, words, splits = {}, [], []
    for path in paths:
        ids = []
        for line in _lines_of(path):
            for word in line:
                if word not in index:
                    index[word] = len(words)
                    words.append(word)
                ids.append(index[word])
        splits.append(np.asarray(ids, np.int32))
    return Corpus(*splits, vocab=tuple(words), name="ptb")


def tokenize(line: str) -> list[str]:
    """PTB-like tokens of a line: lower-case words, numbers as ``N``."""
    return [
        "N" if word[0].isdigit() else word
        for word in _TOKEN.findall(line.lower())
    ]


def pydoc_lines() -> list[list[str]]:
    """Token lines of Python's help topics, in sorted-topic order."""
    from pydoc_data.topics import topics

    lines = []
    for key in sorted(topics):
        for line in topics[key].splitlines():
            tokens = tokenize(line)
            if tokens:
                lines.append(tokens)
    return lines


def split_lines(lines, block=SPLIT_BLOCK):
    """``(train, valid, test)``: per ``block`` lines, all but 2 / 1 / 1."""
    splits = ([], [], [])
    for k, line in enumerate(lines):
        position = block - 1 - k % block  # 1: valid, 0: test
        splits[{1: 1, 0: 2}.get(position, 0)].append(line)
    return splits


def build_vocab(lines, vocab_size) -> tuple:
    """``<unk>``, ``<eos>`` and the most frequent words (ties: spelling)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise invalid("vocab_size", "an integer >= 3", vocab_size)
    if vocab_size < 3:
        raise invalid("vocab_size", "an integer >= 3", vocab_size)
    counts = collections.Counter(w for line in lines for w in line)
    counts.pop(UNK, None)
    counts.pop(EOS, None)
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    return (UNK, EOS) + tuple(ranked[: vocab_size - 2])


def encode(lines, vocab) -> np.ndarray:
    """Token ids of lines (``<eos>`` after each; unknown words ``<unk>``)."""
    index = {w: i for i, w in enumerate(vocab)}
    unk = index[UNK]
    ids = []
    for line in lines:
        ids.extend(index.get(w, unk) for w in line)
        ids.append(index[EOS])
    return np.asarray(ids, np.int32)


def pydoc_corpus(vocab_size=PTB_VOCAB_SIZE) -> Corpus:
    """The offline corpus (module docstring), vocabulary capped."""
    train, valid, test = split_lines(pydoc_lines())
    vocab = build_vocab(train, vocab_size)
    return Corpus(
        encode(train, vocab), encode(valid, vocab), encode(test, vocab),
        vocab=vocab, name="pydoc",
    )


def load(dataset, data_dir=None, vocab_size=PTB_VOCAB_SIZE) -> Corpus:
    """The corpus of ``--dataset``.

    Args:
        dataset: ``ptb`` (files in ``data_dir``) or ``pydoc`` (offline).
        data_dir: the PTB directory.
        vocab_size: the offline corpus's vocabulary cap (PTB's is fixed).

    Raises:
        ValueError: for an unknown dataset.
        MissingCorpusError: for PTB files that are not there.
    """
    if dataset == "ptb":
        return read_ptb(data_dir)
    if dataset == "pydoc":
        return pydoc_corpus(vocab_size)
    raise ValueError(
        f"Invalid --dataset={dataset!r} for --task=ptb. Accepted values: "
        f"{', '.join(DATASETS)}."
    )
