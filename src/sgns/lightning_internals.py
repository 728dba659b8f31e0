"""The places where sgns reads or sets Lightning's internals, each with the reason there is no
public way. Kept here, in one file, so a Lightning upgrade that moves them breaks in one place."""

from __future__ import annotations

import lightning as L

# The base class of a strategy's launcher (what runs ``fit`` in the processes a strategy needs):
# Lightning has no public one, and a strategy sets its launcher in its private
# ``_configure_launcher`` hook (``HogwildStrategy`` overrides it). Lightning's own launchers are
# of no use for lock-free workers: its spawn launcher copies the parameters out of shared memory,
# and every one of them runs the whole trainer in every process.
from lightning.pytorch.strategies.launchers.launcher import _Launcher as Launcher  # noqa: E402

__all__ = ["Launcher", "batches_done", "is_last_batch", "request_stop_as_on_sigterm"]


def batches_done(trainer: L.Trainer) -> int:
    """Steps of the current epoch fully trained, as the fit loop counts them: the data loader's
    position that goes into a checkpoint. (No public counter: ``trainer.global_step`` counts
    optimiser steps over all epochs, not the loader's position within this one.)"""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def is_last_batch(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether step ``batch_idx`` is the epoch's last: the epoch's step limit (its length, or
    ``limit_train_batches``) is reached, or its data loader has nothing after it. A lock-free
    worker's loader has no length, so the fit loop fetches a step ahead and knows the latter at the
    last step, where ``num_training_batches`` is inf. (No public flag for it.)"""
    return batch_idx + 1 >= trainer.num_training_batches or bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def request_stop_as_on_sigterm(trainer: L.Trainer) -> None:
    """Make the trainer stop at the next step boundary exactly as it does on SIGTERM (raising
    SIGTERMException there, on every rank). (``trainer.should_stop`` is public but ends the epoch as
    if it were complete, so a resumed run would skip the epoch's remaining steps.)"""
    trainer._signal_connector.received_sigterm = True
