"""Phrases (data.phrases): the scores worked by hand, gensim's phrasegrams and joins, the preparation
pipeline around them, and `sgns phrases`."""

import logging
import math

import numpy as np
import pyarrow as pa
import pytest
from gensim.models.phrases import ENGLISH_CONNECTOR_WORDS, Phrases
from gensim.test.utils import datapath

from conftest import compose_train
from sgns import cli
from sgns.data import phrases as P
from sgns.data import prepare as prepare_module
from sgns.data.cache import Settings, entry_name
from sgns.data.prepare import prepare_corpus
from sgns.data.tokenize import tokenize_batch
from sgns.train import train


def settings(passes=1, scoring="default", threshold=None, min_count=5, connectors="english"):
    return P.PhraseSettings.from_config(passes, scoring, threshold, min_count, connectors)


def write_planted(path):
    """Collocations whose scores are worked out by hand below (N = 352 tokens):
    - ``new york`` 10 times; ``new`` 20 times (10 more in ``new idea``), ``york`` 10;
    - ``new idea`` 10 times, ``idea`` 20 times (10 more in ``old idea``);
    - ``bank of america`` 8 times, across the connector ``of``;
    - ``old`` and ``the`` (a connector) filling lines of their own."""
    lines = ["new york"] * 10 + ["new idea"] * 10 + ["old idea"] * 10 + ["bank of america"] * 8
    lines += ["old the old the"] * 67  # 268 tokens
    path.write_text("\n".join(lines) + "\n")
    return sum(len(line.split()) for line in lines)


def test_planted_collocations_are_joined_exactly_above_the_threshold_worked_by_hand(tmp_path):
    corpus = tmp_path / "planted.txt"
    N = write_planted(corpus)
    assert N == 352
    new_york = (10 - 5) / (20 * 10) * N  # word2phrase: (count(ab) - min_count) / (count(a) count(b)) x N = 8.8
    new_idea = (10 - 5) / (20 * 20) * N  # 4.4
    bank_of_america = (8 - 5) / (8 * 8) * N  # 16.5 (and "old the old": (67 - 5) / 144^2 x N = 1.05)
    cases = [  # threshold -> phrases joined
        (new_idea - 1e-9, {"bank_of_america", "new_york", "new_idea"}),
        (new_idea, {"bank_of_america", "new_york"}),  # a phrase scores *above* the threshold
        (new_york, {"bank_of_america"}),
        (bank_of_america, set()),
    ]
    expected = {"new_york": new_york, "new_idea": new_idea, "bank_of_america": bank_of_america}
    for n, (threshold, joined) in enumerate(cases):
        prepared = prepare_corpus(
            corpus, min_count=1, cache_dir=tmp_path / f"cache{n}", phrases=settings(threshold=threshold)
        )
        assert {w for w in prepared.vocab.words if "_" in w} == joined, threshold
        assert dict(zip(prepared.phrases.phrases, prepared.phrases.scores)) == pytest.approx(
            {k: expected[k] for k in joined}, rel=1e-12
        )
        counts = dict(zip(prepared.vocab.words, prepared.vocab.counts.tolist()))
        if "new_york" in joined:  # every occurrence joined: what is left of its words is counted
            assert counts["new_york"] == 10 and "york" not in counts
            assert counts.get("new", 0) == (0 if "new_idea" in joined else 10)


def test_counts_after_joining_are_the_joined_texts():
    flat, lengths = tokenize_batch(pa.array(["new york is big", "new york", "old new"]), "lower")
    out, out_lengths = P.join(flat, lengths, pa.array(["new york"]), P.ENGLISH_CONNECTOR_WORDS)
    assert out.to_pylist() == ["new_york", "is", "big", "new_york", "old", "new"]
    assert out_lengths.tolist() == [3, 1, 2]


