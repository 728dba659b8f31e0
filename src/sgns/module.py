"""LightningModule wrapping the dual-embedding model and its negative-sampling loss."""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
from typing import Any, Callable

import lightning as L
import torch

from sgns.errors import Word2VecError, check, check_choice, check_int, check_number
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
        optimizer: OptimizerFactory,
        vocab_size: int | None = None,
        embedding_dim: int = 100,
        init: str = "word2vec",
        lr_schedule: str = "linear",
        min_lr_ratio: float = 1e-4,
        fused: bool = True,
        negatives: int = 5,
        micro_batches: int = 1,
    ):
        super().__init__()
        check_int("model.embedding_dim", embedding_dim)
        check_choice("model.init", init, ("word2vec", "seed"))
        check_int("model.negatives", negatives)
        check_choice("model.lr_schedule", lr_schedule, ("linear", "constant"))
        check_number("model.min_lr_ratio", min_lr_ratio, 0, 1)
        check_int("model.micro_batches", micro_batches)
        check(micro_batches == 1 or fused, "model.micro_batches > 1 needs the fused path (model.fused=true)")
        lr = optimizer.keywords.get("lr") if isinstance(optimizer, functools.partial) else None
        if lr is not None:
            check_number("model.optimizer.lr", lr, 0, low_open=True)
        cls, kwargs = _unpack(optimizer)
        try:  # a key the optimiser does not take fails now, not after the corpus is prepared
            inspect.signature(cls).bind(params=[], **kwargs)
        except TypeError as exc:
            raise Word2VecError(f"model.optimizer: {cls.__name__} {exc}") from None
        check(not fused or wants_sparse_gradients(optimizer),
              f"model.fused=true supports SparseAdam and plain SGD, not {cls.__name__}; use model.fused=false")  # fmt: skip
        self.save_hyperparameters(ignore=["optimizer", "vocab_size"], logger=False)
        self.optimizer_factory = optimizer
        self.automatic_optimization = not fused
        self._epoch_loss = [0.0, 0]
        self.model: SkipGramModel | None = None
        if vocab_size is not None:
            self.build(vocab_size)

    def build(self, vocab_size: int) -> None:
        """Make the tables once the vocabulary is known (the settings were checked at construction,
        before the corpus was read)."""
        h = self.hparams
        sparse = not h.fused and wants_sparse_gradients(self.optimizer_factory)
        self.model = SkipGramModel(vocab_size, h.embedding_dim, h.init, sparse=sparse)

    def resume_settings(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint (by config key): they shape the
        tables and the updates, and the optimiser state restored from a checkpoint would silently
        override a new learning rate."""
        cls, kwargs = _unpack(self.optimizer_factory)
        h = self.hparams
        return {"model.embedding_dim": h.embedding_dim, "model.negatives": h.negatives,
                "model.micro_batches": h.micro_batches, "model.fused": h.fused, "model.lr_schedule": h.lr_schedule,
                "model.min_lr_ratio": h.min_lr_ratio, "model.optimizer": cls.__name__,
                **{f"model.optimizer.{k}": v for k, v in sorted(kwargs.items())}}  # fmt: skip

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
        self._epoch_loss[0] += float(loss.detach()) * max(1, n)
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
        value, untrained = float(loss.detach()), (1 + self.hparams.negatives) * math.log(2)
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
        """Never replace a good checkpoint with non-finite weights; record the resume settings."""
        for name, table in self.model.named_parameters():
            if not torch.isfinite(table).all():
                raise Word2VecError(f"{name} holds NaN/inf at step {self.global_step}; not saving a checkpoint "
                                    "(the last one is kept). Lower model.optimizer.lr.")  # fmt: skip
        checkpoint["resume_settings"] = self.resume_settings()

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
