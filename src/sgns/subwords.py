"""Character n-grams of words and their hashed rows, exactly as fastText and gensim's ``FastText``.

A word w is read as ``<w>`` (``<`` and ``>`` mark its ends); its n-grams are the runs of
``min_n``..``max_n`` characters (not bytes: a character is a UTF-8 lead byte and its continuation
bytes), and each n-gram's row is FNV-1a of its UTF-8 bytes, taken as *signed* chars as fastText's
C++ does, modulo ``buckets``. The same words give the same rows as gensim's ``ft_ngram_hashes``,
so the bucket tables of the two agree row for row.

``ngram_rows`` does it for a whole vocabulary at once, vectorised in numpy (no per-word Python),
and returns the rows as CSR: word i's n-gram rows are ``rows[offsets[i]:offsets[i + 1]]``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

FNV_OFFSET, FNV_PRIME = np.uint32(2166136261), np.uint32(16777619)


def ngram_rows(
    words: Sequence[str], min_n: int = 3, max_n: int = 6, buckets: int = 2_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [V + 1] int64, rows [total] int64): each word's n-gram rows, in gensim's order
    (by start character, then by length)."""
    encoded = [_utf8(f"<{w}>") for w in words]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    text = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    # every character's first byte (continuation bytes are 10xxxxxx), then the end of the text
    char_start = np.append(np.flatnonzero((text & 0xC0) != 0x80), len(text))
    word_start = np.concatenate([[0], np.cumsum(lengths)])
    chars = np.diff(np.searchsorted(char_start, word_start))  # [V] characters of each <w>
    char_word = np.repeat(np.arange(len(words)), chars)  # [C] the word of every character
    char_end = np.repeat(np.searchsorted(char_start, word_start[1:]), chars)  # [C] its word's end (char index)
    first = np.arange(len(char_word))
    starts, sizes = [], []
    for n in range(min_n, max_n + 1):
        ok = first + n <= char_end
        if n == 1:  # fastText skips the lone boundary markers
            ok &= (first != np.repeat(np.searchsorted(char_start, word_start[:-1]), chars)) & (first + 1 != char_end)
        starts.append(first[ok])
        sizes.append(np.full(int(ok.sum()), n))
    start, size = np.concatenate(starts), np.concatenate(sizes)
    order = np.lexsort((size, start))  # gensim's order: by start character, then by length
    start, size = start[order], size[order]
    lo, hi = char_start[start], char_start[start + size]  # byte ranges
    hashes = np.full(len(lo), FNV_OFFSET, dtype=np.uint32)
    signed = text.astype(np.int8).astype(np.int32).astype(np.uint32)  # char -> uint32 as C++ sign-extends it
    for j in range(int((hi - lo).max()) if len(lo) else 0):
        live = lo + j < hi
        byte = signed[np.minimum(lo + j, len(text) - 1)]
        hashes = np.where(live, (hashes ^ byte) * FNV_PRIME, hashes)
    counts = np.bincount(char_word[start], minlength=len(words))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return offsets, (hashes % np.uint32(buckets)).astype(np.int64)


def _utf8(word: str) -> bytes:
    """A word's bytes: a word typed on the command line that is not valid UTF-8 (``caf\\xe9\\xff``)
    reaches Python with its bytes as surrogates, and fastText hashes those bytes."""
    try:
        return word.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate of another kind (from JSON's \\ud800)
        return word.encode("utf-8", "surrogatepass")


def word_ngram_rows(word: str, min_n: int, max_n: int, buckets: int) -> np.ndarray:
    """One word's n-gram rows (for a word outside the vocabulary)."""
    return ngram_rows([word], min_n, max_n, buckets)[1]


def mean_vectors(
    word_rows: torch.Tensor, ngram_table: torch.Tensor, rows: torch.Tensor, count: torch.Tensor
) -> torch.Tensor:
    """Each word's vector [N, d]: the mean of its own row (``word_rows`` [N, d]) and its n-gram rows,
    ``count`` [N] of them, flat in ``rows`` [E] (one ``embedding_bag``, no [E, d] temporary)."""
    sums = F.embedding_bag(rows, ngram_table, torch.cumsum(count, 0) - count, mode="sum")
    return (sums + word_rows) / (count + 1).unsqueeze(1).to(sums.dtype)
