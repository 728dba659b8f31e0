"""A run owns its directory: one run at a time, nothing written before its checks pass, no stale
files left beside its own (the lock, Hydra's record and log, leftovers of killed writes)."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF, compose_train, planted_corpus, start_train_py
from sgns.errors import Word2VecError
from sgns.rundir import own_run_dir
from sgns.train import train


def _small(corpus, *extra):
    return [f"data.path={corpus}", "data.min_count=1", "data.sample=0", "data.batch_size=64", "trainer.max_epochs=1",
            "model.net.embedding_dim=16", "logger=none", "callbacks.progress_bar.refresh_rate=0", "probe_words=[]", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "planted.txt"
    planted_corpus(path, sentences=300)
    return path


def _tree(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_second_run_into_a_held_directory_is_one_error_and_changes_nothing(corpus, tmp_path):
    """Two runs into one hydra.run.dir both exited 0, and the second's files replaced the first's."""
    train(compose_train(tmp_path, _small(corpus)))
    before = _tree(tmp_path)
    with own_run_dir(tmp_path):  # another run holds it
        with pytest.raises(Word2VecError, match=f"{tmp_path} is in use by another run, which holds {tmp_path}/.lock"):
            train(compose_train(tmp_path, _small(corpus, "overwrite=true")))
    assert _tree(tmp_path) == before
    train(compose_train(tmp_path, _small(corpus, "overwrite=true")))  # free again once it has ended


def test_two_train_py_runs_into_one_directory(corpus, tmp_path):
    first = start_train_py(*_small(corpus, "trainer.max_epochs=1000"), f"hydra.run.dir={tmp_path}")
    deadline = time.time() + 120
    while not (tmp_path / ".hydra" / "config.yaml").exists():  # written once the first run owns the directory
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.05)
    second = start_train_py(*_small(corpus, "overwrite=true"), f"hydra.run.dir={tmp_path}")
    _, err = second.communicate(timeout=120)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert second.returncode == 2 and err.strip().splitlines()[-1].startswith(f"error: {tmp_path} is in use by another run"), err
    assert "Traceback" not in err


def test_the_default_run_directory_is_unique_per_process():
    """Two runs started in the same second shared outputs/runs/<time>."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    assert cfg.hydra.run.dir.endswith(f"_{os.getpid()}") and cfg.hydra.sweep.dir.endswith(f"_{os.getpid()}")
    names = {subprocess.run([sys.executable, "-c", "from sgns.rundir import run_stamp; print(run_stamp())"],
                            capture_output=True, text=True, check=True).stdout for _ in range(2)}  # fmt: skip
    assert len(names) == 2


def test_a_refused_run_leaves_the_earlier_runs_record_and_log_alone(corpus, tmp_path):
    """A resume refused for another model family rewrote .hydra/config.yaml and overrides.yaml."""
    proc = start_train_py(*_small(corpus), f"hydra.run.dir={tmp_path}")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "model.net.embedding_dim=16" in (tmp_path / ".hydra" / "overrides.yaml").read_text()
    assert "corpus:" in (tmp_path / "train.log").read_text()
    before = _tree(tmp_path)
    for refused in (["model=cbow", f"ckpt_path={tmp_path / 'last.ckpt'}"], ["data.window=0"], []):  # (the last: no overwrite=true)
        proc = start_train_py(*_small(corpus, *refused), f"hydra.run.dir={tmp_path}")
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and err.strip().splitlines()[-1].startswith("error: "), err[-2000:]
        assert _tree(tmp_path) == before


def test_an_existing_unwritable_run_directory_is_one_line(tmp_path):
    """It was a 49-line traceback from Hydra's log file handler (`Unable to configure handler 'file'`)."""
    run = Path("/sys/kernel")  # a directory nobody may create files in, root included
    proc = start_train_py(f"hydra.run.dir={run}", "trainer.max_epochs=1")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(f"error: {run}/.lock: "), err


def test_leftovers_of_dead_writers_are_removed_and_a_live_writers_kept(tmp_path):
    """A kill during a checkpoint write left .last.ckpt.tmp-PID behind for good (fastText: 800 MB)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / f".last.ckpt.tmp-{dead.pid}").write_bytes(b"partial")
        (tmp_path / f".vectors.bin.tmp-{live.pid}").write_bytes(b"being written")
        (tmp_path / "notes.tmp-1").write_text("not ours")
        with own_run_dir(tmp_path):
            pass
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", f".vectors.bin.tmp-{live.pid}", "notes.tmp-1"]
    finally:
        live.kill()
