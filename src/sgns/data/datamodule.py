"""The LightningDataModule: corpus preparation once, then every epoch's training steps (``batches.py``)
for the model family being trained. Hyperparameter names follow gensim's Word2Vec."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from sgns.data.batches import Epochs, Step
from sgns.data.continued import continued
from sgns.data.corpus import PreparedCorpus, Vocabulary
from sgns.data.phrases import PhraseSettings
from sgns.data.prepare import prepare_corpus
from sgns.data.sampling import AliasSampler, keep_probabilities, noise_distribution
from sgns.data.sources import Source
from sgns.data.tokenize import check_tokenizer
from sgns.errors import Word2VecError, check, check_choice, check_int, check_number
from sgns.hogwild import workers
from sgns.lightning_internals import batches_done
from sgns.models.base import WordModel

log = logging.getLogger(__name__)


def _is_device(name: object) -> bool:
    try:
        torch.device(name)
        return True
    except (RuntimeError, TypeError):
        return False


class ResumableLoader(DataLoader):
    """A DataLoader whose state (epoch, steps done) goes into Lightning checkpoints."""

    def __init__(self, dataset: Epochs, progress: Callable[[], int]):
        super().__init__(dataset, batch_size=None)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.dataset.epoch, "batches": self._progress()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("epoch") == self.dataset.epoch:
            self.dataset.set_epoch(self.dataset.epoch, skip=state.get("batches", 0))

    def __len__(self) -> int:
        """The epoch's steps; unknown to a lock-free worker until its claims run out (``Claims``), so
        Lightning fetches a step ahead to find its last one (``len(dataset)`` still bounds them)."""
        if self.dataset.workers > 1:
            raise TypeError("a lock-free worker's steps are known once the epoch's chunks are all claimed")
        return super().__len__()


class Word2VecDataModule(L.LightningDataModule):
    """Corpus preparation and the training steps of a model family: (centre, context) pairs for
    skip-gram, centres with their windows for CBOW (``example``, which the trainer's model decides
    when one is attached). Defaults are those of ``conf/data/lee.yaml`` (tested)."""

    def __init__(
        self,
        path: str | list[str] | None = None,
        format: str | None = None,
        text_column: str = "text",
        dataset: str | None = None,
        dataset_config: str | None = None,
        split: str = "train",
        tokenizer: str = "lower",
        min_count: int = 5,
        max_vocab_size: int | None = None,
        max_tokens: int | None = None,
        max_sentence_length: int = 10_000,
        respect_lines: bool = True,
        num_proc: int | None = None,
        cache_dir: str | None = None,
        phrases: int = 0,
        phrase_scoring: str = "default",
        phrase_threshold: float | None = None,
        phrase_min_count: int = 5,
        phrase_connectors: str | list[str] = "english",
        update_vocab: bool = False,
        window: int = 5,
        negatives: int = 5,
        shared_negatives: int | str = "auto",
        ns_exponent: float = 0.75,
        sample: float = 1e-3,
        batch_size: int = 1024,
        update_size: int | None = 256,
        chunk_tokens: int = 250_000,
        pair_order: str | None = None,
        val_fraction: float = 0.02,
        val_max_tokens: int = 100_000,
        device: str = "auto",
        seed: int = 42,
    ):
        super().__init__()
        for name, value, low in [
            ("window", window, 1),
            ("negatives", negatives, 1),
            ("batch_size", batch_size, 1),
            ("min_count", min_count, 1),
            ("chunk_tokens", chunk_tokens, 1),
            ("max_sentence_length", max_sentence_length, 1),
            ("val_max_tokens", val_max_tokens, 1),
            ("seed", seed, 0),
        ]:
            check_int(f"data.{name}", value, low)
        check(
            window <= max_sentence_length,
            f"data.window={window} is wider than the longest sentence allowed "
            f"(data.max_sentence_length={max_sentence_length})",
        )
        check(
            shared_negatives == "auto" or (type(shared_negatives) is int and shared_negatives >= 0),
            f"data.shared_negatives must be auto or an integer >= 0, got {shared_negatives!r}",
        )
        for name, value in [
            ("max_vocab_size", max_vocab_size),
            ("max_tokens", max_tokens),
            ("num_proc", num_proc),
            ("update_size", update_size),
        ]:
            check_int(f"data.{name}", value, optional=True)
        check_number("data.sample", sample, 0)
        check_number("data.val_fraction", val_fraction, 0, 1, high_open=True)
        check_number("data.ns_exponent", ns_exponent)
        check_choice("data.pair_order", pair_order, (None, "sides", "windows", "pairs"))
        check(isinstance(respect_lines, bool), f"data.respect_lines must be true or false, got {respect_lines!r}")
        check(isinstance(update_vocab, bool), f"data.update_vocab must be true or false, got {update_vocab!r}")
        check(
            device == "auto" or _is_device(device),
            f"data.device must be 'auto', 'cpu' or a torch device such as 'cuda:0', got {device!r}",
        )
        check_tokenizer(tokenizer)
        self.phrases = PhraseSettings.from_config(
            phrases, phrase_scoring, phrase_threshold, phrase_min_count, phrase_connectors
        )
        self.source = Source(path, format, text_column, dataset, dataset_config, split)
        self.save_hyperparameters(logger=False)
        self.corpus: PreparedCorpus | None = None
        # until follow_model: the base family's example and order (skip-gram's)
        self.example = WordModel.example  # what the model trains on: "pairs" (skip-gram) or "windows" (CBOW)
        self.update_size = update_size  # pairs per update: data.update_size, unless the family takes fewer
        self.pair_order = pair_order or WordModel.pair_order  # data.pair_order, or (null) the family's
        self.draws_negatives = True  # until follow_model: the model's objective may need none
        self.earlier: tuple[list[str], np.ndarray | None] | None = None  # init_from's vocabulary (continue_from)

    # -- preparation ---------------------------------------------------------------------
    def continue_from(self, words: list[str], counts: np.ndarray | None) -> None:
        """Read the corpus with an earlier vocabulary (``init_from``: ``data/continued.py``). Before ``prepare``."""
        self.earlier = (words, counts)

    def prepare(self) -> PreparedCorpus:
        """Read and encode the corpus once (idempotent); the vocabulary size is known after."""
        if self.corpus is None:
            h = self.hparams
            every_word = self.earlier is not None  # (continued below with the earlier vocabulary)
            self.corpus = prepare_corpus(
                None,
                h.tokenizer,
                1 if every_word else h.min_count,
                None if every_word else h.max_vocab_size,
                h.max_tokens,
                h.val_fraction,
                h.val_max_tokens,
                h.max_sentence_length,
                h.seed,
                source=self.source,
                respect_lines=h.respect_lines,
                num_proc=h.num_proc,
                cache_dir=h.cache_dir,
                phrases=self.phrases,
            )
            if self.earlier is not None:
                self.corpus = continued(self.corpus, *self.earlier, h.update_vocab, h.min_count, h.max_vocab_size)
            if self.corpus.train.n_tokens < 2:
                raise Word2VecError("corpus has fewer than 2 in-vocabulary tokens: nothing to train on")
        return self.corpus

    @property
    def vocab(self) -> Vocabulary:
        return self.prepare().vocab

    @property
    def updates_per_step(self) -> int:
        """Optimiser updates per Lightning step: ceil(batch_size / update_size)."""
        return -(-self.hparams.batch_size // (self.update_size or self.hparams.batch_size))

    @cached_property
    def noise(self) -> AliasSampler:
        return AliasSampler(noise_distribution(self.vocab.counts, self.hparams.ns_exponent))

    @cached_property
    def keep_prob(self) -> np.ndarray:
        return keep_probabilities(self.vocab.counts, self.hparams.sample)

    def _epochs(self, corpus, **overrides: Any) -> Epochs:
        h = self.hparams
        negatives = (h.negatives, h.shared_negatives) if self.draws_negatives else (0, 0)  # (none for HS)
        options = dict(
            window=h.window,
            negatives=negatives[0],
            shared_negatives=negatives[1],
            batch_size=h.batch_size,
            update_size=self.update_size,
            chunk_tokens=h.chunk_tokens,
            seed=h.seed,
            pair_order=self.pair_order,
        )
        return Epochs(corpus, self.keep_prob, self.noise, self.example, **{**options, **overrides})

    @cached_property
    def train_set(self) -> Epochs:
        return self._epochs(self.prepare().train)

    @cached_property
    def val_set(self) -> list[Step]:
        """Fixed held-out examples and negatives, made once, so val/loss compares across epochs."""
        val = self.prepare().val
        if val.n_tokens < 2:
            return []
        return list(self._epochs(val, chunk_tokens=val.n_tokens, seed=self.hparams.seed + 1, shuffle=False))

    # -- Lightning hooks -------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.prepare()
        device = self.hparams.device
        if self.trainer is not None:
            self.follow_model(self.trainer.lightning_module)
            if device == "auto":  # batches are made where training runs
                device = self.trainer.strategy.root_device
        self.train_set.set_device("cpu" if device == "auto" else device)
        if self.trainer is not None:  # before len(): this rank's share of the steps, this worker's of the chunks
            self.train_set.set_rank(self.trainer.global_rank, self.trainer.world_size)
            self.train_set.set_share(0, workers(self.trainer))
        h = self.hparams
        if self.example == "windows":  # a step and an update must hold a whole window
            for name in ("batch_size", "update_size"):
                check(
                    h[name] is None or h[name] >= 2 * h.window,
                    f"data.{name}={h[name]} pairs cannot hold a window of 2 x data.window={2 * h.window} words",
                )
        check(
            self.train_set.pairs() > 0,
            f"{self.source.describe()} gives no (centre, context) pairs to train on: no "
            "line keeps two in-vocabulary words (lower data.min_count or data.sample?)",
        )

    def follow_model(self, model: L.LightningModule) -> None:
        """Make what the model's family trains on: its kind of example, updates no larger than it
        takes, and its order of pairs where ``data.pair_order`` is null. Before the steps are first made."""
        family = model.family  # the network's class (models/base.py)
        self.example = family.example
        self.draws_negatives = getattr(model, "needs_negatives", True)
        self.cap_update_size(family.max_update_size)
        if self.hparams.pair_order is None and family.pair_order != self.pair_order:
            log.info(
                "data.pair_order=null gives the model's order: %s (set data.pair_order to choose another)",
                family.pair_order,
            )
            self.pair_order = family.pair_order

    def cap_update_size(self, most: int | None) -> None:
        """Take updates of at most ``most`` pairs (a family's limit), saying so when that lowers
        ``data.update_size``. Before the steps are first made."""
        h = self.hparams
        if most is not None and (self.update_size or h.batch_size) > most:
            log.info(
                "data.update_size=%s lowered to %d: the model takes updates of at most %d pairs",
                h.update_size,
                most,
                most,
            )
            self.update_size = most

    def transfer_batch_to_device(self, batch: Step, device: torch.device, dataloader_idx: int) -> Step:
        """Training steps are made where training runs (``set_device``): nothing to move (Lightning's
        own transfer walks every tensor of a step's updates: 3 % of a CPU worker's time)."""
        if all(update.center.device == device for update in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def train_dataloader(self) -> DataLoader:
        if self.trainer is not None:
            self.train_set.set_epoch(self.trainer.current_epoch)
        return ResumableLoader(self.train_set, lambda: batches_done(self.trainer) if self.trainer is not None else 0)

    def val_dataloader(self) -> DataLoader | list:
        return DataLoader(self.val_set, batch_size=None) if self.val_set else []

    # -- checkpoints -------------------------------------------------------------------------
    BATCH_KEYS = (  # (and the order of pairs, resolved)
        "window",
        "negatives",
        "shared_negatives",
        "ns_exponent",
        "sample",
        "batch_size",
        "update_size",
        "chunk_tokens",
        "seed",
    )

    def resume_settings(self, world_size: int, device_type: str, cpu_workers: int = 1) -> dict[str, Any]:
        """What decides an epoch's steps besides the corpus (by config key): a resumed run skips the
        steps its checkpoint had done, which are the same steps only if all of these agree.
        Batches made on a GPU come from its own random streams, hence the device type; lock-free
        workers each walk their own share of the chunks, hence their number."""
        settings = {f"data.{k}": self.hparams[k] for k in self.BATCH_KEYS}
        settings.update({"data.pair_order": self.pair_order, "data.device": device_type})
        settings.update({"trainer.world_size": world_size, "trainer.devices": cpu_workers})
        return settings

    def batch_device_type(self, trainer: L.Trainer | None) -> str:
        if self.hparams.device != "auto":
            return torch.device(self.hparams.device).type
        return trainer.strategy.root_device.type if trainer is not None else "cpu"

    def state_dict(self) -> dict[str, Any]:
        """The vocabulary travels with every checkpoint, so vectors can be exported from it, and so do
        the settings that decide the steps, so a resumed run can check it replays the same ones."""
        world_size = self.trainer.world_size if self.trainer is not None else 1
        settings = self.resume_settings(world_size, self.train_set.device.type, workers(self.trainer))
        state = {"words": self.vocab.words, "counts": self.vocab.counts.tolist(), "settings": settings}
        if (phrases := self.prepare().phrases) is not None:  # (sgns phrases lists them)
            state["phrases"] = phrases.state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("words") != self.vocab.words:
            raise Word2VecError("checkpoint was trained on a different vocabulary than this corpus and config")
