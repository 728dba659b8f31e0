"""A run owns its directory: one run at a time writes into it, and nothing is written there before
the run's checks have passed.

- ``own_run_dir`` takes an exclusive lock (``flock`` on ``.lock``) before the run writes anything,
  and holds it until the run ends; the kernel drops it when the process dies, so a killed run
  never leaves a stale lock. A second run into a held directory is one ``error:`` line.
- It also removes what dead processes left mid-write (``.last.ckpt.tmp-PID``: up to a fastText
  table each), never the files of a live process.
- Hydra's own writes wait for the checks: conf/hydra/default.yaml turns off its ``.hydra/`` copy of
  the config (``save_run_config`` writes it once the run is accepted) and its log file holds its
  records in memory (``DeferredFileHandler``) until ``start_run_log``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Iterator

from omegaconf import OmegaConf

from sgns.errors import Word2VecError

log = logging.getLogger("sgns")

LOCK_NAME = ".lock"
_LEFTOVER = re.compile(r"^\..+\.tmp-(\d+)$")  # outputs.atomic_path's temporary names


@cache
def run_stamp() -> str:
    """The default run directory's name: the start time and this process's id, so two runs started
    in the same second (a scripted loop, a cluster's array job) never share a directory."""
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{os.getpid()}"


@contextmanager
def own_run_dir(output_dir: Path) -> Iterator[None]:
    """Hold ``output_dir`` for this run (see the module's note); refuse it if another run holds it."""
    handle = open(output_dir / LOCK_NAME, "a+")  # (an unwritable place is the OSError's own line)
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Word2VecError(
                f"{output_dir} is in use by another run, which holds {output_dir / LOCK_NAME}: wait for it to "
                "end, or choose another hydra.run.dir"
            ) from None
        remove_leftovers(output_dir)
        yield
    finally:
        handle.close()  # (the lock goes with the last descriptor: forked workers hold it till they end)


def remove_leftovers(directory: Path) -> list[Path]:
    """Delete the temporary files of writes that a dead process never finished; returns them."""
    removed = []
    for path in directory.iterdir():
        match = _LEFTOVER.match(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info(
            "removed %d unfinished file(s) that ended processes left in %s: %s",
            len(removed),
            directory,
            ", ".join(p.name for p in removed),
        )
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # (this run has not started a write yet: a file with its id is an earlier process's)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def save_run_config(output_dir: Path, cfg) -> None:
    """Hydra's record of the run (``.hydra/config.yaml`` of ``cfg``, ``hydra.yaml``,
    ``overrides.yaml``), written once the run is accepted, so that a refused run leaves an earlier
    run's record as it was."""
    from hydra.core.hydra_config import HydraConfig

    from sgns.outputs import write_atomically

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg
    record = output_dir / ".hydra"
    record.mkdir(exist_ok=True)
    for name, part in (
        ("config.yaml", cfg),
        ("hydra.yaml", hydra_cfg),
        ("overrides.yaml", hydra_cfg.hydra.overrides.task),
    ):
        write_atomically(record / name, lambda p, c=part: p.write_text(OmegaConf.to_yaml(c)))


class DeferredFileHandler(logging.FileHandler):
    """Hydra's ``<run dir>/train.log``, opened only once the run owns its directory: records before
    that wait in memory (a refused run's stay on the console)."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None):
        super().__init__(filename, mode, encoding, delay=True)
        self.pending: list[logging.LogRecord] | None = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.pending is None:
            super().emit(record)
        elif len(self.pending) < 10_000:
            self.pending.append(record)

    def start(self) -> None:
        pending, self.pending = self.pending or [], None
        for record in pending:
            super().emit(record)


def start_run_log() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, DeferredFileHandler):
            handler.start()
