"""The preparation cache: one directory per (source content, preparation settings), written under a
temporary name, sealed with a completion record, renamed when whole, and checked when opened."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sgns.data.corpus import EncodedCorpus, PreparedCorpus, Vocabulary
from sgns.data.phrases import PhraseSettings, PhraseTable

CACHE_VERSION = 4  # raised whenever the same settings would prepare a corpus differently (4: the whitespace tokenizer drops a line-leading U+FEFF)


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
    phrases: PhraseSettings = field(default_factory=PhraseSettings)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else $SGNS_CACHE_DIR, else ~/.cache/sgns."""
    return Path(os.path.expanduser(str(cache_dir or os.environ.get("SGNS_CACHE_DIR") or "~/.cache/sgns")))


def entry_name(key: str, settings: Settings) -> str:
    fields = asdict(settings)
    if not settings.phrases.passes:  # (the key of a corpus prepared without phrases is as it was before them)
        del fields["phrases"]
    text = json.dumps({"version": CACHE_VERSION, "source": key, **fields}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def temporary(entry: Path, pid: int) -> Path:
    """Where process ``pid`` builds ``entry`` before renaming it."""
    return entry.with_name(f"{entry.name}.tmp-{pid}")


ENTRY_FILES = ("train_ids.bin", "train_starts.bin", "val_ids.npy", "val_starts.bin", "vocab.txt")
PHRASES_FILE = "phrases.tsv"  # an entry prepared with data.phrases > 0 has it too


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def seal(tmp: Path, meta: dict) -> None:
    """Make a built entry durable and checkable: every file fsynced, then ``meta.json`` (each file's
    size and SHA-256) written and fsynced last, as the completion record, then the directory."""
    files = {}
    for name in ENTRY_FILES + ((PHRASES_FILE,) if (tmp / PHRASES_FILE).exists() else ()):
        fsync(tmp / name)
        files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": digest(tmp / name)}
    with open(tmp / "meta.json", "w") as out:
        json.dump({**meta, "files": files}, out)
        out.flush()
        os.fsync(out.fileno())
    fsync(tmp)


def damage(entry: Path) -> str | None:
    """What is wrong with a cache entry (a missing completion record, a file of the wrong size or
    content), or None when it is whole. About 0.15 s per 40M tokens."""
    try:
        files = json.loads((entry / "meta.json").read_text())["files"]
        for name in dict.fromkeys([*ENTRY_FILES, *files]):
            size = (entry / name).stat().st_size
            if size != files[name]["bytes"]:
                return f"{name} holds {size:,} bytes, {files[name]['bytes']:,} were written"
            if digest(entry / name) != files[name]["sha256"]:
                return f"{name} changed since it was written"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def open_entry(entry: Path) -> PreparedCorpus:
    """Load a cache entry: training ids and sentence starts memory-mapped, the rest in memory."""
    meta = json.loads((entry / "meta.json").read_text())

    def mapped(name: str, dtype: type) -> np.ndarray:
        path = entry / name
        return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.empty(0, dtype)

    train = EncodedCorpus(mapped("train_ids.bin", np.int32), mapped("train_starts.bin", np.int64))
    val = EncodedCorpus(np.load(entry / "val_ids.npy"), np.fromfile(entry / "val_starts.bin", dtype=np.int64))
    phrases = PhraseTable.load(entry / PHRASES_FILE) if (entry / PHRASES_FILE).exists() else None
    return PreparedCorpus(Vocabulary.load(entry / "vocab.txt"), train, val, meta["raw_tokens"], phrases)
