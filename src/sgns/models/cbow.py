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

from sgns.errors import check
from sgns.models.base import Bag, Batch, Segment, WordModel
from sgns.models.device import on_host


class CBOW(WordModel):
    example = "windows"
    target = "center"

    def __init__(
        self, vocab_size: int, embedding_dim: int = 100, cbow_mean: bool = True, sparse: bool = False, objective=None
    ):
        super().__init__(vocab_size, embedding_dim, sparse, objective)
        check(isinstance(cbow_mean, bool), f"model.net.cbow_mean must be true or false, got {cbow_mean!r}")
        self.cbow_mean = cbow_mean

    def bag(self, batch: Batch, grouped: bool) -> Bag:
        """The window's words (``batch.mask`` [B, C] tells which slots hold one; on the host flat,
        ``batch.words``), centre by centre; on a device, every slot, the empty ones weighted 0 (their
        number would be read back)."""
        if on_host(batch.center):
            words, count = batch.words, batch.sizes  # (the data module makes them with the step)
            if count is None:
                words, count = batch.context.masked_select(batch.mask), batch.mask.sum(dim=1)  # [E], [B] (>= 1 each)
            segment = Segment(self.center_embed, words, count)
        else:
            count = batch.mask.sum(dim=1)
            slots = torch.full_like(count, batch.mask.shape[1])
            weights = batch.mask.reshape(-1).to(self.center_embed.weight.dtype)
            segment = Segment(self.center_embed, batch.context.reshape(-1), slots, weights)
        return Bag([segment], batch.center, size=count, mean=self.cbow_mean)