def test_joining_takes_phrases_from_the_left_and_never_across_lines():
    text = ["a b c d e", "a b", "b c"]  # phrases "a b", "b c", "c d": a_b c_d e; a_b; b_c
    flat, lengths = tokenize_batch(pa.array(text), "lower")
    out, out_lengths = P.join(flat, lengths, pa.array(["a b", "b c", "c d", "b a"]), ())
    assert out.to_pylist() == ["a_b", "c_d", "e", "a_b", "b_c"]
    assert out_lengths.tolist() == [3, 1, 1]
    flat, lengths = tokenize_batch(pa.array(["x a", "b y"]), "lower")  # "a b" spans a line end: not a phrase
    assert P.join(flat, lengths, pa.array(["a b"]), ())[0].to_pylist() == ["x", "a", "b", "y"]


def test_connectors_sit_inside_a_phrase_never_at_its_ends():
    flat, lengths = tokenize_batch(pa.array(["the bank of the america of", "of bank"]), "lower")
    words, candidates = P.count_candidates(flat, lengths, P.ENGLISH_CONNECTOR_WORDS)
    assert dict(zip(*[c.to_pylist() for c in candidates.flatten()])) == {"bank of the america": 1}
    assert dict(zip(*[c.to_pylist() for c in words.flatten()])) == {"bank": 2, "america": 1}
    out, _ = P.join(flat, lengths, pa.array(["bank of the america"]), P.ENGLISH_CONNECTOR_WORDS)
    assert out.to_pylist() == ["the", "bank_of_the_america", "of", "of", "bank"]


@pytest.fixture(scope="module")
def lee():
    """The Lee corpus as our tokenizer reads it: flat tokens, line lengths, and gensim's sentences."""
    lines = open(datapath("lee_background.cor"), encoding="utf-8").read().splitlines()
    flat, lengths = tokenize_batch(pa.array(lines), "lower")
    tokens, ends = flat.to_pylist(), np.cumsum(lengths)
    return flat, lengths, [tokens[e - n : e] for n, e in zip(lengths.tolist(), ends.tolist())]


@pytest.mark.parametrize("scoring, threshold", [("default", 100.0), ("default", 400.0), ("npmi", 0.5), ("npmi", 0.2)])
def test_phrasegrams_and_joins_are_gensims(lee, scoring, threshold):
    """On the same tokens, our phrases are gensim's: npmi at the same threshold; default at the
    threshold that word2phrase's N makes of gensim's vocabulary-size factor (sgns.data.phrases)."""
    flat, lengths, sentences = lee
    s = settings(scoring=scoring, threshold=threshold)
    words, candidates = P.count_candidates(flat, lengths, s.connectors)
    keys, scores, counts = P.score(
        candidates.field("values"),
        candidates.field("counts").to_numpy(),
        words.field("values"),
        words.field("counts").to_numpy(),
        len(flat),
        s,
    )
    theirs = Phrases(sentences, min_count=5, threshold=1.0, connector_words=ENGLISH_CONNECTOR_WORDS, scoring=scoring)
    assert len(theirs.vocab) == len(words) + len(candidates) and theirs.corpus_word_count == len(flat)
    factor = len(flat) / len(theirs.vocab) if scoring == "default" else 1.0  # ours = gensim's x factor
    theirs.threshold = threshold / factor
    phrasegrams = theirs.export_phrases()
    assert len(keys) > 20
    assert set(P.display(keys)) == set(phrasegrams)
    assert scores == pytest.approx([phrasegrams[p] * factor for p in P.display(keys)], rel=1e-12)
    assert counts.tolist() == [theirs.vocab[p] for p in P.display(keys)]
    frozen = theirs.freeze()
    joined, _ = P.join(flat, lengths, keys, s.connectors)
    assert joined.to_pylist() == [w for sentence in frozen[sentences] for w in sentence]


def test_a_second_pass_makes_trigrams(tmp_path):
    corpus = tmp_path / "trigrams.txt"
    corpus.write_text(
        "new york times\n" * 20 + "new year\nyork minster\ntimes table\n" * 4 + "other words here\n" * 200
    )
    one = prepare_corpus(corpus, min_count=1, cache_dir=tmp_path / "one", phrases=settings(1, threshold=10.0))
    two = prepare_corpus(corpus, min_count=1, cache_dir=tmp_path / "two", phrases=settings(2, threshold=10.0))
    assert "new_york" in one.vocab.index and "new_york_times" not in one.vocab.index
    assert "new_york_times" in two.vocab.index and two.vocab.counts[two.vocab.index["new_york_times"]] == 20
    assert set(two.phrases.passes) == {1, 2} and "new_york_times" in two.phrases.phrases


