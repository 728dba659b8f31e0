"""Training entry: compose objects from the Hydra config, fit, export vectors, report."""

from __future__ import annotations

import errno
import inspect
import json
import logging
import math
import re
import sys
import threading
import time
import traceback
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import CompactHydraException, InstantiationException, MissingConfigException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sgns import init_from
from sgns.callbacks import GracefulStop, raw_words
from sgns.data.memory import reuse_freed_memory
from sgns.errors import Diverged, UnknownWordError, Word2VecError, check, check_int, word_list
from sgns.hogwild import HogwildStrategy, workers
from sgns.outputs import DATA_KEY, VECTORS_KEY, export_run, read_checkpoint, write_atomically
from sgns.rundir import own_run_dir, save_run_config, start_run_log
from sgns.sweep import record_job
from sgns.vectors import WordVectors

log = logging.getLogger("sgns")


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group such as callbacks or logger."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


# Lightning's notes that say nothing about this run: advertising tips, "GPU available: False", and
# warnings about choices made on purpose (an IterableDataset with an exact len(), no loader workers)
_QUIET_WARNINGS = (
    r".*IterableDataset.*has `__len__` defined",
    r".*does not have many workers",
    r".*is smaller than the logging interval",
    r".*treespec, LeafSpec.*is deprecated",
)


def quiet() -> None:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


# The tables' type; the closed-form updates run in it. Mixed precision is refused: autocast would
# turn their products to 16 bits beside 32-bit tables. float16 tables are refused too: Adam's eps
# (1e-8) is 0 in float16, and its steps become nan. bf16 keeps float32's range (half the memory).
PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-true")


RUN_OUTPUTS = ("last.ckpt", "vectors.bin", "vectors.txt", "fasttext.bin")  # what a run writes that took its time


