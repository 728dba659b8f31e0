"""Lock-free parallel training on the CPU ("Hogwild", as word2vec.c, gensim and fastText train).

``trainer.devices=W`` workers train the same tables at once, without locks and without any
exchange per update: each claims the epoch's chunks one at a time (``batches.Claims``) and writes
its updates straight into the shared rows. Two workers rarely touch the same row at the
same moment, and when they do one update may be partly lost; that is the bargain every peer makes.

- The trainer's own process is worker 0: Lightning's loop, the progress bar, logging, callbacks,
  evaluation, checkpoints and Ctrl-C run there as in one process.
- Workers 1..W-1 are forked at the start of every epoch over tables moved to anonymous shared
  memory (``share_tables``: one copy for all, and no /dev/shm needed). They run one thread each
  and the module's own updates (``Word2VecModule.train_updates``), without Lightning.
- Within an epoch no worker waits for another: a slower worker (a busy core) claims fewer chunks,
  and the workers run out of chunks within a chunk of each other. At the epoch's end worker 0
  waits for the others, so evaluation and the epoch-end checkpoint see the whole epoch.
- Alpha decays with the steps of all workers together (shared counters), as word2vec.c's shared
  word count decays it.
- A checkpoint holds every worker's claims and its position in them; a resumed run replays each
  worker's claims from its position, then claims on.
  A step checkpoint copies tables that other workers are still writing, so it can hold part of
  a step that its positions do not count: the resumed run trains it again.
- A worker that fails or dies ends the run with one line naming it; the last checkpoint is kept.
  A worker dies with the trainer's process (``PR_SET_PDEATHSIG``), so none outlives a kill -9.

``trainer.deterministic=true`` trains one worker: no process is forked and the run is today's
bit-exact one (the same bits for the same seed and config, exact mid-epoch resume).
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import pickle
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from sgns import kernels
from sgns.errors import Word2VecError, check
from sgns.lightning_internals import Launcher, is_last_batch
from sgns.module import Word2VecModule, check_finite, wants_sparse_gradients

STALL_S = 600.0  # a worker whose position has not moved for this long is taken for hung


def cpu_cores() -> int:
    """The cores this process may run on (its affinity: a container's or taskset's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return os.cpu_count() or 1


def default_workers(deterministic: Any) -> int:
    """``trainer.devices`` of the CPU trainers: one worker per core, one when the run must be deterministic."""
    return 1 if deterministic is True else cpu_cores()


def workers(trainer: L.Trainer | None) -> int:
    """Lock-free workers of this trainer (1 for every other strategy)."""
    return getattr(trainer.strategy, "workers", 1) if trainer is not None else 1


def shared_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` in anonymous shared memory (``MAP_SHARED | MAP_ANONYMOUS``): processes
    forked after this read and write the very same bytes. No /dev/shm is needed (a container's is
    often 64 MB); the tensor keeps its mapping alive."""
    shared = torch.frombuffer(mmap.mmap(-1, max(1, tensor.nbytes)), dtype=tensor.dtype, count=tensor.numel())
    return shared.view(tensor.shape).copy_(tensor)


def epoch_steps(trainer: L.Trainer, own: int) -> int:
    """Steps of this epoch trained so far: by all lock-free workers together, else ``own`` (this process's)."""
    pool = getattr(trainer.strategy, "pool", None)
    return int(pool.positions.sum()) if pool is not None else own


def share_parameters(module: torch.nn.Module) -> None:
    """Move every parameter into shared memory, in place (the parameters stay the same objects),
    unless it is there already: a parameter is shared while its data is the copy this made (a
    conversion since, to another precision, makes new data, shared again here)."""
    for param in module.parameters():
        if getattr(param, "_sgns_shared", None) != param.data_ptr():
            param.data = shared_copy(param.data)
            param._sgns_shared = param.data_ptr()


def share_tables(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Move every parameter, and every tensor of the optimiser's state, into shared memory, in
    place: the parameters stay the same objects (the optimiser holds them). SparseAdam's moments
    are made now (zero, as its first step would make them), so that all workers share them; its
    step count, which only corrects the first steps' bias, stays each worker's own."""
    share_parameters(module)
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state[param]
            if isinstance(optimizer, torch.optim.SparseAdam) and not state:
                state.update(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    state[key] = shared_copy(value)


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the process that forked it dies (Linux), so that no worker goes on
    training, or waits, after a kill -9 of the trainer."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
        hint = " (kill -9, or the kernel's out-of-memory killer)" if number == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {os.WEXITSTATUS(status)}"


class WorkerPool:
    """The W-1 forked workers of one epoch, and the counters all W share: each worker's steps of the
    epoch (its position in its claims), its steps trained since the run began, and the stop flag."""

    def __init__(self, size: int):
        self.size = size
        counters = shared_copy(torch.zeros(2 * size + 1, dtype=torch.int64))
        self.positions, self.trained, self.stop_flag = counters[:size], counters[size : 2 * size], counters[2 * size :]
        self.finished = shared_copy(torch.zeros(size, dtype=torch.float64))  # when each ran out of chunks (monotonic s)
        self.started = 0.0
        self.total = 1  # steps of the whole run, all workers together (the decay's denominator)
        self.running: dict[int, tuple[int, Any]] = {}  # rank -> (pid, read end of its pipe)
        self.epoch: int | None = None  # the epoch whose workers were started
        self.checkpoint: Path | None = None  # the run's last.ckpt, named when a worker dies

    def kept(self) -> str:
        if self.checkpoint is None or not self.checkpoint.exists():
            return "before any checkpoint was written"
        return f"the last checkpoint is kept: resume with ckpt_path={self.checkpoint}"

    def progress(self) -> tuple[int, int]:
        """Steps trained by all workers together so far, and steps of the whole run."""
        return int(self.trained.numpy().sum()), self.total

    def start(self, epoch: int, run: Callable[[int, int, int], None], skips: list[int], limits: list[int]) -> None:
        """Fork workers 1..W-1 for ``epoch``; worker r runs ``run(r, skip, limit)`` and exits."""
        self.stop_flag.zero_()
        self.epoch, self.started = epoch, time.monotonic()
        self.finished.zero_()
        parent = os.getpid()
        for rank in range(1, self.size):
            self.positions[rank] = skips[rank]
            if skips[rank] >= limits[rank]:
                continue
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the worker
                os.close(read)
                code = 0
                try:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM stop the trainer's process,
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # which stops its workers between steps
                    _die_with_parent(parent)
                    torch.set_num_threads(1)
                    run(rank, skips[rank], limits[rank])
                    self.finished[rank] = time.monotonic()
                except BaseException as exc:  # handed to the trainer's process, which raises it
                    code = 1
                    text = traceback.format_exc()[-20_000:]
                    try:
                        report = pickle.dumps((exc, text))
                    except Exception:
                        report = b""
                    if not 0 < len(report) < 60_000:  # (within a pipe's buffer: the write never waits for a reader)
                        report = pickle.dumps((None, text))
                    with os.fdopen(write, "wb") as out:
                        out.write(report)
                finally:
                    os._exit(code)  # no atexit handlers, no flush of buffers inherited from the trainer
            os.close(write)
            self.running[rank] = (pid, read)

    def stop_requested(self) -> bool:
        return bool(self.stop_flag[0])

    def check(self) -> None:
        """Reap the workers that ended; raise the error of one that failed or died."""
        from sgns.train import user_error  # (train.py imports this module)

        for rank, (pid, read) in list(self.running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
            del self.running[rank]
            with os.fdopen(read, "rb") as inp:
                report = inp.read()
            if status == 0:
                continue
            self.stop()
            where = f"worker {rank} of {self.size} (pid {pid})"
            if report:
                exc, text = pickle.loads(report)
                if exc is not None and user_error(exc) is not None:  # bad input, divergence, memory: its one line
                    raise exc
                raise RuntimeError(f"{where} failed:\n{text}") from exc
            at = f"at its step {int(self.positions[rank])} of epoch {self.epoch}"
            raise Word2VecError(f"{where} {_describe(status)} {at}; training stopped, {self.kept()}")

    def share_seconds(self) -> list[float]:
        """How long each worker trained in the last epoch, until the chunks ran out (0: none): as
        each claims chunks when it needs them, they end within about a chunk of each other."""
        return [round(max(0.0, float(t) - self.started), 3) for t in self.finished]

    def join(self) -> None:
        """Wait for every worker to train its claims; raise at once if one fails, dies or hangs."""
        self.finished[0] = time.monotonic()
        moved, last = time.monotonic(), self.positions.clone()
        while self.running:
            self.check()
            time.sleep(0.005)
            if not torch.equal(self.positions, last):
                moved, last = time.monotonic(), self.positions.clone()
            elif time.monotonic() - moved > STALL_S:
                stalled = sorted(self.running)
                self.stop()
                raise Word2VecError(
                    f"workers {stalled} made no step in {STALL_S:.0f} s; training stopped, {self.kept()}"
                )

    def stop(self, grace_s: float = 10.0) -> None:
        """Ask the workers to stop after their current step; kill those still running after ``grace_s``."""
        self.stop_flag.fill_(1)
        deadline = time.monotonic() + grace_s
        for rank, (pid, read) in list(self.running.items()):
            while not os.waitpid(pid, os.WNOHANG)[0]:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.005)
            os.close(read)
            del self.running[rank]

    def state(self, epoch: int) -> dict[str, Any]:
        return {
            "workers": self.size,
            "epoch": epoch,
            "positions": self.positions.tolist(),
            "trained": self.trained.tolist(),
        }


class HogwildLauncher(Launcher):
    """Runs ``fit`` in this process (worker 0) and makes sure that no worker outlives it, however
    it ends: its workers are stopped between steps, or killed after a grace period."""

    def __init__(self, strategy: HogwildStrategy):
        self.strategy = strategy

    @property
    def is_interactive_compatible(self) -> bool:
        return True

    def launch(self, function: Callable, *args: Any, trainer: L.Trainer | None = None, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        finally:  # (before Lightning's on_exception hooks: a stop's checkpoint sees the workers' last steps)
            self.strategy.stop_workers()

    def kill(self, signum: int) -> None:
        """SIGTERM reached the trainer: the workers stop after their current step."""
        if self.strategy.pool is not None:
            self.strategy.pool.stop_flag.fill_(1)


class HogwildStrategy(SingleDeviceStrategy):
    """``trainer.devices`` lock-free workers on the CPU (see the module's docstring)."""

    strategy_name = "hogwild"

    def __init__(self) -> None:
        super().__init__(device="cpu")
        self.parallel_devices: list[torch.device] | None = None  # set by the trainer from trainer.devices
        self.pool: WorkerPool | None = None
        self._resumed: dict[str, Any] | None = None
        self.share_seconds: list[float] = []  # each worker's seconds for its share of the last epoch
        self._threads = torch.get_num_threads()

    @property
    def workers(self) -> int:
        return len(self.parallel_devices or [None])

    def _configure_launcher(self) -> None:  # (Lightning's hook: lightning_internals.py)
        self._launcher = HogwildLauncher(self)

    def check_model(self, module: L.LightningModule, deterministic: Any) -> None:
        """Refuse what lock-free workers cannot train, before the corpus is read."""
        one = "trainer.deterministic=true trains one worker: leave trainer.devices out (or set it to 1)"
        check(deterministic is not True or self.workers == 1, f"{one}, got trainer.devices={self.workers}")
        if self.workers == 1:
            return
        check(
            not module.hparams.get("compile"),
            f"model.compile=true is for one device (trainer=gpu, or trainer.devices=1 on the CPU); "
            f"{self.workers} lock-free workers would each compile the update",
        )
        check(self.root_device.type == "cpu", "lock-free workers train on the CPU: use trainer=gpu or trainer=ddp")
        optimizer = getattr(module.optimizer_factory, "func", module.optimizer_factory).__name__
        dense = (
            f"model.optimizer={optimizer} updates every row at every step, so {self.workers} lock-free workers "
            "would overwrite each other's work"
        )
        use = "use model/optimizer=sgd or sparse_adam, or one worker (trainer.devices=1)"
        check(wants_sparse_gradients(module.optimizer_factory), f"{dense}: {use}")

    def prepare_tables(self, module: Word2VecModule) -> None:
        """Once the tables are made, before training (as gensim allocates its tables when it builds
        its vocabulary): move them into shared memory (fastText's 800 MB n-gram table: 0.3 s), and
        load the compiled update (``kernels.py``) for them once, here, so that the workers forked at
        every epoch inherit it instead of each loading it at its first update (about 0.3 s each)."""
        if self.workers > 1:
            share_parameters(module)
        if module.compiled_on_cpu():
            kernels.warm(module.net.center_embed.weight.dtype)

    # -- the run ---------------------------------------------------------------------------------
    def on_train_start(self) -> None:
        super().on_train_start()
        trainer, module = self.lightning_module.trainer, self.lightning_module
        self._threads = torch.get_num_threads()
        if self.workers == 1:
            # (callbacks.ThreadTuner: read by attribute, since callbacks.py imports this module)
            tuned = any(getattr(c, "tunes_threads", False) and c.enabled for c in trainer.callbacks)
            if not tuned and "OMP_NUM_THREADS" not in os.environ:
                # without the tuner, one thread: torch's default of one per core met at every small
                # operation, and beside a busy process an epoch took 10-25x as long
                torch.set_num_threads(1)
            return
        share_tables(module, self.optimizers[0])
        torch.set_num_threads(1)  # one thread per worker: W processes on W cores
        self.pool = WorkerPool(self.workers)
        epochs = trainer.train_dataloader.dataset
        # the run's steps, all workers together: the first epoch's x the epochs (as one process counts them)
        per_epoch = min(epochs.steps(epoch=0), trainer.num_training_batches * self.workers)
        total = per_epoch * trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else math.inf
        self.pool.total = max(1, min(total, trainer.max_steps * self.workers if trainer.max_steps > 0 else math.inf))
        if self._resumed is not None:
            saved = self._resumed["workers"]
            check(
                saved == self.workers,
                f"the checkpoint was trained by {saved} workers, this run has trainer.devices={self.workers}",
            )
            self.pool.trained.copy_(torch.tensor(self._resumed["trained"]))
            check(
                "claims" in self._resumed or not any(self._resumed["positions"]),
                "the checkpoint's workers walked fixed shares of the chunks (an earlier version of sgns): "
                "resume it with that version, or start again",
            )
        else:  # a checkpoint of one process (or none): each worker counts as far as it came
            self.pool.trained.fill_(trainer.global_step)
        module.shared_progress = self.pool.progress
        path = getattr(trainer.checkpoint_callback, "path", None)  # (LastCheckpoint's)
        self.pool.checkpoint = Path(path) if path else None

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        batch_idx = args[1] if len(args) > 1 else kwargs.get("batch_idx", 0)
        pool = self.pool
        if pool is None:
            return super().training_step(*args, **kwargs)
        trainer = self.lightning_module.trainer
        if pool.epoch != trainer.current_epoch:
            self._start_epoch(trainer, batch_idx)
        pool.check()
        output = super().training_step(*args, **kwargs)
        pool.positions[0] = batch_idx + 1
        pool.trained[0] += 1
        if is_last_batch(trainer, batch_idx):
            pool.join()  # the epoch ends when every worker has trained its claims
            self.share_seconds = pool.share_seconds()
        return output

    def _start_epoch(self, trainer: L.Trainer, batch_idx: int) -> None:
        epochs = trainer.train_dataloader.dataset
        resumed = self._resumed
        skips = resumed["positions"] if resumed and resumed["epoch"] == epochs.epoch else [0] * self.workers
        self._resumed = None
        skips[0] = batch_idx
        limits = [trainer.num_training_batches] * self.workers  # (inf, unless limit_train_batches sets one)
        module, optimizer = self.lightning_module, self.optimizers[0]
        every = max(1, trainer.log_every_n_steps)
        pool = self.pool

        def run(rank: int, skip: int, limit: int) -> None:  # in worker ``rank``, a fork of this process
            epochs.set_share(rank, self.workers)
            epochs.set_epoch(epochs.epoch, skip=skip)
            for index, step in enumerate(epochs, start=skip):
                if index >= limit or pool.stop_requested():
                    break
                module.train_updates(step, optimizer, with_loss=(index + 1) % every == 0)
                pool.positions[rank] = index + 1
                pool.trained[rank] += 1

        pool.start(trainer.current_epoch, run, skips, limits)

    def stop_workers(self) -> None:
        if self.pool is not None:
            self.pool.stop()

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        pool = self.pool
        if pool is not None:  # every worker's position: the tables copied after hold at least these steps
            trainer = self.lightning_module.trainer
            epochs = trainer.train_dataloader.dataset
            checkpoint["hogwild"] = pool.state(epochs.epoch)
            checkpoint["hogwild"]["claims"] = epochs.claims.state()  # (after the positions: it holds their chunks)
            if pool.running:  # workers write on: the checkpoint is written from a copy, checked as the tables are
                checkpoint["state_dict"] = {name: table.clone() for name, table in checkpoint["state_dict"].items()}
                check_finite(checkpoint["state_dict"].items(), trainer.global_step)
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        self._resumed = resumed = checkpoint.get("hogwild")
        if resumed is not None and resumed["workers"] == self.workers and "claims" in resumed:
            # now: the trainer's own worker walks its chunks before training starts (Lightning
            # fetches its first step ahead), and would deal the epoch afresh
            self.lightning_module.trainer.datamodule.train_set.claims.load(resumed["claims"])
        return checkpoint

    def teardown(self) -> None:
        self.stop_workers()
        torch.set_num_threads(self._threads)  # (the next job of a sweep runs in this process)
        if self.pool is not None:
            self.lightning_module.shared_progress = None
            self.pool = None
        super().teardown()
