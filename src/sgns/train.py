"""Training entry: compose objects from the Hydra config, fit, export vectors, report."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from sgns.errors import Word2VecError
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
    model = instantiate(cfg.model, vocab_size=len(corpus.vocab))
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    seconds = time.perf_counter() - started
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.interrupted:
        raise Word2VecError("training was interrupted")
    if not trainer.is_global_zero:
        return metrics

    vectors = WordVectors(corpus.vocab.words, model.word_vectors(), corpus.vocab.counts)
    written = export(vectors, corpus.vocab, output_dir, cfg.get("export", {}))
    raw_words = corpus.raw_tokens * trainer.current_epoch
    metrics["train/raw_words_per_s"] = raw_words / seconds if seconds > 0 else 0.0
    summary = {"prepare_s": prepare_s, "train_s": seconds, "raw_tokens": corpus.raw_tokens,
               "epochs": trainer.current_epoch, "vocab_size": len(corpus.vocab), **metrics}  # fmt: skip
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    for logger in loggers:  # the HParams tab: this run's hyperparameters next to its final metrics
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True),
                                   metrics={f"hp/{k}": v for k, v in metrics.items() if k.startswith(("val/", "train/"))})  # fmt: skip
    report(vectors, written, trainer, seconds, metrics, list(cfg.get("probe_words") or []))
    return metrics


def export(vectors: WordVectors, vocab, output_dir: Path, options: dict) -> list[Path]:
    """Write the vocabulary (``word count``) and the vectors in word2vec text and binary formats."""
    written = [output_dir / "vocab.txt"]
    vocab.save(written[0])
    if options.get("text", True):
        written.append(output_dir / "vectors.txt")
        vectors.save_word2vec_format(written[-1], binary=False)
    if options.get("binary", True):
        written.append(output_dir / "vectors.bin")
        vectors.save_word2vec_format(written[-1], binary=True)
    return written


def report(vectors: WordVectors, written: list[Path], trainer: L.Trainer, seconds: float,
           metrics: dict[str, float], probe_words: list[str]) -> None:  # fmt: skip
    """Print where everything went and the nearest neighbours of the probe words."""
    lines = [f"trained {trainer.current_epoch} epoch(s), {trainer.global_step:,} steps in {seconds:.1f} s "
             f"({metrics['train/raw_words_per_s']:,.0f} raw words/s)"]  # fmt: skip
    lines += [f"  {k} = {v:.4f}" for k, v in sorted(metrics.items()) if k.startswith(("val/", "train/loss")) and not k.endswith("_oov")]
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
        sys.exit(2)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None
