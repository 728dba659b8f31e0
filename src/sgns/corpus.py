"""Corpus text -> tokens -> vocabulary -> compact token ids.

One pass over the text assigns every distinct token a provisional id (a dict lookup done
by C code through ``map``), so memory holds one int32 per token plus the distinct words.
The vocabulary is then built from counts (``min_count``, ``max_vocab_size``, descending
count with ties in order of first appearance) and provisional ids are remapped with one
numpy gather.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
from array import array
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO

import numpy as np

from sgns.errors import Word2VecError, check

_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits, any script


def lower_words(line: str) -> list[str]:
    """Default tokenizer: lowercase, split on anything that is not a letter or digit."""
    return _WORD.findall(line.lower())


def whitespace(line: str) -> list[str]:
    """Pre-tokenised text: split on whitespace, keep case."""
    return line.split()


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"lower": lower_words, "whitespace": whitespace}


def default_corpus_path() -> Path:
    """The Lee background news corpus (299 documents, ~60k words) shipped inside gensim."""
    import gensim

    return Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"


def open_text(path: str | Path) -> TextIO:
    """Open a UTF-8 text file, transparently decompressing .gz/.bz2/.xz.

    Bytes that are not UTF-8 are replaced (U+FFFD), so a stray Latin-1 byte costs one token,
    not the run; a file with NUL bytes in its first 64 KiB is refused as binary.
    """
    path = Path(path)
    check(path.exists(), f"corpus file not found: {path}")
    check(not path.is_dir(), f"corpus path is a directory, not a file: {path}")
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix, open)
    try:
        with opener(path, "rb") as raw:
            head = raw.read(1 << 16)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise Word2VecError(f"cannot read corpus {path}: {exc}") from None
    check(b"\0" not in head, f"corpus {path} looks like a binary file (NUL bytes), not text")
    return opener(path, "rt", encoding="utf-8", errors="replace")


def read_lines(path: str | Path) -> Iterator[str]:
    with open_text(path) as handle:
        try:
            yield from handle
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise Word2VecError(f"cannot read corpus {path}: {exc}") from exc


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
    raw_tokens: int  # tokens read, before min_count and the held-out split


def _split_long(lengths: np.ndarray, cap: int) -> np.ndarray:
    """Split sentences longer than ``cap`` tokens into pieces (gensim caps at 10,000)."""
    pieces = np.maximum(1, -(-lengths // cap))
    if (pieces == 1).all():
        return lengths
    out = np.full(pieces.sum(), cap, dtype=np.int64)
    last = np.cumsum(pieces) - 1
    out[last] = lengths - (pieces - 1) * cap
    return out


def _encode(ids: np.ndarray, lengths: np.ndarray, remap: np.ndarray, cap: int) -> EncodedCorpus:
    """Map provisional ids to vocabulary ids, drop out-of-vocabulary tokens, rebuild sentences."""
    mapped = remap[ids]
    keep = mapped >= 0
    sentence = np.repeat(np.arange(len(lengths)), lengths)[keep]
    new_lengths = np.bincount(sentence, minlength=len(lengths))
    new_lengths = _split_long(new_lengths[new_lengths > 0], cap)
    starts = np.zeros(len(new_lengths) + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=starts[1:])
    return EncodedCorpus(mapped[keep].astype(np.int32), starts)


def prepare_corpus(
    path: str | Path | None = None,
    tokenizer: str = "lower",
    min_count: int = 5,
    max_vocab_size: int | None = None,
    max_tokens: int | None = None,
    val_fraction: float = 0.0,
    val_max_tokens: int = 100_000,
    max_sentence_length: int = 10_000,
    seed: int = 0,
) -> PreparedCorpus:
    """Read, tokenise, count and encode a corpus; one sentence per line.

    ``max_tokens`` keeps only the first N tokens. ``val_fraction`` of the lines (at most
    ``val_max_tokens`` tokens), drawn at random with ``seed``, are held out for validation;
    the vocabulary is counted on the training lines only.
    """
    check(tokenizer in TOKENIZERS, f"unknown tokenizer {tokenizer!r}; choose one of {sorted(TOKENIZERS)}")
    path = default_corpus_path() if path in (None, "") else Path(path)
    tokenize = TOKENIZERS[tokenizer]
    provisional: defaultdict[str, int] = defaultdict()
    provisional.default_factory = provisional.__len__  # unseen word -> next id
    lookup = provisional.__getitem__
    ids, lengths = array("i"), array("q")
    total = 0
    for line in read_lines(path):
        tokens = tokenize(line)
        if max_tokens is not None and total + len(tokens) > max_tokens:
            tokens = tokens[: max_tokens - total]
        if tokens:
            ids.extend(map(lookup, tokens))
            lengths.append(len(tokens))
            total += len(tokens)
        if max_tokens is not None and total >= max_tokens:
            break
    check(total > 0, f"corpus is empty (no tokens found): {path}")
    ids_np = np.frombuffer(ids, dtype=np.int32)
    lengths_np = np.frombuffer(lengths, dtype=np.int64)

    is_val = _held_out_lines(lengths_np, val_fraction, val_max_tokens, seed)
    token_is_val = np.repeat(is_val, lengths_np)
    counts = np.bincount(ids_np[~token_is_val], minlength=len(provisional)).astype(np.int64)
    vocab, remap = _build_vocab(list(provisional), counts, min_count, max_vocab_size)
    check(len(vocab) > 0, f"no word occurs at least min_count={min_count} times in {path} ({total} tokens)")
    train = _encode(ids_np[~token_is_val], lengths_np[~is_val], remap, max_sentence_length)
    val = _encode(ids_np[token_is_val], lengths_np[is_val], remap, max_sentence_length)
    return PreparedCorpus(vocab, train, val, raw_tokens=total)


def _held_out_lines(lengths: np.ndarray, fraction: float, max_tokens: int, seed: int) -> np.ndarray:
    is_val = np.zeros(len(lengths), dtype=bool)
    if fraction <= 0 or len(lengths) < 2:
        return is_val
    order = np.random.default_rng(seed).permutation(len(lengths))
    budget = min(fraction * lengths.sum(), max_tokens)
    taken = np.cumsum(lengths[order]) <= max(budget, lengths[order[0]])
    taken[-1] = False  # never hold out every line
    is_val[order[taken]] = True
    return is_val


def _build_vocab(
    words: list[str], counts: np.ndarray, min_count: int, max_vocab_size: int | None
) -> tuple[Vocabulary, np.ndarray]:
    """Keep words with count >= min_count (then the max_vocab_size most frequent), sorted."""
    kept = np.flatnonzero(counts >= min_count)
    kept = kept[np.argsort(-counts[kept], kind="stable")]  # ties: first appearance first
    if max_vocab_size is not None:
        kept = kept[:max_vocab_size]
    remap = np.full(len(words), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    return Vocabulary([words[i] for i in kept], counts[kept]), remap
