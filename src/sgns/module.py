"""The LightningModule: it receives its network (a model family, ``models/``) and its optimiser as
components and owns the optimisation: the per-pair step alpha and its decay, the fused row
updates, the exchange of touched rows between ranks, and the checks that stop a diverging run."""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import math
from typing import Any, Callable, Iterable, Sequence

import lightning as L
import torch

from sgns import kernels
from sgns.errors import Diverged, Word2VecError, check, check_choice, check_number
from sgns.lightning_internals import is_last_batch
from sgns.models.base import Batch, Update, WordModel
from sgns.models.bound import BOUND_ABOVE, STEP_BOUNDS
from sgns.models.device import on_host
from sgns.models.objectives import OBJECTIVES, make_objective
from sgns.optim import FUSED_UPDATES, gradient_scale

OptimizerFactory = Callable[..., torch.optim.Optimizer]
NetFactory = Callable[..., WordModel]


log = logging.getLogger(__name__)


def _unpack(factory: Callable) -> tuple[Any, dict]:
    """The class and the keywords of a Hydra partial (``_partial_: true``)."""
    if isinstance(factory, functools.partial):
        return factory.func, dict(factory.keywords)
    return factory, {}


def _plain(value: Any) -> Any:
    """A config value as a plain Python value (checkpoints are read with weights_only=True)."""
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig" else value


def _on_meta(make: Callable) -> Any:
    with torch.device("meta"):
        return make()


def wants_sparse_gradients(optimizer: OptimizerFactory) -> bool:
    """SparseAdam needs sparse gradients; plain SGD profits from them; the rest need dense ones."""
    cls, kwargs = _unpack(optimizer)
    if cls is torch.optim.SparseAdam:
        return True
    return cls is torch.optim.SGD and not kwargs.get("momentum") and not kwargs.get("weight_decay")


def check_finite(tables: Iterable[tuple[str, torch.Tensor]], step: int) -> None:
    """Raise Diverged before a checkpoint is written from tables that hold NaN or inf: a table's
    least and greatest values are both finite exactly when all its values are (NaN propagates to
    both). One pass, no [V, d] temporary: on one thread, 0.09 s for fastText's 2M x 100 n-gram
    table, against 0.7 s for its sum in float64 and 1.2 s for ``isfinite(table).all()``."""
    for name, table in tables:
        if not all(torch.isfinite(bound) for bound in torch.aminmax(table.detach())):
            kept = "not saving a checkpoint (the last one is kept)"
            raise Diverged(f"{name} holds NaN/inf at step {step}; {kept}. Lower model.alpha or data.update_size.")


