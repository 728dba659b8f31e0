"""Corpus text -> tokens -> vocabulary -> token ids, in two parallel passes, into a cache entry.

Preparation is two passes of ``datasets.map(batched=True, num_proc=...)`` over the source (see
``sources.py``): the first tokenises and counts (each batch returns its own word counts, merged
as they stream in, so memory holds the vocabulary, not the corpus); the second encodes every
line as int32 ids of in-vocabulary words. The ids go to flat files of a cache entry
(``cache.py``) keyed by the source's content and every preparation setting, memory-mapped for
training: a second run on the same corpus starts in seconds, and a corpus larger than RAM trains.
With ``data.phrases=N``, N passes before those find phrases (``phrases.py``): each counts words
and bigram candidates of the text with the earlier passes' phrases joined, and the counting and
encoding passes read the text with all of them joined.

The vocabulary is sorted by descending count, ties in order of first appearance (gensim's
order); ``min_count`` and ``max_vocab_size`` apply before sorting is cut.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgns.data.cache import (
    PHRASES_FILE,
    Settings,
    cache_root,
    damage,
    entry_name,
    fsync,
    open_entry,
    seal,
    temporary,
)
from sgns.data.corpus import PreparedCorpus, build_vocab
from sgns.data.memory import page_out, run_apart
from sgns.data.phrases import MAX_BIGRAMS, PhraseSettings, PhraseTable, count_candidates, join, score
from sgns.data.sources import Source, load
from sgns.data.tokenize import check_tokenizer, tokenize_batch
from sgns.errors import check

log = logging.getLogger("sgns")


def _split_long(lengths: np.ndarray, cap: int) -> np.ndarray:
    """Split sentences longer than ``cap`` tokens into pieces (gensim caps at 10,000)."""
    pieces = np.maximum(1, -(-lengths // cap))
    if (pieces == 1).all():
        return lengths
    out = np.full(pieces.sum(), cap, dtype=np.int64)
    last = np.cumsum(pieces) - 1
    out[last] = lengths - (pieces - 1) * cap
    return out


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
    phrases: PhraseSettings | None = None,
) -> PreparedCorpus:
    """Tokenise, count and encode a corpus (one sentence per line), or load it from the cache.

    ``max_tokens`` keeps only the first N tokens. ``val_fraction`` of the lines (at most
    ``val_max_tokens`` tokens), drawn at random with ``seed``, are held out for validation;
    the vocabulary is counted on the training lines only. ``respect_lines=False`` lets windows
    run across line ends (the corpus is one stream, cut every ``max_sentence_length`` tokens).
    ``phrases``: collocations joined into one token before counting (``phrases.py``), none by default.
    """
    check_tokenizer(tokenizer)
    source = source or Source(path=path)
    settings = Settings(
        tokenizer,
        min_count,
        max_vocab_size,
        max_tokens,
        val_fraction,
        val_max_tokens,
        max_sentence_length,
        respect_lines,
        seed if val_fraction > 0 else 0,
        phrases or PhraseSettings(),
    )
    key = source.key()
    dataset = None
    if key is None:  # Hub: the fingerprint of the loaded dataset is its content key
        dataset = load(source)
        key = f"hub:{dataset._fingerprint}"
    entry = cache_root(cache_dir) / entry_name(key, settings)
    if entry.exists() and (problem := damage(entry)):
        log.warning("corpus: cache entry %s is damaged (%s); preparing it again", entry, problem)
        shutil.rmtree(entry)
    if not entry.exists():
        run_apart(
            lambda: _build(
                dataset if dataset is not None else load(source), settings, entry, num_proc, source.describe()
            ),
            leftover=lambda pid: shutil.rmtree(temporary(entry, pid), ignore_errors=True),
        )
    else:
        log.info("corpus: cached preparation %s", entry)
    return open_entry(entry)


def _tokens(
    batch: pa.Table,
    indices: list[int],
    tokenizer: str,
    limit: tuple[int, int] | None,
    phrases: tuple[pa.Array, ...] = (),
    connectors: tuple[str, ...] = (),
) -> tuple[pa.Array, np.ndarray]:
    """A batch's flat tokens and line lengths; the line ``limit[0]`` (the last one read) keeps ``limit[1]`` tokens;
    then each pass's ``phrases`` joined in turn."""
    flat, lengths = tokenize_batch(batch["text"], tokenizer)
    page_out(batch["text"])
    if limit is not None and indices[0] <= limit[0] <= indices[-1]:
        i = limit[0] - indices[0]  # the last line of the selection: its surplus is at the very end
        surplus = int(lengths[i] - min(lengths[i], limit[1]))
        flat, lengths[i] = flat.slice(0, len(flat) - surplus), lengths[i] - surplus
    for found in phrases:
        flat, lengths = join(flat, lengths, found, connectors)
    return flat, lengths


