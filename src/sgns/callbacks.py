"""Lightning callbacks: benchmarks per epoch, throughput, and TensorBoard views of the vectors."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, ListConfig

from sgns.errors import check, check_choice, check_int, check_number, word_list
from sgns.evaluation import evaluate_all, read_analogies, read_word_pairs
from sgns.hogwild import epoch_steps, workers
from sgns.lightning_internals import request_stop_as_on_sigterm
from sgns.outputs import export_run
from sgns.vectors import unit_rows

log = logging.getLogger("sgns")


class WordVectorEvaluation(L.Callback):
    """Scores the current vectors every ``every_n_epochs`` epochs (and after the last one).

    Logs ``val/<name>`` for each benchmark (analogy accuracy, its semantic/syntactic parts,
    ws353 and simlex Spearman ρ) and ``val/<monitor>_best``, the best value so far, on the
    device the model trains on. Only rank 0 evaluates.
    """

    def __init__(
        self,
        analogies: list[str] | None = None,
        word_pairs: dict[str, str] | None = None,
        restrict_vocab: int = 30000,
        method: str = "add",
        every_n_epochs: int = 1,
        monitor: str = "analogy",
        prog_bar: tuple[str, ...] = ("analogy", "ws353"),
    ):
        check_int("callbacks.word_vectors.restrict_vocab", restrict_vocab)
        check_choice("callbacks.word_vectors.method", method, ("add", "mul"))
        check_int("callbacks.word_vectors.every_n_epochs", every_n_epochs)
        # one file may be given without brackets; pair files without names are named by their stems
        self.analogies = None if analogies is None else [analogies] if isinstance(analogies, str) else list(analogies)
        if isinstance(word_pairs, (str, list, ListConfig)):
            word_pairs = {Path(f).stem: f for f in ([word_pairs] if isinstance(word_pairs, str) else word_pairs)}
        check(
            word_pairs is None or isinstance(word_pairs, (dict, DictConfig)),
            f"callbacks.word_vectors.word_pairs must map names to files, got {word_pairs!r}",
        )
        self.word_pairs = dict(word_pairs) if word_pairs is not None else None
        check_choice(
            "callbacks.word_vectors.monitor",
            monitor,
            ["analogy", "analogy_semantic", "analogy_syntactic", *(self.word_pairs or {})],
        )
        for path in self.analogies or []:  # a bad file fails now, not after the first epoch
            read_analogies(path)
        for path in (self.word_pairs or {}).values():
            read_word_pairs(path)
        self.restrict_vocab, self.method = restrict_vocab, method
        self.every_n_epochs, self.monitor, self.prog_bar = every_n_epochs, monitor, set(prog_bar)
        self.best = -math.inf

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.sanity_checking or (epoch % self.every_n_epochs and epoch != trainer.max_epochs):
            return
        if not trainer.is_global_zero:  # every rank holds the same tables
            return
        words = trainer.datamodule.vocab.words
        metrics = evaluate_all(
            words, pl_module.net.word_vectors(), self.analogies, self.word_pairs, self.restrict_vocab, self.method
        )
        value = metrics.get(self.monitor)
        if value is not None and value == value:
            self.best = max(self.best, value)
            metrics[f"{self.monitor}_best"] = self.best
        for name, value in metrics.items():
            pl_module.log(f"val/{name}", value, prog_bar=name in self.prog_bar, rank_zero_only=True)
        log.info(
            "epoch %d: %s",
            epoch,
            ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if not k.endswith(("_evaluated", "_oov"))),
        )

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best", -math.inf)


def raw_words(trainer: L.Trainer, steps: int) -> float:
    """Raw corpus words (before min_count and subsampling, as gensim counts them) that ``steps``
    training steps stand for: an epoch's steps stand for the whole corpus."""
    return trainer.datamodule.corpus.raw_tokens * steps / max(1, len(trainer.datamodule.train_set))


def examples(step) -> int:
    """The examples of a training step (a list of updates), this rank's."""
    return sum(len(update) for update in step)


