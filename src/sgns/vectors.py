"""Trained word vectors with gensim ``KeyedVectors``-style names and word2vec file formats."""

from __future__ import annotations

import logging
import mmap
import struct
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable, Sequence

import numpy as np
import torch

from sgns.errors import UnknownWordError, Word2VecError, check
from sgns.subwords import mean_vectors, ngram_rows, word_ngram_rows

log = logging.getLogger(__name__)


class WordVectors:
    """Words (descending count order) and their vectors; cosine similarity queries."""

    def __init__(
        self,
        words: Sequence[str],
        vectors: np.ndarray | torch.Tensor,
        counts: Sequence[int] | None = None,
        source: str = "vectors",
    ):
        self.words = list(words)
        self.vectors = np.ascontiguousarray(torch.as_tensor(vectors).float().numpy())
        check(
            self.vectors.ndim == 2 and len(self.words) == len(self.vectors), f"{source}: one vector per word expected"
        )
        check_finite(self.vectors, self.words, source)
        self.counts = None if counts is None else np.asarray(counts, dtype=np.int64)
        self.key_to_index = {w: i for i, w in enumerate(self.words)}

    @cached_property
    def norms(self) -> np.ndarray:
        """Each row's length (made on the first similarity query; as gensim, no normalised copy)."""
        return np.maximum(np.sqrt(np.einsum("ij,ij->i", self.vectors, self.vectors)), 1e-12)  # no [V, d] temporary

    def unit(self, ids: Sequence[int]) -> np.ndarray:
        """Rows ``ids`` scaled to length 1."""
        return unit_rows(torch.from_numpy(self.vectors[ids])).numpy()

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.key_to_index

    def index(self, word: str) -> int:
        try:
            return self.key_to_index[word]
        except KeyError:
            other = next((w for w in (word.lower(), word.capitalize(), word.upper()) if w in self.key_to_index), None)
            hint = f"; {other!r} is (the vocabulary's words keep the tokenizer's case)" if other else ""
            raise UnknownWordError(f"word {word!r} is not in the vocabulary ({len(self)} words){hint}") from None

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self.index(word)]

    @property
    def vector_size(self) -> int:
        return self.vectors.shape[1]

    def _queries(self, words: list[str]) -> tuple[np.ndarray, list[int]]:
        """Unit vectors of ``words`` [n, d], and their vocabulary rows (left out of answers)."""
        ids = [self.index(w) for w in words]
        return self.unit(ids), ids

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two words."""
        a_unit, b_unit = self._queries([a, b])[0]
        return float(a_unit @ b_unit)

    def most_similar(
        self, positive: str | Iterable[str] = (), negative: str | Iterable[str] = (), topn: int = 10
    ) -> list[tuple[str, float]]:
        """Nearest words by cosine to mean(unit(positive)) - mean(unit(negative)) (gensim's 3CosAdd)."""
        positive = [positive] if isinstance(positive, str) else list(positive)
        negative = [negative] if isinstance(negative, str) else list(negative)
        check(bool(positive or negative), "most_similar needs at least one word")
        units, ids = self._queries(positive + negative)
        weights = np.array([1.0] * len(positive) + [-1.0] * len(negative), dtype=np.float32)
        query = weights @ units / len(units)
        norm = np.linalg.norm(query)
        check(
            norm > 1e-6,
            "the query vector is zero: the positive and negative words cancel out, or their vectors are zero",
        )
        query /= norm
        sims = self.vectors @ query / self.norms  # cosines: unit_rows of every row, without a [V, d] copy
        sims[ids] = -np.inf
        top = np.argsort(-sims)[:topn]
        return [(self.words[i], float(sims[i])) for i in top if np.isfinite(sims[i])]

    def doesnt_match(self, words: Iterable[str]) -> str:
        """The word furthest (by cosine) from the mean of the others' unit vectors, as gensim."""
        words = list(words)
        check(len(words) >= 2, "doesnt_match needs at least two words")
        unit = self._queries(words)[0]
        return words[int(np.argmin(unit @ unit.mean(axis=0)))]

    # -- word2vec formats ----------------------------------------------------------------------
    def save_word2vec_format(self, path: str | Path, binary: bool = False) -> None:
        """Header ``"V d"``, then one row per word. Binary rows are the word, a space, d
        little-endian float32 and a newline (word2vec.c); text rows use ``%.9g`` (exact float32)."""
        n, d = self.vectors.shape
        if binary:
            data = self.vectors.astype("<f4", copy=False)
            with open(path, "wb") as out:
                out.write(f"{n} {d}\n".encode())
                for word, row in zip(self.words, data):
                    out.write(word.encode("utf-8") + b" " + row.tobytes() + b"\n")
        else:
            row_format = " ".join(["%.9g"] * d) + "\n"
            with open(path, "w", encoding="utf-8") as out:
                out.write(f"{n} {d}\n")
                for start in range(0, n, 1024):  # a block at a time: Python floats cost 24 bytes each
                    block = self.vectors[start : start + 1024].tolist()
                    out.writelines(word + " " + row_format % tuple(row) for word, row in zip(self.words[start:], block))

    @classmethod
    def load_word2vec_format(cls, path: str | Path, binary: bool | None = None) -> "WordVectors":
        """Read text or binary word2vec files written by us, gensim or word2vec.c.

        ``binary=None`` guesses from the suffix (``.bin`` is binary). Accepts trailing spaces
        (C text) and rows with or without a newline after the floats (C vs gensim binary).
        """
        path = Path(path)
        check(path.is_file(), f"vectors file not found: {path}")
        binary = path.suffix == ".bin" if binary is None else binary
        try:
            with open(path, "rb") as handle:
                header = handle.readline().split()
                check(
                    len(header) == 2 and all(h.isdigit() for h in header),
                    f"{path}: first line must be '<vocab_size> <dim>'",
                )
                n, d = int(header[0]), int(header[1])
                check(n >= 1 and d >= 1, f"{path}: the header promises {n} rows of {d} values; nothing to load")
                # each row takes at least a 1-byte word and a separator, then 4 bytes (binary) or 2 (text) a value:
                # a header promising more than the file can hold is refused before any memory is taken for it
                least, size = n * (2 + (4 if binary else 2) * d), path.stat().st_size - handle.tell()
                check(
                    size >= least,
                    f"{path}: the header promises {n:,} rows of {d:,} values, at least {least:,} bytes, "
                    f"but {size:,} follow it (truncated, or not a {'binary' if binary else 'text'} word2vec file)",
                )
                words: list[str] = []
                vectors = np.empty((n, d), dtype=np.float32)
                for i in range(n):
                    if binary:
                        words.append(_read_binary_word(handle, path))
                        raw = handle.read(4 * d)
                        check(len(raw) == 4 * d, f"{path}: truncated at word {i + 1} of {n}")
                        vectors[i] = np.frombuffer(raw, dtype="<f4")
                    else:
                        parts = handle.readline().decode("utf-8", errors="replace").rstrip().split(" ")
                        check(len(parts) == d + 1, f"{path}: line {i + 2} has {len(parts) - 1} values, expected {d}")
                        words.append(parts[0])
                        vectors[i] = np.array(parts[1:], dtype=np.float32)
                if handle.read(4096).strip():
                    log.warning(
                        "%s: more rows follow the %s its header promises; they are not read (as gensim does)",
                        path,
                        f"{n:,}",
                    )
        except (ValueError, UnicodeDecodeError) as exc:
            raise Word2VecError(f"{path}: not a {'binary' if binary else 'text'} word2vec file ({exc})") from None
        first: dict[str, int] = {}
        keep = np.array([first.setdefault(word, i) == i for i, word in enumerate(words)])
        if (
            not keep.all()
        ):  # one row per word, or the word's index would point at its last row and queries list it twice
            again = int(np.argmin(keep))
            log.warning(
                "%s: %s row(s) repeat a word read before (first: %r, rows %d and %d); the first row of each word is kept, "
                "as gensim does",
                path,
                f"{int((~keep).sum()):,}",
                words[again],
                first[words[again]] + 1,
                again + 1,
            )
            words, vectors = [w for w, k in zip(words, keep) if k], vectors[keep]
        return cls(words, vectors, source=str(path))


class SubwordVectors(WordVectors):
    """A subword model's vectors (``model=fasttext``): the vocabulary's rows, and for any other
    string the mean of its character n-gram rows (fastText's and gensim's rule), so every query
    method answers for words never seen. Stored in fastText's own ``.bin`` format (through gensim's
    writer and reader): fastText, gensim's ``load_facebook_model`` and we read the same file."""

    def __init__(
        self,
        words: Sequence[str],
        word_rows: np.ndarray | torch.Tensor,
        ngram_vectors: np.ndarray | torch.Tensor,
        min_n: int,
        max_n: int,
        counts: Sequence[int] | None = None,
        source: str = "vectors",
    ):
        """From a model's tables: the words' own rows [V, d] and the n-gram table [buckets, d]; each
        vocabulary word's vector is the mean of its row and its n-gram rows."""
        word_rows, ngram_table = (torch.as_tensor(t).float() for t in (word_rows, ngram_vectors))
        check(
            ngram_table.ndim == 2 and ngram_table.shape[1:] == word_rows.shape[1:] and len(ngram_table),
            f"{source}: the n-gram table must have rows of the vectors' size",
        )
        offsets, rows = (torch.from_numpy(a) for a in ngram_rows(words, min_n, max_n, len(ngram_table)))
        super().__init__(words, mean_vectors(word_rows, ngram_table, rows, offsets.diff()), counts, source)
        self.word_rows = np.ascontiguousarray(word_rows.numpy())  # what fastText's .bin stores
        self.ngram_vectors = np.ascontiguousarray(ngram_table.numpy())
        self.min_n, self.max_n = min_n, max_n

    @property
    def buckets(self) -> int:
        return len(self.ngram_vectors)

    def get_vector(self, word: str) -> np.ndarray:
        """The word's row if it is in the vocabulary, else the mean of its n-gram rows."""
        if word in self.key_to_index:
            return self.vectors[self.key_to_index[word]]
        rows = word_ngram_rows(word, self.min_n, self.max_n, self.buckets)
        if not len(rows):
            raise UnknownWordError(
                f"word {word!r} is not in the vocabulary and has no {self.min_n}..{self.max_n}-character n-grams"
            )
        return self.ngram_vectors[rows].mean(axis=0)

    __getitem__ = get_vector

    def _queries(self, words: list[str]) -> tuple[np.ndarray, list[int]]:
        vectors = torch.from_numpy(np.stack([self.get_vector(w) for w in words]))
        return unit_rows(vectors).numpy(), [self.key_to_index[w] for w in words if w in self.key_to_index]

    def save_facebook_format(
        self, path: str | Path, outputs: np.ndarray | torch.Tensor | None = None, **settings
    ) -> None:
        """fastText's ``.bin``: the vocabulary with counts, the word rows (before the n-grams are
        averaged in), the n-gram table and ``outputs`` (the output vectors; zeros if not given).
        ``settings`` (window, negative, sample, min_count, epochs, hs) fill fastText's header."""
        from gensim.models.fasttext import FastTextKeyedVectors, save_facebook_model

        kv = FastTextKeyedVectors(self.vector_size, self.min_n, self.max_n, self.buckets)
        kv.index_to_key, kv.key_to_index = list(self.words), dict(self.key_to_index)
        counts = self.counts if self.counts is not None else np.ones(len(self), dtype=np.int64)
        kv.allocate_vecattrs(attrs=["count"], types=[np.int64])
        kv.expandos["count"][:] = counts
        kv.vectors_vocab, kv.vectors_ngrams = self.word_rows, self.ngram_vectors
        output = (
            np.zeros_like(self.vectors)
            if outputs is None
            else np.ascontiguousarray(torch.as_tensor(outputs).float().numpy())
        )
        defaults = {"epochs": 5, "window": 5, "negative": 5, "sample": 1e-4, "min_count": 5, "hs": 0}
        # (gensim writes syn1, the inner nodes, as the output matrix of a hierarchical-softmax model: hs=1)
        model = SimpleNamespace(
            wv=kv,
            vector_size=self.vector_size,
            sg=1,
            syn1neg=output,
            syn1=output,
            corpus_total_words=int(counts.sum()),
            **defaults | settings,
        )
        save_facebook_model(model, str(path))

    @classmethod
    def load_facebook_format(cls, path: str | Path) -> "SubwordVectors":
        """A fastText ``.bin`` model (ours, fastText's or gensim's), read by gensim."""
        from gensim.models.fasttext import load_facebook_vectors

        check_facebook_file(path)  # (gensim's reader loops forever on a file that ends inside a word)
        try:
            kv = load_facebook_vectors(str(path))
        except Exception as exc:
            raise Word2VecError(
                f"{path}: not a readable fastText model ({type(exc).__name__}: {exc})".splitlines()[0]
            ) from None
        counts = [kv.get_vecattr(w, "count") for w in kv.index_to_key]
        return cls(kv.index_to_key, kv.vectors_vocab, kv.vectors_ngrams, kv.min_n, kv.max_n, counts, str(path))


FASTTEXT_MAGIC = (793712314).to_bytes(4, "little")  # the first four bytes of a fastText .bin


def is_facebook_format(path: str | Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == FASTTEXT_MAGIC


def check_facebook_file(path: str | Path) -> None:
    """Walk a fastText ``.bin`` (version 12: header, vocabulary, two matrices) without reading its
    tables, and refuse one that a reader could not finish: cut short (a partial copy), or whose
    sizes promise more than the file holds (a damaged or hostile header)."""
    path = Path(path)
    size = path.stat().st_size

    def damaged(what: str) -> Word2VecError:
        return Word2VecError(
            f"{path}: not a complete fastText model ({what}; the file holds {size:,} bytes): "
            "a partly copied or damaged file?"
        )

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:

        def unpack(fmt: str, at: int) -> tuple:
            end = at + struct.calcsize(fmt)
            if end > size:
                raise damaged(f"it ends at byte {size:,}, inside its {'header' if at < 92 else 'tables'}")
            return struct.unpack_from(fmt, data, at)

        _, version, dim = unpack("<3i", 0)
        (bucket,) = unpack("<i", 40)
        vocab_size, nwords, nlabels, _, prune = unpack("<3iqq", 64)
        check(version == 12, f"{path}: fastText format version {version}, this reader knows version 12")
        check(nlabels == 0, f"{path}: a supervised fastText model (labels), not word vectors")
        if not (0 < dim <= 1 << 16 and 0 <= bucket and 0 <= nwords == vocab_size <= (size - 92) // 11):
            raise damaged(f"its header gives dim={dim}, bucket={bucket}, {vocab_size:,} entries of {nwords:,} words")
        at = 92
        for _ in range(vocab_size):  # each entry: the word's bytes, NUL, int64 count, int8 type
            end = data.find(b"\0", at)
            if end < 0 or end + 10 > size:
                raise damaged(f"it ends inside its vocabulary of {vocab_size:,} words")
            at = end + 10
        at += 8 * max(prune, 0)  # (pruned n-gram pairs of a quantised model)
        for name, rows in (("input", vocab_size + bucket), ("output", vocab_size)):
            quantised, m, n = unpack("<?qq", at)
            check(not quantised, f"{path}: a quantised fastText model (.ftz); this reader needs the full .bin")
            if (m, n) != (rows, dim):
                raise damaged(f"its {name} matrix is {m:,} x {n:,}, where its header gives {rows:,} x {dim}")
            if at + 17 + 4 * m * n > size:
                raise damaged(f"its {name} matrix of {m:,} x {n:,} needs {4 * m * n:,} bytes from byte {at + 17:,}")
            at += 17 + 4 * m * n
        if at != size:
            raise damaged(f"{size - at:,} bytes follow its tables")


def unit_rows(vectors: torch.Tensor) -> torch.Tensor:
    """Rows scaled to length 1, for cosine similarity (a zero row stays zero)."""
    return vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)


def check_finite(vectors: np.ndarray | torch.Tensor, words: Sequence[str], source: str = "vectors") -> None:
    """Refuse vectors holding NaN or infinity, naming the first such row: no similarity or score
    computed from them would mean anything."""
    finite = torch.isfinite(torch.as_tensor(vectors)).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0])
        count = int((~finite).sum())
        raise Word2VecError(
            f"{source}: row {row + 1} ({words[row]!r}) holds NaN or infinity "
            f"({count:,} of {len(finite):,} rows do); refusing non-finite vectors"
        )


def _read_binary_word(handle, path: Path) -> str:
    chars = bytearray()
    while True:
        ch = handle.read(1)
        check(ch != b"", f"{path}: truncated binary vectors file")
        if ch == b" ":
            break
        if ch != b"\n" or chars:  # skip the newline word2vec.c leaves before each word
            chars += ch
    return chars.decode("utf-8", errors="replace")
