"""LightningModule wrapping the dual-embedding model and its negative-sampling loss."""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any, Callable

import lightning as L
import torch

from sgns.errors import Word2VecError, check
from sgns.fused import FUSED_UPDATES, sgns_row_gradients
from sgns.model import SkipGramModel

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def _unpack(optimizer: OptimizerFactory) -> tuple[type, dict]:
    if isinstance(optimizer, functools.partial):
        return optimizer.func, optimizer.keywords
    return optimizer, {}


def wants_sparse_gradients(optimizer: OptimizerFactory) -> bool:
    """SparseAdam needs sparse gradients; plain SGD profits from them; the rest need dense ones."""
    cls, kwargs = _unpack(optimizer)
    if cls is torch.optim.SparseAdam:
        return True
    if cls is torch.optim.SGD:
        return not kwargs.get("momentum") and not kwargs.get("weight_decay")
    return False


class Word2VecModule(L.LightningModule):
    """Skip-gram with negative sampling; ``optimizer`` is a partial (Hydra ``_partial_: true``).

    ``fused=False`` is the reference path: loss.backward() and the optimiser's step.
    ``fused=True`` (SparseAdam and SGD) computes the same gradients in closed form and
    applies the same update to the touched rows only, under Lightning's manual optimisation.
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
        fused: bool = True,
    ):
        super().__init__()
        check(isinstance(embedding_dim, int) and embedding_dim >= 1, f"model.embedding_dim must be an integer >= 1, got {embedding_dim!r}")
        check(init in ("word2vec", "seed"), f"model.init must be 'word2vec' or 'seed', got {init!r}")
        check(lr_schedule in ("linear", "constant"), f"model.lr_schedule must be 'linear' or 'constant', got {lr_schedule!r}")
        lr = optimizer.keywords.get("lr") if isinstance(optimizer, functools.partial) else None
        check(lr is None or (lr > 0 and math.isfinite(lr)), f"model.optimizer.lr must be > 0, got {lr!r}")
        cls, _ = _unpack(optimizer)
        check(not fused or wants_sparse_gradients(optimizer),
              f"model.fused=true supports SparseAdam and plain SGD, not {cls.__name__}; use model.fused=false")  # fmt: skip
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.optimizer_factory = optimizer
        self.automatic_optimization = not fused
        sparse = not fused and wants_sparse_gradients(optimizer)
        self.model = SkipGramModel(vocab_size, embedding_dim, init, sparse=sparse)

    def forward(self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        return self.model(center, context, negatives)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        if self.automatic_optimization:
            loss = self._check_finite(self.model(*batch))
            self.log("train/loss", loss, prog_bar=True, batch_size=len(batch[0]), sync_dist=self.trainer.world_size > 1)
        else:  # the fused step's loss is already the mean over all ranks' pairs
            loss = self._fused_step(batch)
            self.log("train/loss", loss, prog_bar=True, batch_size=max(1, len(batch[0])))
        return loss

    def _check_finite(self, loss: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(loss):
            raise Word2VecError(
                f"training loss became {loss.item()} at step {self.global_step}; stopping before the update "
                "(the last checkpoint is kept). Lower model.optimizer.lr."
            )
        return loss

    def _fused_step(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        optimizer = self.optimizers()
        apply = FUSED_UPDATES[type(optimizer.optimizer)]
        result = {}

        def closure() -> torch.Tensor:
            loss, c_rows, c_grads, o_rows, o_grads = sgns_row_gradients(self.model, *batch)
            if self.trainer.world_size > 1:
                loss, c_rows, c_grads, o_rows, o_grads = self._gather_rows(loss, batch[2].shape[1], c_rows, c_grads, o_rows, o_grads)
            result["loss"] = self._check_finite(loss)
            apply(optimizer.optimizer, [(self.model.center_embed.weight, c_rows, c_grads),
                                        (self.model.outside_embed.weight, o_rows, o_grads)])  # fmt: skip
            return loss

        optimizer.step(closure=closure)  # Lightning counts the step; the closure did the update
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return result["loss"]

    def _gather_rows(self, loss: torch.Tensor, k: int, c_rows: torch.Tensor, c_grads: torch.Tensor,
                     o_rows: torch.Tensor, o_grads: torch.Tensor) -> tuple[torch.Tensor, ...]:  # fmt: skip
        """Distributed fused step: every rank gets every rank's touched rows and their gradients.

        Each rank sends its n pairs' row indices and gradient rows (n centre rows, n(1+k) outside
        rows: n(2+k)(4d + 8) bytes) through all_gather; all ranks then apply the same update, so
        the tables stay identical without a dense all-reduce of 2 x V x d floats. Rank r's
        gradients (of its own mean loss) are weighted n_r / N: the update is that of the mean
        loss over all N pairs of the step, which is DDP's gradient averaging for equal n_r.
        """
        n = len(c_rows)
        own = torch.stack([loss.double() if n else loss.new_zeros((), dtype=torch.float64),
                           torch.tensor(float(n), dtype=torch.float64, device=loss.device)])  # fmt: skip
        stats = self.all_gather(own)  # [world, 2]
        counts = stats[:, 1]
        total = counts.sum().clamp_min(1.0)
        out: list[torch.Tensor] = [((stats[:, 0] * counts).sum() / total).to(loss.dtype)]
        share = (counts / total).to(c_grads.dtype)
        for rows, grads, per_pair in ((c_rows, c_grads, 1), (o_rows, o_grads, 1 + k)):
            lengths = (counts * per_pair).long()
            longest = int(lengths.max())
            padded_rows = rows.new_zeros(longest)
            padded_rows[: len(rows)] = rows
            padded = grads.new_zeros(longest, grads.shape[1])
            padded[: len(rows)] = grads
            valid = torch.arange(longest, device=rows.device)[None, :] < lengths[:, None].to(rows.device)
            out.append(self.all_gather(padded_rows)[valid])
            out.append((self.all_gather(padded) * share[:, None, None])[valid])
        return tuple(out)

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self.log("val/loss", self.model(*batch), prog_bar=True, batch_size=len(batch[0]), sync_dist=self.trainer.world_size > 1)

    def on_train_end(self) -> None:
        """Under distributed training, gather every rank's weight digest: they must be identical."""
        self.rank_digests: list[str] = []
        if self.trainer.world_size > 1:
            own = torch.tensor(list(self.weights_digest()), dtype=torch.uint8, device=self.device)
            self.rank_digests = [bytes(row.tolist()).hex() for row in self.all_gather(own).cpu()]

    @torch.no_grad()
    def weights_digest(self) -> bytes:
        """SHA-256 of both tables' bytes (centre, then outside)."""
        digest = hashlib.sha256()
        for table in (self.model.center_embed.weight, self.model.outside_embed.weight):
            digest.update(table.detach().cpu().contiguous().numpy().tobytes())
        return digest.digest()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Never replace a good checkpoint with non-finite weights."""
        for name, table in self.model.named_parameters():
            if not torch.isfinite(table).all():
                raise Word2VecError(f"{name} holds NaN/inf at step {self.global_step}; not saving a checkpoint "
                                    "(the last one is kept). Lower model.optimizer.lr.")  # fmt: skip

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.hparams.lr_schedule == "constant":
            return {"optimizer": optimizer}
        total = self._total_steps()
        floor = self.hparams.min_lr_ratio
        decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(floor, 1.0 - step / total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": decay, "interval": "step"}}

    def _total_steps(self) -> int:
        """Steps of the whole run, for the linear decay.

        Counted from the data module rather than ``trainer.estimated_stepping_batches``: that
        builds the train loader before a checkpoint is restored, and Lightning then skips
        restoring the loader's position when resuming inside the first epoch.
        """
        trainer, datamodule = self.trainer, self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "train_set") or trainer.max_epochs in (None, -1):
            return max(1, int(trainer.estimated_stepping_batches))
        batches, limit = len(datamodule.train_set), trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        total = batches * trainer.max_epochs
        return max(1, min(total, trainer.max_steps) if trainer.max_steps > 0 else total)

    @torch.no_grad()
    def word_vectors(self) -> torch.Tensor:
        """The trained word vectors: rows of ``center_embed``, on the CPU."""
        return self.model.center_embed.weight.detach().float().cpu().clone()
