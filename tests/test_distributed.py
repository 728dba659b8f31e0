"""Distributed training: the data split across ranks and trainer=ddp_sim (two CPU processes, gloo)."""

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from sgns.data import SkipGramDataModule
from sgns.vectors import WordVectors

ROOT = Path(__file__).resolve().parents[1]


def _epoch(path, world_size: int, rank: int, batch_size: int) -> list[tuple[torch.Tensor, ...]]:
    dm = SkipGramDataModule(path=str(path), min_count=1, window=2, negatives=3, sample=1e-2, batch_size=batch_size,
                            chunk_tokens=700, val_fraction=0.0, seed=5)  # fmt: skip
    dm.setup("fit")
    dm.train_set.set_rank(rank, world_size)
    batches = list(dm.train_set)
    assert len(batches) == len(dm.train_set)
    return batches


@pytest.mark.parametrize("batch_size", [64, 61])
def test_ranks_split_every_step_and_together_see_each_pair_once(planted, batch_size):
    path, _ = planted
    single = _epoch(path, 1, 0, 2 * batch_size)
    ranks = [_epoch(path, 2, r, batch_size) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)  # equal step counts: no rank waits for the other
    for step, (a, b) in enumerate(zip(*ranks)):
        # two ranks with batch B see what one process with batch 2B sees, negatives included
        for x, y, whole in zip(a, b, single[step]):
            assert torch.equal(torch.cat([x, y]), whole)
        assert abs(len(a[0]) - len(b[0])) <= 1
    together = Counter(p for r in ranks for c, o, _ in r for p in zip(c.tolist(), o.tolist()))
    assert together == Counter(p for c, o, _ in single for p in zip(c.tolist(), o.tolist()))


def _train(out: Path, corpus: Path, *overrides: str) -> dict:
    command = [sys.executable, "train.py", f"data.path={corpus}", "data.min_count=1", "data.sample=0", "data.window=2",
               "data.val_fraction=0.05", "model.embedding_dim=16", "trainer.max_epochs=2", "logger=none",
               "probe_words=[]", f"hydra.run.dir={out}", *overrides]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_ddp_sim_two_processes_train_like_one_process_with_the_double_batch(planted, tmp_path):
    path, groups = planted
    # one update per batch (micro-batches split each rank's share, not the combined step); the
    # default shared negatives: every rank uses the step's K negatives; the default lr, a per-pair
    # step whatever the number of ranks; 128 shared negatives, so that val/loss (its negatives
    # drawn per batch of B) varies little with B
    same = ["model.micro_batches=1", "data.shared_negatives=128"]
    two = _train(tmp_path / "two", path, "trainer=ddp_sim", "data.batch_size=32", *same)
    one = _train(tmp_path / "one", path, "trainer=cpu", "data.batch_size=64", *same)
    assert two["world_size"] == 2 and one["world_size"] == 1
    # both ranks ended with identical weights, and rank 0 saved and exported those
    digests = two["weights_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    state = torch.load(tmp_path / "two" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    centre, outside = state["model.center_embed.weight"], state["model.outside_embed.weight"]
    import hashlib

    assert hashlib.sha256(centre.numpy().tobytes() + outside.numpy().tobytes()).hexdigest() == digests[0]
    exported = WordVectors.load_word2vec_format(tmp_path / "two" / "vectors.bin", binary=True)
    assert np.array_equal(exported.vectors, centre.numpy())
    # the loss fell from its starting value (outside table zero: (1 + k) log 2)
    assert two["val/loss"] < 0.6 * 6 * math.log(2)
    # the same updates as one process with batch 2B, up to the order of float sums
    alone = WordVectors.load_word2vec_format(tmp_path / "one" / "vectors.bin", binary=True)
    assert alone.words == exported.words
    np.testing.assert_allclose(exported.vectors, alone.vectors, atol=2e-5)
    assert abs(two["val/loss"] - one["val/loss"]) < 0.01  # held-out negatives are drawn per batch of B
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
