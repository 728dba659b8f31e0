"""TensorBoard contents, Hydra multirun sweeps with their summary, and the Optuna search."""

import csv
import os
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_train
from sgns.train import train

ROOT = Path(__file__).resolve().parents[1]


def test_tensorboard_scalars_text_hparams_and_projector(planted, tmp_path):
    path, groups = planted
    cfg = compose_train(tmp_path, [f"data.path={path}", "data.min_count=1", "data.sample=0", "trainer.max_epochs=2",
                                   "callbacks.throughput.every_n_steps=10", "trainer.log_every_n_steps=5",
                                   f"probe_words=[{groups[0][0]},{groups[1][0]}]", "callbacks.embedding_dashboard.top_n=20"])  # fmt: skip
    train(cfg)
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ["train/loss", "train/alpha", "train/words_per_s", "train/examples_per_s", "val/loss", "val/analogy",
                "val/analogy_best", "val/ws353", "val/simlex", "hp/val/loss"]:  # fmt: skip
        assert tag in scalars, (tag, sorted(scalars))
    assert len(events.Scalars("train/loss")) > 2 * 2  # per step, not per epoch (the trainer's own worker's steps)
    assert len(events.Scalars("val/loss")) == 2  # per epoch
    text = [t for t in events.Tags()["tensors"] if t.startswith("neighbours")]
    assert text and groups[0][1] in str(events.Tensors(text[0])[-1].tensor_proto.string_val)
    assert "_hparams_/session_start_info" in events.summary_metadata
    projector = list((tmp_path / "tensorboard").glob("*/center_embed/tensors.tsv"))
    assert len(projector) == 1 and (tmp_path / "tensorboard" / "projector_config.pbtxt").exists()
    rows = projector[0].read_text().strip().split("\n")
    assert len(rows) == 20 and len(rows[0].split("\t")) == 100
    metadata = (projector[0].parent / "metadata.tsv").read_text().strip().split("\n")
    assert len(metadata) == 20


def _sweep(*overrides, tmp_path, code=0):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                             "callbacks.progress_bar.refresh_rate=0"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == code, result.stderr[-3000:]
    return result, tmp_path / "sweep"


def _summary(sweep):
    with open(sweep / "summary.csv") as handle:
        return list(csv.DictReader(handle))


def test_multirun_jobs_and_summary(planted, tmp_path):
    path, _ = planted
    result, sweep = _sweep("-m", f"data.path={path}", "data.min_count=1", "trainer.max_epochs=1",
                           "model.net.embedding_dim=8,16", tmp_path=tmp_path)  # fmt: skip
    rows = _summary(sweep)
    assert ["model.net.embedding_dim=8" in r["overrides"] for r in rows] == [True, False]
    assert ["model.net.embedding_dim=16" in r["overrides"] for r in rows] == [False, True]
    assert all(r["status"] == "ok" and float(r["val/loss"]) > 0 for r in rows)
    for job in ("0", "1"):
        assert list((sweep / job / "tensorboard").glob("events.out.tfevents.*"))
        assert (sweep / job / "vectors.bin").exists()
    assert "sweep summary" in result.stdout and (sweep / "summary.md").exists()


def test_optuna_search_runs_trials(planted, tmp_path):
    """A trial whose settings diverge is the worst trial, with one line; the search goes on."""
    path, _ = planted
    result, sweep = _sweep("hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=3",
                           "model.alpha=choice(0.035,60)", "trainer.max_epochs=1", "trainer.deterministic=true",
                           f"data.path={path}", "data.min_count=1", tmp_path=tmp_path, code=1)  # fmt: skip
    rows = _summary(sweep)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"ok", "diverged"}
    assert all(("model.alpha=60" in r["overrides"]) == (r["status"] == "diverged") for r in rows)
    assert "error: sweep job" in result.stderr and "training diverged" in result.stderr
    assert "Traceback" not in result.stderr
    assert all("model.net.embedding_dim=" in r["overrides"] for r in rows)
    assert (sweep / "optimization_results.yaml").exists()


def test_a_sweep_goes_on_past_failed_jobs_and_says_which_failed(planted, tmp_path):
    """The first job's bad value stopped the whole sweep: no later job, no summary, and an exit code
    that hid it. A job refused for its config, one that diverges and one whose corpus fails each get
    one line; the sweep goes on, the summary lists every job's status, and the exit code is 1."""
    path, _ = planted
    (tmp_path / "empty.txt").write_text("\n")
    result, sweep = _sweep("-m", f"data.path={path},{tmp_path / 'empty.txt'}", "model.alpha=-1,0.025,60", "data.min_count=1",
                           "trainer.max_epochs=1", "trainer.deterministic=true", "logger=none", "probe_words=[]",
                           tmp_path=tmp_path, code=1)  # fmt: skip
    rows = {(r["overrides"].split()[0].endswith("empty.txt"), r["overrides"].split()[1]): r for r in _summary(sweep)}
    assert len(rows) == 6
    assert [rows[False, a]["status"] for a in ("model.alpha=-1", "model.alpha=0.025", "model.alpha=60")] == ["error", "ok", "diverged"]
    assert rows[True, "model.alpha=0.025"]["status"] == "error" and "corpus is empty" in rows[True, "model.alpha=0.025"]["error"]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: sweep job")]
    assert len(lines) == 5 and all(line.endswith("; the sweep goes on") for line in lines), result.stderr[-3000:]
    assert "error: 5 of the 6 sweep jobs failed" in result.stderr and "Traceback" not in result.stderr
    assert float(rows[False, "model.alpha=0.025"]["val/loss"]) > 0 and (sweep / "summary.md").exists()


def test_an_optuna_study_whose_every_trial_fails_says_so(planted, tmp_path):
    """It stopped at the refused trial with no results file; a study with no good trial printed
    "Best parameters" with -inf."""
    path, _ = planted
    result, sweep = _sweep("hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
                           "data.window=choice(0)", f"data.path={path}", "data.min_count=1", "trainer.max_epochs=1",
                           "logger=none", tmp_path=tmp_path, code=1)  # fmt: skip
    assert [r["status"] for r in _summary(sweep)] == ["error", "error"]
    assert "error: every one of the 2 sweep jobs failed" in result.stderr and "no best parameters" in result.stderr
    assert "Best parameters" not in result.stdout + result.stderr and "Traceback" not in result.stderr