class Throughput(L.Callback):
    """Logs ``train/words_per_s`` (raw corpus words, as gensim counts them) and
    ``train/examples_per_s`` (pairs for skip-gram, centres for CBOW) over the last ``every_n_steps``
    steps; words/s is shown in the progress bar."""

    def __init__(self, every_n_steps: int = 50):
        check_int("callbacks.throughput.every_n_steps", every_n_steps)
        self.every_n_steps = every_n_steps
        self._since, self._pairs, self._batches = time.perf_counter(), 0, 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since, self._pairs, self._batches = time.perf_counter(), 0, 0
        self._done = pl_module.progress()[0]

    on_train_start = on_train_epoch_start  # a run resumed mid-epoch starts no epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._pairs += examples(batch)
        self._batches += 1
        if self._batches < self.every_n_steps:
            return
        seconds = time.perf_counter() - self._since
        steps = pl_module.progress()[0] - self._done  # every lock-free worker's steps (one process: its own)
        pl_module.log("train/words_per_s", raw_words(trainer, steps) / seconds, prog_bar=True)
        per_step = self._pairs * trainer.world_size / self._batches  # (all ranks')
        pl_module.log("train/examples_per_s", per_step * steps / seconds)
        self.on_train_epoch_start(trainer, pl_module)


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, counting the steps of every lock-free worker: the trainer's own
    process trains only the chunks it claims, and the bar's total is the epoch's steps."""

    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches  # (unknown to a lock-free worker: the epoch's steps, then)
        return len(self.trainer.datamodule.train_set) if math.isinf(total) and self.trainer.datamodule else total

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        done = min(epoch_steps(trainer, batch_idx + 1), self.total_train_batches)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, done - 1)


class ThreadTuner(L.Callback):
    """Chooses torch's CPU thread count from measured speed, while training runs.

    Every ``every_s`` seconds it times each candidate (1 thread, the threads this process was
    given, and the powers of two between) for ``probe_s`` seconds of training steps and keeps the
    fastest. On an idle machine that is every thread; beside other busy processes (a laptop's
    browser, a shared server, the other ranks of a DDP run on the same cores), threads that meet
    at every small operation wait for each other's turn on a core, and one thread is several
    times faster. OpenMP's threads spin a moment at each meeting and then sleep (its default
    wait policy; ``OMP_WAIT_POLICY=ACTIVE`` would keep an unused thread spinning). Every candidate
    gives the same bits (tested), so the choice changes speed only. ``train/threads`` is logged.
    """

    tunes_threads = True  # (the strategy leaves torch's thread count to it while enabled)

    def __init__(self, every_s: float = 10.0, probe_s: float = 0.25, enabled: bool = True):
        check_number("callbacks.threads.every_s", every_s, 0, low_open=True)
        check_number("callbacks.threads.probe_s", probe_s, 0, low_open=True)
        self.every_s, self.probe_s, self.enabled = every_s, probe_s, enabled
        self.candidates: list[int] = []
        self.threads = torch.get_num_threads()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        most = self._initial = torch.get_num_threads()
        # none beside lock-free workers: they train one thread each, and a second would contend with them
        powers = {1, most, *(2**i for i in range(most.bit_length()) if 2**i < most)}
        self.candidates = [] if workers(trainer) > 1 else sorted(powers)
        self.threads = most
        self._next_round = time.perf_counter() + min(1.0, self.every_s)  # a first look soon after the start
        self._queue: list[int] = []
        self._timing: dict[int, list[float]] = {}
        self._last: float | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        last, self._last = self._last, now
        if not self.enabled or pl_module.device.type != "cpu" or len(self.candidates) < 2:
            return
        if last is not None and batch_idx > 0 and self._queue:  # (an epoch's first step includes its start)
            seconds, pairs = self._timing.setdefault(self._queue[0], [0.0, 0.0])[:2]
            self._timing[self._queue[0]] = [seconds + now - last, pairs + max(1, examples(batch))]
            if self._timing[self._queue[0]][0] >= self.probe_s:  # this candidate is timed: the next one
                self._queue.pop(0)
                if not self._queue:
                    self._choose(pl_module, now)
                    return
                self._set(self._queue[0])
        elif not self._queue and now >= self._next_round:
            self._queue, self._timing = list(self.candidates), {}
            self._set(self._queue[0])
            self._last = time.perf_counter()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the process its threads back (the next job of a sweep runs in the same process)."""
        if self.candidates:
            self._set(self._initial)

    def _choose(self, pl_module: L.LightningModule, now: float) -> None:
        best = min(self._timing, key=lambda n: self._timing[n][0] / self._timing[n][1])  # seconds per pair
        self._set(best)
        self.threads, self._next_round = best, now + self.every_s
        pl_module.log("train/threads", float(best))

    @staticmethod
    def _set(threads: int) -> None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _tensorboard(trainer: L.Trainer):
    return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


