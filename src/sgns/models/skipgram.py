"""Skip-gram with negative sampling (Mikolov et al. 2013): each (centre, context) pair scores the
context word's output vector against the centre's input vector, and K noise words against it.

    h = v_c = center_embed[c]                                   [B, d]
    pos = h · u_o                (a dot product per pair)       [B]
    neg = h · u_neg              (a matrix product, or a bmm)   [B, K]
    loss = -log σ(pos) - (k/K) Σ_j log σ(-neg_j)                per pair, summed over the update
"""

from __future__ import annotations

import torch

from sgns.models.base import Bag, Batch, Segment, WordModel
from sgns.models.device import on_host
from sgns.models.objectives import HierarchicalSoftmax


class SkipGram(WordModel):
    """The tutorial's model: ``center_embed`` and ``outside_embed``, dot products and a bmm."""

    example = "pairs"

    @property
    def target(self) -> str:
        """Hierarchical softmax takes word2vec.c's and gensim's roles: the context word's row in and
        the centre's path out, so the pairs of one centre, side by side, walk one path and read each
        of its node rows once (``loops.hs_updates``: 1.27x the speed on the 10M-token slice, the
        scores the same). Negative sampling keeps the centre's row in: a centre's pairs share its h."""
        return "center" if isinstance(self.objective, HierarchicalSoftmax) else "context"

    def bag(self, batch: Batch, grouped: bool) -> Bag:
        """One row: the centre's (hierarchical softmax: the context's, see ``target``). With
        negatives shared by the update, the pairs of one centre that come side by side
        (``data.pair_order=sides``) share their centre's h, its scores against the negatives and
        their gradients: those are computed once per run of pairs (R runs, about B / 3) instead of
        once per pair. The same gradients, less work. (On a GPU the runs are not looked for:
        counting them would read back to the host.)"""
        if self.target == "center":  # (hierarchical softmax: the context's row in)
            return Bag([Segment(self.center_embed, batch.context)], batch.center)
        if grouped and batch.shares_negatives() and on_host(batch.center):
            V, update = self.center_embed.num_embeddings, batch.update_of_each()
            key = batch.center if update is None else batch.center + update * V  # (runs end at an update's edge)
            runs, run, length = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
            if 4 * len(runs) <= 3 * len(batch.center):  # runs pay
                centres = runs if update is None else runs % V
                return Bag([Segment(self.center_embed, centres)], batch.context, owner=run, runs=length)
        return Bag([Segment(self.center_embed, batch.center)], batch.context)