def check_no_earlier_run(output_dir: Path, ckpt_path: str | None, overwrite: Any) -> None:
    """A run directory that holds an earlier run's checkpoint or vectors is trained into only to
    resume that run (``ckpt_path`` its ``last.ckpt``) or with ``overwrite=true``: a new run would
    replace them."""
    check(isinstance(overwrite, bool), f"overwrite must be true or false, got {overwrite!r}")
    earlier = [name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    resuming = ckpt_path is not None and Path(ckpt_path).resolve() == (output_dir / "last.ckpt").resolve()
    check(
        not earlier or resuming or overwrite,
        f"{output_dir} holds an earlier run ({', '.join(earlier)}), which this run "
        f"would replace: resume it with ckpt_path={output_dir / 'last.ckpt'}, choose another hydra.run.dir, or add overwrite=true",
    )


def check_precision(precision: Any) -> None:
    check(
        str(precision) in PRECISIONS,
        f"trainer.precision must be 32-true, 64-true or bf16-true (the tables' type), "
        f"got {precision!r}: the updates are computed in closed form, not under mixed precision's autocast",
    )


def train(cfg: DictConfig) -> dict[str, float]:
    """Train as configured; returns the final metrics (floats). The steps read like the run: check
    the settings, build the objects, take the run directory, check the checkpoint to resume,
    prepare the corpus, make the tables, fit, export."""
    with ExitStack() as run_dir:
        quiet()
        reuse_freed_memory()
        probe_words = check_settings(cfg)
        run = build(cfg)
        if run.trainer.is_global_zero:  # (the ranks of one run share its directory)
            run_dir.enter_context(own_run_dir(run.output_dir))
        check_no_earlier_run(run.output_dir, run.ckpt_path, cfg.get("overwrite", False))
        if isinstance(run.trainer.strategy, HogwildStrategy):
            run.trainer.strategy.check_model(run.model, cfg.trainer.get("deterministic"))
        run.datamodule.follow_model(run.model)
        checkpoint = check_resume(run, cfg)  # a wrong checkpoint should cost a glance, not a long preparation
        earlier = continue_from(run, cfg.get("init_from"))
        corpus, prepare_s = prepare(run, checkpoint)
        run.model.build(len(corpus.vocab), corpus.vocab.words, corpus.vocab.counts)
        if isinstance(run.trainer.strategy, HogwildStrategy):
            run.trainer.strategy.prepare_tables(run.model)
        if earlier is not None and checkpoint is None:  # (a resumed run's tables come from its checkpoint)
            init_from.start_from(run.model.net, earlier, run.model.hparams.objective)
        if run.trainer.is_global_zero:  # every check has passed: the run's record and log go to its directory
            save_run_config(run.output_dir, cfg)
            start_run_log()
        for logger in run.loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        seconds = fit(run)
        metrics = {k: float(v) for k, v in run.trainer.callback_metrics.items()}
        digests = getattr(run.model, "rank_digests", [])
        if len(set(digests)) > 1:
            shown = ", ".join(d[:12] for d in digests)
            raise Word2VecError(
                f"the {len(digests)} ranks ended with different weights ({shown}); vectors not exported"
            )
        if run.trainer.is_global_zero:
            export_and_report(run, cfg, corpus, checkpoint, prepare_s, seconds, metrics, digests, probe_words)
        return metrics


@dataclass
class Run:
    """What a run is made of, composed from the config before the corpus is read."""

    output_dir: Path
    ckpt_path: str | None
    datamodule: Any
    model: Any
    loggers: list[Any]
    trainer: L.Trainer


def check_settings(cfg: DictConfig) -> list[str]:
    """The run's own settings (seed, epochs, precision, probe words); returns the probe words."""
    if cfg.get("seed") is not None:
        check_int("seed", cfg.seed, 0, 2**32 - 1)  # (Lightning would pick a random seed for one out of range)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    epochs, steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps", -1)
    if not (epochs == -1 and isinstance(steps, int) and steps >= 1):  # -1: as many epochs as trainer.max_steps takes
        check_int("trainer.max_epochs", epochs)
    check_precision(cfg.trainer.get("precision", "32-true"))
    return word_list("probe_words", cfg.get("probe_words"))


def build(cfg: DictConfig) -> Run:
    """The data module, the model (its settings checked; its tables wait for the vocabulary), the
    loggers, the callbacks and the trainer: a wrong device costs a glance, not a preparation."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    loggers, callbacks = _instantiate_all(cfg.get("logger")), _instantiate_all(cfg.get("callbacks"))
    try:
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    except Exception as exc:
        if (message := user_error(exc)) is None:
            raise
        hint = "" if cfg.trainer.accelerator == "cpu" else "; try trainer=cpu"
        where = f"trainer.accelerator={cfg.trainer.accelerator} (devices={cfg.trainer.devices})"
        raise Word2VecError(f"cannot use {where}: {message}{hint}") from None
    return Run(output_dir, cfg.get("ckpt_path"), datamodule, model, loggers, trainer)


def check_resume(run: Run, cfg: DictConfig) -> dict[str, Any] | None:
    """The checkpoint to resume (``ckpt_path``), checked against this run's settings; None for a new run."""
    if not run.ckpt_path:
        return None
    data, trainer = run.datamodule, run.trainer
    expected = {
        **data.resume_settings(trainer.world_size, data.batch_device_type(trainer), workers(trainer)),
        **run.model.resume_settings(),
    }
    checkpoint = check_checkpoint(run.ckpt_path, expected)
    check_unfinished(checkpoint, run.ckpt_path, cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps", -1))
    return checkpoint


def continue_from(run: Run, path: str | None) -> init_from.Earlier | None:
    """``init_from``: the earlier tables, checked against this run's model; the data module reads the
    corpus with their vocabulary."""
    if path is None:
        return None
    earlier = init_from.load(path)
    settings = run.model.resume_settings()
    dim = settings.get(
        "model.net.embedding_dim", inspect.signature(run.model.family).parameters["embedding_dim"].default
    )
    init_from.check_fits(earlier, settings, dim)
    run.datamodule.continue_from(earlier.words, earlier.counts)
    return earlier


def prepare(run: Run, checkpoint: dict[str, Any] | None) -> tuple[Any, float]:
    """The prepared corpus (cached after the first run) and the seconds it took; a resumed run's
    vocabulary must be its checkpoint's."""
    started = time.perf_counter()
    corpus = run.datamodule.prepare()
    prepare_s = time.perf_counter() - started
    log.info(
        "corpus: %s raw tokens -> %s training tokens, %s validation tokens; vocabulary %s words (%.1f s)",
        f"{corpus.raw_tokens:,}",
        f"{corpus.train.n_tokens:,}",
        f"{corpus.val.n_tokens:,}",
        f"{len(corpus.vocab):,}",
        prepare_s,
    )
    if checkpoint is not None and (words := checkpoint[DATA_KEY]["words"]) != corpus.vocab.words:
        raise Word2VecError(
            f"checkpoint {run.ckpt_path} was trained on a different vocabulary ({len(words):,} words) "
            f"than this corpus and config give ({len(corpus.vocab):,} words)"
            + (
                "; a run started with init_from resumes with the same init_from"
                if run.datamodule.earlier is None
                else ""
            )
        )
    return corpus, prepare_s


def fit(run: Run) -> float:
    """Train; returns the seconds. SIGTERM or Ctrl-C ends as ``Stopped`` (a checkpoint was written)."""
    started = time.perf_counter()
    try:
        run.trainer.fit(run.model, datamodule=run.datamodule, ckpt_path=run.ckpt_path, weights_only=True)
    except SIGTERMException:
        stop = next((c for c in run.trainer.callbacks if isinstance(c, GracefulStop)), None)
        raise Stopped(_stopped_message(run.trainer, stop), 128 + int(stop.signal if stop else 15)) from None
    return time.perf_counter() - started


def export_and_report(
    run: Run,
    cfg: DictConfig,
    corpus: Any,
    checkpoint: dict[str, Any] | None,
    prepare_s: float,
    seconds: float,
    metrics: dict[str, float],
    digests: list[str],
    probe_words: list[str],
) -> None:
    """The vectors, metrics.json, TensorBoard's HParams and the printed report (rank 0)."""
    trainer, first_step = run.trainer, int(checkpoint["global_step"]) if checkpoint is not None else 0
    vectors, written = export_run(
        run.model, corpus.vocab, run.output_dir, **cfg.get("export", {}), phrases=corpus.phrases
    )
    metrics["train/raw_words_per_s"] = (
        raw_words(trainer, trainer.global_step - first_step) / seconds if seconds > 0 else 0.0
    )
    summary = {
        "prepare_s": prepare_s,
        "train_s": seconds,
        "raw_tokens": corpus.raw_tokens,
        "epochs": trainer.current_epoch,
        "vocab_size": len(corpus.vocab),
        "world_size": trainer.world_size,
        "pairs_last_epoch": run.datamodule.train_set.pairs(),
        "workers": workers(trainer),
        **({"share_seconds_last_epoch": trainer.strategy.share_seconds} if workers(trainer) > 1 else {}),
        **metrics,
        **({"weights_sha256_per_rank": digests} if digests else {}),
    }
    write_atomically(run.output_dir / "metrics.json", lambda p: p.write_text(json.dumps(summary, indent=1)))
    for logger in run.loggers:  # the HParams tab: this run's hyperparameters next to its final metrics
        if isinstance(logger, TensorBoardLogger):
            final = {f"hp/{k}": v for k, v in metrics.items() if k.startswith(("val/", "train/"))}
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True), metrics=final)
            logger.finalize("success")  # flush: the writer was reopened after fit's own finalize
    report(vectors, written, trainer, seconds, metrics, probe_words)


