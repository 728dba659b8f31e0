"""LightningModule wrapping the dual-embedding model and its negative-sampling loss."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import lightning as L
import torch

from sgns.errors import Word2VecError, check
from sgns.model import SkipGramModel

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def wants_sparse_gradients(optimizer: OptimizerFactory) -> bool:
    """SparseAdam needs sparse gradients; plain SGD profits from them; the rest need dense ones."""
    cls = optimizer.func if isinstance(optimizer, functools.partial) else optimizer
    kwargs = optimizer.keywords if isinstance(optimizer, functools.partial) else {}
    if cls is torch.optim.SparseAdam:
        return True
    if cls is torch.optim.SGD:
        return not kwargs.get("momentum") and not kwargs.get("weight_decay")
    return False


class Word2VecModule(L.LightningModule):
    """Skip-gram with negative sampling; ``optimizer`` is a partial (Hydra ``_partial_: true``).

    ``lr_schedule='linear'`` decays the learning rate linearly to ``min_lr_ratio`` × lr over all
    training steps, as word2vec.c and gensim do with alpha; ``'constant'`` keeps it.
    """

    def __init__(
        self,
        vocab_size: int,
        optimizer: OptimizerFactory,
        embedding_dim: int = 100,
        init: str = "word2vec",
        lr_schedule: str = "linear",
        min_lr_ratio: float = 1e-4,
    ):
        super().__init__()
        check(isinstance(embedding_dim, int) and embedding_dim >= 1, f"model.embedding_dim must be an integer >= 1, got {embedding_dim!r}")
        check(init in ("word2vec", "seed"), f"model.init must be 'word2vec' or 'seed', got {init!r}")
        check(lr_schedule in ("linear", "constant"), f"model.lr_schedule must be 'linear' or 'constant', got {lr_schedule!r}")
        lr = optimizer.keywords.get("lr") if isinstance(optimizer, functools.partial) else None
        check(lr is None or (lr > 0 and math.isfinite(lr)), f"model.optimizer.lr must be > 0, got {lr!r}")
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.optimizer_factory = optimizer
        self.model = SkipGramModel(vocab_size, embedding_dim, init, sparse=wants_sparse_gradients(optimizer))

    def forward(self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        return self.model(center, context, negatives)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        loss = self.model(*batch)
        if not torch.isfinite(loss):
            raise Word2VecError(
                f"training loss became {loss.item()} at step {self.global_step}; stopping "
                "(the last checkpoint is kept). Lower model.optimizer.lr."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self.log("val/loss", self.model(*batch), prog_bar=True, batch_size=len(batch[0]))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.hparams.lr_schedule == "constant":
            return {"optimizer": optimizer}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        floor = self.hparams.min_lr_ratio
        decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(floor, 1.0 - step / total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "step"}}

    @torch.no_grad()
    def word_vectors(self) -> torch.Tensor:
        """The trained word vectors: rows of ``center_embed``, on the CPU."""
        return self.model.center_embed.weight.detach().float().cpu().clone()
