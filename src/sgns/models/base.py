"""What the model families share: the batch the data module hands them, the bag of input rows that
makes each hidden vector h, and the two tables.

A family is a ``WordModel`` in a file of its own (``skipgram.py``, ``cbow.py``, ``fasttext.py``),
as fastText's ``Model::update``: it says which ``example`` the data module must make for it
("pairs" or "windows") and which word an example predicts (``target``), and it declares its
``bag``: which input rows make each example's h, and whether h is their mean or their sum.
``WordModel`` alone turns that into
- ``loss(batch)``: the per-example loss, differentiable (the reference path, through autograd);
- ``row_gradients(batch, scale, with_loss)``: the same gradients in closed form, as table rows:
  h from the bag, the objective's gradients of h and of its output rows (``objectives.py``:
  negative sampling or hierarchical softmax), and dL/dh back to every row of the bag;
- ``sgd_update(batch, scales, with_loss, guard)``: that update with plain SGD applied, compiled
  whole (``kernels.py``), for one process on the CPU (a step's updates joined: one call).
Tests check the second against autograd on the first, and the third against the second, for
every family and objective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sgns.errors import check_int
from sgns.models.bound import bound_inputs, bound_outputs
from sgns.models.objectives import NegativeSampling, Objective

# (table, rows, gradient rows), repeated rows adding up
Update = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Segment(NamedTuple):
    """One input table's part of a bag: ``rows`` [E], input by input; ``sizes`` [N] how many each input
    has (None: one each); ``weights`` [E] each row's weight in h (None: 1; the device path's padding: 0)."""

    table: nn.Embedding
    rows: torch.Tensor
    sizes: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def owners(self, inputs: int) -> torch.Tensor:
        """Each row's input [E], of ``inputs``."""
        owner = torch.arange(inputs, device=self.rows.device)
        return owner if self.sizes is None else torch.repeat_interleave(owner, self.sizes, output_size=len(self.rows))


@dataclass
class Batch:
    """The examples of one optimiser update.

    ``center`` [B]: each example's centre word (skip-gram: the input word; CBOW: the word predicted).
    ``context``: [B] for pairs (skip-gram: the word predicted), or [B, C] for windows (CBOW: the
    words around the centre, C = 2 × window slots, ``mask`` [B, C] telling which hold a word).
    ``negatives`` [G, K]: K noise words for each of G groups of consecutive examples: G = 1, shared
    by the whole update (K per update), or G = B (k per example, word2vec's own).
    ``neg_weight``: k / K, so that K negatives stand for the k per example of the objective.
    ``words`` [E] and ``sizes`` [B]: on the host, windows' words flat, window by window, and each
    window's count (the data module makes them once per step; None: the family makes them).
    ``offsets`` [U + 1]: a step's U updates joined (``join``), update u holding the examples
    offsets[u] .. offsets[u + 1]; its negatives [U, K] when ``shared`` (one row per update), else
    [B, k]. None: one update.
    """

    center: torch.Tensor
    context: torch.Tensor
    negatives: torch.Tensor
    neg_weight: float = 1.0
    mask: torch.Tensor | None = None
    words: torch.Tensor | None = None
    sizes: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    shared: bool | None = None

    def __len__(self) -> int:
        return len(self.center)

    def shares_negatives(self) -> bool:
        """Whether an update's examples share its negatives (else each example has its own row)."""
        return len(self.negatives) == 1 if self.offsets is None else bool(self.shared)

    def update_of_each(self) -> torch.Tensor | None:
        """Each example's update [B] in a joined step (None: one update), for bags that group
        examples: a group never crosses an update's edge."""
        if self.offsets is None:
            return None
        counts = self.offsets.diff()
        return torch.repeat_interleave(torch.arange(len(counts)), counts, output_size=len(self))

    @classmethod
    def join(cls, updates: Sequence[Batch]) -> Batch:
        """The updates of a step, on the host, as one batch that keeps their edges (``offsets``): the
        compiled CPU update runs them one after another in one call (``WordModel.sgd_update``)."""
        first = updates[0]
        lengths = torch.tensor([0] + [len(u) for u in updates], dtype=torch.long)

        def cat(field: str) -> torch.Tensor | None:
            parts = [getattr(u, field) for u in updates]
            return None if any(p is None for p in parts) else torch.cat(parts)

        return cls(
            cat("center"), cat("context"), cat("negatives"), first.neg_weight, cat("mask"), cat("words"),
            cat("sizes"), lengths.cumsum(0), all(len(u.negatives) == 1 for u in updates),
        )  # fmt: skip


