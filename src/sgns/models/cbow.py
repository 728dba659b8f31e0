"""Continuous bag of words with negative sampling (Mikolov et al. 2013), as word2vec.c and gensim
(``sg=0``) train it: the centre word is predicted from the mean (``cbow_mean``) or the sum of the
input vectors of the words in its (dynamic) window.

    h = mean (or sum) of center_embed[j] over the window's words j     [B, d]
    pos = h · u_c                 (the centre's output vector)         [B]
    neg = h · u_neg               (a matrix product, or a bmm)         [B, K]
    loss = -log σ(pos) - (k/K) Σ_j log σ(-neg_j)                        per centre, summed

Every window word receives the hidden layer's gradient, dL/dh, undivided (with ``cbow_mean=False``
divided by the window's word count): that is the update of word2vec.c and gensim, not the exact
gradient of the mean (which would divide by the count). ``loss`` says so to autograd with a
straight-through term, so both paths make that same update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sgns.errors import check
from sgns.models.base import Batch, Update, WordModel, negative_sampling, negative_scores, sgns_loss


class CBOW(WordModel):
    example = "windows"

    def __init__(self, vocab_size: int, embedding_dim: int = 100, cbow_mean: bool = True, sparse: bool = False):
        super().__init__(vocab_size, embedding_dim, sparse)
        check(isinstance(cbow_mean, bool), f"model.net.cbow_mean must be true or false, got {cbow_mean!r}")
        self.cbow_mean = cbow_mean

    def loss(self, batch: Batch) -> torch.Tensor:
        """Per-centre loss [B], differentiable (the reference path)."""
        mask = batch.mask.unsqueeze(2).to(self.center_embed.weight.dtype)  # [B, C, 1]
        words = self.center_embed(batch.context) * mask  # [B, C, d]
        total, count = words.sum(dim=1), mask.sum(dim=1).clamp_min(1)  # [B, d], [B, 1]
        # value: the mean (or the sum); gradient reaching each word: dL/dh (or dL/dh / count)
        h = total + (total / count - total).detach() if self.cbow_mean else total / count + (total - total / count).detach()
        pos = (h * self.outside_embed(batch.center)).sum(dim=-1)
        return sgns_loss(pos, negative_scores(h, self.negatives(batch)), batch.neg_weight)

    @torch.no_grad()
    def row_gradients(self, batch: Batch, scale: float = 1.0, with_loss: bool = True) -> tuple[torch.Tensor | None, list[Update]]:
        """Mean loss and the rows' updates of ``scale`` × the summed loss, in closed form.

        h is one ``embedding_bag`` over the window words (a gather and a sum in one pass, no [E, d]
        temporary); every window word's row then receives its centre's dL/dh."""
        V, U = self.center_embed.weight, self.outside_embed.weight
        count = batch.mask.sum(dim=1)  # [B] words per window (at least one)
        words = batch.context.masked_select(batch.mask)  # [E] the window words, centre by centre (one pass, no nonzero)
        offsets = torch.cumsum(count, 0) - count
        h = F.embedding_bag(words, V, offsets, mode="mean" if self.cbow_mean else "sum")  # [B, d]
        G, K = batch.negatives.shape
        u_neg = U.index_select(0, batch.negatives.reshape(-1)).view(G, K, U.shape[1])
        loss, grad_h, grad_c, grad_neg = negative_sampling(h, U.index_select(0, batch.center), u_neg, batch.neg_weight,
                                                           scale, with_loss)  # fmt: skip
        if not self.cbow_mean:
            grad_h /= count.clamp_min(1).unsqueeze(1).to(grad_h.dtype)
        owner = torch.repeat_interleave(torch.arange(len(batch), device=words.device), count, output_size=len(words))
        return loss, [(V, words, grad_h.index_select(0, owner)), (U, batch.center, grad_c), (U, batch.negatives.reshape(-1), grad_neg)]
