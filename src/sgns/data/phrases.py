"""Phrases: frequent collocations joined into one token before training (word2phrase, gensim's ``Phrases``).

A pass counts every word and every bigram candidate of the corpus, scores the candidates and
keeps those above a threshold; then every line is read again with those candidates joined, left
to right: ``new york`` becomes ``new_york``. A second pass over the joined text makes trigrams
(``new_york times``), as word2vec.c's demo runs two.

- A candidate is two consecutive non-connector words of a line with the connector words between
  them (gensim's ``connector_words``): ``bank of america``. Connector words never begin or end a
  phrase and are not counted as words; N, the corpus length, counts every token.
- ``default``: word2phrase's score (count(ab) - min_count) / (count(a) count(b)) x N. gensim's
  ``original_scorer`` multiplies by the size of its vocabulary (its words and bigrams together)
  instead of N; its phrases are ours at a threshold N / (that size) times its own.
- ``npmi``: gensim's normalised PMI, ln(p(ab) / (p(a) p(b))) / -ln p(ab), p(x) = count(x) / N,
  for bigrams seen at least min_count times; in [-1, 1].
- A candidate is a phrase when its score is above the threshold. Joining takes them from the
  left: a phrase's last word cannot begin another in the same pass (``a b c`` with ``a b`` and
  ``b c`` both phrases gives ``a_b c``), as in gensim and word2phrase.

Everything here works on a batch of lines at a time (Arrow and numpy, no Python loop per
token), inside the preparation's ``datasets`` worker processes (``prepare.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgns.errors import Word2VecError, check, check_choice, check_int, check_number, word_list

# gensim.models.phrases.ENGLISH_CONNECTOR_WORDS
ENGLISH_CONNECTOR_WORDS = (
    "a",
    "an",
    "and",
    "at",
    "by",
    "for",
    "from",
    "in",
    "of",
    "on",
    "or",
    "the",
    "to",
    "with",
    "without",
)
SCORINGS = ("default", "npmi")
# data.phrase_threshold=null. word2phrase's default is 100; at 100 single words lost 1.7 points of
# analogy at 1 epoch, at 500 (and npmi 0.7) none (docs/benchmarks.md, "Phrases")
THRESHOLDS = {"default": 500.0, "npmi": 0.7}
# Bigram counts held while merging: beyond this many, those seen fewer than m times are dropped, m
# rising by one at each pruning (gensim's Phrases max_vocab_size and its prune_vocab)
MAX_BIGRAMS = 40_000_000
SEPARATOR = " "  # between a candidate's words while counting: no token holds one
DELIMITER = "_"  # between a phrase's words in the joined token (gensim's and word2phrase's)


@dataclass(frozen=True)
class PhraseSettings:
    """``data.phrases`` and its companions; part of the preparation's cache key when ``passes`` > 0."""

    passes: int = 0
    scoring: str = "default"
    threshold: float = THRESHOLDS["default"]
    min_count: int = 5
    connectors: tuple[str, ...] = field(default=ENGLISH_CONNECTOR_WORDS)

    @classmethod
    def from_config(
        cls, passes: int, scoring: str, threshold: float | None, min_count: int, connectors: Any
    ) -> PhraseSettings:
        check_int("data.phrases", passes, 0)
        check_choice("data.phrase_scoring", scoring, SCORINGS)
        threshold = THRESHOLDS[scoring] if threshold is None else threshold
        if scoring == "npmi":
            check_number("data.phrase_threshold", threshold, -1, 1, low_open=True, high_open=True)
        else:
            check_number("data.phrase_threshold", threshold, 0, low_open=True)
        check_int("data.phrase_min_count", min_count, 1)
        words = ENGLISH_CONNECTOR_WORDS if connectors == "english" else word_list("data.phrase_connectors", connectors)
        return cls(passes, scoring, float(threshold), min_count, tuple(sorted(set(words))))


