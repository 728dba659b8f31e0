"""The tutorial's skip-gram model with negative sampling, batched."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sgns_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Per-pair loss -log σ(pos) - Σ_k log σ(-neg_k); logsigmoid is the stable form of log(σ(x) + 1e-8)."""
    return -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(dim=-1))


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
        """Positive scores dot(v_c, u_o) [B] and negative scores bmm(u_neg, v_c) [B, k]."""
        v_c = self.center_embed(center)  # [B, d]
        u_o = self.outside_embed(context)  # [B, d]
        u_neg = self.outside_embed(negatives)  # [B, k, d]
        pos = (v_c * u_o).sum(dim=-1)
        neg = torch.bmm(u_neg, v_c.unsqueeze(2)).squeeze(2)
        return pos, neg

    def forward(self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Loss averaged over the batch."""
        return sgns_loss(*self.scores(center, context, negatives)).mean()
