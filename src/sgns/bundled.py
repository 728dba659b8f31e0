"""Files that ship inside the gensim wheel (``gensim/test/test_data``), so that training and
evaluation work offline: the default corpus (Lee) and the benchmarks."""

from __future__ import annotations

from pathlib import Path


def gensim_test_file(name: str) -> Path:
    """A file of ``gensim/test/test_data``: ``lee_background.cor``, ``questions-words.txt``, ``wordsim353.tsv``, ..."""
    import gensim

    return Path(gensim.__file__).parent / "test" / "test_data" / name


DEFAULT_CORPUS = "lee_background.cor"  # the Lee background news corpus: 299 documents, ~60k words
BENCHMARKS = {"analogy": "questions-words.txt", "ws353": "wordsim353.tsv", "simlex": "simlex999.txt"}
