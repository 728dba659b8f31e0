"""Shared fixtures: tiny corpora and configs composed from the real conf/ directory."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# Prepared corpora and datasets' Arrow files go to a per-session directory, not the home cache.
_CACHE = Path(tempfile.mkdtemp(prefix="sgns-test-cache-"))
os.environ.setdefault("SGNS_CACHE_DIR", str(_CACHE / "sgns"))
os.environ.setdefault("HF_DATASETS_CACHE", str(_CACHE / "hf"))

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import sgns  # noqa: F401  (registers the config resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def planted_corpus(path: Path, groups: int = 6, size: int = 5, sentences: int = 1500, length: int = 10, seed: int = 0) -> list[list[str]]:
    """Sentences drawn from one group of words each: group members only ever co-occur."""
    rng = random.Random(seed)
    words = [[f"g{g}w{i}" for i in range(size)] for g in range(groups)]
    with open(path, "w") as out:
        for _ in range(sentences):
            group = words[rng.randrange(groups)]
            out.write(" ".join(rng.choice(group) for _ in range(length)) + "\n")
    return words


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, list[list[str]]]:
    path = tmp_path / "planted.txt"
    return path, planted_corpus(path)


def compose_train(output_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """The real training config, with outputs in ``output_dir`` and no TensorBoard unless asked."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def start_train_py(*args: str, sigint=signal.SIG_DFL, **kwargs) -> subprocess.Popen:
    """``python train.py ARGS`` from the repository root, output captured as text. SIGINT starts at
    its default, as for a command typed in a terminal (a suite started in the background by a shell
    without job control would pass it on ignored); ``sigint=signal.SIG_IGN`` starts it ignored."""
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, sigint), **kwargs)  # fmt: skip
