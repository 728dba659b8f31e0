"""init_from: a new run from an earlier run's tables or from word2vec-format vectors, on new text."""

import random

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors

from conftest import compose_train, planted_corpus
from sgns.outputs import DATA_KEY, VECTORS_KEY
from sgns.train import train
from sgns.vectors import WordVectors


def overrides(corpus, *extra):
    return [f"data.path={corpus}", "data=text_file", "data.min_count=3", "data.sample=0", "data.batch_size=256",
            "data.update_size=64", "data.val_fraction=0", "model.net.embedding_dim=16", "trainer.max_epochs=3",
            "logger=none", "probe_words=[]", "callbacks.progress_bar.refresh_rate=0", *extra]  # fmt: skip


def planted_b(path, groups=3, size=5, sentences=900, seed=1, also=()):
    """New words n{g}w{i} in groups that only co-occur, plus sentences of the words ``also``."""
    rng = random.Random(seed)
    words = [[f"n{g}w{i}" for i in range(size)] for g in range(groups)] + ([list(also)] if also else [])
    with open(path, "w") as out:
        for _ in range(sentences):
            group = words[rng.randrange(len(words))]
            out.write(" ".join(rng.choice(group) for _ in range(10)) + "\n")
    return words


def vectors_of(checkpoint):
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return state[DATA_KEY]["words"], state[DATA_KEY]["counts"], state["state_dict"][VECTORS_KEY]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    root = tmp_path_factory.mktemp("a")
    groups = planted_corpus(root / "a.txt", sentences=600)
    train(compose_train(root / "run", overrides(root / "a.txt")))
    return root / "run", groups


@pytest.mark.parametrize("model", ["skipgram", "cbow"])
def test_continuing_on_new_text_keeps_the_old_rows_and_learns_the_new_words(run_a, tmp_path, model):
    earlier, a_groups = run_a
    if model == "cbow":  # (an earlier CBOW run for the CBOW case)
        corpus_a = tmp_path / "a.txt"
        planted_corpus(corpus_a, sentences=600)
        earlier = tmp_path / "cbow-a"
        train(compose_train(earlier, overrides(corpus_a, "model=cbow")))
    b_groups = planted_b(tmp_path / "b.txt", also=a_groups[0])  # A's first group occurs in B too
    run = tmp_path / "run"
    train(compose_train(run, overrides(tmp_path / "b.txt", f"model={model}", f"init_from={earlier / 'last.ckpt'}",
                                       "data.update_vocab=true")))  # fmt: skip
    words_a, counts_a, rows_a = vectors_of(earlier / "last.ckpt")
    words, counts, rows = vectors_of(run / "last.ckpt")
    assert words[: len(words_a)] == words_a  # the earlier words keep their ids
    assert set(words[len(words_a) :]) == {w for g in b_groups[:3] for w in g}  # and every new word joins
    absent = [i for i, w in enumerate(words_a) if not w.startswith("g0")]
    assert torch.equal(rows[absent], rows_a[absent])  # never in B: bit for bit
    present = [i for i, w in enumerate(words_a) if w.startswith("g0")]
    assert not torch.equal(rows[present], rows_a[present])
    counted_b = {w: c for w, c in zip(*np.unique((tmp_path / "b.txt").read_text().split(), return_counts=True))}
    assert counts == [c + counted_b.get(w, 0) for w, c in zip(words_a, counts_a)] + [counted_b[w] for w in words[len(words_a):]]  # fmt: skip
    vectors = WordVectors.load_word2vec_format(run / "vectors.bin")
    assert vectors.words == words
    for group in b_groups[:3]:  # the new words learnt: each group's members are each other's neighbours
        for word in group:
            assert {w for w, _ in vectors.most_similar([word], topn=len(group) - 1)} == set(group) - {word}


def test_without_update_vocab_the_new_corpus_keeps_the_earlier_vocabulary(run_a, tmp_path):
    earlier, a_groups = run_a
    planted_b(tmp_path / "b.txt", also=a_groups[0] + a_groups[1])
    run = tmp_path / "run"
    train(compose_train(run, overrides(tmp_path / "b.txt", f"init_from={earlier / 'last.ckpt'}")))
    assert vectors_of(run / "last.ckpt")[0] == vectors_of(earlier / "last.ckpt")[0]