def _pairs(flat: pa.Array, lengths: np.ndarray, connectors: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """Every pair of consecutive non-connector tokens of a line: the positions of its first and last
    tokens (the connectors between them belong to it), and which tokens are not connectors."""
    if connectors:
        words = ~pc.is_in(flat, value_set=pa.array(connectors, flat.type)).to_numpy(zero_copy_only=False)
    else:
        words = np.ones(len(flat), dtype=bool)
    at = np.flatnonzero(words)
    line = np.repeat(np.arange(len(lengths)), lengths)[at]
    same = line[1:] == line[:-1]  # (a candidate never spans two lines)
    return at[:-1][same], at[1:][same], words


def _keys(flat: pa.Array, first: np.ndarray, last: np.ndarray) -> pa.Array:
    """The candidates' tokens joined by SEPARATOR: two words, or with connectors between them."""
    pair = pc.binary_join_element_wise(flat.take(pa.array(first)), flat.take(pa.array(last)), SEPARATOR)
    longer = np.flatnonzero(last - first > 1)
    if not len(longer):
        return pair
    size = last[longer] - first[longer] + 1
    offsets = np.zeros(len(longer) + 1, dtype=np.int64)
    np.cumsum(size, out=offsets[1:])
    take = np.repeat(first[longer] - offsets[:-1], size) + np.arange(offsets[-1])  # first .. last of each
    lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), flat.take(pa.array(take)))
    source = np.arange(len(first))
    source[longer] = len(first) + np.arange(len(longer))
    return pa.concat_arrays([pair, pc.binary_join(lists, SEPARATOR)]).take(pa.array(source))


def join(flat: pa.Array, lengths: np.ndarray, phrases: pa.Array, connectors: tuple[str, ...]):
    """The batch's tokens with the candidates in ``phrases`` (keys) joined, left to right; returns
    the new flat tokens and line lengths."""
    if len(phrases) == 0 or len(flat) == 0:
        return flat, lengths
    first, last, _ = _pairs(flat, lengths, connectors)
    ends = _ends(phrases)  # only a candidate with a phrase's first and last words can be one
    maybe = np.flatnonzero(
        pc.is_in(flat.take(pa.array(first)), value_set=ends.field("a")).to_numpy(zero_copy_only=False)
        & pc.is_in(flat.take(pa.array(last)), value_set=ends.field("b")).to_numpy(zero_copy_only=False)
    )
    hit = np.zeros(len(first), dtype=bool)
    hit[maybe] = pc.is_in(_keys(flat, first[maybe], last[maybe]), value_set=phrases).to_numpy(zero_copy_only=False)
    # a run of phrases each beginning where the one before ends: the 1st, 3rd, ... are joined
    follows = np.zeros(len(hit), dtype=bool)
    follows[1:] = (first[1:] == last[:-1]) & hit[:-1]
    index = np.arange(len(hit))
    run_start = np.maximum.accumulate(np.where(hit & ~follows, index, 0))
    taken = np.flatnonzero(hit & ((index - run_start) % 2 == 0))
    if not len(taken):
        return flat, lengths
    first, last = first[taken], last[taken]
    covered = np.zeros(len(flat) + 1, dtype=np.int64)  # the tokens after each joined phrase's first
    np.add.at(covered, first + 1, 1)
    np.add.at(covered, last + 1, -1)
    keep = np.cumsum(covered[:-1]) == 0
    joined = _joined(_keys(flat, first, last)).cast(flat.type)
    source = np.arange(len(flat))
    source[first] = len(flat) + np.arange(len(taken))  # a phrase's first token becomes the phrase
    out = pa.concat_arrays([flat, joined]).take(pa.array(source[keep]))
    line = np.repeat(np.arange(len(lengths)), lengths)
    return out, np.bincount(line[keep], minlength=len(lengths)).astype(np.int64)


def _ends(keys: pa.Array) -> pa.StructArray:
    """Each candidate's first word (``a``) and last word (``b``)."""
    return pc.extract_regex(keys, rf"^(?P<a>[^{SEPARATOR}]+){SEPARATOR}(?:.*{SEPARATOR})?(?P<b>[^{SEPARATOR}]+)$")


def count_candidates(
    flat: pa.Array, lengths: np.ndarray, connectors: tuple[str, ...]
) -> tuple[pa.StructArray, pa.StructArray]:
    """A batch's word counts (non-connector tokens) and candidate counts, as ``value_counts`` gives them."""
    first, last, words = _pairs(flat, lengths, connectors)
    return pc.value_counts(flat.filter(pa.array(words))), pc.value_counts(_keys(flat, first, last))