class Word2VecModule(L.LightningModule):
    """Trains a model family (``net``: a partial taking the vocabulary size) with ``optimizer``.

    The objective is word2vec's: the per-example loss summed over the examples, so plain SGD's lr
    is the per-pair step ``alpha`` (gensim's name, word2vec's ``-alpha``) whatever the size of an
    update, wherever a short one falls, and however many ranks share a step (the closed-form
    updates sum every rank's rows; autograd's, which DDP averages, are taken × the world size).
    The step decays linearly to ``min_alpha`` over all training, update by update, as word2vec.c
    and gensim decay it. Adaptive optimisers (SparseAdam, AdamW) keep their own ``lr``, decayed by
    the same factor.

    A training step is a list of updates (the data module cuts them). ``fused=True`` (SGD,
    SparseAdam) computes each update's gradients in closed form (the family's ``row_gradients``)
    and applies the optimiser's step to the touched rows only; ``fused=False`` is the reference
    path: the family's ``loss``, autograd, and the optimiser's own step. The loss is computed on
    the steps the logger writes and on the last step of every epoch; one that is not finite, or
    more than ``DIVERGED`` times the untrained loss, stops the run before its update.
    """

    DIVERGED = 2.0  # × the untrained loss ((1 + k) ln 2 for negative sampling): worse than knowing nothing
    # Examples a loss is judged on, at least: one example's loss may be twice its untrained value (a
    # confident wrong decision) with nothing diverging (CBOW with hierarchical softmax at updates of 16
    # pairs, a window or three each, was stopped so and trains to the default's scores without the stop).
    JUDGED = 64

    def __init__(
        self,
        net: NetFactory,
        optimizer: OptimizerFactory,
        alpha: float = 0.025,
        min_alpha: float = 0.0001,
        fused: bool = True,
        objective: str = "ns",
        compile: bool = False,
        step_bound: str = "auto",
        vocab_size: int | None = None,
        words: Sequence[str] | None = None,
        counts: Sequence[int] | None = None,
    ):
        super().__init__()
        check_number("model.alpha", alpha, 0, low_open=True)
        check_number("model.min_alpha", min_alpha, 0, alpha)
        check(isinstance(fused, bool), f"model.fused must be true or false, got {fused!r}")
        check(isinstance(compile, bool), f"model.compile must be true or false, got {compile!r}")
        check(not compile or fused, "model.compile=true compiles the closed-form update: it needs model.fused=true")
        check_choice("model.objective", objective, OBJECTIVES)
        check_choice("model.step_bound", step_bound, STEP_BOUNDS)
        # the settings are checked now, not after the corpus is prepared: a net of one word is made
        # (its own checks run; on the meta device, so a large table costs nothing) and the
        # optimiser's keys are bound to its signature
        probe = {"words": [""]} if getattr(_unpack(net)[0], "needs_words", False) else {}
        for name, factory, make in (
            ("model.net", net, lambda: _on_meta(lambda: net(1, **probe))),
            (
                "model.optimizer",
                optimizer,
                lambda: inspect.signature(_unpack(optimizer)[0]).bind([], **_unpack(optimizer)[1]),
            ),
        ):
            try:
                make()
            except TypeError as exc:
                raise Word2VecError(f"{name}: {_unpack(factory)[0].__name__} {str(exc).split('() ', 1)[-1]}") from None
        cls, kwargs = _unpack(optimizer)
        if "lr" in kwargs:
            check_number("model.optimizer.lr", kwargs["lr"], 0, low_open=True)
        check(
            not fused or wants_sparse_gradients(optimizer),
            f"model.fused=true supports SparseAdam and plain SGD, not {cls.__name__}; use model.fused=false",
        )
        check(
            step_bound != "curvature" or (fused and cls is torch.optim.SGD),
            "model.step_bound=curvature cuts plain SGD's closed-form step: it needs model.optimizer=sgd and "
            "model.fused=true",
        )
        self.save_hyperparameters(ignore=["net", "optimizer", "vocab_size"], logger=False)
        self.net_factory, self.optimizer_factory = net, optimizer
        self.net: WordModel | None = None
        self.automatic_optimization = False  # a step is several updates, each its own optimiser step
        self._epoch_loss = [0.0, 0]
        self._unjudged = [0.0, 0.0, 0]  # the losses read since the divergence guard last judged (_check_loss)
        # lock-free workers (hogwild.py): all workers' steps trained so far, and the whole run's
        self.shared_progress: Callable[[], tuple[int, int]] | None = None
        self._compiled: Callable | None = None  # model.compile: the compiled row_gradients, made at the first update
        self.bounded = False  # model.step_bound, resolved when training starts (auto: by the update's size)
        if vocab_size is not None:
            self.build(vocab_size, words, counts)

    @property
    def family(self) -> type[WordModel]:
        """The network's class: what it asks of the data module (``example``, ``max_update_size``,
        ``pair_order``), known before its tables are made."""
        return _unpack(self.net_factory)[0]

    @property
    def needs_negatives(self) -> bool:
        """Whether the data module draws noise words: the objective's (model.objective) need."""
        return self.hparams.objective == "ns"

    def build(self, vocab_size: int, words: Sequence[str] | None = None, counts: Sequence[int] | None = None) -> None:
        """Make the tables once the vocabulary is known (the settings were checked at construction,
        before the corpus was read); a family that reads spellings (``needs_words``) gets the words,
        the objective the counts (hierarchical softmax's tree)."""
        sparse = not self.hparams.fused and wants_sparse_gradients(self.optimizer_factory)
        needs_words = getattr(_unpack(self.net_factory)[0], "needs_words", False)
        objective = make_objective(self.hparams.objective, counts)
        self.net = self.net_factory(
            vocab_size, sparse=sparse, objective=objective, **({"words": words} if needs_words else {})
        )

    def resume_settings(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint (by config key): they shape the
        tables and the updates (and the optimiser state a checkpoint restores would silently
        override a new learning rate)."""
        (net, net_kwargs), (cls, kwargs) = _unpack(self.net_factory), _unpack(self.optimizer_factory)
        h = self.hparams
        return {
            "model.net": net.__name__,
            **{f"model.net.{k}": _plain(v) for k, v in sorted(net_kwargs.items())},
            "model.alpha": h.alpha,
            "model.min_alpha": h.min_alpha,
            "model.fused": h.fused,
            "model.objective": h.objective,
            "model.step_bound": h.step_bound,
            "model.optimizer": cls.__name__,
            **{f"model.optimizer.{k}": _plain(v) for k, v in sorted(kwargs.items())},
        }

    # -- training ------------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        cls, kwargs = _unpack(self.optimizer_factory)
        optimizer = self.optimizer_factory(self.parameters(), **({} if "lr" in kwargs else {"lr": self.hparams.alpha}))
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self._total = self._count_total_steps()  # now, before a checkpoint moves the data to a later epoch
        return optimizer

    def on_fit_start(self) -> None:
        check(
            self.hparams.fused
            or self.trainer.world_size == 1
            or self.trainer.datamodule is None
            or self.trainer.datamodule.updates_per_step == 1,
            "model.fused=false under DDP takes one update per step: set data.update_size=null",
        )
        self.bounded = self.bounds_steps(self.trainer)
        if self.bounded and self.hparams.step_bound == "auto":
            log.info(
                "model.step_bound=auto: updates of more than %s pairs, so each row's step is cut to its "
                "Newton step (models/bound.py; model.step_bound=none: not)",
                f"{BOUND_ABOVE:,}",
            )
        if self.device.type == "cpu":  # tiny gradients of rare rows must not fall into slow denormal arithmetic
            torch.set_flush_denormal(True)

    def on_train_epoch_start(self) -> None:
        self._epoch_loss = [0.0, 0]  # loss × examples and examples of this epoch's measured steps

    def reads_loss(self, batch_idx: int) -> bool:
        """Whether this step computes its loss and reads it back: the loss costs as much as a tenth of
        an update, so only the steps the logger writes and the epoch's last step (so that the loss
        reported at the end is the last epoch's) compute it."""
        trainer = self.trainer
        logged = (self.global_step + 1) % max(1, trainer.log_every_n_steps) == 0
        return logged or is_last_batch(trainer, batch_idx)

    def training_step(self, step: list[Batch], batch_idx: int) -> None:
        optimizer, wanted = self.optimizers(), self.reads_loss(batch_idx)
        result = (0.0, 0)

        def closure() -> None:  # every update of the step; Lightning counts one optimiser step
            nonlocal result
            result = self.train_updates(step, optimizer.optimizer, wanted)
            optimizer.optimizer.zero_grad(set_to_none=True)  # (the step that follows finds nothing left to apply)

        optimizer.step(closure=closure)
        if result[1]:
            self._log_loss(result[0] / result[1], result[1])
            self.log("train/alpha", optimizer.optimizer.param_groups[0]["lr"])

    def train_updates(self, step: list[Batch], optimizer: torch.optim.Optimizer, with_loss: bool) -> tuple[float, int]:
        """Every update of one step, each with alpha decayed to the progress of training; returns the
        summed loss of the measured updates and their examples. (Lock-free workers run this alone.)"""
        total, examples = 0.0, 0
        done, run = self.progress()
        shares = [(done + u / len(step)) / run for u in range(len(step))]  # of the run trained, at each update
        compiled = bool(step) and self._compiled_update(step[0])  # (the same for every update of a step)
        if compiled and not with_loss:  # the step's updates one after another, in one compiled call
            scales = []
            for share in shares:
                self._decay(optimizer, share)
                scales.append(gradient_scale(optimizer))
            joined = getattr(step, "joined", None)  # (the data module's, where it made one)
            self.net.sgd_update(Batch.join(step) if joined is None else joined, scales, False, None)
            return total, examples
        for update, share in zip(step, shares):
            self._decay(optimizer, share)
            loss, n = self._update(optimizer, update, with_loss, compiled)
            if loss is not None:
                total, examples = total + float(loss) * n, examples + n
        return total, examples

    def progress(self) -> tuple[int, int]:
        """Steps trained so far and steps of the whole run: this process's, or all lock-free workers'
        together (``shared_progress``, set by their strategy; read once a step, not at every update)."""
        if self.shared_progress is not None:
            return self.shared_progress()
        return self.global_step, self._total

    def _update(
        self, optimizer: torch.optim.Optimizer, update: Batch, with_loss: bool, compiled: bool = False
    ) -> tuple[float | None, int]:
        """One optimiser update; its mean loss over all ranks' examples (None unless ``with_loss``) and
        their number. ``compiled``: it runs as one compiled call (``_compiled_update``)."""
        if compiled:
            if not len(update):
                return None, 0
            guard = functools.partial(self._check_loss, update=update)
            return self.net.sgd_update(update, [gradient_scale(optimizer)], with_loss, guard), len(update)
        world = self.trainer.world_size
        if not self.hparams.fused:
            losses = self.net.loss(update)
            loss = self._check_loss(losses.detach().mean(), update) if with_loss and len(update) else None
            optimizer.zero_grad()
            self.manual_backward(losses.sum() * world)  # the summed loss; DDP averages the ranks' gradients
            optimizer.step()
            return loss, len(update)
        if not len(update) and world == 1:
            return None, 0
        scale = gradient_scale(optimizer)
        if self.hparams.compile:  # (the step as a tensor: alpha's decay recompiles nothing)
            scale = update.center.new_tensor(scale, dtype=torch.float64)
        # the curvature bound's alpha: this update's, times the ranks that each see their share of it
        bound = -scale * world if self.bounded else None
        gradients = self._compiled_gradients() if self.hparams.compile else self.net.row_gradients
        loss, rows = gradients(update, scale, with_loss, bound)
        n = len(update)
        if world > 1:  # (every rank joins every exchange, even with nothing to send)
            loss, rows, n = self._gather_rows(loss, n, rows)
        if loss is not None and n:
            self._check_loss(loss, update)
        FUSED_UPDATES[type(optimizer)](optimizer, rows)
        return (None if loss is None else float(loss)), n

    def _compiled_update(self, update: Batch) -> bool:
        """Whether this update runs as one compiled call (``kernels.py``): on the host, in one process,
        unless ``model.compile`` asks for torch's compiler."""
        h = self.hparams
        return not h.compile and self.trainer.world_size == 1 and on_host(update.center) and self.compiled_on_cpu()

    def bounds_steps(self, trainer: L.Trainer | None) -> bool:
        """Whether the curvature bound cuts the rows' steps (``model.step_bound``, ``models/bound.py``):
        ``curvature``, or ``auto`` with plain SGD on updates of more than ``BOUND_ABOVE`` pairs (all
        ranks' shares counted), where updates without it lose quality or diverge."""
        h = self.hparams
        if h.step_bound != "auto":
            return h.step_bound == "curvature"
        data = None if trainer is None else trainer.datamodule
        if not h.fused or _unpack(self.optimizer_factory)[0] is not torch.optim.SGD or data is None:
            return False
        return (data.update_size or data.hparams.batch_size) * trainer.world_size > BOUND_ABOVE

    def compiled_on_cpu(self) -> bool:
        """Whether this module's update, on the CPU in one process, runs compiled (``kernels.py``):
        the closed form with plain SGD, on tables of a type numba takes, without the curvature bound
        (``models/bound.py``: torch's form alone computes it)."""
        return (
            not self.bounded
            and self.hparams.fused
            and _unpack(self.optimizer_factory)[0] is torch.optim.SGD
            and kernels.available(self.net.center_embed.weight.dtype)
        )

    def _compiled_gradients(self) -> Callable:
        """``model.compile``: the net's closed-form gradients through ``torch.compile`` (inductor: the
        update's elementwise work fused into fewer kernels). The step is a 0-dim tensor, so that alpha's
        decay does not recompile; the SGD or SparseAdam step that follows stays eager. Compiled at the
        first update (a GPU's device path has no data-dependent shapes; on the CPU the host path's
        selections break the graph). CUDA graphs are not used: not yet measured on a GPU."""
        if self._compiled is None:
            self._compiled = torch.compile(self.net.row_gradients)
        return self._compiled

    def _decay(self, optimizer: torch.optim.Optimizer, progress: float) -> None:
        """Linear decay of every group's lr from its initial value (alpha for SGD) to min_alpha / alpha of it."""
        h = self.hparams
        factor = 1.0 - (1.0 - h.min_alpha / h.alpha) * min(1.0, progress)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def _check_loss(self, loss: torch.Tensor, update: Batch) -> torch.Tensor:
        """Stop on a loss that is not finite, or far above the untrained loss ((1 + k) ln 2): the run
        diverged. The mean is judged over ``JUDGED`` examples at least, an update's pooled with those
        after it until they are that many; fewer are judged as if the missing ones had lost nothing, so
        that a few examples' noise waits for the next ones and a loss far enough above stops at once."""
        n, pool = max(1, len(update)), self._unjudged  # pool: loss × examples, untrained × examples, examples
        pool[0] += float(loss) * n
        pool[1] += self.net.untrained_loss(update) * n
        pool[2] += n
        value, untrained, pooled = pool[0] / pool[2], pool[1] / pool[2], pool[2]
        if pooled >= self.JUDGED:
            pool[:] = [0.0, 0.0, 0]
        if not math.isfinite(value) or value > self.DIVERGED * untrained * max(1.0, self.JUDGED / pooled):
            raise Diverged(
                f"training diverged: loss {value:.4g} at step {self.global_step} (untrained: {untrained:.4f}); "
                "stopping before the update (the last checkpoint is kept). Lower model.alpha or data.update_size"
                + (
                    ", or train fewer workers (trainer.devices: on a small vocabulary their steps on the same rows "
                    "add up)"
                    if self.shared_progress is not None
                    else ""
                )
                + (
                    f", or raise data.shared_negatives: each of its K={update.negatives.shape[1]} negatives weighs "
                    f"k/K = {update.neg_weight:g}"
                    if update.neg_weight > 1
                    else ""
                )
                + "."
            )
        return loss

    def _log_loss(self, loss: float, n: int) -> None:
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self._epoch_loss[0] += loss * n
        self._epoch_loss[1] += n

    def on_train_epoch_end(self) -> None:
        """``train/epoch_loss``: the example-weighted mean of this epoch's measured losses (the last step's included)."""
        total, n = self._epoch_loss
        if n:
            self.log("train/epoch_loss", total / n, rank_zero_only=True)

    def _gather_rows(
        self, loss: torch.Tensor | None, n: int, updates: list[Update]
    ) -> tuple[torch.Tensor | None, list[Update], int]:
        """Distributed fused update: every rank gets every rank's touched rows and their gradients.

        Each rank sends its n examples' row indices and gradient rows (for skip-gram n centre rows,
        n context rows, n·k or K negative rows: about n(2+k)(4d + 8) bytes) through all_gather; all
        ranks then apply the same update, so the tables stay identical without a dense all-reduce
        of 2 x V x d floats. The gradients are of each rank's summed loss, so together they are those
        of the loss summed over all N examples: the per-pair step does not depend on the number of
        ranks. Returns the mean loss over all ranks' examples, the updates and N.
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

    def _count_total_steps(self) -> int:
        """Steps of the whole run, for the decay: the first epoch's steps × the epochs (each epoch's
        count differs a little; the first is the one every run, resumed or not, counts alike).

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

    # -- validation, checkpoints, the vectors ---------------------------------------------------
    def validation_step(self, step: list[Batch], batch_idx: int) -> None:
        losses = [self.net.loss(update) for update in step if len(update)]
        n = sum(len(loss) for loss in losses)
        mean = torch.cat(losses).mean() if losses else torch.zeros((), device=self.device)
        self.log("val/loss", mean, prog_bar=True, batch_size=max(1, n), sync_dist=self.trainer.world_size > 1)

    def on_train_end(self) -> None:
        """Under distributed training, gather every rank's weight digest: they must be identical."""
        self.rank_digests: list[str] = []
        if self.trainer.world_size > 1:
            own = torch.tensor(list(self.weights_digest()), dtype=torch.uint8, device=self.device)
            self.rank_digests = [bytes(row.tolist()).hex() for row in self.all_gather(own).cpu()]

    @torch.no_grad()
    def weights_digest(self) -> bytes:
        """SHA-256 of every declared table's bytes (``WordModel.TABLES``: fastText's n-gram table too)."""
        digest = hashlib.sha256()
        for role, table in self.net.tables().items():
            digest.update(role.encode() + table.detach().cpu().contiguous().numpy().tobytes())
        return digest.digest()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Never replace a good checkpoint with non-finite weights; record the resume settings."""
        check_finite(self.net.named_parameters(), self.global_step)
        checkpoint["resume_settings"] = self.resume_settings()
        net, net_kwargs = _unpack(self.net_factory)  # the net's constructor arguments (nanoGPT's model_args)
        checkpoint["model_args"] = {
            "net": net.__name__,
            "vocab_size": len(self.net.tables()["vectors"]),
            **{k: _plain(v) for k, v in net_kwargs.items()},
        }

    @torch.no_grad()
    def word_vectors(self) -> torch.Tensor:
        """The trained word vectors, on the CPU."""
        return self.net.word_vectors().float().cpu().clone()
