"""Character n-gram rows: the same hashes and buckets as gensim's FastText (fastText's own), for
ASCII and non-ASCII words, every n-gram length setting, and the CSR layout of a vocabulary."""

import numpy as np
import pytest
from gensim.models.fasttext import ft_ngram_hashes

from sgns.subwords import ngram_rows, word_ngram_rows

WORDS = ["a", "the", "running", "naïve", "straße", "日本語", "ﬁnance", "😀x", "café-au-lait", "ab", "", "x" * 40, "Ωmega"]


@pytest.mark.parametrize("min_n,max_n,buckets", [(3, 6, 2_000_000), (1, 3, 1000), (2, 5, 7), (5, 5, 2**31 - 1)])
def test_ngram_rows_equal_gensims_hashes(min_n, max_n, buckets):
    offsets, rows = ngram_rows(WORDS, min_n, max_n, buckets)
    assert offsets[0] == 0 and offsets[-1] == len(rows) and len(offsets) == len(WORDS) + 1
    for i, word in enumerate(WORDS):
        assert rows[offsets[i] : offsets[i + 1]].tolist() == ft_ngram_hashes(word, min_n, max_n, buckets), word
        assert word_ngram_rows(word, min_n, max_n, buckets).tolist() == ft_ngram_hashes(word, min_n, max_n, buckets)


def test_the_ngrams_are_characters_not_bytes():
    """'<日本語>' has 5 characters (11 bytes): 3 trigrams, 2 four-grams, 1 five-gram at min_n 3, max_n 6."""
    offsets, rows = ngram_rows(["日本語"], 3, 6, 2_000_000)
    assert offsets.tolist() == [0, 6]
    assert len(np.unique(rows)) == 6
