"""End to end: the real configs train, learn planted structure, write outputs, fail clearly."""

import inspect
import math
import re
from pathlib import Path

import hydra
import pytest
import torch
from gensim.models import KeyedVectors
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import compose_train, planted_corpus
from sgns.train import train

ROOT = Path(__file__).resolve().parents[1]


def test_fast_dev_run_of_the_default_config(tmp_path):
    cfg = compose_train(tmp_path, ["debug=fast_dev_run"])
    assert cfg.data.path is None  # the embedded Lee corpus
    metrics = train(cfg)
    assert "train/loss" in metrics and "val/loss" in metrics
    assert KeyedVectors.load_word2vec_format(str(tmp_path / "vectors.bin"), binary=True).vector_size == 100


def _defaults(cls) -> dict:
    return {k: p.default for k, p in inspect.signature(cls).parameters.items() if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("group, overrides", [("data", []), ("model", []), ("model.net", []), ("model.net", ["model=cbow"]),
                                              ("model.net", ["model=fasttext"])])  # fmt: skip
def test_python_defaults_equal_the_yaml_defaults(tmp_path, group, overrides):
    """Every default a class declares is the one its config gives (conf/data/lee.yaml, conf/model/*.yaml)."""
    cfg = OmegaConf.select(compose_train(tmp_path, overrides), group)
    declared = _defaults(hydra.utils.get_class(cfg._target_))
    shared = {k: v for k, v in declared.items() if k in cfg and not OmegaConf.is_interpolation(cfg, k)}
    assert shared and {k: cfg[k] for k in shared} == shared
    assert set(declared) - set(cfg) <= {"vocab_size", "sparse", "words", "counts", "objective"}  # given by the code, not by the config


def test_the_search_space_holds_every_default(tmp_path):
    """hparams_search=optuna: each key it searches has its default inside its range (for skip-gram and CBOW)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        searched = compose("train", overrides=["hparams_search=optuna"], return_hydra_config=True).hydra.sweeper.params
    # CBOW's alpha lies above skip-gram's range: the config's comment gives the override that searches it
    cbow_alpha = re.search(r"model=cbow .*add model.alpha='(.*?)'", (ROOT / "conf/hparams_search/optuna.yaml").read_text())
    for model in ("skipgram", "cbow"):
        cfg = compose_train(tmp_path, [f"model={model}"])
        for key, space in searched.items():
            space = cbow_alpha.group(1) if model == "cbow" and key == "model.alpha" else space
            default = OmegaConf.select(cfg, key)
            numbers = [float(x) for x in re.findall(r"\d[\d.e-]*", space.split("(", 1)[1])]
            if space.startswith("choice"):
                assert default in numbers, (key, default, space)
            else:
                assert numbers[0] <= default <= numbers[1], (key, default, space)


@pytest.mark.parametrize(
    "model, optimizer, fused, precision",
    [("skipgram", "sparse_adam", True, "32-true"), ("skipgram", "sgd", True, "32-true"), ("skipgram", "sparse_adam", False, "32-true"),
     ("skipgram", "sgd", False, "32-true"), ("skipgram", "adamw", False, "32-true"), ("cbow", "sgd", True, "32-true"),
     ("cbow", "sparse_adam", True, "32-true"), ("cbow", "sgd", False, "32-true"), ("fasttext", "sgd", True, "32-true"),
     ("skipgram", "sgd", True, "bf16-true"), ("cbow", "sparse_adam", True, "bf16-true")],
)  # fmt: skip
def test_planted_groups_become_nearest_neighbours(planted, tmp_path, model, optimizer, fused, precision):
    path, groups = planted
    out = tmp_path / "run"
    cfg = compose_train(out, [
        "data=text_file", f"data.path={path}", "data.min_count=1", "data.sample=0", "data.batch_size=256", "data.update_size=64",
        "data.val_fraction=0.05", f"model={model}", "model.net.embedding_dim=16", f"model/optimizer={optimizer}",
        f"model.fused={fused}", "trainer.max_epochs=3", f"trainer.precision={precision}",
        *(["model.net.buckets=5000"] if model == "fasttext" else []),
        *(["trainer.devices=1"] if optimizer == "adamw" else []),  # (dense updates: one worker)
    ])  # fmt: skip
    metrics = train(cfg)
    tables = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert {t.dtype for t in tables.values()} == {torch.bfloat16 if precision == "bf16-true" else torch.float32}
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


def test_outputs_of_a_run(planted, tmp_path, capsys):
    path, groups = planted
    word = groups[0][0]
    cfg = compose_train(tmp_path, [f"data.path={path}", "data.min_count=1", "trainer.max_epochs=1", f"probe_words={word}"])
    train(cfg)
    out = capsys.readouterr().out  # one probe word given as a string is that word (it was its letters)
    assert re.findall(r"^ +(\S+): ", out.split("nearest neighbours:")[1], re.M) == [word], out
    train(compose_train(tmp_path / "again", [f"data.path={path}", "data.min_count=1", "trainer.max_epochs=1",
                                            f"probe_words=[nosuchword,{word}]", "logger=none"]))  # fmt: skip
    assert "  nosuchword: (not in the vocabulary)\n" in capsys.readouterr().out
    for name in ["last.ckpt", "vocab.txt", "vectors.txt", "vectors.bin"]:
        assert (tmp_path / name).stat().st_size > 0, name
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    vocab = (tmp_path / "vocab.txt").read_text().split("\n")[0].split()
    text = KeyedVectors.load_word2vec_format(str(tmp_path / "vectors.txt"))
    assert text.index_to_key[0] == vocab[0]  # same descending-count order
