"""Output layers: what a hidden vector h is scored against, the loss, and its gradients in closed form.

Every family ends in one of these (``model.objective``), as fastText's ``Loss`` classes and
gensim's two branches of one loop. An objective sees the hidden vectors h [N, d] of an update,
the words they predict (``targets`` [P], target p belonging to input ``owner[p]``) and the output
table (``outside_embed``: the words' output vectors, or the Huffman tree's inner nodes). It gives
- ``loss(h, targets, batch, output)``: the per-target loss [P], differentiable (the reference);
- ``gradients(h, targets, owner, runs, batch, output, scale, with_loss)``: the mean loss and the
  gradients of ``scale`` × the summed loss for h [N, d] and for the output rows, as table rows;
- ``sgd_update(bag, batch, output, scales, with_loss, guard)``: the whole update (or a step's
  updates joined) with plain SGD applied, compiled (``kernels.py``: CPU, one process);
- ``untrained_loss(batch, targets)``: its value before training, which the divergence guard reads;
- ``decisions(h, targets, owner, runs, batch, output)``: every score's input, output row and weight
  in the curvature (``bound.py``: the step bound of large updates);
- ``needs_negatives``: whether the data module draws noise words for it.

- ``NegativeSampling`` (``ns``, the default): -log σ(h·u_o) - (k/K) Σ_j log σ(-h·u_j).
- ``HierarchicalSoftmax`` (``hs``): word2vec.c's Huffman tree over the vocabulary's counts; a word
  is the path of binary decisions from the root, -Σ_j log σ((1 - 2 code_j) h·u_{point_j}),
  batched over every target's path with no per-word Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sgns import kernels
from sgns.errors import check, check_choice
from sgns.models.device import on_host

if TYPE_CHECKING:
    from sgns.models.base import Bag, Batch


def sgns_loss(pos: torch.Tensor, neg: torch.Tensor, neg_weight: float = 1.0) -> torch.Tensor:
    """Per-example loss -log σ(pos) - w Σ_j log σ(-neg_j) (logsigmoid: the stable form of log(σ(x) + ε))."""
    return -(F.logsigmoid(pos) + neg_weight * F.logsigmoid(-neg).sum(dim=-1))


def negative_scores(h: torch.Tensor, u_neg: torch.Tensor) -> torch.Tensor:
    """Scores [N, K] of inputs h [N, d] against their negatives u_neg [G, K, d]: one matrix product
    when the update shares them (G = 1), a batched one when each input has its own (G = N)."""
    if len(u_neg) == 1:
        return h @ u_neg[0].T
    return torch.bmm(u_neg, h.unsqueeze(2)).squeeze(2)  # [N, K, d] x [N, d, 1]


def negative_terms(
    h: torch.Tensor,
    u_neg: torch.Tensor,
    neg_weight: float,
    scale: float,
    with_loss: bool,
    count: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The negatives' part of negative sampling for inputs h [N, d] against u_neg [G, K, d]: their
    summed loss -w Σ log σ(-h·u_j) (None unless ``with_loss``) and the gradients of ``scale`` × it
    with respect to the scores [N, K]. ``count`` [N] (None: ones): how many positives share an
    input's negative term (skip-gram's runs of one centre), computed once and counted that often."""
    neg = negative_scores(h, u_neg)  # [N, K]
    loss = None
    if with_loss:
        terms = F.logsigmoid(-neg).sum(dim=1)
        loss = -neg_weight * (terms if count is None else terms * count).sum()
    g_neg = neg.sigmoid_().mul_(scale * neg_weight)  # d(scale × loss) / d neg (in place: the scores are read)
    if count is not None:
        g_neg.mul_(count.unsqueeze(1))
    return loss, g_neg


