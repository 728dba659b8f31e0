"""Tokenizers: lines of text to words, as Arrow kernels over whole batches of lines."""

from __future__ import annotations

import logging
import re
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgns.errors import Word2VecError, check

_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits, any script (jieba's filter)


_SPLIT = {"lower": r"[^\p{L}\p{N}]+", "text8": r"[^\p{L}]+"}  # RE2: what separates words


def _jieba_lists(texts: list[str | None]) -> pa.Array:
    import jieba

    return pa.array(
        [[w.lower() for w in jieba.lcut(t) if _WORD.search(w)] if t else [] for t in texts], pa.list_(pa.string())
    )


def tokenize_batch(texts: pa.Array | pa.ChunkedArray, tokenizer: str) -> tuple[pa.Array, np.ndarray]:
    """The tokens of a batch of lines, flat, and each line's token count; Arrow kernels, no Python loop.

    lower: lowercase, words are runs of letters and digits (any script); text8: lowercase letters
    only; whitespace: split on whitespace, keep case; jieba: Chinese word segmentation.
    """
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if tokenizer == "jieba":
        lists = _jieba_lists(texts.to_pylist())
    elif tokenizer == "whitespace":
        # a line may begin with U+FEFF, the byte-order mark Windows editors put first: not part of a word
        lists = pc.utf8_split_whitespace(pc.utf8_ltrim(texts, characters="\ufeff"))
    else:
        lists = pc.split_pattern_regex(pc.utf8_lower(texts), _SPLIT[tokenizer])
    flat = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy()
    nonempty = pc.not_equal(flat, "")  # splitting leaves "" at the line's ends
    flat = flat.filter(nonempty)
    lengths = np.bincount(parents[nonempty.to_numpy(zero_copy_only=False)], minlength=len(texts)).astype(np.int64)
    return flat, lengths


def _one_line(tokenizer: str) -> Callable[[str], list[str]]:
    def tokenize(line: str) -> list[str]:
        return tokenize_batch(pa.array([line], pa.string()), tokenizer)[0].to_pylist()

    tokenize.__name__ = f"{tokenizer}_tokens"
    return tokenize


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    name: _one_line(name) for name in ("lower", "text8", "whitespace", "jieba")
}


def check_tokenizer(name: str) -> None:
    check(name in TOKENIZERS, f"unknown tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}")
    if name == "jieba":
        try:
            import jieba

            jieba.setLogLevel(logging.WARNING)
        except ImportError:
            raise Word2VecError("tokenizer=jieba needs the jieba package: pip install 'sgns-lightning[zh]'") from None
