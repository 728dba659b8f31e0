"""The `sgns` command on a checkpoint and on vectors files: evaluate, query, export, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gensim.models import KeyedVectors

from conftest import compose_train, planted_corpus
from sgns.cli import load_vectors, main
from sgns.evaluation import gensim_test_file
from sgns.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    groups = planted_corpus(root / "planted.txt")
    cfg = compose_train(root / "run", [f"data.path={root / 'planted.txt'}", "data.min_count=1", "data.sample=0",
                                       "trainer.max_epochs=2", "logger=none"])  # fmt: skip
    metrics = train(cfg)
    return root / "run", groups, metrics


def test_checkpoint_and_vectors_files_hold_the_same_vectors(run):
    out, _, _ = run
    from_ckpt, from_bin = load_vectors(out / "last.ckpt"), load_vectors(out / "vectors.bin")
    assert from_ckpt.words == from_bin.words
    assert np.array_equal(from_ckpt.vectors, from_bin.vectors)
    assert from_ckpt.counts is not None and from_ckpt.counts[0] >= from_ckpt.counts[-1]


def test_evaluate_prints_a_table_and_writes_json(run, tmp_path, capsys):
    out, _, _ = run
    lee = gensim_test_file("lee_fasttext.vec")
    assert main(["evaluate", str(lee), "--json", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "capital-common-countries" in printed and "ws353" in printed
    results = json.loads((tmp_path / "r.json").read_text())
    kv = KeyedVectors.load_word2vec_format(str(lee))
    score, _ = kv.evaluate_word_analogies(str(gensim_test_file("questions-words.txt")), restrict_vocab=30000)
    assert results["analogy:questions-words.txt"]["accuracy"] == pytest.approx(score)
    assert main(["evaluate", str(out / "last.ckpt"), "--method", "mul"]) == 0


def test_queries(run, capsys):
    out, groups, _ = run
    word = groups[0][0]
    assert main(["most-similar", str(out / "vectors.txt"), word, "--topn", "4"]) == 0
    assert {line.split("\t")[0] for line in capsys.readouterr().out.split("\n") if line} == set(groups[0]) - {word}
    assert main(["similarity", str(out / "last.ckpt"), groups[0][0], groups[0][1]]) == 0
    assert float(capsys.readouterr().out) > 0.5
    odd = groups[1][0]
    assert main(["doesnt-match", str(out / "vectors.bin"), *groups[0][:3], odd]) == 0
    assert capsys.readouterr().out.strip() == odd


def test_export_from_checkpoint(run, tmp_path):
    out, _, _ = run
    assert main(["export", str(out / "last.ckpt"), str(tmp_path / "v.bin")]) == 0
    kv = KeyedVectors.load_word2vec_format(str(tmp_path / "v.bin"), binary=True)
    assert np.array_equal(kv.vectors, load_vectors(out / "vectors.bin").vectors)


def test_training_returns_and_logs_benchmark_metrics(run):
    _, _, metrics = run
    for name in ["val/analogy", "val/analogy_best", "val/ws353", "val/simlex", "val/loss"]:
        assert name in metrics


def test_errors_are_one_line(run, tmp_path):
    """Through the installed entry point (the table of bad input is in test_bad_input.py)."""
    out, _, _ = run
    result = subprocess.run([sys.executable, "-m", "sgns.cli", "similarity", str(out / "vectors.bin"), "nosuchword", "g0w0"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 2 and result.stderr == "error: word 'nosuchword' is not in the vocabulary (30 words)\n"


def test_words_the_terminals_encoding_lacks_are_printed_escaped(tmp_path):
    """A neighbour like café printed to an ASCII terminal was a UnicodeEncodeError traceback."""
    (tmp_path / "v.txt").write_text("3 2\ncafé 1 0\ncoffee 0.9 0.1\ntea 0 1\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "sgns.cli", "most-similar", str(tmp_path / "v.txt"), "coffee"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONIOENCODING": "ascii"}, timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stdout.splitlines()[0].startswith("caf\\xe9\t"), result.stderr
