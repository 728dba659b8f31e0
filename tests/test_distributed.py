"""Distributed training: the data split across ranks and trainer=ddp_sim (two CPU processes, gloo)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sgns.data import Word2VecDataModule
from sgns.vectors import WordVectors

ROOT = Path(__file__).resolve().parents[1]


def _epoch(path, world_size: int, rank: int, batch_size: int, update_size: int, example: str) -> list:
    dm = Word2VecDataModule(path=str(path), min_count=1, window=2, negatives=3, sample=1e-2, batch_size=batch_size,
                            update_size=update_size, chunk_tokens=700, val_fraction=0.0, seed=5)  # fmt: skip
    dm.example = example
    dm.setup("fit")
    dm.train_set.set_rank(rank, world_size)
    steps = list(dm.train_set)
    assert len(steps) == len(dm.train_set)
    return steps


FIELDS = ("center", "context", "mask")


@pytest.mark.parametrize("example", ["pairs", "windows"])
@pytest.mark.parametrize("batch_size, update_size", [(64, 16), (61, 20)])
def test_ranks_split_every_update_and_together_see_each_example_once(planted, example, batch_size, update_size):
    path, _ = planted
    single = _epoch(path, 1, 0, 2 * batch_size, 2 * update_size, example)
    ranks = [_epoch(path, 2, r, batch_size, update_size, example) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)  # equal step counts: no rank waits for the other
    for a, b, whole in zip(*ranks, single):
        assert len(a) == len(b) == len(whole)  # the same updates
        for x, y, w in zip(a, b, whole):  # two ranks with batch B see what one process with batch 2B sees
            for field in FIELDS:
                if getattr(w, field) is not None:
                    assert torch.equal(torch.cat([getattr(x, field), getattr(y, field)]), getattr(w, field))
            assert torch.equal(x.negatives, w.negatives) and torch.equal(y.negatives, w.negatives)  # the update's shared K
            assert abs(len(x) - len(y)) <= 1


def _train(out: Path, corpus: Path, *overrides: str) -> dict:
    command = [sys.executable, "train.py", f"data.path={corpus}", "data.min_count=1", "data.sample=0", "data.window=2",
               "data.val_fraction=0.05", "model.net.embedding_dim=16", "trainer.max_epochs=1", "logger=none",
               "probe_words=[]", f"hydra.run.dir={out}", "callbacks.threads.enabled=false", *overrides]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("model", ["skipgram", "cbow"])
def test_ddp_sim_two_processes_train_like_one_process_with_the_double_batch(planted, tmp_path, model):
    path, groups = planted
    # every rank takes its share of each update, with the update's K shared negatives; the default
    # alpha, a per-pair step whatever the number of ranks; 128 shared negatives, so that val/loss
    # (its negatives drawn per update) varies little with the update's size
    same = [f"model={model}", "data.shared_negatives=128"]
    two = _train(tmp_path / "two", path, "trainer=ddp_sim", "data.batch_size=32", "data.update_size=16", *same)
    one = _train(tmp_path / "one", path, "trainer=cpu", "trainer.deterministic=true", "data.batch_size=64", "data.update_size=32", *same)
    assert two["world_size"] == 2 and one["world_size"] == 1
    # both ranks ended with identical weights, and rank 0 saved and exported those
    digests = two["weights_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    state = torch.load(tmp_path / "two" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    centre = state["net.center_embed.weight"]
    import hashlib

    roles = {"vectors": "net.center_embed.weight", "outputs": "net.outside_embed.weight"}
    tables = b"".join(role.encode() + state[key].numpy().tobytes() for role, key in roles.items())
    assert hashlib.sha256(tables).hexdigest() == digests[0]
    exported = WordVectors.load_word2vec_format(tmp_path / "two" / "vectors.bin", binary=True)
    assert np.array_equal(exported.vectors, centre.numpy())
    # the loss fell from its starting value (outside table zero: (1 + k) log 2)
    assert two["val/loss"] < 0.6 * 6 * math.log(2)
    # the same updates as one process with batch 2B, up to the order of float sums (which drifts by
    # about 2e-5 over the run; CBOW with an alpha 10 % larger differs by 0.08)
    alone = WordVectors.load_word2vec_format(tmp_path / "one" / "vectors.bin", binary=True)
    assert alone.words == exported.words
    np.testing.assert_allclose(exported.vectors, alone.vectors, atol=1e-4)
    # held-out negatives are drawn per update of B pairs: 128 for 16 pairs, or for about 3 CBOW windows
    assert abs(two["val/loss"] - one["val/loss"]) < (0.01 if model == "skipgram" else 0.03)
    assert exported.most_similar(groups[0][0], topn=1)[0][0] in groups[0]


def test_slurm_launcher_config_follows_the_trainer():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)  # one task per GPU
    assert cfg.trainer.strategy.process_group_backend == "nccl" and cfg.trainer.num_nodes == 2


def test_the_weights_digest_covers_every_table():
    """It hashed two tables only: a fastText run's n-gram table was never compared across ranks."""
    from sgns.module import Word2VecModule
    from sgns.models import FastText
    import functools

    module = Word2VecModule(functools.partial(FastText, embedding_dim=4, buckets=50), functools.partial(torch.optim.SGD),
                            vocab_size=3, words=["ab", "bc", "cd"])  # fmt: skip
    before = module.weights_digest()
    with torch.no_grad():
        module.net.ngram_embed.weight[7, 1] += 1e-3
    assert module.weights_digest() != before
