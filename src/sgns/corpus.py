"""Corpus text -> tokens -> vocabulary -> memory-mapped token ids, cached on disk.

Preparation is two parallel passes of ``datasets.map(batched=True, num_proc=...)`` over the
source (see ``sources.py``): the first tokenises and counts (each batch returns its own word
counts, merged as they stream in, so memory holds the vocabulary, not the corpus); the second
encodes every line as int32 ids of in-vocabulary words. The ids are written to flat files in a
cache directory keyed by the source's content and every preparation setting, and are
memory-mapped for training: a second run on the same corpus starts in seconds, and a corpus
larger than RAM trains.

The vocabulary is sorted by descending count, ties in order of first appearance (gensim's
order); ``min_count`` and ``max_vocab_size`` apply before sorting is cut.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sgns.errors import Word2VecError, check
from sgns.sources import Source, default_corpus_path  # noqa: F401  (re-exported)

log = logging.getLogger("sgns")

CACHE_VERSION = 1
_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits, any script
_LETTERS = re.compile(r"[^\W\d_]+")  # runs of letters, any script


def lower_words(line: str) -> list[str]:
    """Default tokenizer: lowercase, split on anything that is not a letter or digit."""
    return _WORD.findall(line.lower())


def text8_words(line: str) -> list[str]:
    """text8-style: lowercase letters only; digits and punctuation separate words and vanish."""
    return _LETTERS.findall(line.lower())


def whitespace(line: str) -> list[str]:
    """Pre-tokenised text: split on whitespace, keep case."""
    return line.split()


def jieba_words(line: str) -> list[str]:
    """Chinese word segmentation with jieba (``pip install 'sgns-lightning[zh]'``); drops punctuation."""
    import jieba

    return [w.lower() for w in jieba.lcut(line) if _WORD.search(w)]


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "lower": lower_words, "text8": text8_words, "whitespace": whitespace, "jieba": jieba_words,
}  # fmt: skip


def check_tokenizer(name: str) -> None:
    check(name in TOKENIZERS, f"unknown tokenizer {name!r}; choose one of {sorted(TOKENIZERS)}")
    if name == "jieba":
        try:
            import jieba

            jieba.setLogLevel(logging.WARNING)
        except ImportError:
            raise Word2VecError("tokenizer=jieba needs the jieba package: pip install 'sgns-lightning[zh]'") from None


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


@dataclass(frozen=True)
class Settings:
    """Everything that changes the prepared corpus; part of the cache key."""

    tokenizer: str = "lower"
    min_count: int = 5
    max_vocab_size: int | None = None
    max_tokens: int | None = None
    val_fraction: float = 0.0
    val_max_tokens: int = 100_000
    max_sentence_length: int = 10_000
    respect_lines: bool = True
    seed: int = 0


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else $SGNS_CACHE_DIR, else ~/.cache/sgns."""
    return Path(os.path.expanduser(str(cache_dir or os.environ.get("SGNS_CACHE_DIR") or "~/.cache/sgns")))


def prepare_corpus(
    path: str | list[str] | None = None,
    tokenizer: str = "lower",
    min_count: int = 5,
    max_vocab_size: int | None = None,
    max_tokens: int | None = None,
    val_fraction: float = 0.0,
    val_max_tokens: int = 100_000,
    max_sentence_length: int = 10_000,
    seed: int = 0,
    *,
    source: Source | None = None,
    respect_lines: bool = True,
    num_proc: int | None = None,
    cache_dir: str | Path | None = None,
) -> PreparedCorpus:
    """Tokenise, count and encode a corpus (one sentence per line), or load it from the cache.

    ``max_tokens`` keeps only the first N tokens. ``val_fraction`` of the lines (at most
    ``val_max_tokens`` tokens), drawn at random with ``seed``, are held out for validation;
    the vocabulary is counted on the training lines only. ``respect_lines=False`` lets windows
    run across line ends (the corpus is one stream, cut every ``max_sentence_length`` tokens).
    """
    check_tokenizer(tokenizer)
    source = source or Source(path=path)
    settings = Settings(tokenizer, min_count, max_vocab_size, max_tokens, val_fraction, val_max_tokens,
                        max_sentence_length, respect_lines, seed if val_fraction > 0 else 0)  # fmt: skip
    key = source.key()
    dataset = None
    if key is None:  # Hub: the fingerprint of the loaded dataset is its content key
        dataset = _load(source)
        key = f"hub:{dataset._fingerprint}"
    entry = cache_root(cache_dir) / _entry_name(key, settings)
    if not (entry / "meta.json").exists():
        dataset = dataset if dataset is not None else _load(source)
        _build(dataset, settings, entry, num_proc, source.describe())
    else:
        log.info("corpus: cached preparation %s", entry)
    return _open(entry)


def _load(source: Source):
    from sgns import sources

    return sources.load(source)


