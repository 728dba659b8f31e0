"""Our benchmarks equal gensim's on the same vectors; 3CosMul equals its formula; bad files fail clearly."""

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors

from sgns.errors import Word2VecError
from sgns.evaluation import evaluate_word_analogies, evaluate_word_pairs, gensim_test_file, read_analogies

QUESTIONS = gensim_test_file("questions-words.txt")


def planted_analogy_vectors(dim: int = 30, seed: int = 0) -> KeyedVectors:
    """Random vectors for every analogy word, with two sections' relations planted as offsets
    (so many questions are answerable), and some capitalised variants (case folding)."""
    rng = np.random.default_rng(seed)
    sections = read_analogies(QUESTIONS)
    words = sorted({w.lower() for _, qs in sections for q in qs for w in q})
    vecs = {w: rng.normal(size=dim) for w in words}
    for name, qs in sections:
        if name in ("capital-common-countries", "family", "gram3-comparative"):
            offset = rng.normal(size=dim)
            for a, b, _, _ in qs:
                vecs[b.lower()] = vecs[a.lower()] + offset + 0.3 * rng.normal(size=dim)
    extra = {w.capitalize(): rng.normal(size=dim) for w in words[::7]}
    keys = words + list(extra)  # variants come after: less frequent
    kv = KeyedVectors(vector_size=dim)
    kv.add_vectors(keys, np.array([vecs.get(k, extra.get(k)) for k in keys], dtype=np.float32))
    return kv


@pytest.fixture(params=["planted", "lee_fasttext"])
def kv(request):
    if request.param == "planted":
        return planted_analogy_vectors()
    return KeyedVectors.load_word2vec_format(str(gensim_test_file("lee_fasttext.vec")))  # trained on Lee, has "The"/"the"


@pytest.mark.parametrize("restrict_vocab", [30000, 300])
def test_analogies_equal_gensim(kv, restrict_vocab):
    score, sections = kv.evaluate_word_analogies(str(QUESTIONS), restrict_vocab=restrict_vocab)
    ours = evaluate_word_analogies(kv.index_to_key, torch.from_numpy(kv.vectors), QUESTIONS, restrict_vocab)
    total = sections[-1]
    assert ours.correct == len(total["correct"]) and ours.evaluated == len(total["correct"]) + len(total["incorrect"])
    assert ours.accuracy == pytest.approx(score)
    assert ours.total == 19544
    for s in sections[:-1]:
        assert ours.sections[s["section"]] == (len(s["correct"]), len(s["correct"]) + len(s["incorrect"]))


def test_planted_relations_are_found():
    kv = planted_analogy_vectors()
    ours = evaluate_word_analogies(kv.index_to_key, torch.from_numpy(kv.vectors), QUESTIONS)
    correct, evaluated = ours.sections["capital-common-countries"]
    assert correct / evaluated > 0.9
    assert ours.sections["city-in-state"][0] / ours.sections["city-in-state"][1] < 0.05  # nothing planted
    assert 0 < ours.syntactic < ours.semantic


def test_three_cos_mul_equals_its_formula():
    kv = planted_analogy_vectors(seed=1)
    ours = evaluate_word_analogies(kv.index_to_key, torch.from_numpy(kv.vectors), QUESTIONS, method="mul")
    unit = kv.vectors / np.linalg.norm(kv.vectors, axis=1, keepdims=True)
    index = {w.upper(): i for i, w in reversed(list(enumerate(kv.index_to_key)))}
    canonical = np.array([index[w.upper()] for w in kv.index_to_key])
    correct = evaluated = 0
    for _, questions in read_analogies(QUESTIONS):
        for a, b, c, d in questions:
            if not all(w in index for w in (a, b, c, d)):
                continue
            cos = [(unit @ unit[index[w]] + 1) / 2 for w in (a, b, c)]
            scores = cos[1] * cos[2] / (cos[0] + 1e-6)
            scores[np.isin(canonical, [index[a], index[b], index[c]])] = -np.inf
            correct += canonical[np.argmax(scores)] == index[d]
            evaluated += 1
    assert (ours.correct, ours.evaluated) == (correct, evaluated)
    assert ours.correct > 0


@pytest.mark.parametrize("name", ["wordsim353.tsv", "simlex999.txt"])
def test_word_pairs_equal_gensim(kv, name):
    _, spearman, oov_ratio = kv.evaluate_word_pairs(str(gensim_test_file(name)))
    ours = evaluate_word_pairs(kv.index_to_key, torch.from_numpy(kv.vectors), gensim_test_file(name))
    assert ours.spearman == pytest.approx(spearman.statistic, abs=1e-6)
    assert 100 * ours.oov_ratio == pytest.approx(oov_ratio)


def test_missing_and_malformed_files(tmp_path):
    words, vectors = ["a", "b"], torch.eye(2)
    with pytest.raises(Word2VecError, match="evaluation file not found"):
        evaluate_word_analogies(words, vectors, tmp_path / "nope.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text(": section\na b c\n")
    with pytest.raises(Word2VecError, match="expected a ': section' line or 4 words"):
        evaluate_word_analogies(words, vectors, bad)
    bad.write_text("no tabs here\n")
    with pytest.raises(Word2VecError, match="no 'word1<TAB>word2<TAB>score' lines"):
        evaluate_word_pairs(words, vectors, bad)


def test_one_evaluation_file_may_be_given_without_brackets():
    """callbacks.word_vectors.analogies=questions-words.txt was read as a list of its letters
    ("evaluation file not found: q"), and word_pairs=FILE was a traceback."""
    from sgns.callbacks import WordVectorEvaluation

    callback = WordVectorEvaluation(analogies="questions-words.txt", word_pairs="wordsim353.tsv", monitor="wordsim353")
    assert callback.analogies == ["questions-words.txt"]
    assert callback.word_pairs == {"wordsim353": "wordsim353.tsv"}
    with pytest.raises(Word2VecError, match="word_pairs must map names to files, got 3"):
        WordVectorEvaluation(word_pairs=3)