def score(
    keys: pa.Array, counts: np.ndarray, words: pa.Array, word_counts: np.ndarray, tokens: int, s: PhraseSettings
) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The candidates (``keys`` with their ``counts``) scoring above the threshold: their keys, scores
    and counts, best first. ``words``/``word_counts``: every non-connector word's count; ``tokens``: N."""
    kept = counts > s.min_count if s.scoring == "default" else counts >= s.min_count  # (the others score <= 0 / -inf)
    keys, counts = keys.filter(pa.array(kept)), counts[kept].astype(np.float64)
    ends = _ends(keys)
    count_a = word_counts[pc.index_in(ends.field("a"), value_set=words).to_numpy()].astype(np.float64)
    count_b = word_counts[pc.index_in(ends.field("b"), value_set=words).to_numpy()].astype(np.float64)
    if s.scoring == "default":
        scores = (counts - s.min_count) / (count_a * count_b) * tokens
    else:
        p_ab = counts / tokens
        scores = np.log(p_ab / (count_a / tokens * count_b / tokens)) / -np.log(p_ab)
    above = np.flatnonzero(scores > s.threshold)
    order = above[np.lexsort((np.arange(len(above)), -scores[above]))]  # best first; ties in order of appearance
    return keys.take(pa.array(order)), scores[order], counts[order].astype(np.int64)


def _joined(keys: pa.Array) -> pa.Array:
    """Candidates' keys as the tokens they become (``new york`` -> ``new_york``)."""
    return pc.replace_substring(keys, SEPARATOR, DELIMITER)


def display(keys: pa.Array) -> list[str]:
    """Phrases as the tokens they become (``new_york``)."""
    return _joined(keys).to_pylist()


@dataclass
class PhraseTable:
    """The phrases a preparation found: each joined token, its score, its count and the pass (1, 2, ...)
    that found it; pass by pass, best first. Saved as ``phrases.tsv`` with the prepared corpus and the
    run's vectors, and in checkpoints (``sgns phrases`` lists them)."""

    phrases: list[str]
    scores: list[float]
    counts: list[int]
    passes: list[int]

    HEADER = "phrase\tscore\tcount\tpass"

    def __len__(self) -> int:
        return len(self.phrases)

    @classmethod
    def from_passes(cls, found: list[tuple[pa.Array, np.ndarray, np.ndarray]]) -> PhraseTable:
        table = cls([], [], [], [])
        for n, (keys, scores, counts) in enumerate(found, 1):
            table.phrases += display(keys)
            table.scores += scores.tolist()
            table.counts += counts.tolist()
            table.passes += [n] * len(keys)
        return table

    def state(self) -> dict[str, list]:
        """For a checkpoint (plain lists: checkpoints load with weights_only)."""
        return {"phrase": self.phrases, "score": self.scores, "count": self.counts, "pass": self.passes}

    @classmethod
    def from_state(cls, state: dict[str, list]) -> PhraseTable:
        return cls(state["phrase"], state["score"], state["count"], state["pass"])

    def save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as out:
            out.write(self.HEADER + "\n")
            out.writelines(f"{p}\t{s!r}\t{c}\t{n}\n" for p, s, c, n in zip(*self.state().values()))

    @classmethod
    def load(cls, path) -> PhraseTable:
        table = cls([], [], [], [])
        with open(path, encoding="utf-8") as handle:
            check(handle.readline().rstrip("\n") == cls.HEADER, f"{path}: not a phrases file (expected {cls.HEADER!r})")
            for n, line in enumerate(handle, 2):
                parts = line.rstrip("\n").split("\t")
                try:
                    phrase, score, count, found_in = parts[0], float(parts[1]), int(parts[2]), int(parts[3])
                except (IndexError, ValueError):
                    raise Word2VecError(f"{path}:{n}: expected phrase, score, count and pass") from None
                table.phrases.append(phrase)
                table.scores.append(score)
                table.counts.append(count)
                table.passes.append(found_in)
        return table
