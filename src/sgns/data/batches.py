"""One epoch of training steps, made from the prepared corpus: what the data module hands the model.

Each epoch walks the corpus in chunks of whole sentences (in shuffled chunk order). A chunk is
subsampled, turned into examples with dynamic windows (``sampling.py``: (centre, context) pairs
for skip-gram, a centre with its window for CBOW) and shuffled; skip-gram pairs either side by
side (``pair_order=sides``: the sides of the chunk's windows in random order, each side's pairs
together), window by window (``windows``: each centre's whole window together) or one by one
(``pairs``). Steps and updates are measured in (centre, context) pairs
for both families (a CBOW window counts its words): a Lightning step takes ``batch_size`` pairs
and cuts them into optimiser updates of ``update_size``; each update carries its negatives: K shared by the
update (``shared_negatives``; by default one per 64 of the update's pairs, at least 32), or k per
example (``shared_negatives=0``), with the weight k/K.

Every chunk's randomness comes from a generator seeded by (seed, epoch, chunk), and every step's
negatives from one seeded by (seed, epoch, step) (and, among lock-free workers, which walk their
own steps, the worker), so an epoch can be replayed exactly: that is
how ``len()`` knows the number of steps before the epoch starts, and how a run resumed from a
mid-epoch checkpoint continues with the very steps it would have seen. Batches are made on
``device``: on a GPU the chunk's token ids are copied there once, and subsampling, windows,
shuffling and negatives run on it, with no host round trip per step.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from sgns import kernels
from sgns.data.corpus import EncodedCorpus
from sgns.data.memory import release_pages
from sgns.data.sampling import AliasSampler, cbow_windows, skipgram_pair_count, skipgram_pairs, subsample
from sgns.errors import check
from sgns.hogwild import shared_copy
from sgns.models.base import Batch
from sgns.models.device import on_host


class Step(list):
    """A Lightning step: its optimiser updates (``Batch``), in order. ``joined``: the same updates as
    one batch that keeps their edges (what ``Batch.join`` makes), where the data module cut them as
    consecutive pieces of the step's tensors (one rank): the compiled CPU update takes it without
    copying them together again. None otherwise."""

    joined: Batch | None = None


def generator(*key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded from a tuple of integers (numpy's SeedSequence mixes them)."""
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)


class Claims:
    """Which lock-free worker trains which of an epoch's chunks. A worker takes the next chunk of the
    epoch's shuffled order whenever it needs more examples, so a worker that runs slower (its core
    busy, or Lightning's loop beside its steps) takes fewer, and the workers end an epoch within a
    chunk of each other. (A fixed deal of the chunks kept the first to finish waiting for the last:
    up to 0.6 s of a 10M-token CBOW epoch of 4.7 s, 2.8 s of a fastText one.)

    Made before the workers fork, in shared memory: ``owner[k]`` is the worker of the epoch's k-th
    claim. A claim holds a lock for a few microseconds, once a chunk, never once an update: a POSIX
    record lock, which the kernel releases if its holder dies, so a killed worker blocks no one."""

    def __init__(self, chunks: int):
        self.chunks = chunks
        self.owner = shared_copy(torch.full((chunks,), -1, dtype=torch.int32))
        self.dealt = shared_copy(torch.tensor([-1, 0], dtype=torch.int64))  # the epoch dealt, its claims so far
        self._lock = tempfile.TemporaryFile()  # noqa: SIM115 (open as long as the claims)

    def walk(self, worker: int, order: list[int], epoch: int) -> Iterator[int]:
        """The chunks ``worker`` trains in ``epoch``: those it claimed before (a resumed run replays
        them, in the order it claimed them), then one unclaimed chunk at a time until none is left.
        The first worker to walk a new epoch deals it afresh."""
        with self._locked():
            if int(self.dealt[0]) != epoch:
                self.owner.fill_(-1)
                self.dealt.copy_(torch.tensor([epoch, 0]))
            claimed = (self.owner == worker).nonzero().flatten().tolist()
        yield from (order[k] for k in claimed)
        while (k := self._claim(worker)) is not None:
            yield order[k]

    def _claim(self, worker: int) -> int | None:
        with self._locked():
            k = int(self.dealt[1])
            if k >= self.chunks:
                return None
            self.owner[k] = worker
            self.dealt[1] = k + 1
            return k

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive POSIX record lock on the claims' file, between processes."""
        fcntl.lockf(self._lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._lock, fcntl.LOCK_UN)

    def state(self) -> dict[str, Any]:
        """The epoch dealt and the worker of each of its claims so far (a checkpoint's)."""
        epoch, claims = self.dealt.tolist()
        return {"epoch": epoch, "owner": self.owner[:claims].tolist()}

    def load(self, state: dict[str, Any]) -> None:
        check(len(state["owner"]) <= self.chunks, "the checkpoint's claims are of another corpus")
        self.owner.fill_(-1)
        self.owner[: len(state["owner"])] = torch.tensor(state["owner"], dtype=torch.int32)
        self.dealt.copy_(torch.tensor([state["epoch"], len(state["owner"])]))


