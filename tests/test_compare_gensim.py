"""scripts/compare_gensim.py's corpus slice, what every benchmark script trains both sides on, and its gensim side."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from compare_gensim import write_slice


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "source.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for i in range(100):
            out.write(f"w{i} a b  c\n")  # 4 tokens a line
    return path


def test_a_slice_holds_the_first_tokens_and_is_read_back(source, tmp_path):
    target = tmp_path / "slice.txt"
    assert write_slice(str(source), 10, target) == 10
    assert target.read_text() == "w0 a b c\nw1 a b c\nw2 a\n"
    target.with_suffix(".tokens").write_text("7")  # (made before: read back, not made again)
    assert write_slice(str(source), 10, target) == 7


def test_a_slice_stopped_midway_leaves_nothing_for_the_next_run_to_take(source, tmp_path, monkeypatch):
    """A write that fails (a full disk) leaves no slice; so does one made before its count was
    (a run stopped between the two): the next run makes the whole slice."""
    target = tmp_path / "slice.txt"
    real_open = open

    def full_disk(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        if "w" in (args[0] if args else kwargs.get("mode", "r")):
            handle.write = lambda text: (_ for _ in ()).throw(OSError(28, "No space left on device"))
        return handle

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(OSError):
        write_slice(str(source), 0, target)
    monkeypatch.undo()
    assert not target.exists()
    target.write_text("w0 a\n")  # a partial slice without its count
    assert write_slice(str(source), 0, target) == 400
    assert len(target.read_text().split()) == 400


def test_a_scored_run_keeps_its_vectors_not_its_checkpoint_or_model(tmp_path):
    """The benchmark scripts keep no checkpoint or whole fastText model once a run is scored (a few
    dozen fastText runs at 860 MB each filled a disk); the vectors, metrics and log stay."""
    from compare_gensim import drop_models

    for name in ("last.ckpt", "fasttext.bin", "vectors.bin", "metrics.json", "log.txt"):
        (tmp_path / name).write_text("x")
    drop_models(tmp_path)
    drop_models(tmp_path)  # (a gensim run has no checkpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "metrics.json", "vectors.bin"]


@pytest.mark.parametrize("gensim_input", ["corpus_file", "lines"])
def test_the_gensim_side_trains_from_either_input(tmp_path, gensim_input):
    """compare_gensim.py's gensim side, from its fast corpus_file mode or from a LineSentence iterator
    (whose alpha decays to min_alpha): the same vocabulary, vectors written, training timed."""
    from gensim.models import KeyedVectors

    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(f"w{i}" for i in rng.integers(0, 30, 40)) for _ in range(50)) + "\nrare\n")
    out = tmp_path / "out"
    out.mkdir()
    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_gensim.py"
    subprocess.run([sys.executable, str(script), "--worker", "gensim", "--out", str(out), "--corpus", str(corpus),
                    "--dim", "8", "--min-count", "2", "--workers", "1", "--gensim-input", gensim_input], check=True)  # fmt: skip
    vectors = KeyedVectors.load_word2vec_format(str(out / "vectors.bin"), binary=True)
    assert sorted(vectors.index_to_key) == sorted(f"w{i}" for i in range(30))  # "rare" (once) is under min_count
    assert vectors.vector_size == 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["raw_tokens"] == 50 * 40 + 1 and metrics["train_s"] > 0
