"""Word-analogy and word-similarity benchmarks with gensim's protocol, as batched matrix products.

Analogy (``questions-words.txt``): case-insensitive; only the ``restrict_vocab`` most frequent
words are candidates and a question with any word outside them is skipped; the three query
words are excluded; 3CosAdd (gensim's ``most_similar``) or 3CosMul (``most_similar_cosmul``).
Similarity (WordSim-353, SimLex-999): Spearman ρ of cosine similarity with human scores over
pairs whose words are known, plus the out-of-vocabulary ratio (gensim's ``evaluate_word_pairs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torchmetrics.functional import spearman_corrcoef

from sgns.bundled import BENCHMARKS, gensim_test_file
from sgns.errors import check
from sgns.vectors import check_finite, unit_rows


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists() and gensim_test_file(path.name).exists():
        path = gensim_test_file(path.name)
    check(path.is_file(), f"evaluation file not found: {path}")
    return path


def _folded_vocab(words: list[str], restrict_vocab: int, case_insensitive: bool) -> dict[str, int]:
    """Key -> row among the first ``restrict_vocab`` words; with case folding the most frequent variant wins."""
    keys = words[:restrict_vocab]
    if not case_insensitive:
        return {w: i for i, w in enumerate(keys)}
    return {w.upper(): i for i, w in reversed(list(enumerate(keys)))}


@dataclass
class AnalogyResult:
    correct: int
    evaluated: int
    total: int  # questions in the file
    sections: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (correct, evaluated)
    method: str = "add"
    restrict_vocab: int = 30000

    @property
    def accuracy(self) -> float:
        return self.correct / self.evaluated if self.evaluated else 0.0

    def _part(self, syntactic: bool) -> tuple[int, int]:
        parts = [v for k, v in self.sections.items() if k.startswith("gram") == syntactic]
        return sum(c for c, _ in parts), sum(n for _, n in parts)

    @property
    def semantic(self) -> float:
        c, n = self._part(False)
        return c / n if n else 0.0

    @property
    def syntactic(self) -> float:
        c, n = self._part(True)
        return c / n if n else 0.0


def read_analogies(path: str | Path, case_insensitive: bool = True) -> list[tuple[str, list[list[str]]]]:
    """Sections of ``a b c d`` questions; lines starting with ':' open a section."""
    path = _resolve(path)
    sections: list[tuple[str, list[list[str]]]] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for n, line in enumerate(handle, 1):
            if line.startswith(":"):
                sections.append((line[1:].strip(), []))
                continue
            words = line.split()
            if not words:
                continue
            check(
                len(words) == 4 and sections,
                f"{path}:{n}: expected a ': section' line or 4 words, got {line.strip()!r}",
            )
            sections[-1][1].append([w.upper() for w in words] if case_insensitive else words)
    check(bool(sections), f"{path}: no analogy sections found")
    return sections


@torch.no_grad()
def evaluate_word_analogies(
    words: list[str],
    vectors: torch.Tensor,
    path: str | Path = "questions-words.txt",
    restrict_vocab: int = 30000,
    method: str = "add",
    case_insensitive: bool = True,
    batch_size: int = 2048,
) -> AnalogyResult:
    """Accuracy on an analogy file; equals gensim's ``evaluate_word_analogies`` for ``method='add'``."""
    check_finite(vectors, words)
    check(method in ("add", "mul"), f"analogy method must be 'add' (3CosAdd) or 'mul' (3CosMul), got {method!r}")
    sections = read_analogies(path, case_insensitive)
    vocab = _folded_vocab(words, restrict_vocab, case_insensitive)
    unit = unit_rows(torch.as_tensor(vectors)[: min(restrict_vocab, len(words))].float())
    # each candidate row's canonical row (case variants collapse to the most frequent one)
    fold = [w.upper() if case_insensitive else w for w in words[: len(unit)]]
    canonical = torch.tensor([vocab[k] for k in fold], device=unit.device)

    names, rows, total = [], [], 0
    for name, questions in sections:
        total += len(questions)
        for q in questions:
            if all(w in vocab for w in q):
                names.append(name)
                rows.append([vocab[w] for w in q])
    result = AnalogyResult(0, len(rows), total, {name: (0, 0) for name, _ in sections}, method, restrict_vocab)
    if not rows:
        return result
    quads = torch.tensor(rows, device=unit.device)
    variants = (canonical != torch.arange(len(unit), device=unit.device)).nonzero().squeeze(1)
    hits = torch.empty(len(rows), dtype=torch.bool, device=unit.device)
    batch_size = max(1, min(batch_size, (1 << 23) // len(unit)))  # scores: at most 8M floats (32 MB)
    for start in range(0, len(rows), batch_size):
        a, b, c, d = quads[start : start + batch_size].T
        if method == "add":  # argmax cos(x, b - a + c), as gensim's most_similar
            scores = unit_rows(unit[b] - unit[a] + unit[c]) @ unit.T
        else:  # 3CosMul (Levy & Goldberg 2014), cosines shifted to [0, 1], as gensim's most_similar_cosmul
            cos = [(unit[x] @ unit.T + 1) / 2 for x in (a, b, c)]
            scores = cos[1] * cos[2] / (cos[0] + 1e-6)
        excluded = torch.stack([a, b, c], dim=1)  # the query words are never answers
        scores.scatter_(1, excluded, float("-inf"))
        if len(variants):  # nor are their case variants
            clash = (canonical[variants][None, :, None] == excluded[:, None, :]).any(dim=2)
            scores[:, variants] = scores[:, variants].masked_fill(clash, float("-inf"))
        hits[start : start + len(a)] = canonical[scores.argmax(dim=1)] == d
    hits = hits.cpu().tolist()
    for name, hit in zip(names, hits):
        correct, evaluated = result.sections[name]
        result.sections[name] = (correct + hit, evaluated + 1)
    result.correct = sum(hits)
    return result


@dataclass
class SimilarityResult:
    spearman: float
    pairs: int  # pairs evaluated
    oov: int  # pairs skipped for unknown words
    spearman_with_oov: float | None = None  # subword vectors: every pair, unknown words from their n-grams

    @property
    def oov_ratio(self) -> float:
        return self.oov / (self.pairs + self.oov) if self.pairs + self.oov else 0.0


def read_word_pairs(path: str | Path, case_insensitive: bool = True) -> list[tuple[str, str, float]]:
    """``word1<TAB>word2<TAB>score`` lines; ``#`` lines are comments; other lines are skipped as gensim does."""
    path = _resolve(path)
    pairs = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rstrip("\n").split("\t")
            try:
                a, b, score = parts
                pairs.append((a.upper(), b.upper(), float(score)) if case_insensitive else (a, b, float(score)))
            except ValueError:
                continue
    check(bool(pairs), f"{path}: no 'word1<TAB>word2<TAB>score' lines found")
    return pairs


@torch.no_grad()
def evaluate_word_pairs(
    words: list[str],
    vectors: torch.Tensor,
    path: str | Path,
    restrict_vocab: int = 300000,
    case_insensitive: bool = True,
    oov_vector: Callable[[str], np.ndarray] | None = None,
) -> SimilarityResult:
    """Spearman ρ between cosine similarity and human scores; equals gensim's ``evaluate_word_pairs``.
    With ``oov_vector`` (a subword model's vector of any word) the pairs with unknown words are also
    scored, apart: ``spearman_with_oov`` covers every pair."""
    check_finite(vectors, words)
    pairs = read_word_pairs(path, case_insensitive)
    vocab = _folded_vocab(words, restrict_vocab, case_insensitive)
    known = [(vocab[a], vocab[b], s) for a, b, s in pairs if a in vocab and b in vocab]
    oov = len(pairs) - len(known)
    if len(known) < 2:
        return SimilarityResult(float("nan"), len(known), oov)
    unit = unit_rows(torch.as_tensor(vectors).float())
    a, b, gold = (torch.tensor(col) for col in zip(*known))
    cosine = (unit[a.to(unit.device)] * unit[b.to(unit.device)]).sum(dim=1).double().cpu()
    with_oov = None
    if oov_vector is not None and oov:

        def vector(word: str) -> torch.Tensor:  # case folding upper-cases the pairs' words: n-grams of the lower case
            if word in vocab:
                return unit[vocab[word]].cpu()
            return unit_rows(
                torch.as_tensor(oov_vector(word.lower() if case_insensitive else word)).float().unsqueeze(0)
            )[0]

        all_cosines = torch.stack([vector(x) @ vector(y) for x, y, _ in pairs]).double()
        with_oov = float(spearman_corrcoef(all_cosines, torch.tensor([s for _, _, s in pairs]).double()))
    return SimilarityResult(float(spearman_corrcoef(cosine, gold.double())), len(known), oov, with_oov)


def evaluate_all(
    words: list[str],
    vectors: torch.Tensor,
    analogies: list[str] | None = None,
    word_pairs: dict[str, str] | None = None,
    restrict_vocab: int = 30000,
    method: str = "add",
) -> dict[str, float]:
    """All configured benchmarks as flat metrics: ``analogy``, ``analogy_semantic``, ``ws353``, …
    Vectors holding NaN or infinity are refused: no score is reported from them."""
    analogies = ["questions-words.txt"] if analogies is None else analogies
    word_pairs = {"ws353": BENCHMARKS["ws353"], "simlex": BENCHMARKS["simlex"]} if word_pairs is None else word_pairs
    metrics: dict[str, float] = {}
    for i, path in enumerate(analogies):
        name = "analogy" if i == 0 else f"analogy_{Path(path).stem}"
        result = evaluate_word_analogies(words, vectors, path, restrict_vocab, method)
        metrics |= {
            name: result.accuracy,
            f"{name}_semantic": result.semantic,
            f"{name}_syntactic": result.syntactic,
            f"{name}_evaluated": float(result.evaluated),
        }
    for name, path in word_pairs.items():
        result = evaluate_word_pairs(words, vectors, path)
        metrics |= {name: result.spearman, f"{name}_oov": result.oov_ratio}
    return metrics


__all__ = [
    "AnalogyResult",
    "SimilarityResult",
    "evaluate_all",
    "evaluate_word_analogies",
    "evaluate_word_pairs",
    "gensim_test_file",
    "read_analogies",
    "read_word_pairs",
]