class Epochs(IterableDataset):
    """Streams one epoch of shuffled training steps; ``set_epoch`` chooses which."""

    def __init__(
        self,
        corpus: EncodedCorpus,
        keep_prob: np.ndarray,
        noise: AliasSampler,
        example: str,
        window: int,
        negatives: int,
        shared_negatives: int | str,
        batch_size: int,
        update_size: int | None,
        chunk_tokens: int,
        seed: int,
        shuffle: bool = True,
        pair_order: str = "sides",
    ):
        check(example in ("pairs", "windows"), f"unknown example kind {example!r}")
        self.ids, self.starts = corpus.ids, corpus.starts  # numpy, possibly memory-mapped
        self.keep_prob = torch.as_tensor(keep_prob, dtype=torch.float64)
        self.noise, self.example, self.window = noise, example, window
        self.negatives, self._shared_negatives = negatives, shared_negatives
        self.batch_size, self.update_size = batch_size, update_size or batch_size
        self.seed, self.shuffle = seed, shuffle
        self.pair_order = pair_order if shuffle and example == "pairs" and pair_order != "pairs" else "plain"
        self.epoch = 0
        self.skip = 0  # steps of this epoch already trained (resume)
        self.rank, self.world_size = 0, 1  # distributed training: this process's slice of every update
        self.worker, self.workers = 0, 1  # lock-free workers: this process's rank among them
        self.claims: Claims | None = None  # which worker trains which chunk (lock-free workers)
        self.device = torch.device("cpu")  # where batches are made
        self._chunk_pairs: dict[int, list[int]] = {}
        self.chunk_sentences = self._chunk_bounds(chunk_tokens)

    def _chunk_bounds(self, chunk_tokens: int) -> np.ndarray:
        """Chunk boundaries (sentence indices) on sentence starts, so no window is cut."""
        starts = self.starts
        cuts = np.searchsorted(starts, np.arange(0, starts[-1], max(1, chunk_tokens)))
        return np.unique(np.append(cuts, len(starts) - 1))

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_sentences) - 1

    @property
    def shared_negatives(self) -> int:
        """K: as set, or (``auto``) grown with the update, all ranks' shares counted."""
        if self._shared_negatives == "auto":
            return auto_shared_negatives(self.update_size * self.world_size)
        return self._shared_negatives

    @property
    def neg_weight(self) -> float:
        """k/K: each of the K negatives shared by an update stands for k/K of an example's k."""
        return self.negatives / self.shared_negatives if self.shared_negatives else 1.0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def set_device(self, device: torch.device | str) -> None:
        """Make batches on ``device`` (its random streams differ from the CPU's for the same seed)."""
        self.device = torch.device(device)
        self.keep_prob = self.keep_prob.to(self.device)

    def set_rank(self, rank: int, world_size: int) -> None:
        """Under distributed training, take slice ``rank`` of every update of world_size x batch_size examples."""
        check(0 <= rank < world_size, f"rank {rank} outside world size {world_size}")
        self.rank, self.world_size = rank, world_size

    CHUNKS_PER_WORKER = 4  # at least, so that a small corpus is shared near-evenly

    def set_share(self, worker: int, workers: int) -> None:
        """Lock-free training: this process is ``worker`` of ``workers``, each claiming the epoch's
        chunks one at a time (``Claims``, made here before the workers fork). A corpus of fewer than
        ``CHUNKS_PER_WORKER`` chunks per worker is cut into that many (one worker keeps the chunks it has)."""
        check(0 <= worker < workers, f"worker {worker} outside {workers} workers")
        if workers > 1 and self.n_chunks < self.CHUNKS_PER_WORKER * workers:
            self.chunk_sentences = self._chunk_bounds(-(-int(self.starts[-1]) // (self.CHUNKS_PER_WORKER * workers)))
            self._chunk_pairs = {}
        if workers > 1 and (self.claims is None or self.claims.chunks != self.n_chunks):
            self.claims = Claims(self.n_chunks)
        self.worker, self.workers = worker, workers

    def _chunk_tokens(self, chunk: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A chunk's tokens after subsampling, and their sentence ids."""
        s0, s1 = self.chunk_sentences[chunk], self.chunk_sentences[chunk + 1]
        starts = np.asarray(self.starts[s0 : s1 + 1])
        lengths = torch.from_numpy(np.diff(starts)).to(self.device)
        tokens = torch.from_numpy(self.ids[starts[0] : starts[-1]].astype(np.int32)).to(
            self.device
        )  # int32: half the memory
        release_pages(self.ids, starts[0], starts[-1])  # copied: RSS stays flat however long the corpus
        sentence = torch.repeat_interleave(torch.arange(len(lengths), device=self.device), lengths)
        return subsample(tokens, sentence, self.keep_prob, gen)

    def _chunk_examples(self, chunk: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The chunk's examples, shuffled: (centres, contexts) pairs, or (centres, windows, masks)."""
        tokens, sentence = self._chunk_tokens(chunk, gen)
        if self.example == "pairs":
            parts = skipgram_pairs(tokens, sentence, self.window, gen, self.pair_order)
            if self.pair_order != "plain" or not self.shuffle:
                return parts
        else:
            return cbow_windows(tokens, sentence, self.window, gen, self.shuffle)
        order = torch.randperm(len(parts[0]), generator=gen, device=self.device)
        return tuple(p.index_select(0, order) for p in parts)

    def _chunk_order(self) -> list[int]:
        """The epoch's chunks in their shuffled order."""
        if not self.shuffle:
            return list(range(self.n_chunks))
        return torch.randperm(self.n_chunks, generator=generator(self.seed, self.epoch)).tolist()

    def _chunks(self) -> Iterator[int]:
        """The chunks this process walks this epoch: all of them, or a lock-free worker's claims."""
        if self.workers == 1:
            return iter(self._chunk_order())
        return self.claims.walk(self.worker, self._chunk_order(), self.epoch)

    def pairs(self) -> int:
        """(centre, context) pairs of this epoch, all ranks and workers together: for CBOW the words
        of all its windows (the same draws give both families the same pairs)."""
        return sum(self._pair_counts())

    def _pair_counts(self, epoch: int | None = None) -> list[int]:
        """Each chunk's pairs in ``epoch`` (default: this one). Replays the epoch's subsampling and
        window draws once and counts them without making the examples."""
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._chunk_pairs:
            count = functools.partial(self._chunk_pair_count, epoch)
            # every lock-free worker waits for the count: a thread for each (the draws release the GIL)
            with ThreadPoolExecutor(self.workers) as pool:
                self._chunk_pairs[epoch] = list(pool.map(count, range(self.n_chunks)))
            # kept: this epoch's, and the first one's (the decay counts the run's steps from it)
            self._chunk_pairs = {e: v for e, v in self._chunk_pairs.items() if e in (0, epoch)}
        return self._chunk_pairs[epoch]

    def _chunk_pair_count(self, epoch: int, chunk: int) -> int:
        gen = generator(self.seed, epoch, chunk, device=self.device)
        _, sentence = self._chunk_tokens(chunk, gen)
        return skipgram_pair_count(sentence, self.window, gen)

    def steps(self, epoch: int | None = None) -> int:
        """Steps of ``epoch`` (default: this one) as one process trains it. Lock-free workers each
        train the steps of the chunks they claim, which no one knows before they are claimed: this
        bounds every worker's, and together they train about as many (each worker's last step may
        be short)."""
        return -(-sum(self._pair_counts(epoch)) // (self.batch_size * self.world_size))

    def __len__(self) -> int:
        return self.steps()

    def __iter__(self) -> Iterator[Step]:
        """Every rank walks the same shuffled example stream. Steps and updates are measured in
        (centre, context) pairs, for both families (a CBOW window counts its words): a step takes the
        examples of the next world_size x B pairs, cuts them into updates of world_size x
        update_size pairs, and rank r keeps the r-th share of every update. Together the ranks see
        every example of the epoch once, in equal step counts, and W ranks with batch B make exactly
        the updates of one process with batch W x B. A lock-free worker walks the chunks it claims
        (``Claims``): together the workers see every example of the epoch once."""
        carry: tuple[torch.Tensor, ...] | None = None
        index, start, step = (
            0,
            0,
            self.batch_size * self.world_size,
        )  # start: the pairs of the examples before the buffer
        for chunk in self._chunks():
            parts = self._chunk_examples(chunk, generator(self.seed, self.epoch, chunk, device=self.device))
            if carry is not None:
                parts = tuple(torch.cat([c, p]) for c, p in zip(carry, parts))
            ends = _pair_ends(parts)
            cuts = _cuts(
                ends, len(parts[0]), (index + 1) * step - start, step
            )  # marks at every step x pairs of the epoch
            for a, b in zip(cuts, cuts[1:]):
                if index >= self.skip:
                    yield self._step(tuple(p[a:b] for p in parts), index)
                index += 1
            start += cuts[-1] if ends is None else int(ends[cuts[-1] - 1]) if cuts[-1] else 0
            carry = tuple(p[cuts[-1] :] for p in parts)
        if carry is not None and len(carry[0]) and index >= self.skip:
            yield self._step(carry, index)

    def _step(self, parts: tuple[torch.Tensor, ...], index: int) -> Step:
        """This rank's share of each update of one step (near-equal slices: a short update may leave
        a rank none); shared negatives are the update's, the same on every rank."""
        n = len(parts[0])
        size = (
            self.update_size * self.world_size
        )  # (a step of windows may hold a window's worth more: the last update takes it)
        flat = len(parts) == 3 and on_host(parts[0])  # CBOW on the host: the step's window words in one piece
        parts = (parts[0].long(), parts[1].long(), *parts[2:])  # (once a step: the updates are views)
        if flat:
            words, sizes = window_words(parts[1], parts[2])
            ends = sizes.cumsum(0)
        else:
            ends = _pair_ends(parts)
        cuts = _cuts(ends, n, size, size)[: -(-self.batch_size // self.update_size)]
        cuts += [n] if cuts[-1] < n else []
        # (1 << 40: apart from the chunks' keys) lock-free workers each count their own steps from 0,
        # so the worker is part of the key: otherwise their step i would draw the same negatives
        own = (self.worker,) if self.workers > 1 else ()
        gen = generator(self.seed, self.epoch, 1 << 40, index, *own, device=self.device)
        shape = (len(cuts) - 1, self.shared_negatives) if self.shared_negatives else (n, self.negatives)
        drawn = self.noise.sample(shape, gen)
        slices = []  # this rank's examples of each update
        for a, b in zip(cuts, cuts[1:]):
            base, extra = divmod(b - a, self.world_size)
            lo = a + self.rank * base + min(self.rank, extra)
            slices.append((lo, lo + base + (self.rank < extra)))
        if flat:
            bounds = torch.cat([ends.new_zeros(1), ends])[[i for piece in slices for i in piece]].tolist()
        updates = Step()
        for u, (lo, hi) in enumerate(slices):
            negatives = drawn[u : u + 1] if self.shared_negatives else drawn[lo:hi]
            centre, context, *mask = (p[lo:hi] for p in parts)
            batch = Batch(centre, context, negatives, self.neg_weight, mask[0] if mask else None)
            if flat:  # (where the update's windows' words begin and end)
                batch.words, batch.sizes = words[bounds[2 * u] : bounds[2 * u + 1]], sizes[lo:hi]
            updates.append(batch)
        if self.world_size == 1:  # the updates are consecutive pieces of the step's tensors
            whole = Batch(parts[0], parts[1], drawn, self.neg_weight, parts[2] if len(parts) == 3 else None)
            if flat:
                whole.words, whole.sizes = words, sizes
            whole.offsets, whole.shared = torch.tensor(cuts), bool(self.shared_negatives)
            updates.joined = whole
        return updates


# A shared negative's row takes the gradients of every example of the update, k/K each: with a pair
# per 64 of the update's pairs that is 320 examples' worth per negative at any size. At 8,192 pairs
# the default 32 negatives diverged and 128 trained the whole corpus as the default's 2,048 pairs do
# (docs/benchmarks.md). Smaller updates keep 32, the measured default there.
PAIRS_PER_SHARED_NEGATIVE, FEWEST_SHARED_NEGATIVES = 64, 32


def auto_shared_negatives(update_pairs: int) -> int:
    """``data.shared_negatives=auto``: K for an update of ``update_pairs`` pairs."""
    return max(FEWEST_SHARED_NEGATIVES, -(-update_pairs // PAIRS_PER_SHARED_NEGATIVE))


def window_words(context: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The words of windows [N, C] (on the host), flat [E] int64, window by window, and each window's
    count [N]: one compiled pass (``masked_select`` took 0.6 ms of a CBOW step's 1.5)."""
    words, sizes = torch.empty(int(context.numel()), dtype=torch.long), torch.empty(len(context), dtype=torch.long)
    n = kernels.load().window_words(context.numpy(), mask.numpy(), words.numpy(), sizes.numpy())
    return words[:n], sizes


def _pair_ends(parts: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """Each example's end in pairs, counted from the first: None for pairs (example i ends at i + 1),
    the running sum of the window sizes for CBOW's (centres, windows, masks)."""
    return None if len(parts) == 2 else parts[2].sum(dim=1).cumsum(0)


def _cuts(ends: torch.Tensor | None, n: int, first: int, size: int) -> list[int]:
    """Where to cut a buffer of ``n`` examples at the marks ``first``, ``first + size``, ... (in pairs
    from the buffer's start): piece k holds the examples that end after mark k - 1 and by mark k (a
    window is never split); examples past the last mark are left over. ``ends``: each example's
    end in pairs from the buffer's start (None: pairs, example i ends at i + 1)."""
    total = n if ends is None else int(ends[-1]) if n else 0
    if ends is None or first > total:
        return [0, *range(first, total + 1, size)]
    marks = torch.arange(first, total + 1, size, device=ends.device)
    return [0, *torch.searchsorted(ends, marks, right=True).tolist()]