def negative_sampling(
    h: torch.Tensor,
    u_o: torch.Tensor,
    u_neg: torch.Tensor,
    neg_weight: float,
    scale: float,
    with_loss: bool,
    owner: torch.Tensor | None = None,
    count: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Negative sampling in closed form: loss and gradients of ``scale`` × Σ_p sgns_loss(h_p·u_o,p, h_p·u_neg).

    ``h`` [N, d] are the inputs, ``u_o`` [P, d] the positive rows; positive p belongs to input
    ``owner[p]`` (None: p itself, P = N). ``count`` [N] (None: ones) is how many positives share an
    input's negative term (``negative_terms``). Returns the mean loss (None unless ``with_loss``)
    and the gradients of h [N, d], u_o [P, d] and the negatives' rows [G·K, d].
    """
    h_pos = h if owner is None else h.index_select(0, owner)  # [P, d]
    pos = (h_pos * u_o).sum(dim=1)
    negative_loss, g_neg = negative_terms(h, u_neg, neg_weight, scale, with_loss, count)
    loss = None
    if with_loss:
        loss = (negative_loss - F.logsigmoid(pos).sum()) / max(1, len(u_o))
    g_pos = torch.sigmoid(pos).sub_(1).mul_(scale)  # d(scale × loss) / d pos
    grad_pos = g_pos.unsqueeze(1) * u_o  # [P, d]
    grad_h = grad_pos if owner is None else torch.zeros_like(h).index_add_(0, owner, grad_pos)
    G, K, d = u_neg.shape
    if G == 1:
        grad_h = grad_h.addmm_(g_neg, u_neg[0]) if owner is not None else torch.addmm(grad_h, g_neg, u_neg[0])
        grad_u_neg = g_neg.T @ h  # [K, d]
    else:
        grad_h = grad_h + torch.bmm(g_neg.unsqueeze(1), u_neg).squeeze(1)
        grad_u_neg = (g_neg.unsqueeze(2) * h.unsqueeze(1)).reshape(G * K, d)
    return loss, grad_h, g_pos.unsqueeze(1) * h_pos, grad_u_neg


Gradients = tuple  # (mean loss or None, the gradient of h [N, d], the output rows' updates: list[Update])


class Decisions(NamedTuple):
    """An update's scores s = h_n·u_r, as the curvature of the loss along a step sees them: the loss's
    second derivative in s is ``weight`` (σ'(s) times what the term counts for). ``inputs`` [M] (the
    input n), ``rows`` [M] (the output row r) and ``weights`` [M], one per score; and the shared
    negatives' scores, every input against ``shared_rows`` [K], weighing ``shared_weights`` [N, K]
    (None: none shared)."""

    inputs: torch.Tensor
    rows: torch.Tensor
    weights: torch.Tensor
    shared_rows: torch.Tensor | None = None
    shared_weights: torch.Tensor | None = None


def sigmoid_slope(scores: torch.Tensor) -> torch.Tensor:
    """σ'(s) = σ(s) (1 - σ(s)): the second derivative of -log σ(±s), whichever the sign."""
    p = torch.sigmoid(scores)
    return p * (1 - p)


class Objective(nn.Module):
    """An output layer (see the module's note). A module, so that its buffers follow the model's device."""

    name = ""
    needs_negatives = True

    def loss(self, h: torch.Tensor, targets: torch.Tensor, batch: Batch, output: nn.Embedding) -> torch.Tensor:
        raise NotImplementedError

    def gradients(
        self,
        h: torch.Tensor,
        targets: torch.Tensor,
        owner: torch.Tensor | None,
        runs: torch.Tensor | None,
        batch: Batch,
        output: torch.Tensor,
        scale: float,
        with_loss: bool,
    ) -> Gradients:
        raise NotImplementedError

    def sgd_update(
        self,
        bag: Bag,
        batch: Batch,
        output: torch.Tensor,
        scales: Sequence[float],
        with_loss: bool,
        guard: Callable | None,
    ) -> float | None:
        """The whole SGD update of ``bag`` (or a step's updates, ``Batch.join``) with this output
        layer, compiled (``kernels.py``); the mean loss (None unless ``with_loss``), read by ``guard``
        before any row moves."""
        raise NotImplementedError

    def untrained_loss(self, batch: Batch, targets: torch.Tensor) -> float:
        raise NotImplementedError

    def decisions(
        self,
        h: torch.Tensor,
        targets: torch.Tensor,
        owner: torch.Tensor | None,
        runs: torch.Tensor | None,
        batch: Batch,
        output: torch.Tensor,
    ) -> Decisions:
        """The update's scores, as the curvature bound reads them (``bound.py``): the same inputs as
        ``gradients``, before any row moves."""
        raise NotImplementedError


class NegativeSampling(Objective):
    """word2vec's negative sampling: the target's output row against K noise rows (``batch.negatives``)."""

    name = "ns"

    def loss(self, h: torch.Tensor, targets: torch.Tensor, batch: Batch, output: nn.Embedding) -> torch.Tensor:
        G, K = batch.negatives.shape
        u_neg = output(batch.negatives.reshape(-1)).view(G, K, output.embedding_dim)
        return sgns_loss((h * output(targets)).sum(dim=-1), negative_scores(h, u_neg), batch.neg_weight)

    def gradients(self, h, targets, owner, runs, batch, output, scale, with_loss):
        G, K = batch.negatives.shape
        u_neg = output.index_select(0, batch.negatives.reshape(-1)).view(G, K, output.shape[1])
        u_o = output.index_select(0, targets)
        if G > 1 and owner is not None:  # k negatives per target: every target its own h, folded back
            loss, grad_pair, grad_o, grad_neg = negative_sampling(
                h.index_select(0, owner), u_o, u_neg, batch.neg_weight, scale, with_loss
            )
            grad_h = torch.zeros_like(h).index_add_(0, owner, grad_pair)
        else:
            loss, grad_h, grad_o, grad_neg = negative_sampling(
                h, u_o, u_neg, batch.neg_weight, scale, with_loss, owner, runs if G == 1 else None
            )
        return loss, grad_h, [(output, targets, grad_o), (output, batch.negatives.reshape(-1), grad_neg)]

    def sgd_update(self, bag, batch, output, scales, with_loss, guard):
        return kernels.ns_update(bag, batch, output, scales, with_loss, guard)

    def untrained_loss(self, batch: Batch, targets: torch.Tensor) -> float:
        """(1 + k) ln 2: every score 0 (word2vec starts the output rows at zero)."""
        return (1 + batch.neg_weight * batch.negatives.shape[1]) * math.log(2)

    def decisions(self, h, targets, owner, runs, batch, output):
        inputs = owner if owner is not None else torch.arange(len(targets), device=targets.device)
        h_pos = h.index_select(0, inputs)  # [P, d]
        positive = sigmoid_slope((h_pos * output.index_select(0, targets)).sum(dim=1))
        G, K = batch.negatives.shape
        if G == 1:  # shared by the update: every input against the K rows, its term counted ``runs`` times
            rows = batch.negatives[0]
            weights = sigmoid_slope(h @ output.index_select(0, rows).T) * batch.neg_weight  # [N, K]
            return Decisions(inputs, targets, positive, rows, weights if runs is None else weights * runs.unsqueeze(1))
        u_neg = output.index_select(0, batch.negatives.reshape(-1)).view(G, K, -1)  # k of target p's own
        negative = sigmoid_slope(torch.bmm(u_neg, h_pos.unsqueeze(2)).squeeze(2)) * batch.neg_weight  # [P, k]
        return Decisions(
            torch.cat([inputs, inputs.repeat_interleave(K)]),
            torch.cat([targets, batch.negatives.reshape(-1)]),
            torch.cat([positive, negative.reshape(-1)]),
        )


def huffman_tree(counts: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """word2vec.c's ``CreateBinaryTree`` for counts sorted from the most frequent word: (codes [V, L]
    int8, points [V, L] int32, lengths [V] int64). Word w's path from the root has ``lengths[w]``
    decisions: at inner node ``points[w, j]`` (0 .. V-2, the root V-2) it takes branch
    ``codes[w, j]``. Frequent words get short paths. Padding beyond a path's length is 0."""
    count = np.asarray(counts, dtype=np.int64)
    V = len(count)
    check(V >= 2, "model.objective=hs needs a vocabulary of at least two words")
    check(bool(np.all(count[:-1] >= count[1:])), "the Huffman tree needs counts sorted from the most frequent word")
    weight = count.tolist() + [1 << 62] * V  # (Python lists: the loop reads them a scalar at a time)
    parent, binary = [0] * (2 * V), [0] * (2 * V)
    pos1, pos2 = V - 1, V  # the leaves from the rarest up, and the inner nodes in the order made
    for a in range(V - 1):  # (one pass over the vocabulary, as word2vec.c's; about 1 s per million words)
        if pos1 >= 0 and weight[pos1] < weight[pos2]:
            first, pos1 = pos1, pos1 - 1
        else:
            first, pos2 = pos2, pos2 + 1
        if pos1 >= 0 and weight[pos1] < weight[pos2]:
            second, pos1 = pos1, pos1 - 1
        else:
            second, pos2 = pos2, pos2 + 1
        weight[V + a] = weight[first] + weight[second]
        parent[first] = parent[second] = V + a
        binary[second] = 1
    parent, binary = np.array(parent, dtype=np.int64), np.array(binary, dtype=np.int8)
    root = 2 * V - 2
    # every word's path from its leaf up, all words at once (a level per pass), then reversed
    node, up_codes, up_points, lengths = np.arange(V), [], [], np.zeros(V, dtype=np.int64)
    live = np.ones(V, dtype=bool)
    while live.any():
        up_codes.append(np.where(live, binary[node], 0))
        up_points.append(np.where(live, node, 0))
        lengths += live
        node = np.where(live, parent[node], root)
        live &= node != root
    L = len(up_codes)
    up_codes, up_points = np.stack(up_codes, axis=1), np.stack(up_points, axis=1)  # [V, L], leaf first
    codes, points = np.zeros((V, L), dtype=np.int8), np.zeros((V, L), dtype=np.int32)
    for j in range(L):  # position j from the root takes step lengths - 1 - j from the leaf
        step = lengths - 1 - j
        ok = step >= 0
        codes[ok, j] = up_codes[ok, step[ok]]
        # the node decided at is the parent of the node taken: the root first, then the path's inner nodes
        points[ok, j] = np.where(j == 0, root, up_points[ok, np.minimum(step[ok] + 1, L - 1)]) - V
    return codes, points, lengths


class HierarchicalSoftmax(Objective):
    """word2vec.c's hierarchical softmax: the output table's rows are the tree's inner nodes."""

    name = "hs"
    needs_negatives = False

    def __init__(self, counts: Sequence[int]):
        super().__init__()
        # the tree of the counts sorted from the most frequent word, each word's path put back at its
        # own id (a vocabulary continued with init_from keeps its old ids before the new words)
        counts = np.asarray(counts, dtype=np.int64)
        order = np.argsort(-counts, kind="stable")
        tree = huffman_tree(counts[order])
        codes, points, lengths = (np.empty_like(a) for a in tree)
        codes[order], points[order], lengths[order] = tree
        # derived from the vocabulary's counts: not saved in checkpoints, rebuilt with the model
        self.register_buffer("codes", torch.from_numpy(codes), persistent=False)  # [V, L] int8
        self.register_buffer("points", torch.from_numpy(points), persistent=False)  # [V, L] int32
        self.register_buffer("lengths", torch.from_numpy(lengths), persistent=False)  # [V]

    def _paths(self, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every target's decisions, flat [E]: the target each belongs to, its inner node, its code, and
        its weight (None: 1). On a device every target takes the longest path's L slots, those beyond
        its own path weighted 0 (their number would be read back to the host)."""
        lengths = self.lengths[targets]  # [P]
        steps = torch.arange(self.points.shape[1], device=targets.device)
        on_path = steps < lengths.unsqueeze(1)  # [P, L]
        which = torch.arange(len(targets), device=targets.device).unsqueeze(1).expand_as(on_path)
        if not on_host(targets):
            weights = on_path.reshape(-1)
            return which.reshape(-1), self.points[targets].reshape(-1).long(), self.codes[targets].reshape(-1), weights
        return which[on_path], self.points[targets][on_path].long(), self.codes[targets][on_path], None

    def loss(self, h: torch.Tensor, targets: torch.Tensor, batch: Batch, output: nn.Embedding) -> torch.Tensor:
        which, nodes, codes, weights = self._paths(targets)
        scores = (h.index_select(0, which) * output(nodes)).sum(dim=-1)
        decisions = -F.logsigmoid((1 - 2 * codes).to(scores.dtype) * scores)  # code 0: σ(x), code 1: σ(-x)
        decisions = decisions if weights is None else decisions * weights
        return torch.zeros(len(targets), dtype=scores.dtype, device=scores.device).index_add(0, which, decisions)

    def gradients(self, h, targets, owner, runs, batch, output, scale, with_loss):
        h_t = h if owner is None else h.index_select(0, owner)  # [P, d]
        which, nodes, codes, weights = self._paths(targets)
        h_e, u = h_t.index_select(0, which), output.index_select(0, nodes)  # [E, d]
        scores = (h_e * u).sum(dim=1)
        codes = codes.to(scores.dtype)
        decisions = F.logsigmoid((1 - 2 * codes) * scores)
        decisions = decisions if weights is None else decisions * weights
        loss = -decisions.sum() / max(1, len(targets)) if with_loss else None
        # d(scale × loss) / d score: word2vec.c's -(1 - code - f)
        g = torch.sigmoid(scores).sub_(1).add_(codes).mul_(scale)
        g = g if weights is None else g * weights
        grad_t = torch.zeros_like(h_t).index_add_(0, which, g.unsqueeze(1) * u)
        grad_h = grad_t if owner is None else torch.zeros_like(h).index_add_(0, owner, grad_t)
        return loss, grad_h, [(output, nodes, g.unsqueeze(1) * h_e)]

    def sgd_update(self, bag, batch, output, scales, with_loss, guard):
        return kernels.hs_update(bag, batch, (self.points, self.codes, self.lengths), output, scales, with_loss, guard)

    def decisions(self, h, targets, owner, runs, batch, output):
        which, nodes, _, weights = self._paths(targets)
        inputs = which if owner is None else owner.index_select(0, which)
        slope = sigmoid_slope((h.index_select(0, inputs) * output.index_select(0, nodes)).sum(dim=1))
        return Decisions(inputs, nodes, slope if weights is None else slope * weights)

    def untrained_loss(self, batch: Batch, targets: torch.Tensor) -> float:
        """ln 2 per decision: every inner node starts at zero (word2vec's syn1)."""
        return float(self.lengths[targets].double().mean()) * math.log(2) if len(targets) else math.log(2)


OBJECTIVES = ("ns", "hs")


def make_objective(name: str, counts: Sequence[int] | None = None) -> Objective:
    """``model.objective``: ``ns`` (negative sampling) or ``hs`` (hierarchical softmax, from the counts)."""
    check_choice("model.objective", name, OBJECTIVES)
    if name == "hs":
        check(counts is not None, "model.objective=hs needs the vocabulary's counts")
        return HierarchicalSoftmax(counts)
    return NegativeSampling()