def test_phrases_in_worker_processes_are_the_same(tmp_path):
    corpus = tmp_path / "planted.txt"
    write_planted(corpus)
    one = prepare_corpus(corpus, min_count=1, num_proc=1, cache_dir=tmp_path / "a", phrases=settings(threshold=4.0))
    two = prepare_corpus(corpus, min_count=1, num_proc=2, cache_dir=tmp_path / "b", phrases=settings(threshold=4.0))
    assert one.vocab.words == two.vocab.words and one.phrases == two.phrases
    assert np.array_equal(one.train.ids, two.train.ids)


def test_bigram_counts_are_pruned_as_gensims_when_they_outgrow_the_bound(caplog):
    """Beyond ``most`` (MAX_BIGRAMS in preparation) bigrams, those seen fewer than m times go, m
    rising by one at each pruning (gensim's prune_vocab), and preparation says so."""
    merger = prepare_module._CountMerger(flush_at=1, most=2)
    with caplog.at_level(logging.WARNING, logger="sgns"):
        merger.add(pa.array(["a b", "c d", "e f"]), pa.array([3, 1, 1]))  # over 2: drop < 1 (nothing), m = 2
        assert len(merger.table) == 3
        merger.add(pa.array(["g h", "c d"]), pa.array([1, 1]))  # over 2: drop < 2
    assert merger.table.to_pydict() == {"w": ["a b", "c d"], "c": [3, 2]}
    assert "phrases: more than 2 bigrams counted; dropped those seen fewer than 2 times" in caplog.text
    assert prepare_module.MAX_BIGRAMS == 40_000_000  # gensim's Phrases max_vocab_size


def test_the_cache_key_holds_the_phrase_settings_only_when_phrases_are_on():
    base = entry_name("src", Settings())
    assert entry_name("src", Settings(phrases=P.PhraseSettings(0, "npmi", 0.3))) == base
    keys = {
        entry_name("src", Settings(phrases=s))
        for s in [
            settings(1),
            settings(2),
            settings(1, "npmi"),
            settings(1, threshold=50.0),
            settings(1, min_count=3),
            settings(1, connectors=[]),
        ]  # fmt: skip
    }
    assert len(keys) == 6 and base not in keys


def test_a_run_with_phrases_exports_and_lists_them(tmp_path, capsys):
    corpus = tmp_path / "planted.txt"
    write_planted(corpus)
    run = tmp_path / "run"
    overrides = [f"data.path={corpus}", "data.min_count=1", "data.sample=0", "data.batch_size=64", "data.phrases=1",
                 "data.phrase_threshold=4.0", "trainer.max_epochs=1", "model.net.embedding_dim=8", "logger=none",
                 "callbacks.progress_bar.refresh_rate=0", "probe_words=[]", f"data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    train(compose_train(run, overrides))
    capsys.readouterr()
    vocab = (run / "vocab.txt").read_text()
    assert "new_york 10\n" in vocab and "bank_of_america 8\n" in vocab
    listed = {}
    for source in (run, run / "last.ckpt", run / "phrases.tsv"):
        assert cli.main(["phrases", str(source)]) == 0
        listed[source.name] = capsys.readouterr().out
    assert len(set(listed.values())) == 1
    lines = listed["run"].splitlines()
    assert lines[0] == "phrase\tscore\tcount\tpass"
    assert [line.split("\t")[0] for line in lines[1:]] == ["bank_of_america", "new_york", "new_idea"]
    assert math.isclose(float(lines[1].split("\t")[1]), 3 / 64 * 352, rel_tol=1e-5)
    assert cli.main(["phrases", str(run), "--top", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [lines[1]]
