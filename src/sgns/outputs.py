"""Writing run outputs safely: every file goes to a temporary name and replaces the old one only
when complete, so a crash or a full disk never leaves a half-written checkpoint or vectors file."""

from __future__ import annotations

import logging
import os
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from sgns.data.cache import PHRASES_FILE
from sgns.data.corpus import Vocabulary
from sgns.data.phrases import PhraseTable
from sgns.errors import Word2VecError, check
from sgns.models.base import WordModel
from sgns.models.fasttext import FastText
from sgns.vectors import SubwordVectors, WordVectors

log = logging.getLogger("sgns")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (fsynced), else it is removed."""
    path = Path(path)
    check(path.parent.is_dir(), f"cannot write {path}: its directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise Word2VecError(
            f"cannot write {path}: {exc.strerror or exc}; the previous {path.name} (if any) is intact"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path: str | Path, write: Callable[[Path], Any]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def export_run(
    module,
    vocab: Vocabulary,
    output_dir: str | Path,
    text: bool = True,
    binary: bool = True,
    phrases: PhraseTable | None = None,
) -> tuple[WordVectors, list[Path]]:
    """Write a run's vocabulary (``word count``) and its model's vectors (``module.word_vectors()``) in
    the word2vec text and binary formats, a subword model whole as fastText's ``fasttext.bin``
    (vectors for any word), and the phrases its corpus joined (``phrases.tsv``); returns the vectors
    and the files written."""
    vectors, written = _export_run(module, vocab, output_dir, text, binary)
    if phrases is not None:
        written.append(write_atomically(Path(output_dir) / PHRASES_FILE, phrases.save))
    remove_stale(output_dir, written)
    return vectors, written


RUN_FILES = ("vectors.txt", "vectors.bin", "fasttext.bin", PHRASES_FILE)  # each run's export writes those it has


def remove_stale(output_dir: str | Path, written: list[Path]) -> list[Path]:
    """Delete the files an export did not write (an earlier run's ``fasttext.bin`` after a
    skip-gram run with overwrite=true, or ``vectors.txt`` after export.text=false): they would hold
    another run's vectors or phrases under this run's name. Called once the new files are in place."""
    stale = [p for p in (Path(output_dir) / name for name in RUN_FILES) if p.exists() and p not in written]
    for path in stale:
        path.unlink()
        log.info("removed %s: an earlier run's, not rewritten by this one", path)
    return stale


def _export_run(
    module, vocab: Vocabulary, output_dir: str | Path, text: bool, binary: bool
) -> tuple[WordVectors, list[Path]]:
    net = module.net
    if not hasattr(net, "ngram_vectors"):
        vectors = WordVectors(vocab.words, module.word_vectors(), vocab.counts)
        return vectors, export(vectors, vocab, output_dir, text, binary)
    tables = net.tables()
    vectors = SubwordVectors(
        vocab.words,
        tables["vectors"].detach().float().cpu(),
        net.ngram_vectors().float().cpu(),
        net.min_n,
        net.max_n,
        vocab.counts,
    )
    try:  # during a run the data settings fill fastText's header
        trainer = module.trainer
    except RuntimeError:  # not attached to a trainer
        trainer = None
    data = trainer.datamodule.hparams if trainer is not None and trainer.datamodule is not None else {}
    settings = {
        "window": data.get("window", 5),
        "negative": data.get("negatives", 5),
        "sample": data.get("sample", 1e-4),
        "min_count": data.get("min_count", 5),
        "epochs": trainer.max_epochs if trainer is not None else 5,
    }
    if net.objective.name == "hs":  # the output rows are the Huffman tree's inner nodes
        settings |= {"hs": 1, "negative": 0}
    outputs = tables["outputs"].detach().float().cpu()
    model = write_atomically(
        Path(output_dir) / "fasttext.bin", lambda p: vectors.save_facebook_format(p, outputs, **settings)
    )
    return vectors, [*export(vectors, vocab, output_dir, text, binary), model]


def export(
    vectors: WordVectors, vocab: Vocabulary, output_dir: str | Path, text: bool = True, binary: bool = True
) -> list[Path]:
    """Write the vocabulary (``word count``) and the vectors in word2vec text and binary formats."""
    output_dir = Path(output_dir)
    written = [write_atomically(output_dir / "vocab.txt", vocab.save)]
    if text:
        written.append(
            write_atomically(output_dir / "vectors.txt", lambda p: vectors.save_word2vec_format(p, binary=False))
        )
    if binary:
        written.append(
            write_atomically(output_dir / "vectors.bin", lambda p: vectors.save_word2vec_format(p, binary=True))
        )
    return written


VECTORS_KEY = WordModel.state_key("vectors")  # the word vectors, in a checkpoint's state_dict
NGRAMS_KEY = FastText.state_key("ngrams")  # a subword model's n-gram table
DATA_KEY = "Word2VecDataModule"  # the data module's state: the vocabulary and the batch settings


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint of ours, loaded with ``weights_only=True`` (no code is unpickled) and
    memory-mapped; anything else (missing, truncated, foreign) is one clear error."""
    path = Path(path)
    check(path.is_file(), f"checkpoint not found: {path}")
    damaged = _damaged_entry(path)
    check(
        damaged is None,
        f"checkpoint {path} is damaged: its record {str(damaged).split('/', 1)[-1]} does not match "
        "the CRC-32 written with it",
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        state["state_dict"][VECTORS_KEY], state[DATA_KEY]["words"]
    except Exception as exc:
        raise Word2VecError(
            f"checkpoint {path} is not a readable sgns checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]
        ) from None
    return state


def _damaged_entry(path: Path) -> str | None:
    """The first entry of a checkpoint (a zip archive) whose bytes no longer match their CRC-32, which
    torch.load does not check: a flipped or zeroed block of weights would load without a word. None
    when all match, or when the file is not a zip at all (torch.load says what it is)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError):
        return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file, fsynced, then renamed over the old one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            try:
                torch.save(checkpoint, tmp)
            except RuntimeError as exc:  # torch's zip writer reports a failed write (a full disk) so
                raise OSError(f"torch.save failed, as it does on a full disk ({str(exc).splitlines()[0]})") from exc
