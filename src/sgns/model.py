"""The tutorial's skip-gram model with negative sampling, batched."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sgns_loss(pos: torch.Tensor, neg: torch.Tensor, neg_weight: float = 1.0) -> torch.Tensor:
    """Per-pair loss -log σ(pos) - w Σ_j log σ(-neg_j); logsigmoid is the stable form of log(σ(x) + 1e-8).

    w = 1 for k negatives per pair; K negatives shared by a batch stand in for k each with w = k/K.
    """
    return -(F.logsigmoid(pos) + neg_weight * F.logsigmoid(-neg).sum(dim=-1))


def negative_weight(negatives: torch.Tensor, per_pair: int) -> float:
    """k/K for K negatives per group, [G, K] (1 for k per pair, [B, k]), or shared by the batch, [K]."""
    return per_pair / max(1, negatives.shape[-1])


def grouped(negatives: torch.Tensor, pairs: int) -> torch.Tensor:
    """Negatives [G, K] of G groups of consecutive pairs, as [G, K] with G dividing ``pairs``:
    [B, k] (one group per pair) stays; uneven groups become one row per pair (pair p is in
    group p·G // pairs), so every pair's scores are a [M, d] x [d, K] product of its group."""
    G = len(negatives)
    if G == 0 or pairs % G == 0:
        return negatives
    return negatives[torch.arange(pairs, device=negatives.device) * G // pairs]


class SkipGramModel(nn.Module):
    """Two embedding tables: rows of ``center_embed`` are the word vectors."""

    def __init__(self, vocab_size: int, embedding_dim: int, init: str = "word2vec", sparse: bool = False):
        super().__init__()
        self.center_embed = nn.Embedding(vocab_size, embedding_dim, sparse=sparse)
        self.outside_embed = nn.Embedding(vocab_size, embedding_dim, sparse=sparse)
        bound = 0.5 / embedding_dim
        nn.init.uniform_(self.center_embed.weight, -bound, bound)
        if init == "seed":  # the tutorial: both tables uniform
            nn.init.uniform_(self.outside_embed.weight, -bound, bound)
        elif init == "word2vec":  # word2vec.c and gensim: output table zero
            nn.init.zeros_(self.outside_embed.weight)
        else:
            raise ValueError(f"unknown init {init!r}; choose 'word2vec' or 'seed'")

    def scores(
        self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive scores dot(v_c, u_o) [B] and negative scores [B, K]: one matrix product v_c u_negᵀ
        for negatives [K] shared by the batch; for negatives [G, K] of G groups of consecutive pairs
        (per pair: G = B), a batched product of each group's centres with its negatives."""
        v_c = self.center_embed(center)  # [B, d]
        u_o = self.outside_embed(context)  # [B, d]
        pos = (v_c * u_o).sum(dim=-1)
        if negatives.dim() == 1:
            return pos, v_c @ self.outside_embed(negatives).T
        negatives = grouped(negatives, len(center))
        u_neg = self.outside_embed(negatives)  # [G, K, d]
        G, B = len(negatives), len(center)
        neg = torch.bmm(v_c.view(G, B // max(1, G), v_c.shape[1]), u_neg.transpose(1, 2))  # [G, M, K]
        return pos, neg.reshape(B, negatives.shape[1])

    def forward(
        self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor, negatives_per_pair: int = 5
    ) -> torch.Tensor:
        """Loss averaged over the batch (``negatives_per_pair`` k weighs shared negatives k/K)."""
        return sgns_loss(*self.scores(center, context, negatives), negative_weight(negatives, negatives_per_pair)).mean()
