"""A prepared corpus: the vocabulary and the token ids of the training and held-out lines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from sgns.errors import check

if TYPE_CHECKING:
    from sgns.data.phrases import PhraseTable


@dataclass
class Vocabulary:
    """Words sorted by descending count; index 0 is the most frequent word."""

    words: list[str]
    counts: np.ndarray  # int64, same order as words

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def save(self, path: str | Path) -> None:
        """Write ``word count`` lines, the C tool's ``-save-vocab`` format."""
        with open(path, "w", encoding="utf-8") as out:
            out.writelines(f"{w} {c}\n" for w, c in zip(self.words, self.counts.tolist()))

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        words, counts = [], []
        with open(path, encoding="utf-8") as handle:
            for n, line in enumerate(handle, 1):
                parts = line.split()
                check(len(parts) == 2 and parts[1].isdigit(), f"{path}:{n}: expected 'word count'")
                words.append(parts[0])
                counts.append(int(parts[1]))
        return cls(words, np.asarray(counts, dtype=np.int64))


def build_vocab(
    words: pa.Array | list[str], counts: np.ndarray, min_count: int, max_vocab_size: int | None
) -> tuple[Vocabulary, np.ndarray]:
    """Keep words with count >= min_count (then the max_vocab_size most frequent), sorted."""
    kept = np.flatnonzero(counts >= min_count)
    kept = kept[np.argsort(-counts[kept], kind="stable")]  # ties: first appearance first
    if max_vocab_size is not None:
        kept = kept[:max_vocab_size]
    remap = np.full(len(words), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    kept_words = words.take(pa.array(kept)).to_pylist() if isinstance(words, pa.Array) else [words[i] for i in kept]
    return Vocabulary(kept_words, counts[kept]), remap


@dataclass
class EncodedCorpus:
    """Token ids of in-vocabulary words and the sentence boundaries around them."""

    ids: np.ndarray  # int32 [n_tokens]
    starts: np.ndarray  # int64 [n_sentences + 1], offsets into ids; starts[-1] == len(ids)

    @property
    def n_tokens(self) -> int:
        return len(self.ids)


@dataclass
class PreparedCorpus:
    vocab: Vocabulary
    train: EncodedCorpus
    val: EncodedCorpus
    raw_tokens: int  # tokens read (a joined phrase counting as one), before min_count and the held-out split
    phrases: PhraseTable | None = None  # the phrases joined before counting (data.phrases > 0)
