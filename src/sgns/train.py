"""Training entry: compose objects from the Hydra config, fit, export vectors, report."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from sgns.callbacks import GracefulStop
from sgns.errors import Word2VecError
from sgns.outputs import export
from sgns.vectors import WordVectors

log = logging.getLogger("sgns")


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group such as callbacks or logger."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def train(cfg: DictConfig) -> dict[str, float]:
    """Train SGNS as configured; returns the final metrics (floats)."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    ckpt_path = cfg.get("ckpt_path")
    ckpt_words, first_step = check_checkpoint(ckpt_path) if ckpt_path else (None, 0)
    datamodule = instantiate(cfg.data)
    loggers = _instantiate_all(cfg.get("logger"))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    if not loggers:  # nothing to log learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    try:  # before the corpus is read: a wrong device should cost a glance, not a long preparation
        trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    except Exception as exc:
        if (message := user_error(exc)) is None:
            raise
        raise Word2VecError(f"cannot use trainer.accelerator={cfg.trainer.accelerator} "
                            f"(devices={cfg.trainer.devices}): {message}; try trainer=cpu") from None  # fmt: skip
    started = time.perf_counter()
    corpus = datamodule.prepare()
    prepare_s = time.perf_counter() - started
    log.info(
        "corpus: %s raw tokens -> %s training tokens, %s validation tokens; vocabulary %s words (%.1f s)",
        f"{corpus.raw_tokens:,}", f"{corpus.train.n_tokens:,}", f"{corpus.val.n_tokens:,}",
        f"{len(corpus.vocab):,}", prepare_s,
    )  # fmt: skip
    if ckpt_words is not None and ckpt_words != corpus.vocab.words:
        raise Word2VecError(f"checkpoint {ckpt_path} was trained on a different vocabulary ({len(ckpt_words):,} words) "
                            f"than this corpus and config give ({len(corpus.vocab):,} words)")  # fmt: skip
    model = instantiate(cfg.model, vocab_size=len(corpus.vocab))
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    started = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        stop = next((c for c in trainer.callbacks if isinstance(c, GracefulStop)), None)
        stopped = TrainingStopped(_stopped_message(trainer, stop))
        stopped.exit_code = 128 + int(stop.signal if stop else 15)
        raise stopped from None
    seconds = time.perf_counter() - started
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    digests = getattr(model, "rank_digests", [])
    if len(set(digests)) > 1:
        raise Word2VecError(f"the {len(digests)} ranks ended with different weights ({', '.join(d[:12] for d in digests)}); "
                            "vectors not exported")  # fmt: skip
    if not trainer.is_global_zero:
        return metrics

    vectors = WordVectors(corpus.vocab.words, model.word_vectors(), corpus.vocab.counts)
    written = export(vectors, corpus.vocab, output_dir, **cfg.get("export", {}))
    raw_words = corpus.raw_tokens * (trainer.global_step - first_step) / max(1, trainer.num_training_batches)
    metrics["train/raw_words_per_s"] = raw_words / seconds if seconds > 0 else 0.0
    summary = {"prepare_s": prepare_s, "train_s": seconds, "raw_tokens": corpus.raw_tokens,
               "epochs": trainer.current_epoch, "vocab_size": len(corpus.vocab), "world_size": trainer.world_size,
               "pairs_last_epoch": datamodule.train_set.pairs(),
               **metrics, **({"weights_sha256_per_rank": digests} if digests else {})}  # fmt: skip
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    for logger in loggers:  # the HParams tab: this run's hyperparameters next to its final metrics
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True),
                                   metrics={f"hp/{k}": v for k, v in metrics.items() if k.startswith(("val/", "train/"))})  # fmt: skip
            logger.finalize("success")  # flush: the writer was reopened after fit's own finalize
    report(vectors, written, trainer, seconds, metrics, list(cfg.get("probe_words") or []))
    return metrics


def report(vectors: WordVectors, written: list[Path], trainer: L.Trainer, seconds: float,
           metrics: dict[str, float], probe_words: list[str]) -> None:  # fmt: skip
    """Print where everything went and the nearest neighbours of the probe words."""
    lines = [f"trained {trainer.current_epoch} epoch(s), {trainer.global_step:,} steps in {seconds:.1f} s "
             f"({metrics['train/raw_words_per_s']:,.0f} raw words/s)"]  # fmt: skip
    lines += [f"  {k} = {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith(("val/", "train/loss", "train/epoch_loss")) and not k.endswith("_oov")]
    checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "")
    lines += ["outputs:"] + [f"  {p}" for p in ([checkpoint] if checkpoint else []) + written]
    for logger in trainer.loggers:
        lines.append(f"  TensorBoard: tensorboard --logdir {logger.log_dir}")
    probes = [w for w in probe_words if w in vectors]
    if probes:
        lines.append("nearest neighbours:")
        for word in probes:
            lines.append(f"  {word:>12}: " + ", ".join(w for w, _ in vectors.most_similar(word, topn=6)))
    print("\n".join(lines), flush=True)


class TrainingStopped(Word2VecError):
    """Ctrl-C or SIGTERM: a checkpoint and the vectors were written; exit code 128 + signal number."""

    exit_code = 143


def check_checkpoint(path: str | Path) -> tuple[list[str], int]:
    """A resume checkpoint must exist and load with ``weights_only=True`` (no unpickling of code);
    returns its vocabulary and global step."""
    path = Path(path)
    if not path.is_file():
        raise Word2VecError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        state["state_dict"]
        return list(state["SkipGramDataModule"]["words"]), int(state["global_step"])
    except Exception as exc:
        raise Word2VecError(f"checkpoint {path} is not a readable sgns checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def _stopped_message(trainer: L.Trainer, stop: GracefulStop | None) -> str:
    if stop is None or stop.stopped is None:
        return "training stopped before a checkpoint could be written"
    overrides = []
    if HydraConfig.initialized():
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("ckpt_path=", "hydra.run.dir="))]
    command = " ".join(["python train.py", *overrides, f"ckpt_path={stop.stopped}", f"hydra.run.dir={stop.stopped.parent}"])
    return (f"training stopped at epoch {trainer.current_epoch}, step {trainer.global_step}; checkpoint and current "
            f"vectors written to {stop.stopped.parent}. Resume with: {command}")  # fmt: skip


def user_error(exc: BaseException) -> str | None:
    """The one-line message for an error caused by the user's input, else None (a bug)."""
    while exc is not None:
        if isinstance(exc, (Word2VecError, MisconfigurationException)):
            return str(exc).strip().splitlines()[0]
        if not isinstance(exc, InstantiationException):
            return None
        exc = exc.__cause__
    return None


def main(cfg: DictConfig) -> float | None:
    """Hydra task: train and return the optimised metric (``cfg.optimized_metric``) for sweeps."""
    try:
        metrics = train(cfg)
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(getattr(exc, "exit_code", 2))
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None
