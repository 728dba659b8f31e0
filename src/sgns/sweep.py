"""Hydra callback: after a multirun, one table of every job's overrides, status and final metrics.

A job that fails (refused for its config, diverged, failed for its corpus, or a bug) does not stop
the sweep: it records its status in ``<sweep dir>/.jobs/<num>.json`` (``record_job``, called by
the training entry), the later jobs run, and the summary lists every job. The sweep's exit code is
1 when any job failed, 0 when none did.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sgns.outputs import write_atomically

COLUMNS = [
    "val/analogy_best",
    "val/analogy",
    "val/ws353",
    "val/simlex",
    "val/loss",
    "train/loss",
    "train/raw_words_per_s",
    "train_s",
]
JOBS = ".jobs"  # one record per job at the sweep root: its overrides, status and error


def record_job(hydra_cfg: DictConfig, status: str, error: str | None = None) -> None:
    """Note a job's end (``ok``, ``error``, ``diverged`` or ``crashed``) for the summary."""
    jobs = Path(hydra_cfg.sweep.dir) / JOBS
    jobs.mkdir(parents=True, exist_ok=True)
    record = {
        "job": int(hydra_cfg.job.num),
        "overrides": list(hydra_cfg.overrides.task),
        "status": status,
        "error": error,
    }
    write_atomically(jobs / f"{hydra_cfg.job.num}.json", lambda p: p.write_text(json.dumps(record)))


def summarise(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job (its directory 0, 1, … or its record): its overrides, status and metrics."""
    sweep_dir = Path(sweep_dir)
    records = (
        {int(p.stem): json.loads(p.read_text()) for p in (sweep_dir / JOBS).glob("*.json")}
        if (sweep_dir / JOBS).is_dir()
        else {}
    )
    numbers = set(records) | {int(p.name) for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()}
    rows = []
    for num in sorted(numbers):
        job, record = sweep_dir / str(num), records.get(num, {})
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = record.get("overrides") or (OmegaConf.load(overrides_file) if overrides_file.exists() else [])
        metrics_file = job / "metrics.json"
        metrics = (
            json.loads(metrics_file.read_text()) if metrics_file.exists() and record.get("status", "ok") == "ok" else {}
        )
        status = record.get("status") or ("ok" if metrics else "failed")
        row = {"job": str(num), "overrides": " ".join(overrides), "status": status}
        row |= {k: metrics.get(k) for k in COLUMNS}
        row["error"] = record.get("error") or ""
        rows.append(row)
    return rows


def write_summary(sweep_dir: str | Path, rows: list[dict[str, Any]] | None = None) -> str:
    """Write summary.csv and summary.md of ``rows`` (default: ``summarise``) into the sweep
    directory; return the Markdown table."""
    sweep_dir = Path(sweep_dir)
    rows = summarise(sweep_dir) if rows is None else rows
    if not rows:
        return ""

    def write_csv(path: Path) -> None:
        with open(path, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(sweep_dir / "summary.csv", write_csv)
    fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|"))  # noqa: E731
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(fmt(v) for v in row.values()) + " |" for row in rows]
    table = "\n".join(lines)
    write_atomically(sweep_dir / "summary.md", lambda p: p.write_text(table + "\n"))
    return table


class _NoBestOfFailures(logging.Filter):
    """Optuna's sweeper logs "Best parameters" even when every trial failed (with the worst value,
    -inf): drop those lines then; the summary says what happened instead."""

    def __init__(self, sweep_dir: Path):
        super().__init__()
        self.sweep_dir = sweep_dir

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(("Best parameters", "Best value")):
            return True
        return any(row["status"] == "ok" for row in summarise(self.sweep_dir))


_OPTUNA_LOG = "hydra_plugins.hydra_optuna_sweeper._impl"


class SweepSummary(Callback):
    """Prints and writes ``summary.csv`` / ``summary.md`` at the sweep root when a multirun ends, and
    ends the sweep with exit code 1 if any job failed."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._filter = _NoBestOfFailures(Path(config.hydra.sweep.dir))
        logging.getLogger(_OPTUNA_LOG).addFilter(self._filter)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        logging.getLogger(_OPTUNA_LOG).removeFilter(getattr(self, "_filter", None))
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarise(sweep_dir)
        table = write_summary(sweep_dir, rows)
        if table:
            print(f"\nsweep summary ({sweep_dir / 'summary.csv'}):\n{table}", flush=True)
        failed = [row for row in rows if row["status"] != "ok"]
        if failed:
            every = "every one" if len(failed) == len(rows) else f"{len(failed)}"
            which = ", ".join(f"{row['job']}: {row['status']}" for row in failed)
            none_left = ", so there are no best parameters" if len(failed) == len(rows) else ""
            print(
                f"error: {every} of the {len(rows)} sweep jobs failed ({which}){none_left}; see {sweep_dir / 'summary.md'}",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(1)
