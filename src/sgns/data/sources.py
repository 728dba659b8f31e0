"""Where corpus text comes from: local files or Hub datasets, loaded with Hugging Face ``datasets``.

A source is one file, a list of files or a glob, in plain text (one sentence per line; ``.gz``,
``.bz2`` and ``.xz`` decompressed), JSON lines or Parquet with a text column; or a dataset on
the Hugging Face Hub by name, config and split. Whatever it is, it comes back as a
``datasets.Dataset`` (Arrow, memory-mapped) with the text in one column, plus a key that
changes whenever the source's content does.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

from sgns.bundled import DEFAULT_CORPUS, gensim_test_file
from sgns.errors import Word2VecError, check

COMPRESSED = (".gz", ".bz2", ".xz")
log = logging.getLogger("sgns")

FORMATS = {".txt": "text", ".text": "text", ".cor": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class Source:
    """Local files (``path``: file, list or glob) or a Hub dataset (``dataset``, ``config``, ``split``)."""

    path: str | list[str] | None = None
    format: str | None = None  # text | json | parquet; null = from the file suffix
    text_column: str = "text"
    dataset: str | None = None
    config: str | None = None
    split: str = "train"

    def __post_init__(self) -> None:
        check(
            self.format in (None, "text", "json", "parquet"),
            f"data.format must be text, json, parquet or null, got {self.format!r}",
        )
        check(not (self.path and self.dataset), "set either data.path (local files) or data.dataset (Hub), not both")

    @property
    def is_hub(self) -> bool:
        return bool(self.dataset)

    @cached_property
    def files(self) -> list[Path]:
        """The local files, globs expanded and sorted (once); a clear error when there are none."""
        if self.path in (None, ""):
            return [gensim_test_file(DEFAULT_CORPUS)]
        patterns = [self.path] if isinstance(self.path, (str, Path)) else list(self.path)
        check(len(patterns) > 0, "data.path is an empty list")
        files: list[Path] = []
        for pattern in map(str, patterns):
            pattern = os.path.expanduser(pattern)
            if glob.has_magic(pattern):
                matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
                check(matches, f"no corpus file matches {pattern}")
                files += matches
            else:
                path = Path(pattern)
                check(path.exists(), f"corpus file not found: {path}")
                check(
                    not path.is_dir(),
                    f"corpus path is a directory, not a file: {path} (use a glob such as {path}/*.txt)",
                )
                check(
                    path.is_file(),
                    f"corpus path is not a regular file: {path} (a named pipe or a device is read "
                    "more than once; write the text to a file first)",
                )
                files.append(path)
        return distinct_files(files)

    def file_format(self, files: list[Path]) -> str:
        if self.format:
            return self.format
        kinds = {FORMATS.get(_suffix(f), "text") for f in files}
        check(len(kinds) == 1, f"corpus files mix formats {sorted(kinds)}; set data.format")
        return kinds.pop()

    def key(self) -> str | None:
        """Content key of local files (None for Hub datasets: their fingerprint comes after loading)."""
        if self.is_hub:
            return None
        files = self.files
        compression = ",".join(
            f.suffix.lower() if f.suffix.lower() in COMPRESSED else "-" for f in files
        )  # how the bytes are read
        return f"files:{self.file_format(files)}:{self.text_column}:{compression}:{content_key(files)}"

    def describe(self) -> str:
        if self.is_hub:
            return f"Hub dataset {self.dataset}" + (f" ({self.config})" if self.config else "") + f" split {self.split}"
        return ", ".join(map(str, self.files))


def distinct_files(files: list[Path]) -> list[Path]:
    """Each real file once, in the order first met: a corpus is a set of files. A glob's ``**``
    follows links to directories (``up -> ..`` reaches every file again), and a list may name one
    file twice or through a link; the repeats are skipped, and the log says how many."""
    seen: set[tuple[int, int]] = set()
    kept, repeats = [], []
    for path in files:
        stat = path.stat()  # (of the file a link points to)
        if (stat.st_dev, stat.st_ino) in seen:
            repeats.append(path)
        else:
            seen.add((stat.st_dev, stat.st_ino))
            kept.append(path)
    if repeats:
        log.warning(
            "corpus: %d path(s) reach a file already read (through links or named twice) and are skipped, "
            "e.g. %s; each file counts once (to weigh a file more, copy it)",
            len(repeats),
            repeats[0],
        )
    return kept


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def content_key(files: list[Path]) -> str:
    """Hash of the files' bytes (names do not matter, content does)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
        digest.update(b"\0file\0")
    return digest.hexdigest()