def _held_out_candidates(indices: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Lines that may be held out: a hash of (seed, line) below 2 x fraction (splitmix64)."""
    z = (indices.astype(np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % (1 << 64))) * np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(31)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(29)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < min(1.0, 2 * fraction)


def _one_row(values: pa.Array | np.ndarray) -> pa.Array:
    """A list column with one row holding ``values``."""
    values = values if isinstance(values, pa.Array) else pa.array(values)
    return pa.ListArray.from_arrays(pa.array([0, len(values)], pa.int32()), values)


def _count_batch(
    batch: pa.Table, indices: list[int], tokenizer: str, limit, seed: int, fraction: float, phrases, connectors
) -> pa.Table:
    """One row per batch: its word counts (first-appearance order) and its held-out candidates."""
    flat, lengths = _tokens(batch, indices, tokenizer, limit, phrases, connectors)
    counts = pc.value_counts(flat)
    rows = np.asarray(indices)
    candidates = (
        _held_out_candidates(rows, seed, fraction) & (lengths > 0) if fraction > 0 else np.zeros(len(rows), bool)
    )
    return pa.table(
        {
            "words": _one_row(counts.field("values")),
            "counts": _one_row(counts.field("counts")),
            "candidates": _one_row(rows[candidates].astype(np.int64)),
            "lengths": _one_row(lengths[candidates]),
            "lines": pa.array([int((lengths > 0).sum())], pa.int64()),
        }
    )


def _phrase_count_batch(batch: pa.Table, indices: list[int], tokenizer: str, limit, phrases, connectors) -> pa.Table:
    """One row per batch: its word counts, its bigram candidates' counts and its token count (a phrase pass)."""
    flat, lengths = _tokens(batch, indices, tokenizer, limit, phrases, connectors)
    words, candidates = count_candidates(flat, lengths, connectors)
    return pa.table(
        {
            "words": _one_row(words.field("values")),
            "counts": _one_row(words.field("counts")),
            "bigrams": _one_row(candidates.field("values")),
            "bigram_counts": _one_row(candidates.field("counts")),
            "tokens": pa.array([len(flat)], pa.int64()),
        }
    )


def _encode_batch(
    batch: pa.Table, indices: list[int], tokenizer: str, limit, words: pa.Array, phrases, connectors
) -> pa.Table:
    """Each line as int32 ids of its in-vocabulary tokens, in order."""
    flat, lengths = _tokens(batch, indices, tokenizer, limit, phrases, connectors)
    ids = pc.index_in(flat, value_set=words)  # int32, null when out of vocabulary
    known = ids.is_valid().to_numpy(zero_copy_only=False)
    line = np.repeat(np.arange(len(lengths)), lengths)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(np.bincount(line[known], minlength=len(lengths)), out=offsets[1:])
    return pa.table({"ids": pa.ListArray.from_arrays(pa.array(offsets), ids.drop_null().cast(pa.int32()))})


def _token_limit(ds, tokenizer: str, max_tokens: int) -> tuple[int, int] | None:
    """(last line, tokens kept from it) for the first ``max_tokens`` tokens; None if the corpus is shorter."""
    total, first = 0, 0
    for batch in ds.with_format("arrow").iter(batch_size=10_000):
        lengths = tokenize_batch(batch["text"], tokenizer)[1]
        reached = np.flatnonzero(total + np.cumsum(lengths) >= max_tokens)
        if len(reached):
            i = int(reached[0])
            return first + i, max_tokens - total - int(lengths[:i].sum())
        total += int(lengths.sum())
        first += len(lengths)
    return None


class _CountMerger:
    """Sums per-batch word counts with Arrow's group-by (first appearance order kept). Beyond ``most``
    entries, those counted fewer than ``min_reduce`` times are dropped and ``min_reduce`` rises by
    one, as gensim's Phrases prunes its counts (memory stays bounded; counts of what stays may be low)."""

    def __init__(self, flush_at: int = 2_000_000, most: int | None = None) -> None:
        self._table = pa.table({"w": pa.array([], pa.string()), "c": pa.array([], pa.int64())})
        self._pending: list[pa.Table] = []
        self._pending_rows, self.flush_at = 0, flush_at
        self.most, self.min_reduce = most, 1

    def add(self, words: pa.Array, counts: pa.Array) -> None:
        self._pending.append(pa.table({"w": words, "c": counts.cast(pa.int64())}))
        self._pending_rows += len(words)
        if self._pending_rows >= self.flush_at:
            self._flush()

    def _flush(self) -> None:
        merged = pa.concat_tables([self._table, *self._pending])
        self._table = merged.group_by("w", use_threads=False).aggregate([("c", "sum")]).rename_columns(["w", "c"])
        self._pending, self._pending_rows = [], 0
        if self.most is not None and len(self._table) > self.most:
            self._table = self._table.filter(pc.greater_equal(self._table["c"], self.min_reduce))
            log.warning(
                "phrases: more than %s bigrams counted; dropped those seen fewer than %d times",
                f"{self.most:,}",
                self.min_reduce,
            )
            self.min_reduce += 1

    @property
    def table(self) -> pa.Table:
        if self._pending:
            self._flush()
        return self._table


def _auto_num_proc(ds, num_proc: int | None) -> int | None:
    if num_proc is None:  # processes pay off from a few tens of MB of text
        num_proc = min(os.cpu_count() or 1, max(1, ds.data.nbytes // (32 << 20)))
    check(
        isinstance(num_proc, int) and num_proc >= 1, f"data.num_proc must be null or an integer >= 1, got {num_proc!r}"
    )
    return num_proc if num_proc > 1 else None


def _build(ds, s: Settings, entry: Path, num_proc: int | None, name: str) -> None:
    """Run both passes and write the cache entry atomically (a killed run leaves no half entry)."""
    check(ds.num_rows > 0, f"corpus is empty (no tokens found): {name}")
    limit = _token_limit(ds, s.tokenizer, s.max_tokens) if s.max_tokens else None
    if limit is not None:
        ds = ds.select(range(limit[0] + 1))
    procs = _auto_num_proc(ds, num_proc)
    tmp = temporary(entry, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "passes").mkdir(parents=True)
    try:
        ds = ds.with_format("arrow")  # map functions get and return pyarrow tables
        common = dict(batched=True, with_indices=True, num_proc=procs, remove_columns=["text"])
        found = _find_phrases(ds, s, limit, common, tmp, entry)
        joins = dict(phrases=tuple(keys for keys, _, _ in found), connectors=s.phrases.connectors)
        counted = ds.map(
            _count_batch,
            batch_size=10_000,
            fn_kwargs=dict(tokenizer=s.tokenizer, limit=limit, seed=s.seed, fraction=s.val_fraction, **joins),
            cache_file_name=str(tmp / "passes" / "count.arrow"),
            new_fingerprint=f"{entry.name}-count",
            desc="count words",
            writer_batch_size=4,
            **common,  # each output row holds a whole batch's counts: flush them often
        )
        merger, candidates, candidate_lengths, lines = _CountMerger(), [], [], 0
        for rows in _read_batches(counted):
            merger.add(pc.list_flatten(rows["words"]), pc.list_flatten(rows["counts"]))
            candidates.append(pc.list_flatten(rows["candidates"]).to_numpy())
            candidate_lengths.append(pc.list_flatten(rows["lengths"]).to_numpy())
            lines += pc.sum(rows["lines"]).as_py() or 0
        del counted
        words, counts = merger.table["w"].combine_chunks(), merger.table["c"].to_numpy().copy()
        raw_tokens = int(counts.sum())
        check(raw_tokens > 0, f"corpus is empty (no tokens found): {name}")

        val_lines = _held_out_lines(
            np.concatenate(candidates),
            np.concatenate(candidate_lengths),
            s.val_fraction * raw_tokens,
            s.val_max_tokens,
            s.seed,
        )
        val_lines = val_lines[: lines - 1]  # never hold out every line
        if len(val_lines):  # the vocabulary is counted on training lines only
            held = ds.select(val_lines).with_format("arrow")[:]
            flat, _ = _tokens(held, val_lines.tolist(), s.tokenizer, limit, **joins)
            held_counts = pc.value_counts(flat)
            at = pc.index_in(held_counts.field("values"), value_set=words).to_numpy()
            np.subtract.at(counts, at, held_counts.field("counts").to_numpy())
        vocab, _ = build_vocab(words, counts, s.min_count, s.max_vocab_size)
        check(len(vocab) > 0, f"no word occurs at least min_count={s.min_count} times in {name} ({raw_tokens} tokens)")
        del merger, words, counts
        pa.default_memory_pool().release_unused()  # the encode workers fork from this process

        encoded = ds.map(
            _encode_batch,
            batch_size=10_000,
            fn_kwargs=dict(tokenizer=s.tokenizer, limit=limit, words=pa.array(vocab.words, pa.string()), **joins),
            cache_file_name=str(tmp / "passes" / "encode.arrow"),
            new_fingerprint=f"{entry.name}-encode",
            desc="encode",
            **common,
        )
        _write_ids(encoded, val_lines, s, tmp)
        del encoded
        vocab.save(tmp / "vocab.txt")
        if s.phrases.passes:
            PhraseTable.from_passes(found).save(tmp / PHRASES_FILE)
        shutil.rmtree(tmp / "passes")
        seal(tmp, {"raw_tokens": raw_tokens, "settings": asdict(s), "source": name})
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, entry)
            fsync(entry.parent)
        except OSError:  # another run finished the same entry first: keep theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        pa.default_memory_pool().release_unused()  # Arrow's pool keeps freed batches (about 50 MB per 10M tokens)


def _find_phrases(ds, s: Settings, limit, common: dict, tmp: Path, entry: Path) -> list:
    """``data.phrases`` passes, each over the text with the earlier passes' phrases joined: every
    pass's phrases (keys, scores, counts; ``phrases.score``)."""
    found = []
    for n in range(1, s.phrases.passes + 1):
        counted = ds.map(
            _phrase_count_batch,
            batch_size=10_000,
            fn_kwargs=dict(
                tokenizer=s.tokenizer,
                limit=limit,
                phrases=tuple(keys for keys, _, _ in found),
                connectors=s.phrases.connectors,
            ),
            cache_file_name=str(tmp / "passes" / f"phrases-{n}.arrow"),
            new_fingerprint=f"{entry.name}-phrases-{n}",
            desc=f"phrases, pass {n}",
            writer_batch_size=4,
            **common,
        )
        words, bigrams, tokens = _CountMerger(), _CountMerger(flush_at=10_000_000, most=MAX_BIGRAMS), 0
        for rows in _read_batches(counted):
            words.add(pc.list_flatten(rows["words"]), pc.list_flatten(rows["counts"]))
            bigrams.add(pc.list_flatten(rows["bigrams"]), pc.list_flatten(rows["bigram_counts"]))
            tokens += pc.sum(rows["tokens"]).as_py() or 0
        del counted
        keys, scores, counts = score(
            bigrams.table["w"].combine_chunks(),
            bigrams.table["c"].to_numpy(),
            words.table["w"].combine_chunks(),
            words.table["c"].to_numpy(),
            tokens,
            s.phrases,
        )
        log.info("phrases, pass %d: %s phrases from %s bigrams", n, f"{len(keys):,}", f"{len(bigrams.table):,}")
        found.append((keys, scores, counts))
        del words, bigrams
    return found


class _StartsWriter:
    """Sentence start offsets, appended batch by batch to a flat int64 file (memory stays flat)."""

    def __init__(self, path: Path, s: Settings):
        self.out, self.s, self.total = open(path, "wb"), s, 0

    def add(self, lengths: np.ndarray) -> None:
        if self.s.respect_lines:
            lengths = _split_long(lengths[lengths > 0], self.s.max_sentence_length)
            (self.total + np.cumsum(lengths) - lengths).astype(np.int64).tofile(self.out)
        self.total += int(lengths.sum())

    def close(self) -> None:
        if not self.s.respect_lines:  # one stream, cut every max_sentence_length tokens
            np.arange(0, self.total, self.s.max_sentence_length, dtype=np.int64).tofile(self.out)
        np.array([self.total], dtype=np.int64).tofile(self.out)
        self.out.close()


def _read_batches(dataset) -> Iterator[pa.RecordBatch]:
    """The dataset's Arrow files read as streams, batch by batch: unlike iterating the
    memory-mapped dataset, pages read are not kept resident in this process."""
    for cache in dataset.cache_files:
        with pa.OSFile(cache["filename"]) as source:
            yield from pa.ipc.open_stream(source)


def _write_ids(encoded, val_lines: np.ndarray, s: Settings, out: Path) -> None:
    """Stream the encoded lines into train_ids.bin / train_starts.bin (flat, memory-mappable) and val."""
    val_set = np.sort(val_lines)
    train_starts, val_starts = _StartsWriter(out / "train_starts.bin", s), _StartsWriter(out / "val_starts.bin", s)
    val_ids = []
    first = 0
    with open(out / "train_ids.bin", "wb") as ids_out:
        for table in _read_batches(encoded):
            column = table.column("ids")
            values = column.values.to_numpy()
            line_lengths = np.diff(column.offsets.to_numpy()).astype(np.int64)
            is_val = np.isin(np.arange(first, first + len(line_lengths)), val_set, assume_unique=True)
            token_is_val = np.repeat(is_val, line_lengths)
            values[~token_is_val].astype(np.int32).tofile(ids_out)
            train_starts.add(line_lengths[~is_val])
            if is_val.any():
                val_ids.append(values[token_is_val])
                val_starts.add(line_lengths[is_val])
            first += len(line_lengths)
    train_starts.close()
    val_starts.close()
    np.save(out / "val_ids.npy", np.concatenate(val_ids).astype(np.int32) if val_ids else np.empty(0, np.int32))


def _held_out_lines(
    candidates: np.ndarray, lengths: np.ndarray, budget: float, max_tokens: int, seed: int
) -> np.ndarray:
    """Candidate lines in a seeded random order, taken while their tokens fit the budget."""
    if len(candidates) == 0 or budget <= 0:
        return np.empty(0, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(candidates))
    budget = min(budget, max_tokens)
    taken = np.cumsum(lengths[order]) <= max(budget, lengths[order[0]])
    return np.sort(candidates[order[taken]])
