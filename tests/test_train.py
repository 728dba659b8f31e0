"""End to end: the real configs train, learn planted structure, write outputs, fail clearly."""

import math
from pathlib import Path

import hydra
import pytest
from gensim.models import KeyedVectors

from conftest import compose_train, planted_corpus
from sgns.train import train

ROOT = Path(__file__).resolve().parents[1]


def test_fast_dev_run_of_the_default_config(tmp_path):
    cfg = compose_train(tmp_path, ["debug=fast_dev_run"])
    assert cfg.data.path is None  # the embedded Lee corpus
    metrics = train(cfg)
    assert "train/loss" in metrics and "val/loss" in metrics
    assert KeyedVectors.load_word2vec_format(str(tmp_path / "vectors.bin"), binary=True).vector_size == 100


@pytest.mark.parametrize("overrides, updates, pairs", [([], 4, 256), (["data=text_file", "data.path=x.txt"], 16, 4096),
                                                     (["data=text_file", "data.path=x.txt", "data.batch_size=10000"], 3, 3334)])
def test_configs_split_batches_into_updates_of_update_pairs(tmp_path, overrides, updates, pairs):
    """model.micro_batches follows data.batch_size and data.update_pairs, and agrees with the
    data module's updates (which draw K shared negatives each)."""
    cfg = compose_train(tmp_path, overrides)
    data = hydra.utils.instantiate(cfg.data)
    assert cfg.model.micro_batches == data.updates == updates
    assert -(-cfg.data.batch_size // updates) == pairs


@pytest.mark.parametrize(
    "optimizer, fused",
    [("sparse_adam", True), ("sgd", True), ("sparse_adam", False), ("sgd", False), ("adamw", False)],
)
def test_planted_groups_become_nearest_neighbours(planted, tmp_path, optimizer, fused):
    path, groups = planted
    out = tmp_path / "run"
    cfg = compose_train(out, [
        "data=text_file", f"data.path={path}", "data.min_count=1", "data.sample=0", "data.batch_size=256",
        "data.val_fraction=0.05", "model.embedding_dim=16", f"model/optimizer={optimizer}", f"model.fused={fused}", "trainer.max_epochs=3",
        *([] if fused else ["model.micro_batches=1"]),  # the reference path: one autograd step per batch
    ])  # fmt: skip
    metrics = train(cfg)
    assert metrics["val/loss"] < 0.8 * 6 * 0.6931  # well below the untrained loss (k+1) log 2
    kv = KeyedVectors.load_word2vec_format(str(out / "vectors.txt"))
    for group in groups:
        for word in group:
            neighbours = {w for w, _ in kv.most_similar(word, topn=len(group) - 1)}
            assert neighbours == set(group) - {word}, (word, neighbours)


def test_a_corpus_smaller_than_one_batch_learns_instead_of_diverging(tmp_path):
    """data=text_file takes steps of 65,536 pairs: a 24k-token corpus is one short batch per epoch,
    and its per-pair step must be alpha, as in a full batch (it was 65,536 / n times larger)."""
    path = tmp_path / "small.txt"
    planted_corpus(path, sentences=2400)  # 24,000 tokens of 30 words: subsampling keeps about 6 %
    metrics = train(compose_train(tmp_path / "run", ["data=text_file", f"data.path={path}", "trainer.max_epochs=3",
                                                     "logger=none", "probe_words=[]"]))  # fmt: skip
    untrained = 6 * math.log(2)
    assert metrics["val/loss"] < untrained and metrics["train/loss"] < untrained


def test_the_reported_loss_is_the_last_epochs_whatever_its_length(planted, tmp_path):
    """An epoch of fewer steps than log_every_n_steps (50) reported the untrained step-0 loss, 6 ln 2."""
    path, _ = planted
    metrics = train(compose_train(tmp_path, [f"data.path={path}", "data.min_count=1", "data.batch_size=4096",
                                             "trainer.max_epochs=2", "logger=none", "probe_words=[]"]))  # fmt: skip
    assert metrics["train/loss"] == pytest.approx(metrics["train/epoch_loss"], rel=0.3)
    assert metrics["train/epoch_loss"] < 0.9 * 6 * math.log(2)


def test_outputs_of_a_run(planted, tmp_path):
    path, _ = planted
    cfg = compose_train(tmp_path, [f"data.path={path}", "data.min_count=1", "trainer.max_epochs=1"])
    train(cfg)
    for name in ["last.ckpt", "vocab.txt", "vectors.txt", "vectors.bin"]:
        assert (tmp_path / name).stat().st_size > 0, name
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    vocab = (tmp_path / "vocab.txt").read_text().split("\n")[0].split()
    text = KeyedVectors.load_word2vec_format(str(tmp_path / "vectors.txt"))
    assert text.index_to_key[0] == vocab[0]  # same descending-count order