class EmbeddingDashboard(L.Callback):
    """TensorBoard views of the space: a per-epoch text panel with the nearest neighbours of the
    probe words, and the projector with the ``top_n`` most frequent words (at the end, or every
    epoch with ``projector_every_epoch``)."""

    def __init__(
        self,
        probe_words: list[str] | None = None,
        neighbours: int = 8,
        top_n: int = 5000,
        projector_every_epoch: bool = False,
    ):
        check_int("callbacks.embedding_dashboard.neighbours", neighbours)
        check_int("callbacks.embedding_dashboard.top_n", top_n, 0)
        self.probe_words = word_list("callbacks.embedding_dashboard.probe_words", probe_words)
        self.neighbours, self.top_n, self.projector_every_epoch = neighbours, top_n, projector_every_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = _tensorboard(trainer)
        if writer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        words = trainer.datamodule.vocab.words
        table = self.neighbour_table(words, pl_module.net.word_vectors())
        if table:
            writer.add_text("neighbours", table, trainer.global_step)
        if self.projector_every_epoch:
            self._projector(writer, words, pl_module, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = _tensorboard(trainer)
        if writer is not None and not self.projector_every_epoch:
            self._projector(writer, trainer.datamodule.vocab.words, pl_module, trainer.global_step)

    def neighbour_table(self, words: list[str], vectors: torch.Tensor) -> str:
        """A Markdown table: probe word | its nearest neighbours by cosine."""
        index = {w: i for i, w in enumerate(words)}
        probes = [w for w in self.probe_words if w in index]
        if not probes:
            return ""
        unit = unit_rows(vectors)
        ids = torch.tensor([index[w] for w in probes], device=unit.device)
        scores = unit[ids] @ unit.T
        scores[torch.arange(len(ids)), ids] = float("-inf")
        top = scores.topk(min(self.neighbours, len(words) - 1), dim=1).indices.cpu().tolist()
        rows = [f"| {w} | {', '.join(words[j] for j in row)} |" for w, row in zip(probes, top)]
        return "\n".join(["| word | nearest neighbours |", "|---|---|", *rows])

    def _projector(self, writer, words: list[str], pl_module: L.LightningModule, step: int) -> None:
        n = min(self.top_n, len(words))
        vectors = pl_module.net.word_vectors()[:n].float().cpu()
        writer.add_embedding(vectors, metadata=words[:n], tag="center_embed", global_step=step)
        writer.flush()


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps, at the end of every epoch and at the end of
    training, so a run killed at any moment resumes from its latest step checkpoint or epoch end.

    (Lightning's ModelCheckpoint takes one trigger: saving every N steps switches its epoch-end
    saves off.) Each save replaces the file only when complete (the trainer's checkpoint IO,
    ``AtomicCheckpointIO``); under DDP every rank calls it and rank 0 writes.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = 2000, filename: str = "last.ckpt"):
        check_int("callbacks.model_checkpoint.every_n_train_steps", every_n_train_steps, optional=True)
        self.path = Path(dirpath) / filename
        self.every_n_train_steps = every_n_train_steps
        self.last_model_path = ""
        self._saved_at: tuple[int, int] | None = None

    def _save(self, trainer: L.Trainer) -> None:
        if (
            trainer.sanity_checking
            or trainer.fast_dev_run
            or self._saved_at == (trainer.current_epoch, trainer.global_step)
        ):
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_at, self.last_model_path = (trainer.current_epoch, trainer.global_step), str(self.path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.every_n_train_steps and trainer.global_step % self.every_n_train_steps == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the last epoch's end is the end of training, which writes it once, the epoch counted done
        # (trainer.max_epochs=-1, training to max_steps: every epoch's end writes it)
        if trainer.current_epoch + 1 != trainer.max_epochs:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)


class GracefulStop(L.Callback):
    """Ctrl-C and SIGTERM stop training at the next batch boundary, write a checkpoint and the
    current vectors, and say how to resume. A second Ctrl-C stops at once."""

    def __init__(self, output_dir: str, checkpoint_name: str = "last.ckpt"):
        self.output_dir, self.checkpoint_name = Path(output_dir), checkpoint_name
        self._previous_handler = None
        self.stopped: Path | None = None
        self.signal = signal.SIGTERM  # SIGINT once a Ctrl-C asked for the stop

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started with Ctrl-C ignored (nohup, a
            return  # background job of a shell without job control): it stays ignored, as Python leaves it

        def handle_sigint(signum, frame):  # Lightning already turns SIGTERM into the same flag
            if trainer.received_sigterm:
                raise KeyboardInterrupt
            self.signal = signal.SIGINT
            request_stop_as_on_sigterm(trainer)

        self._previous_handler = signal.signal(signal.SIGINT, handle_sigint)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registers its own signal handlers after on_fit_start and clears the stop flag
        # there: a Ctrl-C that came in between would be lost and the run would go on to the end.
        if self.signal == signal.SIGINT:
            request_stop_as_on_sigterm(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handler()
        if not isinstance(exception, SIGTERMException) or not trainer.is_global_zero:
            return  # errors (NaN loss included) keep the last good checkpoint untouched
        checkpoint = self.output_dir / self.checkpoint_name
        trainer.save_checkpoint(checkpoint, weights_only=False)
        corpus = trainer.datamodule.prepare()
        export_run(pl_module, corpus.vocab, self.output_dir, phrases=corpus.phrases)
        self.stopped = checkpoint

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None
