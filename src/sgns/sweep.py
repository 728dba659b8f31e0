"""Hydra callback: after a multirun, one table of every job's overrides and final metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

COLUMNS = ["val/analogy_best", "val/analogy", "val/ws353", "val/simlex", "val/loss", "train/loss",
           "train/raw_words_per_s", "train_s"]  # fmt: skip


def summarise(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job directory (0, 1, …): its overrides and the metrics it wrote."""
    rows = []
    jobs = [p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit()]
    for job in sorted(jobs, key=lambda p: int(p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.exists() else []
        metrics_file = job / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        row = {"job": job.name, "overrides": " ".join(overrides), "status": "ok" if metrics else "failed"}
        row |= {k: metrics.get(k) for k in COLUMNS}
        rows.append(row)
    return rows


def write_summary(sweep_dir: str | Path) -> str:
    """Write summary.csv and summary.md into the sweep directory; return the Markdown table."""
    sweep_dir = Path(sweep_dir)
    rows = summarise(sweep_dir)
    if not rows:
        return ""
    with open(sweep_dir / "summary.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(fmt(v) for v in row.values()) + " |" for row in rows]
    table = "\n".join(lines)
    (sweep_dir / "summary.md").write_text(table + "\n")
    return table


class SweepSummary(Callback):
    """Prints and writes ``summary.csv`` / ``summary.md`` at the sweep root when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = write_summary(sweep_dir)
        if table:
            print(f"\nsweep summary ({sweep_dir / 'summary.csv'}):\n{table}", flush=True)
