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

import ctypes
import hashlib
import json
import logging
import mmap
import multiprocessing
import os
import re
import shutil
import signal
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgns.errors import Word2VecError, check
from sgns.sources import Source, default_corpus_path  # noqa: F401  (re-exported)

log = logging.getLogger("sgns")

CACHE_VERSION = 3
_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits, any script (jieba's filter)
_SPLIT = {"lower": r"[^\p{L}\p{N}]+", "text8": r"[^\p{L}]+"}  # RE2: what separates words


def _jieba_lists(texts: list[str | None]) -> pa.Array:
    import jieba

    return pa.array([[w.lower() for w in jieba.lcut(t) if _WORD.search(w)] if t else [] for t in texts], pa.list_(pa.string()))


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
        lists = pc.utf8_split_whitespace(texts)
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


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {name: _one_line(name) for name in ("lower", "text8", "whitespace", "jieba")}


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
    if entry.exists() and (damage := _damage(entry)):
        log.warning("corpus: cache entry %s is damaged (%s); preparing it again", entry, damage)
        shutil.rmtree(entry)
    if not entry.exists():
        _apart(lambda: _build(dataset if dataset is not None else _load(source), settings, entry, num_proc, source.describe()),
               leftover=lambda pid: shutil.rmtree(_temporary(entry, pid), ignore_errors=True))
    else:
        log.info("corpus: cached preparation %s", entry)
    return _open(entry)


def _apart(work: Callable[[], None], leftover: Callable[[int], None] = lambda pid: None) -> None:
    """Run ``work`` in a forked child process (on Linux; elsewhere here), re-raising its error.

    Preparation imports much of ``datasets`` and fills Arrow's memory pool; done apart, all of
    that goes back to the system when the child ends, and training starts from the import floor
    plus what it needs (the cache entry is on disk, memory-mapped by the parent). The child and
    its ``datasets.map`` workers form their own process group, outside the terminal's: Ctrl-C
    reaches the parent alone, which ends the whole group and calls ``leftover(child pid)`` to
    remove what the child left half-written, then stops with KeyboardInterrupt.
    """
    if not sys.platform.startswith("linux"):
        return work()
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        os.setpgid(0, 0)
        try:
            work()
            error = None
        except BaseException as exc:  # noqa: BLE001 (handed to the parent, which raises it)
            error = exc
        try:
            send.send(error)
        except Exception:  # an unpicklable error: its text is enough
            send.send(RuntimeError("".join(traceback.format_exception(error))))

    process = context.Process(target=child, name="sgns-prepare")
    process.start()
    send.close()
    try:
        error = receive.recv()
    except EOFError:  # the child ended without a word: killed, out of memory
        error = EOFError
    except KeyboardInterrupt:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.join()
        leftover(process.pid)
        raise
    finally:
        process.join()
    if error is EOFError:
        error = Word2VecError(f"corpus preparation stopped without a result (exit code {process.exitcode}; out of memory?)")
    if error is not None:
        raise error


def _load(source: Source):
    from sgns import sources

    return sources.load(source)


def _entry_name(key: str, settings: Settings) -> str:
    text = json.dumps({"version": CACHE_VERSION, "source": key, **asdict(settings)}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


# -- the two passes (run in datasets.map worker processes) --------------------------------------
def _madvise():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc.madvise
    except (OSError, AttributeError):
        return None


_MADVISE = _madvise() if sys.platform.startswith("linux") else None
_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages (file-backed ones are simply dropped)


def _page_out(column: pa.Array | pa.ChunkedArray) -> None:
    """Hand the pages of a batch's text back to the kernel once tokenised.

    The text is a memory-mapped Arrow file; pages read would otherwise stay resident in this
    process until the whole pass ends, so the workers' RSS would grow to the corpus size.
    Only whole pages inside the batch's bytes are advised; nothing is lost (they are re-read
    from the file if ever touched again). A no-op off Linux or on older kernels.
    """
    if _MADVISE is None:
        return
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if len(chunk) == 0 or not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
            continue
        _, offsets_buffer, data = chunk.buffers()
        if data is None:
            continue
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if pa.types.is_large_string(chunk.type) else np.int32)
        _advise_pages_inside(data.address + int(offsets[chunk.offset]), data.address + int(offsets[chunk.offset + len(chunk)]), _MADV_PAGEOUT)


def _advise_pages_inside(start: int, end: int, advice: int) -> None:
    """madvise the whole pages within the addresses [start, end) (none of a neighbour's bytes)."""
    start = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    end = end // mmap.PAGESIZE * mmap.PAGESIZE
    if end > start:
        _MADVISE(start, end - start, advice)


_MADV_DONTNEED = 4


def release_pages(array: np.ndarray, start: int, stop: int) -> None:
    """Drop this process's resident pages of ``array[start:stop]``, a read-only memory-mapped
    array: they are re-read from the file if touched again. Training copies a chunk's ids and
    releases them, so its memory does not grow with the corpus. A no-op for in-memory arrays
    and off Linux."""
    stop = min(stop, len(array))  # never past the mapping
    if _MADVISE is None or not isinstance(array, np.memmap) or array.flags.writeable or stop <= start:
        return
    base = int(array.ctypes.data)
    _advise_pages_inside(base + int(start) * array.itemsize, base + int(stop) * array.itemsize, _MADV_DONTNEED)


def _tokens(batch: pa.Table, indices: list[int], tokenizer: str, limit: tuple[int, int] | None) -> tuple[pa.Array, np.ndarray]:
    """A batch's flat tokens and line lengths; the line ``limit[0]`` (the last one read) keeps ``limit[1]`` tokens."""
    flat, lengths = tokenize_batch(batch["text"], tokenizer)
    _page_out(batch["text"])
    if limit is not None and indices[0] <= limit[0] <= indices[-1]:
        i = limit[0] - indices[0]  # the last line of the selection: its surplus is at the very end
        surplus = int(lengths[i] - min(lengths[i], limit[1]))
        flat, lengths[i] = flat.slice(0, len(flat) - surplus), lengths[i] - surplus
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


def _count_batch(batch: pa.Table, indices: list[int], tokenizer: str, limit, seed: int, fraction: float) -> pa.Table:
    """One row per batch: its word counts (first-appearance order) and its held-out candidates."""
    flat, lengths = _tokens(batch, indices, tokenizer, limit)
    counts = pc.value_counts(flat)
    rows = np.asarray(indices)
    candidates = _held_out_candidates(rows, seed, fraction) & (lengths > 0) if fraction > 0 else np.zeros(len(rows), bool)
    return pa.table({
        "words": _one_row(counts.field("values")), "counts": _one_row(counts.field("counts")),
        "candidates": _one_row(rows[candidates].astype(np.int64)), "lengths": _one_row(lengths[candidates]),
        "lines": pa.array([int((lengths > 0).sum())], pa.int64()),
    })  # fmt: skip


def _encode_batch(batch: pa.Table, indices: list[int], tokenizer: str, limit, words: pa.Array) -> pa.Table:
    """Each line as int32 ids of its in-vocabulary tokens, in order."""
    flat, lengths = _tokens(batch, indices, tokenizer, limit)
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
    """Sums per-batch word counts with Arrow's group-by (first appearance order kept)."""

    def __init__(self, flush_at: int = 2_000_000) -> None:
        self._table = pa.table({"w": pa.array([], pa.string()), "c": pa.array([], pa.int64())})
        self._pending: list[pa.Table] = []
        self._pending_rows, self.flush_at = 0, flush_at

    def add(self, words: pa.Array, counts: pa.Array) -> None:
        self._pending.append(pa.table({"w": words, "c": counts.cast(pa.int64())}))
        self._pending_rows += len(words)
        if self._pending_rows >= self.flush_at:
            self._flush()

    def _flush(self) -> None:
        merged = pa.concat_tables([self._table, *self._pending])
        self._table = merged.group_by("w", use_threads=False).aggregate([("c", "sum")]).rename_columns(["w", "c"])
        self._pending, self._pending_rows = [], 0

    @property
    def table(self) -> pa.Table:
        if self._pending:
            self._flush()
        return self._table


def _auto_num_proc(ds, num_proc: int | None) -> int | None:
    if num_proc is None:  # processes pay off from a few tens of MB of text
        num_proc = min(os.cpu_count() or 1, max(1, ds.data.nbytes // (32 << 20)))
    check(isinstance(num_proc, int) and num_proc >= 1, f"data.num_proc must be null or an integer >= 1, got {num_proc!r}")
    return num_proc if num_proc > 1 else None


def _temporary(entry: Path, pid: int) -> Path:
    """Where process ``pid`` builds ``entry`` before renaming it."""
    return entry.with_name(f"{entry.name}.tmp-{pid}")


def _build(ds, s: Settings, entry: Path, num_proc: int | None, name: str) -> None:
    """Run both passes and write the cache entry atomically (a killed run leaves no half entry)."""
    check(ds.num_rows > 0, f"corpus is empty (no tokens found): {name}")
    limit = _token_limit(ds, s.tokenizer, s.max_tokens) if s.max_tokens else None
    if limit is not None:
        ds = ds.select(range(limit[0] + 1))
    procs = _auto_num_proc(ds, num_proc)
    tmp = _temporary(entry, os.getpid())
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "passes").mkdir(parents=True)
    try:
        ds = ds.with_format("arrow")  # map functions get and return pyarrow tables
        common = dict(batched=True, with_indices=True, num_proc=procs, remove_columns=["text"])
        counted = ds.map(
            _count_batch, batch_size=10_000, fn_kwargs=dict(tokenizer=s.tokenizer, limit=limit, seed=s.seed, fraction=s.val_fraction),
            cache_file_name=str(tmp / "passes" / "count.arrow"), new_fingerprint=f"{entry.name}-count", desc="count words",
            writer_batch_size=4, **common,  # each output row holds a whole batch's counts: flush them often
        )  # fmt: skip
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

        val_lines = _held_out_lines(np.concatenate(candidates), np.concatenate(candidate_lengths),
                                    s.val_fraction * raw_tokens, s.val_max_tokens, s.seed)  # fmt: skip
        val_lines = val_lines[: lines - 1]  # never hold out every line
        if len(val_lines):  # the vocabulary is counted on training lines only
            held = ds.select(val_lines).with_format("arrow")[:]
            flat, _ = _tokens(held, val_lines.tolist(), s.tokenizer, limit)
            held_counts = pc.value_counts(flat)
            at = pc.index_in(held_counts.field("values"), value_set=words).to_numpy()
            np.subtract.at(counts, at, held_counts.field("counts").to_numpy())
        vocab, _ = _build_vocab(words, counts, s.min_count, s.max_vocab_size)
        check(len(vocab) > 0, f"no word occurs at least min_count={s.min_count} times in {name} ({raw_tokens} tokens)")
        del merger, words, counts
        pa.default_memory_pool().release_unused()  # the encode workers fork from this process

        encoded = ds.map(
            _encode_batch, batch_size=10_000, fn_kwargs=dict(tokenizer=s.tokenizer, limit=limit, words=pa.array(vocab.words, pa.string())),
            cache_file_name=str(tmp / "passes" / "encode.arrow"), new_fingerprint=f"{entry.name}-encode", desc="encode", **common,
        )  # fmt: skip
        _write_ids(encoded, val_lines, s, tmp)
        del encoded
        vocab.save(tmp / "vocab.txt")
        shutil.rmtree(tmp / "passes")
        _seal(tmp, {"raw_tokens": raw_tokens, "settings": asdict(s), "source": name})
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, entry)
            _fsync(entry.parent)
        except OSError:  # another run finished the same entry first: keep theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        pa.default_memory_pool().release_unused()  # Arrow's pool keeps freed batches (about 50 MB per 10M tokens)


ENTRY_FILES = ("train_ids.bin", "train_starts.bin", "val_ids.npy", "val_starts.bin", "vocab.txt")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _seal(tmp: Path, meta: dict) -> None:
    """Make a built entry durable and checkable: every file fsynced, then ``meta.json`` (each file's
    size and SHA-256) written and fsynced last, as the completion record, then the directory."""
    files = {}
    for name in ENTRY_FILES:
        _fsync(tmp / name)
        files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _digest(tmp / name)}
    with open(tmp / "meta.json", "w") as out:
        json.dump({**meta, "files": files}, out)
        out.flush()
        os.fsync(out.fileno())
    _fsync(tmp)


def _damage(entry: Path) -> str | None:
    """What is wrong with a cache entry (a missing completion record, a file of the wrong size or
    content), or None when it is whole. About 0.15 s per 40M tokens."""
    try:
        files = json.loads((entry / "meta.json").read_text())["files"]
        for name in ENTRY_FILES:
            size = (entry / name).stat().st_size
            if size != files[name]["bytes"]:
                return f"{name} holds {size:,} bytes, {files[name]['bytes']:,} were written"
            if _digest(entry / name) != files[name]["sha256"]:
                return f"{name} changed since it was written"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


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


def _open(entry: Path) -> PreparedCorpus:
    """Load a cache entry: training ids and sentence starts memory-mapped, the rest in memory."""
    meta = json.loads((entry / "meta.json").read_text())

    def mapped(name: str, dtype: type) -> np.ndarray:
        path = entry / name
        return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.empty(0, dtype)

    train = EncodedCorpus(mapped("train_ids.bin", np.int32), mapped("train_starts.bin", np.int64))
    val = EncodedCorpus(np.load(entry / "val_ids.npy"), np.fromfile(entry / "val_starts.bin", dtype=np.int64))
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