def _open_binary(path: Path):
    """The file's bytes, decompressed by its suffix (.gz, .bz2, .xz)."""
    import bz2
    import gzip
    import lzma

    return {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower(), open)(path, "rb")


_READ_ERRORS = (OSError, EOFError, ValueError)  # (lzma.LZMAError is an OSError; zlib.error is not: see _damage)


def check_not_binary(path: Path) -> None:
    """Refuse UTF-16 and UTF-32 text (by its byte-order mark: Windows' "Unicode") and a file whose
    first 64 KiB hold NUL bytes: it is not text (or is a wrong archive)."""
    try:
        with _open_binary(path) as raw:
            head = raw.read(1 << 16)
    except Exception as exc:
        raise Word2VecError(f"cannot read corpus {path}: {_first_line(exc)}") from None
    for encoding, marks in (
        ("UTF-32", (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)),
        ("UTF-16", (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)),
    ):
        check(
            not head.startswith(marks),
            f"corpus {path} is {encoding} text (it begins with a {encoding} byte-order mark); "
            f"save it as UTF-8 (for example: iconv -f {encoding} -t UTF-8)",
        )
    check(b"\0" not in head, f"corpus {path} looks like a binary file (NUL bytes), not text")


def _damage(files: list[Path], kind: str) -> str | None:
    """After a failed load: the first file that cannot be read to its end (a truncated or corrupt
    archive) or, for JSON lines, the first line that is not JSON; None if every file reads."""
    for path in files:
        try:
            with _open_binary(path) as raw:
                for n, line in enumerate(raw, 1):
                    if kind == "json" and line.strip():
                        try:
                            json.loads(line)
                        except ValueError as exc:
                            return f"{path}:{n}: not a JSON line ({exc})"
        except Exception as exc:  # EOFError, zlib.error, lzma.LZMAError, OSError ...
            return f"cannot read corpus {path} to its end: {_first_line(exc)} (a truncated or damaged file?)"
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint accepts a TCP connection (datasets itself retries for ~25 s)."""
    if (
        os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    ):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _go_offline() -> None:
    """Make datasets and huggingface_hub use only their local caches from here on."""
    import datasets.config
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def load(source: Source):
    """The source as a ``datasets.Dataset`` whose only column, ``text``, holds the text."""
    import datasets

    if source.is_hub:
        if not hub_reachable():
            _go_offline()  # a cached copy still loads; anything else fails now, not after retries
        try:
            ds = datasets.load_dataset(source.dataset, source.config, split=source.split)
        except Exception as exc:  # ConnectionError, DatasetNotFoundError, FileNotFoundError, ...
            where = f"config {source.config!r}, split {source.split!r}" if source.config else f"split {source.split!r}"
            raise Word2VecError(
                f"cannot load Hub dataset {source.dataset!r} ({where}): {_first_line(exc)}. Offline? Download it "
                "where the Hub is reachable (it is then cached) or point at a local copy: data=text_file data.path=FILE"
            ) from None
        column = source.text_column
    else:
        files = source.files
        kind = source.file_format(files)
        if kind == "text":
            for path in files:
                check(path.stat().st_size > 0, f"corpus is empty (no tokens found): {path}")
                check_not_binary(path)
        options = {"encoding_errors": "replace"} if kind == "text" else {}
        try:
            ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", **options)
        except Exception as exc:
            if kind in ("text", "json") and (damage := _damage(files, kind)):
                raise Word2VecError(damage) from None
            cause = exc.__cause__ if exc.__cause__ is not None else exc  # datasets wraps the reader's error
            raise Word2VecError(f"cannot read corpus {source.describe()} as {kind}: {_first_line(cause)}") from None
        column = "text" if kind == "text" else source.text_column
    check(
        column in ds.column_names,
        f"{source.describe()} has no column {column!r}; its columns are {ds.column_names} (set data.text_column)",
    )
    dtype = getattr(ds.features[column], "dtype", None)
    check(
        dtype in ("string", "large_string"),
        f"column {column!r} of {source.describe()} holds {dtype or 'lists or records'}, "
        f"not text (its columns: {ds.column_names}; set data.text_column)",
    )
    ds = ds.select_columns([column])
    return ds.rename_column(column, "text") if column != "text" else ds


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