def _entry_name(key: str, settings: Settings) -> str:
    text = json.dumps({"version": CACHE_VERSION, "source": key, **asdict(settings)}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


# -- the two passes (run in datasets.map worker processes) --------------------------------------
def _tokens(texts: list[str], indices: list[int], tokenizer: str, limit: tuple[int, int] | None) -> list[list[str]]:
    tokenize = TOKENIZERS[tokenizer]
    out = [tokenize(t) for t in texts]
    if limit is not None and indices[-1] >= limit[0] >= indices[0]:
        i = limit[0] - indices[0]
        out[i] = out[i][: limit[1]]
    return out


def _held_out_candidates(indices: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Lines that may be held out: a hash of (seed, line) below 2 x fraction (splitmix64)."""
    z = (indices.astype(np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % (1 << 64))) * np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(31)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(29)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < min(1.0, 2 * fraction)


def _count_batch(batch: dict[str, list], indices: list[int], tokenizer: str, limit, seed: int, fraction: float) -> dict[str, list]:
    """One row per batch: its word counts (first-appearance order) and its held-out candidates."""
    tokens = _tokens(batch["text"], indices, tokenizer, limit)
    counts: Counter[str] = Counter()
    for line in tokens:
        counts.update(line)
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    candidates = _held_out_candidates(np.asarray(indices), seed, fraction) & (lengths > 0) if fraction > 0 else lengths < 0
    return {
        "words": [list(counts)], "counts": [list(counts.values())],
        "candidates": [np.asarray(indices)[candidates].tolist()], "lengths": [lengths[candidates].tolist()],
        "lines": [int((lengths > 0).sum())],
    }  # fmt: skip


def _encode_batch(batch: dict[str, list], indices: list[int], tokenizer: str, limit, index: dict[str, int]):
    """Each line as int32 ids of its in-vocabulary tokens, in order."""
    import pyarrow as pa

    tokens = _tokens(batch["text"], indices, tokenizer, limit)
    flat = [t for line in tokens for t in line]
    ids = np.array(list(map(index.get, flat, repeat(-1))), dtype=np.int32)
    line = np.repeat(np.arange(len(tokens)), np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens)))
    known = ids >= 0
    offsets = np.zeros(len(tokens) + 1, dtype=np.int32)
    np.cumsum(np.bincount(line[known], minlength=len(tokens)), out=offsets[1:])
    return pa.table({"ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids[known]))})


def _token_limit(ds, tokenizer: str, max_tokens: int) -> tuple[int, int] | None:
    """(last line, tokens kept from it) for the first ``max_tokens`` tokens; None if the corpus is shorter."""
    total, first = 0, 0
    for batch in ds.iter(batch_size=10_000):
        for i, text in enumerate(batch["text"]):
            n = len(TOKENIZERS[tokenizer](text))
            if total + n >= max_tokens:
                return first + i, max_tokens - total
            total += n
        first += len(batch["text"])
    return None


def _auto_num_proc(ds, num_proc: int | None) -> int | None:
    if num_proc is None:  # processes pay off from a few tens of MB of text
        num_proc = min(os.cpu_count() or 1, max(1, ds.data.nbytes // (32 << 20)))
    check(isinstance(num_proc, int) and num_proc >= 1, f"data.num_proc must be null or an integer >= 1, got {num_proc!r}")
    return num_proc if num_proc > 1 else None


def _build(ds, s: Settings, entry: Path, num_proc: int | None, name: str) -> None:
    """Run both passes and write the cache entry atomically (a killed run leaves no half entry)."""
    check(ds.num_rows > 0, f"corpus is empty (no tokens found): {name}")
    limit = _token_limit(ds, s.tokenizer, s.max_tokens) if s.max_tokens else None
    if limit is not None:
        ds = ds.select(range(limit[0] + 1))
    procs = _auto_num_proc(ds, num_proc)
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "passes").mkdir(parents=True)
    try:
        common = dict(batched=True, with_indices=True, num_proc=procs, remove_columns=["text"])
        counted = ds.map(
            _count_batch, batch_size=10_000, fn_kwargs=dict(tokenizer=s.tokenizer, limit=limit, seed=s.seed, fraction=s.val_fraction),
            cache_file_name=str(tmp / "passes" / "count.arrow"), new_fingerprint=f"{entry.name}-count", desc="count words", **common,
        )  # fmt: skip
        counts: Counter[str] = Counter()
        candidates, candidate_lengths, lines = [], [], 0
        for rows in counted.iter(batch_size=16):
            for words, numbers in zip(rows["words"], rows["counts"]):
                counts.update(dict(zip(words, numbers)))
            candidates += [i for row in rows["candidates"] for i in row]
            candidate_lengths += [n for row in rows["lengths"] for n in row]
            lines += sum(rows["lines"])
        del counted
        raw_tokens = sum(counts.values())
        check(raw_tokens > 0, f"corpus is empty (no tokens found): {name}")

        val_lines = _held_out_lines(np.asarray(candidates, dtype=np.int64), np.asarray(candidate_lengths, dtype=np.int64),
                                    s.val_fraction * raw_tokens, s.val_max_tokens, s.seed)  # fmt: skip
        val_lines = val_lines[: lines - 1]  # never hold out every line
        if len(val_lines):  # the vocabulary is counted on training lines only
            held = ds.select(val_lines)
            for line in _tokens(held["text"], val_lines.tolist(), s.tokenizer, limit):
                counts.subtract(line)
        words = list(counts)
        vocab, _ = _build_vocab(words, np.fromiter(counts.values(), dtype=np.int64, count=len(words)), s.min_count, s.max_vocab_size)
        check(len(vocab) > 0, f"no word occurs at least min_count={s.min_count} times in {name} ({raw_tokens} tokens)")
        del counts, words

        encoded = ds.map(
            _encode_batch, batch_size=10_000, fn_kwargs=dict(tokenizer=s.tokenizer, limit=limit, index=vocab.index),
            cache_file_name=str(tmp / "passes" / "encode.arrow"), new_fingerprint=f"{entry.name}-encode", desc="encode", **common,
        )  # fmt: skip
        _write_ids(encoded, val_lines, s, tmp)
        del encoded
        vocab.save(tmp / "vocab.txt")
        shutil.rmtree(tmp / "passes")
        (tmp / "meta.json").write_text(json.dumps({"raw_tokens": raw_tokens, "settings": asdict(s), "source": name}))
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, entry)
        except OSError:  # another run finished the same entry first: keep theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_ids(encoded, val_lines: np.ndarray, s: Settings, out: Path) -> None:
    """Stream the encoded lines into train_ids.bin / train_starts.bin (flat, memory-mappable) and val."""
    val_set = np.sort(val_lines)
    n_train = 0
    lengths: list[np.ndarray] = []
    val_ids, val_lengths = [], []
    first = 0
    with open(out / "train_ids.bin", "wb") as ids_out:
        for table in encoded.with_format("arrow").iter(batch_size=100_000):
            column = table["ids"].combine_chunks()
            values = column.values.to_numpy()
            offsets = column.offsets.to_numpy()
            line_lengths = np.diff(offsets).astype(np.int64)
            rows = np.arange(first, first + len(line_lengths))
            is_val = np.isin(rows, val_set, assume_unique=True)
            token_is_val = np.repeat(is_val, line_lengths)
            ids_out.write(np.ascontiguousarray(values[~token_is_val], dtype=np.int32).tobytes())
            n_train += int((~token_is_val).sum())
            lengths.append(line_lengths[~is_val])
            if is_val.any():
                val_ids.append(values[token_is_val])
                val_lengths.append(line_lengths[is_val])
            first += len(line_lengths)
    _write_starts(np.concatenate(lengths), n_train, s, out / "train_starts.bin")
    np.save(out / "val_ids.npy", np.concatenate(val_ids).astype(np.int32) if val_ids else np.empty(0, np.int32))
    _write_starts(np.concatenate(val_lengths) if val_lengths else np.empty(0, np.int64), None, s, out / "val_starts.bin")


def _write_starts(lengths: np.ndarray, total: int | None, s: Settings, path: Path) -> None:
    total = int(lengths.sum()) if total is None else total
    if s.respect_lines:
        lengths = _split_long(lengths[lengths > 0], s.max_sentence_length)
        starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
    else:  # one stream, cut every max_sentence_length tokens
        starts = np.append(np.arange(0, total, s.max_sentence_length, dtype=np.int64), total)
    starts.tofile(path)


def _open(entry: Path) -> PreparedCorpus:
    """Load a cache entry: training ids and sentence starts memory-mapped, the rest in memory."""
    meta = json.loads((entry / "meta.json").read_text())

    def mapped(name: str, dtype: type) -> np.ndarray:
        path = entry / name
        return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.empty(0, dtype)

    train = EncodedCorpus(mapped("train_ids.bin", np.int32), mapped("train_starts.bin", np.int64))
    val = EncodedCorpus(np.load(entry / "val_ids.npy"), np.fromfile(entry / "val_starts.bin", dtype=np.int64))
    if len(val.starts) == 0:
        val = EncodedCorpus(val.ids, np.zeros(1, dtype=np.int64))
    return PreparedCorpus(Vocabulary.load(entry / "vocab.txt"), train, val, raw_tokens=meta["raw_tokens"])


def _held_out_lines(candidates: np.ndarray, lengths: np.ndarray, budget: float, max_tokens: int, seed: int) -> np.ndarray:
    """Candidate lines in a seeded random order, taken while their tokens fit the budget."""
    if len(candidates) == 0 or budget <= 0:
        return np.empty(0, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(candidates))
    budget = min(budget, max_tokens)
    taken = np.cumsum(lengths[order]) <= max(budget, lengths[order[0]])
    return np.sort(candidates[order[taken]])


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
