"""A new corpus read with an earlier run's vocabulary (``init_from``), as gensim's
``build_vocab(update=True)`` and ``intersect_word2vec_format`` read one.

The new corpus is prepared with every word it has (``min_count=1``); then
- the earlier words keep their ids (0 .. V-1) and come first, whatever their counts in the new text;
- with ``data.update_vocab=true`` the new words seen at least ``min_count`` times follow, most
  frequent first (``max_vocab_size`` bounds the whole vocabulary); without it the new corpus's
  other words are dropped, as words below ``min_count`` are;
- every word's count is its earlier count plus its count in the new text (a vectors file has no
  counts: 0), and those merged counts drive subsampling and the noise distribution. gensim merges
  them the same way for its noise table, but subsamples with the new text's counts alone.
The vocabulary is then in id order, not sorted by count: the earlier words, then the new ones.
The re-encoded ids are held in memory (4 bytes a token).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from sgns.data.corpus import EncodedCorpus, PreparedCorpus, Vocabulary
from sgns.errors import check

log = logging.getLogger("sgns")


def merge_vocabulary(
    new: Vocabulary,
    words: list[str],
    counts: np.ndarray | None,
    update_vocab: bool,
    min_count: int,
    max_vocab_size: int | None,
) -> tuple[Vocabulary, np.ndarray]:
    """The earlier ``words`` (their ``counts``; None: unknown, 0) followed, with ``update_vocab``, by
    the new vocabulary's words seen ``min_count`` times that they lack; every count merged. Returns it
    and each new-vocabulary id's id in it (-1: dropped)."""
    index = {w: i for i, w in enumerate(words)}
    merged = np.zeros(len(words), dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64).copy()
    at = np.fromiter((index.get(w, -1) for w in new.words), dtype=np.int64, count=len(new))
    known = at >= 0
    merged[at[known]] += new.counts[known]
    remap = np.where(known, at, -1)
    added = np.empty(0, dtype=np.int64)
    if update_vocab:
        added = np.flatnonzero(~known & (new.counts >= min_count))  # (the new vocabulary is sorted by count)
        if max_vocab_size is not None:
            added = added[: max(0, max_vocab_size - len(words))]
        remap[added] = len(words) + np.arange(len(added))
    vocab = Vocabulary(list(words) + [new.words[i] for i in added], np.concatenate([merged, new.counts[added]]))
    log.info(
        "init_from: %s earlier words (%s of them in the new corpus) and %s new ones",
        f"{len(words):,}",
        f"{int(known.sum()):,}",
        f"{len(added):,}",
    )
    return vocab, remap


def reencode(corpus: EncodedCorpus, remap: np.ndarray) -> EncodedCorpus:
    """``corpus`` with every id mapped through ``remap``, the -1s dropped and the sentences that lose
    every token left out."""
    ids = remap.astype(np.int32)[corpus.ids]
    keep = ids >= 0
    before = np.zeros(len(ids) + 1, dtype=np.int64)  # tokens kept before each position
    np.cumsum(keep, out=before[1:])
    starts = before[corpus.starts]
    starts = starts[np.r_[np.diff(starts) > 0, True]]  # (a sentence left empty ends where the next begins)
    return EncodedCorpus(ids[keep], starts)


def continued(
    corpus: PreparedCorpus,
    words: list[str],
    counts: np.ndarray | None,
    update_vocab: bool,
    min_count: int,
    max_vocab_size: int | None,
) -> PreparedCorpus:
    """``corpus`` (prepared with every word, ``min_count=1``) read with the earlier vocabulary."""
    vocab, remap = merge_vocabulary(corpus.vocab, words, counts, update_vocab, min_count, max_vocab_size)
    train = reencode(corpus.train, remap)
    check(
        train.n_tokens >= 2,
        "the new corpus has fewer than 2 tokens of the earlier vocabulary"
        + ("" if update_vocab else ": add data.update_vocab=true to take its own words too"),
    )
    return replace(corpus, vocab=vocab, train=train, val=reencode(corpus.val, remap))