def report(
    vectors: WordVectors,
    written: list[Path],
    trainer: L.Trainer,
    seconds: float,
    metrics: dict[str, float],
    probe_words: list[str],
) -> None:
    """Print where everything went and the nearest neighbours of the probe words."""
    lines = [
        f"trained {trainer.current_epoch} epoch(s), {trainer.global_step:,} steps in {seconds:.1f} s "
        f"({metrics['train/raw_words_per_s']:,.0f} raw words/s)"
    ]
    lines += [
        f"  {k} = {v:.4f}"
        for k, v in sorted(metrics.items())
        if k.startswith(("val/", "train/loss", "train/epoch_loss")) and not k.endswith("_oov")
    ]
    checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "")
    lines += ["outputs:"] + [f"  {p}" for p in ([checkpoint] if checkpoint else []) + written]
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            lines.append(f"  TensorBoard: tensorboard --logdir {logger.log_dir}")
        elif isinstance(logger, CSVLogger):
            lines.append(f"  metrics: {Path(logger.log_dir) / 'metrics.csv'}")
    if probe_words:
        lines.append("nearest neighbours:")
        for word in probe_words:  # (fastText's vectors answer for unseen words too)
            try:
                near = ", ".join(w for w, _ in vectors.most_similar(word, topn=6))
            except UnknownWordError:
                near = "(not in the vocabulary)"
            lines.append(f"  {word:>12}: {near}")
    print("\n".join(lines), flush=True)