def test_gensim_vectors_are_where_the_first_epoch_starts(tmp_path):
    """A gensim file in which n0w0's nearest word is known: after training with a step too small to
    move it, it still is, and the file's words that the corpus lacks keep their vectors exactly."""
    b_groups = planted_b(tmp_path / "b.txt")
    rng = np.random.default_rng(0)
    words = [w for g in b_groups for w in g] + ["elsewhere", "nowhere"]
    table = rng.normal(size=(len(words), 16)).astype(np.float32)
    table[words.index("n1w3")] = table[words.index("n0w0")] + 0.01  # n0w0's nearest: n1w3, across the groups
    kv = KeyedVectors(16)
    kv.add_vectors(words, table)
    kv.save_word2vec_format(str(tmp_path / "gensim.bin"), binary=True)
    run = tmp_path / "run"
    train(compose_train(run, overrides(tmp_path / "b.txt", f"init_from={tmp_path / 'gensim.bin'}", "data.update_vocab=true",
                                       "model.alpha=1e-7", "model.min_alpha=1e-8", "trainer.max_epochs=1")))  # fmt: skip
    vectors = WordVectors.load_word2vec_format(run / "vectors.bin")
    assert vectors.words == words
    assert vectors.most_similar(["n0w0"], topn=1)[0][0] == "n1w3"
    for word in ("elsewhere", "nowhere"):
        assert np.array_equal(vectors.vectors[vectors.index(word)], table[words.index(word)])


def test_fasttext_continues_with_its_ngram_rows_and_refuses_other_buckets(tmp_path, capsys):
    from sgns.train import one_line_errors

    planted_corpus(tmp_path / "a.txt", sentences=300)
    planted_b(tmp_path / "b.txt", sentences=300)
    fasttext = ["model=fasttext", "model.net.buckets=1000"]
    train(compose_train(tmp_path / "a", overrides(tmp_path / "a.txt", *fasttext, "trainer.max_epochs=1")))
    train(compose_train(tmp_path / "b", overrides(tmp_path / "b.txt", *fasttext, "trainer.max_epochs=1", "model.alpha=1e-9",
                                                  "model.min_alpha=1e-10", "data.update_vocab=true", f"init_from={tmp_path / 'a' / 'last.ckpt'}")))  # fmt: skip
    ngrams = "net.ngram_embed.weight"
    before = torch.load(tmp_path / "a" / "last.ckpt", weights_only=False)["state_dict"][ngrams]
    after = torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)["state_dict"][ngrams]
    assert torch.allclose(before, after, atol=1e-5) and before.abs().sum() > 0  # (alpha 1e-9: moved by 2e-6 at most)
    cfg = compose_train(tmp_path / "c", overrides(tmp_path / "b.txt", "model=fasttext", "model.net.buckets=2000",
                                                  f"init_from={tmp_path / 'a' / 'last.ckpt'}"))  # fmt: skip
    with pytest.raises(SystemExit) as stop, one_line_errors():
        train(cfg)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "was trained with model.net.buckets=1000; this run has model.net.buckets=2000" in err


def test_a_continued_run_resumes_with_its_init_from(run_a, tmp_path, capsys):
    from sgns.train import one_line_errors

    earlier, _ = run_a
    planted_b(tmp_path / "b.txt", sentences=300)
    run = tmp_path / "run"
    continued = [f"init_from={earlier / 'last.ckpt'}", "data.update_vocab=true"]
    train(compose_train(run, overrides(tmp_path / "b.txt", *continued, "trainer.max_epochs=1")))
    words = vectors_of(run / "last.ckpt")[0]
    resume = [f"ckpt_path={run / 'last.ckpt'}", "trainer.max_epochs=2"]
    with pytest.raises(SystemExit), one_line_errors():
        train(compose_train(run, overrides(tmp_path / "b.txt", *resume, "data.update_vocab=true")))
    assert "a run started with init_from resumes with the same init_from" in capsys.readouterr().err
    train(compose_train(run, overrides(tmp_path / "b.txt", *continued, *resume)))
    state = torch.load(run / "last.ckpt", weights_only=False)
    assert state[DATA_KEY]["words"] == words and state["epoch"] == 2
