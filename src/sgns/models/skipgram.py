"""Skip-gram with negative sampling (Mikolov et al. 2013): each (centre, context) pair scores the
context word's output vector against the centre's input vector, and K noise words against it.

    h = v_c = center_embed[c]                                   [B, d]
    pos = h · u_o                (a dot product per pair)       [B]
    neg = h · u_neg              (a matrix product, or a bmm)   [B, K]
    loss = -log σ(pos) - (k/K) Σ_j log σ(-neg_j)                per pair, summed over the update
"""

from __future__ import annotations

import torch

from sgns.models.base import Batch, Update, WordModel, negative_sampling, negative_scores, sgns_loss


class SkipGram(WordModel):
    """The tutorial's model: ``center_embed`` and ``outside_embed``, dot products and a bmm."""

    example = "pairs"

    def loss(self, batch: Batch) -> torch.Tensor:
        """Per-pair loss [B], differentiable (the reference path)."""
        v_c = self.center_embed(batch.center)  # [B, d]
        u_o = self.outside_embed(batch.context)  # [B, d]
        pos = (v_c * u_o).sum(dim=-1)
        return sgns_loss(pos, negative_scores(v_c, self.negatives(batch)), batch.neg_weight)

    @torch.no_grad()
    def row_gradients(self, batch: Batch, scale: float = 1.0, with_loss: bool = True) -> tuple[torch.Tensor | None, list[Update]]:
        """Mean loss and the rows' gradients of ``scale`` × the summed loss, in closed form.

        With negatives shared by the update, the pairs of one centre that come side by side
        (``data.pair_order=sides``) share their centre's row, its scores against the negatives and
        their gradients: those are computed once per run of pairs (R runs, about B / 3) instead of
        once per pair. The same gradients, less work. (On a GPU the runs are not looked for:
        counting them would read back to the host.)
        """
        V, U = self.center_embed.weight, self.outside_embed.weight
        centres, owner, count = batch.center, None, None
        if len(batch.negatives) == 1 and batch.center.device.type == "cpu":
            runs, run, length = torch.unique_consecutive(batch.center, return_inverse=True, return_counts=True)
            if 4 * len(runs) <= 3 * len(batch.center):  # runs pay
                centres, owner, count = runs, run, length
        G, K = batch.negatives.shape
        u_neg = U.index_select(0, batch.negatives.reshape(-1)).view(G, K, U.shape[1])
        loss, grad_h, grad_o, grad_neg = negative_sampling(
            V.index_select(0, centres), U.index_select(0, batch.context), u_neg, batch.neg_weight, scale, with_loss, owner, count
        )
        return loss, [(V, centres, grad_h), (U, batch.context, grad_o), (U, batch.negatives.reshape(-1), grad_neg)]
