"""LightningDataModule producing batched (center [B], context [B], negatives [B, k], [K] or [G, K]) tensors.

Each epoch walks the corpus in chunks of whole sentences (in shuffled chunk order). A chunk is
subsampled, turned into skip-gram pairs with dynamic windows, shuffled (``pair_order``: the sides
of the centres' windows in random order, each side's pairs together, or every pair on its own),
and cut into batches;
negatives are drawn per batch: k per pair, or K shared by all pairs of an optimiser update
(``shared_negatives``; a batch makes ``updates`` consecutive updates, see ``update_pairs``), or
K for each of ``negative_groups`` groups of consecutive pairs of an update. Every chunk's
randomness comes from a generator seeded by (seed, epoch, chunk) and every batch's negatives
from one seeded by (seed, epoch, batch), so an epoch can be replayed exactly: that is how
``len()`` knows the exact number of batches before the epoch starts, and how a run resumed from
a mid-epoch checkpoint continues with the very batches it would have seen (the loader's state
is the epoch and the number of batches done).

Batches are made on ``device`` (``data.device``, by default where training runs): on a GPU the
chunk's token ids are copied there once and subsampling, windows, shuffling and negatives run on
it, with no host round trip per step.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from sgns import ceil_div
from sgns.corpus import EncodedCorpus, PreparedCorpus, Vocabulary, check_tokenizer, prepare_corpus, release_pages
from sgns.errors import Word2VecError, check, check_choice, check_int, check_number
from sgns.sampling import (
    AliasSampler,
    keep_probabilities,
    noise_distribution,
    skipgram_pair_count,
    skipgram_pairs,
    subsample,
)
from sgns.sources import Source

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _generator(*key: int, device: torch.device | str = "cpu") -> torch.Generator:
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)


class SkipGramEpochs(IterableDataset):
    """Streams one epoch of shuffled SGNS batches; ``set_epoch`` chooses which."""

    def __init__(
        self,
        corpus: EncodedCorpus,
        keep_prob: np.ndarray,
        noise: AliasSampler,
        window: int,
        negatives: int,
        batch_size: int,
        chunk_tokens: int,
        seed: int,
        shuffle: bool = True,
        shared_negatives: int = 0,
        updates: int = 1,
        negative_groups: int = 1,
        pair_order: str = "pairs",
    ):
        self.ids, self.starts = corpus.ids, corpus.starts  # numpy, possibly memory-mapped
        self.keep_prob = torch.as_tensor(keep_prob, dtype=torch.float64)
        self.noise, self.window, self.negatives = noise, window, negatives
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.shared_negatives, self.updates, self.negative_groups = shared_negatives, updates, negative_groups
        self.by_side = shuffle and pair_order == "sides"  # shuffled window sides, each with its pairs together
        self.epoch = 0
        self.skip = 0  # batches of this epoch already trained (resume)
        self.rank, self.world_size = 0, 1  # distributed training: this process's share
        self.device = torch.device("cpu")  # where batches are made
        self._pairs: dict[int, int] = {}
        # chunk boundaries on sentence starts, so no window is cut
        starts = corpus.starts
        cuts = np.searchsorted(starts, np.arange(0, starts[-1], max(1, chunk_tokens)))
        self.chunk_sentences = np.unique(np.append(cuts, len(starts) - 1))  # sentence indices

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_sentences) - 1

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def set_device(self, device: torch.device | str) -> None:
        """Make batches on ``device`` (its random streams differ from the CPU's for the same seed)."""
        self.device = torch.device(device)
        self.keep_prob = self.keep_prob.to(self.device)

    def set_rank(self, rank: int, world_size: int) -> None:
        """Under distributed training, take slice ``rank`` of every world_size x batch_size pairs."""
        check(0 <= rank < world_size, f"rank {rank} outside world size {world_size}")
        self.rank, self.world_size = rank, world_size

    def _chunk_tokens(self, chunk: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A chunk's tokens after subsampling, and their sentence ids."""
        s0, s1 = self.chunk_sentences[chunk], self.chunk_sentences[chunk + 1]
        starts = np.asarray(self.starts[s0 : s1 + 1])
        lengths = torch.from_numpy(np.diff(starts)).to(self.device)
        tokens = torch.from_numpy(self.ids[starts[0] : starts[-1]].astype(np.int32)).to(self.device)  # int32: half the memory
        release_pages(self.ids, starts[0], starts[-1])  # copied: RSS stays flat however long the corpus
        sentence = torch.repeat_interleave(torch.arange(len(lengths), device=self.device), lengths)
        return subsample(tokens, sentence, self.keep_prob, generator)

    def _chunk_pairs(self, chunk: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return skipgram_pairs(*self._chunk_tokens(chunk, generator), self.window, generator, self.by_side)

    def _chunk_order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n_chunks))
        return torch.randperm(self.n_chunks, generator=_generator(self.seed, self.epoch)).tolist()

    def pairs(self) -> int:
        """(centre, context) pairs of this epoch, all ranks together (replays its subsampling and
        window draws once, and counts the pairs without building them)."""
        if self.epoch not in self._pairs:
            self._pairs = {self.epoch: sum(self._chunk_pair_count(c) for c in range(self.n_chunks))}
        return self._pairs[self.epoch]

    def _chunk_pair_count(self, chunk: int) -> int:
        generator = _generator(self.seed, self.epoch, chunk, device=self.device)
        _, sentence = self._chunk_tokens(chunk, generator)
        return skipgram_pair_count(sentence, self.window, generator)

    def __len__(self) -> int:
        return -(-self.pairs() // (self.batch_size * self.world_size))

    def __iter__(self) -> Iterator[Batch]:
        """Every rank walks the same shuffled pair stream. Each step takes world_size x B pairs and
        their negatives, and rank r keeps the r-th share, so together the ranks see every pair of
        the epoch once, in equal step counts, and W ranks with batch B see exactly what one
        process with batch W x B sees."""
        carry_c = carry_o = torch.empty(0, dtype=torch.int32, device=self.device)
        index, step = 0, self.batch_size * self.world_size
        for chunk in self._chunk_order():
            generator = _generator(self.seed, self.epoch, chunk, device=self.device)
            centres, contexts = self._chunk_pairs(chunk, generator)
            if self.shuffle and not self.by_side:
                order = torch.randperm(len(centres), generator=generator, device=self.device)
                centres, contexts = centres.index_select(0, order), contexts.index_select(0, order)
            centres, contexts = torch.cat([carry_c, centres]), torch.cat([carry_o, contexts])
            full = len(centres) // step * step
            for i in range(0, full, step):
                if index >= self.skip:
                    yield self._batch(centres[i : i + step], contexts[i : i + step], index)
                index += 1
            carry_c, carry_o = centres[full:], contexts[full:]
        if len(carry_c) and index >= self.skip:
            yield self._batch(carry_c, carry_o, index)

    def _batch(self, centres: torch.Tensor, contexts: torch.Tensor, index: int) -> Batch:
        """This rank's share of one step: near-equal slices (the last, short step may leave one empty);
        shared negatives are the whole step's (K per update), the same on every rank."""
        if not self.shared_negatives:
            shape = (len(centres), self.negatives)
        elif self.negative_groups == 1:
            shape = (self.shared_negatives * self.updates,)
        else:  # [G, K]: K for each group of consecutive pairs (the model cuts the pairs into as many groups)
            shape = (self.negative_groups * self.updates, self.shared_negatives)
        negatives = self.noise.sample(shape, _generator(self.seed, self.epoch, 1 << 40, index, device=self.device))
        if self.world_size > 1:
            base, extra = divmod(len(centres), self.world_size)
            start = self.rank * base + min(self.rank, extra)
            mine = slice(start, start + base + (self.rank < extra))
            centres, contexts = centres[mine], contexts[mine]
            negatives = negatives if self.shared_negatives else negatives[mine]
        return centres.long(), contexts.long(), negatives


def _is_device(name: object) -> bool:
    try:
        torch.device(name)
        return True
    except (RuntimeError, TypeError):
        return False


class ResumableLoader(DataLoader):
    """A DataLoader whose state (epoch, batches done) goes into Lightning checkpoints."""

    def __init__(self, dataset: SkipGramEpochs, progress: Callable[[], int], **kwargs: Any):
        super().__init__(dataset, batch_size=None, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.dataset.epoch, "batches": self._progress()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("epoch") == self.dataset.epoch:
            self.dataset.set_epoch(self.dataset.epoch, skip=state.get("batches", 0))


class SkipGramDataModule(L.LightningDataModule):
    """Corpus preparation and SGNS batches; hyperparameter names follow gensim's Word2Vec."""

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
        window: int = 5,
        negatives: int = 5,
        shared_negatives: int = 0,
        negative_groups: int = 1,
        ns_exponent: float = 0.75,
        sample: float = 1e-3,
        batch_size: int = 4096,
        update_pairs: int | None = None,
        chunk_tokens: int = 250_000,
        val_fraction: float = 0.01,
        val_max_tokens: int = 100_000,
        shuffle: bool = True,
        pair_order: str = "sides",
        device: str = "auto",
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        for name, value, low in [
            ("window", window, 1), ("negatives", negatives, 1), ("batch_size", batch_size, 1),
            ("min_count", min_count, 1), ("chunk_tokens", chunk_tokens, 1),
            ("max_sentence_length", max_sentence_length, 1), ("shared_negatives", shared_negatives, 0),
            ("negative_groups", negative_groups, 1), ("val_max_tokens", val_max_tokens, 1), ("num_workers", num_workers, 0),
            ("seed", seed, 0),
        ]:  # fmt: skip
            check_int(f"data.{name}", value, low)
        check(window <= max_sentence_length, f"data.window={window} is wider than the longest sentence allowed "
                                             f"(data.max_sentence_length={max_sentence_length})")  # fmt: skip
        for name, value in [("max_vocab_size", max_vocab_size), ("max_tokens", max_tokens), ("num_proc", num_proc),
                            ("update_pairs", update_pairs)]:  # fmt: skip
            check_int(f"data.{name}", value, optional=True)
        check_number("data.sample", sample, 0)
        check_number("data.val_fraction", val_fraction, 0, 1, high_open=True)
        check_number("data.ns_exponent", ns_exponent)
        check_choice("data.pair_order", pair_order, ("sides", "pairs"))
        check(isinstance(shuffle, bool), f"data.shuffle must be true or false, got {shuffle!r}")
        check(isinstance(respect_lines, bool), f"data.respect_lines must be true or false, got {respect_lines!r}")
        check(device == "auto" or _is_device(device), f"data.device must be 'auto', 'cpu' or a torch device such as 'cuda:0', got {device!r}")
        check_tokenizer(tokenizer)
        self.source = Source(path, format, text_column, dataset, dataset_config, split)
        self.save_hyperparameters(logger=False)
        self.corpus: PreparedCorpus | None = None

    # -- preparation ---------------------------------------------------------------------
    def prepare(self) -> PreparedCorpus:
        """Read and encode the corpus once (idempotent); the vocabulary size is known after."""
        if self.corpus is None:
            h = self.hparams
            self.corpus = prepare_corpus(
                None, h.tokenizer, h.min_count, h.max_vocab_size, h.max_tokens,
                h.val_fraction, h.val_max_tokens, h.max_sentence_length, h.seed,
                source=self.source, respect_lines=h.respect_lines, num_proc=h.num_proc, cache_dir=h.cache_dir,
            )  # fmt: skip
            if self.corpus.train.n_tokens < 2:
                raise Word2VecError("corpus has fewer than 2 in-vocabulary tokens: nothing to train on")
        return self.corpus

    @property
    def vocab(self) -> Vocabulary:
        return self.prepare().vocab

    @property
    def updates(self) -> int:
        """Optimiser updates per batch, ceil(batch_size / update_pairs): the model's ``micro_batches``
        (the configs set it from the same two values); each draws its own K shared negatives."""
        return ceil_div(self.hparams.batch_size, self.hparams.update_pairs)

    @cached_property
    def noise(self) -> AliasSampler:
        return AliasSampler(noise_distribution(self.vocab.counts, self.hparams.ns_exponent))

    @cached_property
    def keep_prob(self) -> np.ndarray:
        return keep_probabilities(self.vocab.counts, self.hparams.sample)

    @cached_property
    def train_set(self) -> SkipGramEpochs:
        h = self.hparams
        return SkipGramEpochs(
            self.prepare().train, self.keep_prob, self.noise, h.window, h.negatives,
            h.batch_size, h.chunk_tokens, h.seed, h.shuffle, h.shared_negatives, self.updates, h.negative_groups,
            h.pair_order,
        )  # fmt: skip

    @cached_property
    def val_set(self) -> list[Batch]:
        """Fixed held-out pairs and negatives, pre-batched, so val/loss compares across epochs."""
        val, h = self.prepare().val, self.hparams
        if val.n_tokens < 2:
            return []
        epochs = SkipGramEpochs(val, self.keep_prob, self.noise, h.window, h.negatives,
                                batch_size=h.batch_size, chunk_tokens=val.n_tokens, seed=h.seed + 1, shuffle=False,
                                shared_negatives=h.shared_negatives, updates=self.updates,
                                negative_groups=h.negative_groups)  # fmt: skip
        return list(epochs)

    # -- Lightning hooks -------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.prepare()
        device = self.hparams.device
        if device == "auto":  # batches are made where training runs
            device = self.trainer.strategy.root_device if self.trainer is not None else "cpu"
        check(self.hparams.num_workers == 0 or torch.device(device).type == "cpu",
              f"data.num_workers={self.hparams.num_workers} needs batches made on the CPU (data.device=cpu), not {device}")  # fmt: skip
        self.train_set.set_device(device)
        if self.trainer is not None:  # before anyone asks len(): each rank's share of the steps
            self.train_set.set_rank(self.trainer.global_rank, self.trainer.world_size)
        check(self.train_set.pairs() > 0, f"{self.source.describe()} gives no (centre, context) pairs to train on: no line "
                                          "keeps two in-vocabulary words (lower data.min_count or data.sample?)")  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        if self.trainer is not None:
            self.train_set.set_epoch(self.trainer.current_epoch)
        return ResumableLoader(self.train_set, self._batches_done, num_workers=self.hparams.num_workers)

    def _batches_done(self) -> int:
        """Batches of the current epoch fully trained, as Lightning counts them."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def val_dataloader(self) -> DataLoader | list:
        return DataLoader(self.val_set, batch_size=None) if self.val_set else []

    BATCH_KEYS = ("window", "negatives", "shared_negatives", "negative_groups", "ns_exponent", "sample", "batch_size",
                  "update_pairs", "chunk_tokens", "shuffle", "pair_order", "seed")  # fmt: skip

    def resume_settings(self, world_size: int, device_type: str) -> dict[str, Any]:
        """What decides an epoch's batches besides the corpus (by config key): a resumed run skips the
        batches its checkpoint had done, which are the same batches only if all of these agree.
        Batches made on a GPU come from its own random streams, hence the device type."""
        h = self.hparams
        return {**{f"data.{k}": h[k] for k in self.BATCH_KEYS}, "data.device": device_type, "trainer.world_size": world_size}

    def batch_device_type(self, trainer: L.Trainer | None) -> str:
        if self.hparams.device != "auto":
            return torch.device(self.hparams.device).type
        return trainer.strategy.root_device.type if trainer is not None else "cpu"

    def state_dict(self) -> dict[str, Any]:
        """The vocabulary travels with every checkpoint, so vectors can be exported from it, and so do
        the settings that decide the batches, so a resumed run can check it replays the same ones."""
        world_size = self.trainer.world_size if self.trainer is not None else 1
        return {"words": self.vocab.words, "counts": self.vocab.counts.tolist(),
                "settings": self.resume_settings(world_size, self.train_set.device.type)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("words") != self.vocab.words:
            raise Word2VecError("checkpoint was trained on a different vocabulary than this corpus and config")
