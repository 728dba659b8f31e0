"""word2vec file formats round-trip through gensim and word2vec.c conventions; queries."""

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors

from sgns.errors import UnknownWordError, Word2VecError
from sgns.evaluation import evaluate_word_analogies, evaluate_word_pairs, gensim_test_file
from sgns.vectors import WordVectors


@pytest.fixture
def vectors():
    rng = np.random.default_rng(0)
    words = ["the", "king", "queen", "man", "woman", "café"]
    return WordVectors(words, rng.normal(size=(len(words), 7)).astype(np.float32), counts=[60, 50, 40, 30, 20, 10])


@pytest.mark.parametrize("binary", [False, True])
def test_gensim_loads_our_files_exactly(vectors, tmp_path, binary):
    path = tmp_path / ("v.bin" if binary else "v.txt")
    vectors.save_word2vec_format(path, binary=binary)
    kv = KeyedVectors.load_word2vec_format(str(path), binary=binary)
    assert kv.index_to_key == vectors.words  # row order kept: descending count
    assert np.array_equal(kv.vectors, vectors.vectors)  # %.9g is exact for float32


@pytest.mark.parametrize("binary", [False, True])
def test_we_load_gensim_files_exactly(vectors, tmp_path, binary):
    kv = KeyedVectors(vector_size=7)
    kv.add_vectors(vectors.words, vectors.vectors)
    path = tmp_path / "g"
    kv.save_word2vec_format(str(path), binary=binary)  # gensim: no newline after binary rows
    loaded = WordVectors.load_word2vec_format(path, binary=binary)
    assert loaded.words == vectors.words and np.array_equal(loaded.vectors, vectors.vectors)


def test_we_load_word2vec_c_conventions(vectors, tmp_path):
    # C text: "%lf " with a trailing space; C binary: a newline after each row
    text = tmp_path / "c.txt"
    with open(text, "w") as out:
        out.write(f"{len(vectors)} 7\n")
        for w, row in zip(vectors.words, vectors.vectors):
            out.write(w + " " + "".join("%lf " % x for x in row) + "\n")
    loaded = WordVectors.load_word2vec_format(text, binary=False)
    assert loaded.words == vectors.words and np.allclose(loaded.vectors, vectors.vectors, atol=1e-6)
    binary = tmp_path / "c.bin"
    vectors.save_word2vec_format(binary, binary=True)
    raw = binary.read_bytes()
    rows = sum(len(w.encode()) + 1 + 4 * 7 + 1 for w in vectors.words)  # word, space, floats, newline (C)
    assert len(raw) == len(b"6 7\n") + rows and raw.endswith(b"\n")
    loaded = WordVectors.load_word2vec_format(binary)
    assert loaded.words == vectors.words and np.array_equal(loaded.vectors, vectors.vectors)


def test_truncated_or_garbage_files_are_refused(vectors, tmp_path):
    path = tmp_path / "v.bin"
    vectors.save_word2vec_format(path, binary=True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(Word2VecError, match="truncated"):
        WordVectors.load_word2vec_format(path)
    (tmp_path / "x.txt").write_text("hello world\n")
    with pytest.raises(Word2VecError, match="first line"):
        WordVectors.load_word2vec_format(tmp_path / "x.txt")
    with pytest.raises(Word2VecError, match="not found"):
        WordVectors.load_word2vec_format(tmp_path / "missing.txt")


def test_queries_match_gensim(vectors):
    kv = KeyedVectors(vector_size=7)
    kv.add_vectors(vectors.words, vectors.vectors)
    assert vectors.similarity("king", "queen") == pytest.approx(kv.similarity("king", "queen"), abs=1e-6)
    ours = vectors.most_similar(positive=["king", "woman"], negative=["man"], topn=3)
    theirs = kv.most_similar(positive=["king", "woman"], negative=["man"], topn=3)
    assert [w for w, _ in ours] == [w for w, _ in theirs]
    assert np.allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-5)


def test_unknown_words_get_a_clear_error(vectors):
    with pytest.raises(UnknownWordError, match=r"'kingdom' is not in the vocabulary \(6 words\)$"):
        vectors.most_similar("kingdom")
    with pytest.raises(UnknownWordError, match="'King' is not in the vocabulary .*; 'king' is"):
        vectors.most_similar("King")
    with pytest.raises(UnknownWordError, match="'CAFÉ' is not in the vocabulary .*; 'café' is"):
        vectors.similarity("CAFÉ", "the")


def test_a_query_whose_words_cancel_out_is_refused(vectors):
    """king - king is the zero vector: every cosine was 0 and the answer an arbitrary list."""
    with pytest.raises(Word2VecError, match="the query vector is zero"):
        vectors.most_similar("king", negative="king")
    assert len(vectors.most_similar("king", negative="queen", topn=3)) == 3


@pytest.mark.parametrize("binary", [False, True])
def test_non_finite_vectors_are_refused_with_the_row(tmp_path, binary):
    """A file holding NaN loaded, scored plausible Spearman values and answered nothing."""
    vectors = np.ones((4, 3), dtype=np.float32)
    vectors[2, 1] = np.nan
    kv = KeyedVectors(vector_size=3)
    kv.add_vectors(["a", "b", "c", "d"], vectors)
    path = tmp_path / ("v.bin" if binary else "v.txt")
    kv.save_word2vec_format(str(path), binary=binary)
    with pytest.raises(Word2VecError, match=r"row 3 \('c'\) holds NaN or infinity"):
        WordVectors.load_word2vec_format(path)
    with pytest.raises(Word2VecError, match="holds NaN or infinity"):
        evaluate_word_pairs(["a", "b", "c", "d"], torch.from_numpy(vectors), gensim_test_file("wordsim353.tsv"))
    with pytest.raises(Word2VecError, match="holds NaN or infinity"):
        evaluate_word_analogies(["a", "b", "c", "d"], torch.from_numpy(vectors))


@pytest.mark.parametrize("binary", [False, True])
def test_a_file_with_a_repeated_word_keeps_its_first_row_as_gensim(tmp_path, caplog, binary):
    """A repeated word pointed at its last row, and queries listed it twice."""
    rows = [("a", [1.0, 0.0]), ("b", [0.0, 1.0]), ("a", [0.6, 0.8]), ("c", [0.8, 0.6])]
    path = tmp_path / f"dup.{'bin' if binary else 'txt'}"
    with open(path, "wb") as out:
        out.write(b"4 2\n")
        for word, row in rows:
            out.write(word.encode() + b" " + (np.array(row, "<f4").tobytes() if binary else " ".join(map(str, row)).encode()) + b"\n")
    ours = WordVectors.load_word2vec_format(path)
    theirs = KeyedVectors.load_word2vec_format(str(path), binary=binary)
    assert ours.words == theirs.index_to_key[:3] == ["a", "b", "c"]  # (gensim 4.4 leaves an empty 4th key)
    assert np.array_equal(ours.vectors, theirs.vectors[:3])
    assert [w for w, _ in ours.most_similar("c", topn=5)] == ["a", "b"]
    assert "1 row(s) repeat a word read before (first: 'a', rows 1 and 3)" in caplog.text


def test_rows_beyond_the_header_are_not_read_and_said_so(tmp_path, caplog):
    path = tmp_path / "more.txt"
    path.write_text("2 2\na 1 0\nb 0 1\nc 1 1\n")
    assert WordVectors.load_word2vec_format(path).words == KeyedVectors.load_word2vec_format(str(path)).index_to_key == ["a", "b"]
    assert "more rows follow the 2 its header promises" in caplog.text
