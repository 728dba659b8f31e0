"""Lightning callbacks: word-vector benchmarks at the end of training epochs."""

from __future__ import annotations

import logging
import math

import lightning as L

from sgns.evaluation import evaluate_all

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
        self.analogies = list(analogies) if analogies is not None else None
        self.word_pairs = dict(word_pairs) if word_pairs is not None else None
        self.restrict_vocab, self.method = restrict_vocab, method
        self.every_n_epochs, self.monitor, self.prog_bar = every_n_epochs, monitor, set(prog_bar)
        self.best = -math.inf

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.sanity_checking or (epoch % self.every_n_epochs and epoch != trainer.max_epochs):
            return
        words = trainer.datamodule.vocab.words
        metrics = evaluate_all(words, pl_module.model.center_embed.weight.detach(), self.analogies,
                               self.word_pairs, self.restrict_vocab, self.method)  # fmt: skip
        value = metrics.get(self.monitor)
        if value is not None and value == value:
            self.best = max(self.best, value)
            metrics[f"{self.monitor}_best"] = self.best
        for name, value in metrics.items():
            pl_module.log(f"val/{name}", value, prog_bar=name in self.prog_bar, rank_zero_only=True)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if not k.endswith(("_evaluated", "_oov"))))

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best", -math.inf)
