"""LightningModule wrapping the dual-embedding model and its negative-sampling loss."""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any, Callable

import lightning as L
import torch

from sgns.errors import Word2VecError, check
from sgns.fused import FUSED_UPDATES, Update, gradient_scale, sgns_row_gradients
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


def split_batch(batch: tuple[torch.Tensor, ...], parts: int) -> list[tuple[torch.Tensor, ...]]:
    """``parts`` consecutive slices of a batch; its negatives ([K] shared, [G, K] per group of pairs,
    [B, k] per pair) are split the same way, into parts of near-equal length."""
    center, context, negatives = batch
    if parts == 1:
        return [batch]
    n, G = len(center), len(negatives)
    if G < parts and G != n:
        raise Word2VecError(f"the batch's {G} shared negatives (or groups) cannot be split into model.micro_batches={parts} parts")
    cut = [n * i // parts for i in range(parts + 1)]
    neg_cut = [G * i // parts for i in range(parts + 1)]  # per pair (G = n): the pairs' cut
    return [(center[a:b], context[a:b], negatives[c:e]) for a, b, c, e in zip(cut, cut[1:], neg_cut, neg_cut[1:])]


class Word2VecModule(L.LightningModule):
    """Skip-gram with negative sampling; ``optimizer`` is a partial (Hydra ``_partial_: true``).

    The objective is word2vec's: the per-pair loss summed over the pairs, so SGD's lr is the
    per-pair step alpha whatever the batch size, wherever a batch falls (a short last batch takes
    the same step per pair as a full one) and however many ranks share a step.
    ``fused=False`` is the reference path: loss.backward() and the optimiser's step.
    ``fused=True`` (SparseAdam and SGD) computes the same gradients in closed form and
    applies the same update to the touched rows only, under Lightning's manual optimisation.
    ``lr_schedule='linear'`` decays the learning rate linearly to ``min_lr_ratio`` × lr over all
    training steps, as word2vec.c and gensim do with alpha; ``'constant'`` keeps it.
    ``negatives`` is k, the negatives per pair: batches with K shared negatives weigh them k/K.
    ``micro_batches`` > 1 (fused path) splits every batch, and its shared negatives, into that
    many consecutive updates: updates stay small while Lightning's per-step work is paid once per batch.
    The loss is computed on the steps the logger writes and on the last step of every epoch;
    a loss that is not finite, or more than ``DIVERGED`` times the untrained loss, stops the run.
    """

    DIVERGED = 2.0  # × (1 + k) ln 2: a model that scores worse than knowing nothing has diverged

    def __init__(
        self,
        vocab_size: int,
        optimizer: OptimizerFactory,
        embedding_dim: int = 100,
        init: str = "word2vec",
        lr_schedule: str = "linear",
        min_lr_ratio: float = 1e-4,
        fused: bool = True,
        negatives: int = 5,
        micro_batches: int = 1,
    ):
        super().__init__()
        check(isinstance(embedding_dim, int) and embedding_dim >= 1, f"model.embedding_dim must be an integer >= 1, got {embedding_dim!r}")
        check(init in ("word2vec", "seed"), f"model.init must be 'word2vec' or 'seed', got {init!r}")
        check(isinstance(negatives, int) and negatives >= 1, f"model.negatives must be an integer >= 1, got {negatives!r}")
        check(lr_schedule in ("linear", "constant"), f"model.lr_schedule must be 'linear' or 'constant', got {lr_schedule!r}")
        check(isinstance(micro_batches, int) and micro_batches >= 1, f"model.micro_batches must be an integer >= 1, got {micro_batches!r}")
        check(micro_batches == 1 or fused, "model.micro_batches > 1 needs the fused path (model.fused=true)")
        lr = optimizer.keywords.get("lr") if isinstance(optimizer, functools.partial) else None
        check(lr is None or (lr > 0 and math.isfinite(lr)), f"model.optimizer.lr must be > 0, got {lr!r}")
        cls, _ = _unpack(optimizer)
        check(not fused or wants_sparse_gradients(optimizer),
              f"model.fused=true supports SparseAdam and plain SGD, not {cls.__name__}; use model.fused=false")  # fmt: skip
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.optimizer_factory = optimizer
        self.automatic_optimization = not fused
        self._epoch_loss = [0.0, 0]
        sparse = not fused and wants_sparse_gradients(optimizer)
        self.model = SkipGramModel(vocab_size, embedding_dim, init, sparse=sparse)

    def forward(self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        return self.model(center, context, negatives, self.hparams.negatives)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor | None:
        n = len(batch[0])
        if self.automatic_optimization:
            loss = self._check_loss(self(*batch))
            self._log_loss(loss, n, sync_dist=self.trainer.world_size > 1)
            # backward on the sum over this rank's pairs; DDP averages the ranks' gradients, hence × world size
            return loss * n * self.trainer.world_size
        # fused: the loss (the mean over all ranks' pairs) costs as much as a tenth of a step, so it is
        # computed only where it is read: the steps the logger writes and the epoch's last step
        trainer = self.trainer
        wanted = (self.global_step + 1) % max(1, trainer.log_every_n_steps) == 0 or batch_idx == trainer.num_training_batches - 1
        loss = self._fused_step(batch, with_loss=wanted)
        if loss is not None:
            self._log_loss(loss, n)
        return None

    def _log_loss(self, loss: torch.Tensor, n: int, sync_dist: bool = False) -> None:
        self.log("train/loss", loss, prog_bar=True, batch_size=max(1, n), sync_dist=sync_dist)
        self._epoch_loss[0] += float(loss) * max(1, n)
        self._epoch_loss[1] += max(1, n)

    def on_train_epoch_start(self) -> None:
        self._epoch_loss = [0.0, 0]  # loss × pairs and pairs of this epoch's measured steps

    def on_train_epoch_end(self) -> None:
        """``train/epoch_loss``: the pair-weighted mean of this epoch's measured losses (the last step's included)."""
        total, pairs = self._epoch_loss
        if pairs:
            self.log("train/epoch_loss", total / pairs, rank_zero_only=True)

    def on_fit_start(self) -> None:
        if self.device.type == "cpu":  # tiny gradients of rare rows must not fall into slow denormal arithmetic
            torch.set_flush_denormal(True)

    def _check_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Stop on a loss that is not finite or far above the untrained (1 + k) ln 2: the run diverged."""
        value, untrained = float(loss), (1 + self.hparams.negatives) * math.log(2)
        if not math.isfinite(value) or value > self.DIVERGED * untrained:
            raise Word2VecError(
                f"training diverged: loss {value:.4g} at step {self.global_step} (untrained: {untrained:.4f}); "
                "stopping before the update (the last checkpoint is kept). Lower model.optimizer.lr."
            )
        return loss

    def _fused_step(self, batch: tuple[torch.Tensor, ...], with_loss: bool = True) -> torch.Tensor | None:
        """One update of the touched rows; returns the batch loss (None without ``with_loss``)."""
        optimizer = self.optimizers()
        apply = FUSED_UPDATES[type(optimizer.optimizer)]
        result = {}

        def closure() -> torch.Tensor | None:
            total, pairs = 0.0, 0
            for part in split_batch(batch, self.hparams.micro_batches):
                if not len(part[0]) and self.trainer.world_size == 1:
                    continue  # (under DDP every rank joins every gather, even with nothing to send)
                loss, updates = sgns_row_gradients(self.model, *part, self.hparams.negatives,
                                                   gradient_scale(optimizer.optimizer), with_loss)  # fmt: skip
                n = len(part[0])
                if self.trainer.world_size > 1:
                    loss, updates, n = self._gather_rows(loss, n, updates)
                if with_loss:
                    total, pairs = total + self._check_loss(loss) * n, pairs + n
                apply(optimizer.optimizer, updates)
            result["loss"] = total / max(1, pairs) if with_loss else None
            return result["loss"]

        optimizer.step(closure=closure)  # Lightning counts the step; the closure did the update
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return result["loss"]

    def _gather_rows(self, loss: torch.Tensor | None, n: int, updates: list[Update]) -> tuple[torch.Tensor | None, list[Update], int]:
        """Distributed fused step: every rank gets every rank's touched rows and their gradients.

        Each rank sends its n pairs' row indices and gradient rows (n centre rows, n context rows,
        n·k or K negative rows: about n(2+k)(4d + 8) bytes) through all_gather; all ranks then
        apply the same update, so the tables stay identical without a dense all-reduce of
        2 x V x d floats. The gradients are of each rank's summed loss, so together they are those
        of the loss summed over all N pairs of the step: the per-pair step does not depend on the
        number of ranks. Returns the mean loss over all ranks' pairs, the updates and N.
        """
        device = updates[0][1].device
        sizes = torch.tensor([n, *(len(rows) for _, rows, _ in updates)], dtype=torch.float64, device=device)
        own = torch.cat([(loss.double() if n and loss is not None else sizes.new_zeros(())).reshape(1), sizes])
        stats = self.all_gather(own)  # [world, 2 + blocks]
        counts = stats[:, 1]
        total = counts.sum().clamp_min(1.0)
        mean_loss = None if loss is None else ((stats[:, 0] * counts).sum() / total).to(loss.dtype)
        gathered = []
        for block, (table, rows, grads) in enumerate(updates):
            lengths = stats[:, 2 + block].long()
            longest = int(lengths.max())
            padded_rows = rows.new_zeros(longest)
            padded_rows[: len(rows)] = rows
            padded = grads.new_zeros(longest, grads.shape[1])
            padded[: len(rows)] = grads
            valid = torch.arange(longest, device=rows.device)[None, :] < lengths[:, None].to(rows.device)
            gathered.append((table, self.all_gather(padded_rows)[valid], self.all_gather(padded)[valid]))
        return mean_loss, gathered, int(counts.sum())

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self.log("val/loss", self(*batch), prog_bar=True, batch_size=len(batch[0]), sync_dist=self.trainer.world_size > 1)

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