class Stopped(Exception):
    """Ctrl-C or SIGTERM: a checkpoint and the vectors were written; exit code 128 + signal number."""

    def __init__(self, message: str, exit_code: int = 143):
        super().__init__(message)
        self.exit_code = exit_code


def check_checkpoint(path: str | Path, expected: dict[str, Any]) -> dict[str, Any]:
    """A resume checkpoint must be ours (``read_checkpoint``) and trained with the settings this run
    has wherever they decide the tables, the updates or the batches (``expected``, by config key);
    returns it."""
    state = read_checkpoint(path)
    dim = state["state_dict"][VECTORS_KEY].shape[1]
    saved = {"model.net.embedding_dim": dim, **state.get("resume_settings", {}), **state[DATA_KEY].get("settings", {})}
    for key, value in expected.items():
        if key in saved and saved[key] != value:
            raise Word2VecError(
                f"checkpoint {path} was trained with {key}={saved[key]!r} but this run has {key}={value!r}; "
                "resuming must replay the same batches and updates: set it back, or start a new run"
            )
    return state


def check_unfinished(checkpoint: dict[str, Any], path: str | Path, max_epochs: int, max_steps: int) -> None:
    """Resuming a run that already trained as far as this run asks would train nothing, and rewrite
    its metrics without any: refuse it."""
    completed = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"]
    steps_done = int(checkpoint["global_step"])
    if max_epochs != -1 and completed >= max_epochs:
        reached = f"has finished its {completed} epoch(s) and this run has trainer.max_epochs={max_epochs}"
    elif isinstance(max_steps, int) and 0 < max_steps <= steps_done:
        reached = f"has trained {steps_done:,} steps and this run has trainer.max_steps={max_steps}"
    else:
        return
    raise Word2VecError(
        f"checkpoint {path} {reached}: there is nothing to train (its outputs stay as they are); "
        "raise trainer.max_epochs to train it further"
    )


def _stopped_message(trainer: L.Trainer, stop: GracefulStop | None) -> str:
    if stop is None or stop.stopped is None:
        return "training stopped before a checkpoint could be written"
    overrides = []
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    command = " ".join(
        ["python train.py", *overrides, f"ckpt_path={stop.stopped}", f"hydra.run.dir={stop.stopped.parent}"]
    )
    return (
        f"training stopped at epoch {trainer.current_epoch}, step {trainer.global_step}; checkpoint and current "
        f"vectors written to {stop.stopped.parent}. Resume with: {command}"
    )