@dataclass
class Bag:
    """The inputs of an update: N hidden vectors, each the mean (or sum) of a bag of input rows, and
    the P words they predict.

    ``segments``: a ``Segment`` per input table: its rows of every input, and how many each has.
    ``size`` [N]: each input's rows in all segments (None: one). ``mean``: h is their mean, and
    every row receives dL/dh undivided (word2vec's CBOW mean, fastText); else h is their sum and
    every row receives dL/dh / size (word2vec's CBOW sum). ``targets`` [P]: the words predicted;
    target p belongs to input ``owner[p]`` (None: input p); ``runs`` [N]: each input's targets
    (None: one each), so that an objective may compute a term shared by an input's targets once.
    """

    segments: list[Segment]
    targets: torch.Tensor
    size: torch.Tensor | None = None
    mean: bool = True
    owner: torch.Tensor | None = None
    runs: torch.Tensor | None = None


class WordModel(nn.Module):
    """Two tables: rows of ``center_embed`` (input vectors) are the word vectors, ``outside_embed``
    holds the output rows (the words' output vectors, or the Huffman tree's inner nodes).
    Initialised as word2vec.c and gensim do: inputs U(±0.5/d), outputs zero."""

    example = "pairs"  # what the data module makes for this family: "pairs" or "windows"
    target = "context"  # the word an example predicts: its context (skip-gram, fastText) or its centre (CBOW)
    max_update_size: int | None = None  # the most pairs one update may hold (None: data.update_size decides)
    pair_order = "sides"  # the order of pairs data.pair_order=null gives this family (sides, windows or pairs)
    # The family's tables, declared once (role -> attribute): the weights digest, the export, the
    # checkpoint's keys and the ``sgns`` CLI read them from here. "outputs": the words' output rows,
    # or the Huffman tree's inner nodes (model.objective=hs).
    TABLES: ClassVar[dict[str, str]] = {"vectors": "center_embed", "outputs": "outside_embed"}

    def __init__(
        self, vocab_size: int, embedding_dim: int = 100, sparse: bool = False, objective: Objective | None = None
    ):
        super().__init__()
        check_int("model.net.embedding_dim", embedding_dim)
        self.center_embed = nn.Embedding(vocab_size, embedding_dim, sparse=sparse)
        self.outside_embed = nn.Embedding(vocab_size, embedding_dim, sparse=sparse)
        nn.init.uniform_(self.center_embed.weight, -0.5 / embedding_dim, 0.5 / embedding_dim)
        nn.init.zeros_(self.outside_embed.weight)
        self.objective = objective if objective is not None else NegativeSampling()

    @classmethod
    def state_key(cls, role: str) -> str:
        """Where a table's weights are in a checkpoint's ``state_dict`` (the module holds the net as ``net``)."""
        return f"net.{cls.TABLES[role]}.weight"

    def tables(self) -> dict[str, torch.Tensor]:
        """Every declared table's weights, by role."""
        return {role: getattr(self, name).weight for role, name in self.TABLES.items()}

    # -- what a family declares ------------------------------------------------------------------
    def bag(self, batch: Batch, grouped: bool) -> Bag:
        """The update's inputs; ``grouped``: examples that share their input may share one h (the
        closed form's saving), else one input per example (the reference path)."""
        raise NotImplementedError

    # -- what every family gets from it ----------------------------------------------------------
    def targets(self, batch: Batch) -> torch.Tensor:
        return batch.context if self.target == "context" else batch.center

    def untrained_loss(self, batch: Batch) -> float:
        return self.objective.untrained_loss(batch, self.targets(batch))

    def loss(self, batch: Batch) -> torch.Tensor:
        """Per-example loss [B], differentiable (the reference path)."""
        bag = self.bag(batch, grouped=False)
        total = None
        for segment in bag.segments:
            table, rows, sizes, weights = segment
            vectors = table(rows)  # [E, d]
            if weights is not None:
                vectors = vectors * weights.unsqueeze(1)
            if sizes is not None:
                vectors = torch.zeros(
                    len(sizes), vectors.shape[1], dtype=vectors.dtype, device=vectors.device
                ).index_add(0, segment.owners(len(sizes)), vectors)
            total = vectors if total is None else total + vectors
        if bag.size is not None:
            size = bag.size.unsqueeze(1).to(total.dtype)
            # value: the mean (or the sum); gradient reaching each row: dL/dh (or dL/dh / size)
            total = (
                total + (total / size - total).detach() if bag.mean else total / size + (total - total / size).detach()
            )
        return self.objective.loss(total, bag.targets, batch, self.outside_embed)

    def hidden(self, bag: Bag) -> torch.Tensor:
        """h [N, d]: each input's mean (or sum) of its rows (an ``embedding_bag`` per table, no [E, d]
        temporary)."""
        h = self._embedding_bags(bag)
        return h if bag.size is None or not bag.mean else h / bag.size.unsqueeze(1).to(h.dtype)

    @staticmethod
    def _embedding_bags(bag: Bag) -> torch.Tensor:
        h = None
        for table, rows, sizes, weights in bag.segments:
            if sizes is None:
                part = table.weight.index_select(0, rows)
            else:
                offsets = torch.cumsum(sizes, 0) - sizes
                part = F.embedding_bag(rows, table.weight, offsets, mode="sum", per_sample_weights=weights)
            h = part if h is None else h.add_(part)
        return h

    @torch.no_grad()
    def row_gradients(
        self, batch: Batch, scale: float = 1.0, with_loss: bool = True, bound: float | None = None
    ) -> tuple[torch.Tensor | None, list[Update]]:
        """Mean loss and the rows' updates of ``scale`` × the summed loss, in closed form: h once per
        input of the bag, the objective's gradients, and every row of the bag receiving its input's
        dL/dh (repeated rows add up). ``bound``: the step (alpha) of plain SGD (``scale`` = -bound),
        each distinct row's summed step then cut to its Newton step (``bound.py``); None: no cut."""
        bag = self.bag(batch, grouped=True)
        h = self.hidden(bag)
        output = self.outside_embed.weight
        loss, grad_h, outputs = self.objective.gradients(
            h, bag.targets, bag.owner, bag.runs, batch, output, scale, with_loss
        )
        unsummed = grad_h if bound is None else grad_h.clone()  # (the bound reads dL/dh itself)
        if bag.size is not None and not bag.mean:
            grad_h /= bag.size.clamp_min(1).unsqueeze(1).to(grad_h.dtype)
        inputs = []
        for table, rows, sizes, weights in bag.segments:
            if sizes is None:
                inputs.append((table.weight, rows, grad_h))
            else:
                steps = grad_h.repeat_interleave(sizes, dim=0, output_size=len(rows))
                inputs.append((table.weight, rows, steps if weights is None else steps * weights.unsqueeze(1)))
        if bound is not None:
            decisions = self.objective.decisions(h, bag.targets, bag.owner, bag.runs, batch, output)
            inputs = bound_inputs(bag, unsummed, decisions, output, inputs, bound)
            outputs = bound_outputs(h, decisions, outputs, bound)
        return loss, inputs + outputs

    def sgd_update(
        self, batch: Batch, scales: Sequence[float], with_loss: bool, guard: Callable[[float], object] | None
    ) -> float | None:
        """The same update as ``row_gradients`` followed by ``apply_sgd``, for plain SGD (``scales[u]``
        = -lr of update u) in one process on the CPU, compiled whole (``kernels.py``): every value
        read before any row moves, and, when the loss is computed, ``guard`` reading it (and raising
        to stop) in between. A step's updates joined (``Batch.join``) run one after another in one
        call, without their loss. Returns the mean loss (None unless ``with_loss``)."""
        bag = self.bag(batch, grouped=True)
        return self.objective.sgd_update(bag, batch, self.outside_embed.weight, scales, with_loss, guard)

    def word_vectors(self) -> torch.Tensor:
        """The trained word vectors [V, d]: the input rows."""
        return self.center_embed.weight.detach()
