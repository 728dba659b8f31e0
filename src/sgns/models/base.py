"""What the model families share: the batch the data module hands them, word2vec's negative-sampling
output layer (its loss and its gradients in closed form, side by side), and the two tables.

A family is a ``WordModel`` in a file of its own (``skipgram.py``, ``cbow.py``): it says which
``example`` the data module must make for it ("pairs" or "windows"), how an example's input
vector ``h`` is made from the rows of ``center_embed``, and how ``h``'s gradient goes back to
those rows. Both families end in the same layer: ``h`` scores its positive word and K negatives
against rows of ``outside_embed``. Each family defines
- ``loss(batch)``: the per-example loss, differentiable (the reference path, through autograd);
- ``row_gradients(batch, scale, with_loss)``: the same gradients in closed form, as table rows.
Tests check the second against autograd on the first, for every family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sgns.errors import check_int

Update = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (table, rows, gradient rows); repeated rows add up


@dataclass
class Batch:
    """The examples of one optimiser update.

    ``center`` [B]: each example's centre word (skip-gram: the input word; CBOW: the word predicted).
    ``context``: [B] for pairs (skip-gram: the word predicted), or [B, C] for windows (CBOW: the
    words around the centre, C = 2 × window slots, ``mask`` [B, C] telling which hold a word).
    ``negatives`` [G, K]: K noise words for each of G groups of consecutive examples: G = 1, shared
    by the whole update (K per update), or G = B (k per example, word2vec's own).
    ``neg_weight``: k / K, so that K negatives stand for the k per example of the objective.
    """

    center: torch.Tensor
    context: torch.Tensor
    negatives: torch.Tensor
    neg_weight: float = 1.0
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.center)


def sgns_loss(pos: torch.Tensor, neg: torch.Tensor, neg_weight: float = 1.0) -> torch.Tensor:
    """Per-example loss -log σ(pos) - w Σ_j log σ(-neg_j) (logsigmoid: the stable form of log(σ(x) + ε))."""
    return -(F.logsigmoid(pos) + neg_weight * F.logsigmoid(-neg).sum(dim=-1))


def negative_scores(h: torch.Tensor, u_neg: torch.Tensor) -> torch.Tensor:
    """Scores [N, K] of inputs h [N, d] against their negatives u_neg [G, K, d]: one matrix product
    when the update shares them (G = 1), a batched one when each input has its own (G = N)."""
    if len(u_neg) == 1:
        return h @ u_neg[0].T
    return torch.bmm(u_neg, h.unsqueeze(2)).squeeze(2)  # [N, K, d] x [N, d, 1]


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
    """The output layer in closed form: loss and gradients of ``scale`` × Σ_p sgns_loss(h_p·u_o,p, h_p·u_neg).

    ``h`` [N, d] are the inputs, ``u_o`` [P, d] the positive rows; positive p belongs to input
    ``owner[p]`` (None: p itself, P = N). ``count`` [N] (None: ones) is how many positives share an
    input's negative term: an input with c positives and the same negatives counts its negatives c
    times, computed once (skip-gram's runs of one centre). Returns the mean loss (None unless
    ``with_loss``) and the gradients of h [N, d], u_o [P, d] and the negatives' rows [G·K, d].
    """
    h_pos = h if owner is None else h.index_select(0, owner)  # [P, d]
    pos = (h_pos * u_o).sum(dim=1)
    neg = negative_scores(h, u_neg)  # [N, K]
    loss = None
    if with_loss:
        neg_terms = F.logsigmoid(-neg).sum(dim=1)
        neg_terms = neg_terms if count is None else neg_terms * count
        loss = -(F.logsigmoid(pos).sum() + neg_weight * neg_terms.sum()) / max(1, len(u_o))
    g_pos = torch.sigmoid(pos).sub_(1).mul_(scale)  # d(scale × loss) / d pos
    g_neg = torch.sigmoid(neg).mul_(scale * neg_weight)  # d(scale × loss) / d neg
    if count is not None:
        g_neg.mul_(count.unsqueeze(1))
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


class WordModel(nn.Module):
    """Two tables: rows of ``center_embed`` (input vectors) are the word vectors, ``outside_embed``
    holds the output vectors. Initialised as word2vec.c and gensim do: inputs U(±0.5/d), outputs zero."""

    example = "pairs"  # what the data module makes for this family: "pairs" or "windows"
    max_update_size: int | None = None  # the most pairs one update may hold (None: data.update_size decides)
    pair_order = "sides"  # the order of pairs data.pair_order=null gives this family (sides, windows or pairs)

    def __init__(self, vocab_size: int, embedding_dim: int = 100, sparse: bool = False):
        super().__init__()
        check_int("model.net.embedding_dim", embedding_dim)
        self.center_embed = nn.Embedding(vocab_size, embedding_dim, sparse=sparse)
        self.outside_embed = nn.Embedding(vocab_size, embedding_dim, sparse=sparse)
        nn.init.uniform_(self.center_embed.weight, -0.5 / embedding_dim, 0.5 / embedding_dim)
        nn.init.zeros_(self.outside_embed.weight)

    def negatives(self, batch: Batch) -> torch.Tensor:
        """The negatives' output rows [G, K, d]."""
        G, K = batch.negatives.shape
        return self.outside_embed(batch.negatives.reshape(-1)).view(G, K, self.outside_embed.embedding_dim)

    def loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def row_gradients(self, batch: Batch, scale: float = 1.0, with_loss: bool = True) -> tuple[torch.Tensor | None, list[Update]]:
        raise NotImplementedError

    def word_vectors(self) -> torch.Tensor:
        """The trained word vectors [V, d]: the input rows."""
        return self.center_embed.weight.detach()