def user_error(exc: BaseException) -> str | None:
    """The one-line message for an error caused by the user's input or environment, else None (a bug,
    which keeps its traceback)."""
    while exc is not None:
        if isinstance(exc, (Word2VecError, MisconfigurationException)):
            return _first_line(exc)
        if isinstance(exc, MissingConfigException):  # data=nonsense: name the choices
            listed = str(exc).split("Available options", 1)[-1].split("Config search path")[0].splitlines()[1:]
            options = [o.strip() for o in listed if o.strip()]
            return _first_line(exc) + (f"; choose one of: {', '.join(options)}" if options else "")
        if isinstance(exc, InstantiationException):  # the error of the object the config describes
            if isinstance(exc.__cause__, TypeError):
                return _first_line(exc.__cause__) + " (a key the config does not have?)"
            exc = exc.__cause__
            continue
        if isinstance(exc, (CompactHydraException, OmegaConfBaseException)):  # overrides, missing values
            return _first_line(exc)
        if _out_of_memory(exc):
            tried = re.search(r"tried to allocate (\d+ bytes|[\d.]+ ?[KMGT]?i?B)", str(exc), re.IGNORECASE)
            return (
                f"out of memory{f' (tried to allocate {tried.group(1)})' if tried else ''}: lower data.batch_size, "
                "data.negatives, model.net.embedding_dim or model.net.buckets; files written before are intact"
            )
        if isinstance(exc, OSError) and exc.errno is not None:  # unwritable, read-only or full places
            where = f"{exc.filename}: " if exc.filename else ""
            hint = {
                errno.ENOSPC: "the disk is full",
                errno.EDQUOT: "over quota",
                errno.EROFS: "read-only",
                errno.EACCES: "choose a writable place, e.g. hydra.run.dir=DIR",
                errno.EPERM: "choose a writable place, e.g. hydra.run.dir=DIR",
            }.get(exc.errno)
            return f"{where}{exc.strerror or exc}{f' ({hint})' if hint else ''}; files written before are intact"
        return None
    return None


def _out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: torch's on a GPU (OutOfMemoryError) or on the CPU (a RuntimeError from its
    allocator), or Python's and numpy's MemoryError."""
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc)
    )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Bad input ends with one ``error:`` line and exit code 2; a stop (Ctrl-C, SIGTERM) with one
    ``stopped:`` line and 128 + the signal number; a bug keeps its traceback. A thread's error of the
    user's kind (TensorBoard's writer thread on a full disk) is left to the main thread, which gets
    it raised again."""
    default_hook = threading.excepthook
    threading.excepthook = lambda args: None if user_error(args.exc_value) else default_hook(args)
    try:
        yield
    except Stopped as stop:
        end_progress_bars()
        print(f"stopped: {stop}", file=sys.stderr, flush=True)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:  # (a line of its own also after a bar that closed itself, and after the terminal's ^C)
        end_progress_bars()
        print("\nstopped: interrupted (Ctrl-C); files written before are intact", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        end_progress_bars()
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        threading.excepthook = default_hook


def end_progress_bars() -> None:
    """Close the progress bars an error cut short, so that the line after them starts a line of its
    own (closing a bar ends its line)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def main(cfg: DictConfig) -> float | None:
    """Hydra task: train and return the optimised metric (``cfg.optimized_metric``) for sweeps."""
    if _in_sweep():
        return _sweep_job(cfg)
    with one_line_errors():
        metrics = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _sweep_job(cfg: DictConfig) -> float | None:
    """A sweep job that fails is one of the sweep's results, not the end of the sweep: one line for
    it (a bug's traceback too), its status for the summary (``sgns.sweep``), and the worst value for
    a sweeper that optimises (Optuna's ``direction``). A stop (Ctrl-C, SIGTERM) stops the sweep."""
    hydra_cfg = HydraConfig.get()
    try:
        metrics = train(cfg)
    except Stopped:  # (the sweeper raises it again, and the entry's one_line_errors says so)
        raise
    except Exception as exc:
        status, message = ("diverged", str(exc)) if isinstance(exc, Diverged) else ("error", user_error(exc))
        end_progress_bars()
        if message is None:
            status, message = "crashed", f"{type(exc).__name__}: {_first_line(exc)} (a bug: its traceback is above)"
            traceback.print_exc()
        print(
            f"error: sweep job {hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)}): {message}; the sweep goes on",
            file=sys.stderr,
            flush=True,
        )
        record_job(hydra_cfg, status, message)
        direction = OmegaConf.select(hydra_cfg, "sweeper.direction", default=None)
        return {"maximize": -math.inf, "minimize": math.inf}.get(str(direction).lower() if direction else "")
    record_job(hydra_cfg, "ok")
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None
