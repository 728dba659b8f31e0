"""The subword family end to end: it learns, an unseen inflection lands among its stem's words,
its fastText ``.bin`` round-trips through gensim with the same vectors for every word (in and out
of the vocabulary), the CLI answers for unseen words, and evaluation scores their pairs apart."""

import logging
import shutil
import struct
import subprocess
import sys
import random

import numpy as np
import pytest
from gensim.models.fasttext import load_facebook_model
from scipy.stats import spearmanr

from conftest import compose_train
from sgns.cli import load_vectors, main
from sgns.evaluation import evaluate_word_pairs
from sgns.models.fasttext import FastText
from sgns.train import train
from sgns.vectors import SubwordVectors

GROUPS = 8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Eight families of forms (stem, stem+ing, stem+ed, stem+er) with four topic words each, every
    sentence drawn from one family; stem+s is never seen."""
    out = tmp_path_factory.mktemp("fasttext")
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    stems = ["".join(rng.choice(letters) for _ in range(6)) for _ in range(GROUPS)]
    topics = [["".join(rng.choice(letters) for _ in range(5)) for _ in range(4)] for _ in range(GROUPS)]
    families = [[stem, stem + "ing", stem + "ed", stem + "er", *topic] for stem, topic in zip(stems, topics)]
    with open(out / "corpus.txt", "w") as text:
        for _ in range(2000):
            family = families[rng.randrange(GROUPS)]
            text.write(" ".join(rng.choice(family) for _ in range(10)) + "\n")
    train(compose_train(out / "run", [
        f"data.path={out / 'corpus.txt'}", "data.min_count=1", "data.sample=0", "data.batch_size=256", "data.update_size=64",
        "model=fasttext", "model.net.buckets=20000", "model.net.embedding_dim=16", "trainer.max_epochs=3", "logger=none",
        "probe_words=[]",
    ]))  # fmt: skip
    return out / "run", stems, topics, families


def test_an_unseen_inflection_lands_among_its_stems_words(run):
    out, stems, topics, families = run
    vectors = load_vectors(out / "fasttext.bin")
    assert isinstance(vectors, SubwordVectors) and stems[0] + "s" not in vectors
    all_topics = {t for topic in topics for t in topic}
    for stem, topic, family in zip(stems, topics, families):
        ranked = [w for w, _ in vectors.most_similar(stem + "s", topn=len(vectors))]
        assert set(ranked[:3]) <= set(family), (stem, ranked[:5])
        # learned, not spelled: the nearest topic word (no n-gram in common with the stem) is its family's
        assert next(w for w in ranked if w in all_topics) in topic, (stem, ranked[:8])


def test_the_planted_families_are_learned(run):
    out, _, _, families = run
    vectors = load_vectors(out / "vectors.bin")
    for family in families:
        for word in family[4:]:
            assert {w for w, _ in vectors.most_similar(word, topn=3)} <= set(family), word


def test_the_fasttext_bin_gives_gensim_and_us_the_same_vectors(run):
    out, stems, _, _ = run
    ours, exported, from_checkpoint = load_vectors(out / "fasttext.bin"), load_vectors(out / "vectors.bin"), load_vectors(out / "last.ckpt")
    gensim = load_facebook_model(str(out / "fasttext.bin")).wv
    assert gensim.index_to_key == ours.words == exported.words and (gensim.min_n, gensim.max_n, gensim.bucket) == (3, 6, 20000)
    assert np.allclose(gensim.vectors, exported.vectors, atol=1e-6) and np.allclose(ours.vectors, exported.vectors, atol=1e-6)
    assert np.allclose(from_checkpoint.vectors, exported.vectors, atol=1e-6)
    for word in [stems[0] + "s", "unseen", "naïveté", "日本"]:
        assert np.allclose(ours[word], gensim[word], atol=1e-6), word
        assert np.allclose(from_checkpoint[word], ours[word], atol=1e-6), word
    assert [int(ours.counts[i]) for i in range(3)] == [gensim.get_vecattr(w, "count") for w in gensim.index_to_key[:3]]


def test_the_cli_answers_for_unseen_words(run, capsys):
    out, stems, _, families = run
    assert main(["most-similar", str(out / "fasttext.bin"), stems[1] + "s", "--topn", "2"]) == 0
    assert capsys.readouterr().out.split()[0] in families[1]
    assert main(["similarity", str(out / "last.ckpt"), stems[1] + "s", stems[1]]) == 0
    assert float(capsys.readouterr().out) > 0.5
    assert main(["most-similar", str(out / "vectors.bin"), stems[1] + "s"]) == 2  # word2vec vectors have no n-grams
    assert "not in the vocabulary" in capsys.readouterr().err


def test_word_pairs_with_unknown_words_are_scored_apart(run, tmp_path):
    out, stems, topics, _ = run
    vectors = load_vectors(out / "fasttext.bin")
    pairs = tmp_path / "pairs.tsv"
    rows = [(stems[0] + "s", stems[0], 9.0), (stems[0] + "s", topics[0][0], 7.0), (stems[0] + "s", topics[3][0], 1.0),
            (topics[0][1], topics[0][2], 8.0), (topics[1][1], topics[2][2], 2.0), (stems[2], topics[5][1], 1.5)]  # fmt: skip
    pairs.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in rows))
    plain = evaluate_word_pairs(vectors.words, vectors.vectors, pairs)
    scored = evaluate_word_pairs(vectors.words, vectors.vectors, pairs, oov_vector=vectors.get_vector)
    assert (plain.pairs, plain.oov, plain.spearman_with_oov) == (3, 3, None)
    cosine = [vectors.similarity(a, b) for a, b, _ in rows]  # every pair, unknown words from their n-grams
    assert scored.spearman == plain.spearman
    assert scored.spearman_with_oov == pytest.approx(spearmanr(cosine, [s for _, _, s in rows]).statistic, abs=1e-6)


def test_updates_keep_to_the_familys_limit(run, tmp_path, monkeypatch, caplog):
    """data.update_size above the subword family's 1,024 pairs is lowered, and said so: its
    n-gram rows would sum too many pairs' gradients (they diverge at 4,096 on real corpora). Each
    lock-free worker takes updates of that size, as one process does."""
    sizes = []
    bag = FastText.bag  # (every update, or a step's updates joined, makes its bag once)

    def record(self, batch, *args, **kwargs):
        sizes.extend([len(batch)] if batch.offsets is None else batch.offsets.diff().tolist())
        return bag(self, batch, *args, **kwargs)

    monkeypatch.setattr(FastText, "bag", record)
    out = run[0].parent
    with caplog.at_level(logging.INFO, logger="sgns.data.datamodule"):
        train(compose_train(tmp_path / "run", [
            f"data.path={out / 'corpus.txt'}", "data.min_count=1", "data.sample=0", "data.batch_size=8192", "data.update_size=4096",
            "model=fasttext", "model.net.buckets=2000", "model.net.embedding_dim=8", "trainer.max_epochs=1", "+trainer.max_steps=2",
            "logger=none", "probe_words=[]", "data.val_fraction=0",
        ]))  # fmt: skip
    assert sizes and max(sizes) == 1024 and len(sizes) == 2 * (8192 // 1024), sizes
    assert "data.update_size=4096 lowered to 1024" in caplog.text


@pytest.mark.parametrize("model, order, expected", [("skipgram", None, "sides"), ("fasttext", None, "windows"),
                                                    ("fasttext", "sides", "sides"), ("skipgram", "windows", "windows")])  # fmt: skip
def test_pairs_come_in_the_familys_order_unless_data_pair_order_says(run, tmp_path, caplog, model, order, expected):
    """data.pair_order=null (the default) takes the family's order: whole windows for the subword
    family (half the distinct centres whose n-grams an update gathers and scatters), sides for
    skip-gram; a value given is kept. The order reaches the steps and the resume check."""
    from hydra.utils import instantiate

    overrides = [f"data.path={run[0].parent / 'corpus.txt'}", "data.min_count=1", f"model={model}", "model.net.buckets=2000"][: 4 if model == "fasttext" else 3]
    cfg = compose_train(tmp_path, overrides + ([f"data.pair_order={order}"] if order else []))
    datamodule, module = instantiate(cfg.data), instantiate(cfg.model)
    with caplog.at_level(logging.INFO, logger="sgns.data.datamodule"):
        datamodule.follow_model(module)
    assert ("the model's order: windows" in caplog.text) == (model == "fasttext" and order is None)  # said when it is not sides
    datamodule.prepare()
    assert datamodule.train_set.pair_order == expected
    assert datamodule.resume_settings(1, "cpu")["data.pair_order"] == expected


def _sgns(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sgns.cli", *args], capture_output=True, timeout=timeout)


@pytest.mark.parametrize("damage", ["inside the vocabulary", "inside the tables", "a header of 10^9 words", "bytes after the end"])
def test_a_truncated_or_crafted_model_is_one_line_not_a_hang(run, tmp_path, damage):
    """gensim's reader spun at 100 % CPU for ever on a file that ends inside a word, and on a header
    that promises 10^9 words."""
    data = bytearray((run[0] / "fasttext.bin").read_bytes())
    if damage == "inside the vocabulary":
        data = data[:200]
    elif damage == "inside the tables":
        data = data[: len(data) // 2]
    elif damage == "a header of 10^9 words":
        data[64:72] = struct.pack("<2i", 10**9, 10**9)
    else:
        data += b"\0" * 8
    (tmp_path / "model.bin").write_bytes(bytes(data))
    result = _sgns("most-similar", str(tmp_path / "model.bin"), "word", timeout=30)
    assert result.returncode == 2 and result.stderr.decode().startswith(f"error: {tmp_path / 'model.bin'}: not a complete fastText model")
    assert result.stderr.count(b"\n") == 1, result.stderr


def test_a_query_word_that_is_not_utf8_is_answered(run):
    """`sgns most-similar fasttext.bin $'caf\\xe9\\xff'` was a UnicodeEncodeError traceback from the n-gram hashing."""
    word = b"caf\xe9\xff"
    result = subprocess.run([sys.executable.encode(), b"-m", b"sgns.cli", b"most-similar", str(run[0] / "fasttext.bin").encode(), word],
                            capture_output=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stderr == b"" and len(result.stdout.splitlines()) == 10, result.stderr
    surrogates = word.decode("utf-8", "surrogateescape")
    assert load_vectors(run[0] / "fasttext.bin").get_vector(surrogates).shape == (16,)


def test_overwriting_a_fasttext_run_with_skipgram_leaves_no_stale_model(run, tmp_path):
    """overwrite=true with skip-gram left the old fasttext.bin beside the new vectors; and
    export.text=false left the old vectors.txt."""
    shutil.copytree(run[0], tmp_path / "run")
    corpus = run[0].parent / "corpus.txt"
    train(compose_train(tmp_path / "run", [f"data.path={corpus}", "data.min_count=1", "trainer.max_epochs=1", "logger=none",
                                           "probe_words=[]", "model.net.embedding_dim=8", "overwrite=true", "export.text=false"]))  # fmt: skip
    assert not (tmp_path / "run" / "fasttext.bin").exists() and not (tmp_path / "run" / "vectors.txt").exists()
    assert load_vectors(tmp_path / "run" / "vectors.bin").vector_size == 8


def test_the_checkpoint_holds_the_nets_arguments_and_the_cli_rebuilds_from_them(run, tmp_path):
    """cli.py restated min_n and max_n defaults; the checkpoint now holds the net's arguments."""
    corpus = run[0].parent / "corpus.txt"
    train(compose_train(tmp_path, [f"data.path={corpus}", "data.min_count=1", "model=fasttext", "model.net.min_n=2",
                                   "model.net.max_n=4", "model.net.buckets=3000", "model.net.embedding_dim=8",
                                   "trainer.max_epochs=1", "logger=none", "probe_words=[]"]))  # fmt: skip
    import torch

    args = torch.load(tmp_path / "last.ckpt", weights_only=True, map_location="cpu")["model_args"]
    assert args["net"] == "FastText" and (args["min_n"], args["max_n"], args["buckets"], args["embedding_dim"]) == (2, 4, 3000, 8)
    unseen = "qzxwv"
    assert np.allclose(load_vectors(tmp_path / "last.ckpt").get_vector(unseen), load_vectors(tmp_path / "fasttext.bin").get_vector(unseen), atol=1e-6)
