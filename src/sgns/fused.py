"""The fast path: SGNS gradients in closed form, applied only to the rows a batch touches.

Autograd builds sparse gradient tensors and torch's SparseAdam coalesces and masks them at
every step; for embedding tables the same update is a handful of gathers, one sort and a few
scatters. ``sgns_row_gradients`` computes the exact gradients of the summed per-pair loss, scaled
(negatives per pair or shared by the batch; shared ones once per run of pairs with one centre), and
``apply_sparse_adam`` / ``apply_sgd`` reproduce torch's SparseAdam and sparse SGD steps on
those rows, keeping their state in the optimiser (so checkpoints and both paths agree).
Tests check both against autograd and torch's optimisers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sgns.model import SkipGramModel, grouped, negative_weight, sgns_loss

Update = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (table, rows, gradient rows)


@torch.no_grad()
def sgns_row_gradients(
    model: SkipGramModel,
    center: torch.Tensor,
    context: torch.Tensor,
    negatives: torch.Tensor,
    negatives_per_pair: int = 5,
    scale: float = 1.0,
    with_loss: bool = True,
) -> tuple[torch.Tensor | None, list[Update]]:
    """Mean loss and the per-row gradients of ``scale`` × the SGNS loss summed over the pairs.

    Summed, not averaged: with ``scale`` = -alpha every pair moves its rows by alpha times its own
    gradient, however many pairs the update holds (word2vec's per-pair step).

    ``negatives`` is [K] (shared by the batch, weighted k/K: one [B, d] x [d, K] product instead of
    B small ones, and K outside rows to update instead of B·k), or [G, K]: K for each of G groups of
    consecutive pairs (G batched products; [B, k] is k per pair).
    Returns (loss, [(table, rows, gradients), ...]): centre rows, context rows, negative rows;
    rows may repeat, and a repeated row's gradients are to be summed. The loss (None without
    ``with_loss``) costs as much as a matrix product: steps that log nothing skip it.
    """
    if negatives.dim() == 1 and center.device.type == "cpu":  # (on a GPU, counting runs would read back to the host)
        runs = torch.unique_consecutive(center, return_inverse=True, return_counts=True)
        if 4 * len(runs[0]) <= 3 * len(center):  # pairs come side by side (data.pair_order=sides)
            return _shared_by_runs(model, runs, context, negatives, negatives_per_pair, scale, with_loss)
    V, U = model.center_embed.weight, model.outside_embed.weight
    B, d = len(center), V.shape[1]
    shared = negatives.dim() == 1
    weight = negative_weight(negatives, negatives_per_pair)
    if not shared:
        negatives = grouped(negatives, B)
        G, K = negatives.shape
    v_c = V.index_select(0, center)  # [B, d]
    u_o = U.index_select(0, context)  # [B, d]
    pos = (v_c * u_o).sum(dim=1)
    if shared:
        u_neg = U.index_select(0, negatives)  # [K, d]
        neg = v_c @ u_neg.T  # [B, K]
    else:
        M = B // max(1, G)  # pairs per group
        u_neg = U.index_select(0, negatives.reshape(-1)).view(G, K, d)  # [G, K, d]
        v_groups = v_c.view(G, M, d)
        neg = torch.bmm(v_groups, u_neg.transpose(1, 2)).reshape(B, K)  # [B, K]
    loss = sgns_loss(pos, neg, weight).mean() if with_loss else None
    g_pos = torch.sigmoid(pos).sub_(1).mul_(scale)  # scale × d loss / d pos
    g_neg = torch.sigmoid(neg).mul_(scale * weight)  # scale × d loss / d neg
    if shared:
        grad_center = torch.addmm(g_pos.unsqueeze(1) * u_o, g_neg, u_neg)
        grad_negatives = g_neg.T @ v_c  # [K, d]
    else:
        g_groups = g_neg.view(G, M, K)
        grad_center = torch.baddbmm((g_pos.unsqueeze(1) * u_o).view(G, M, d), g_groups, u_neg).view(B, d)
        grad_negatives = torch.bmm(g_groups.transpose(1, 2), v_groups).view(-1, d)  # [G·K, d]
    return loss, [(V, center, grad_center), (U, context, g_pos.unsqueeze(1) * v_c), (U, negatives.reshape(-1), grad_negatives)]


def _shared_by_runs(
    model: SkipGramModel,
    runs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    context: torch.Tensor,
    negatives: torch.Tensor,
    negatives_per_pair: int,
    scale: float,
    with_loss: bool,
) -> tuple[torch.Tensor | None, list[Update]]:
    """``sgns_row_gradients`` for shared negatives, once per run of equal consecutive centres.

    A centre's scores against the shared negatives, and so their gradients, are the same for
    every pair of its run: the [R, d] x [d, K] products and the centre rows' gathers and updates
    are done once per run (R runs, about B / 3 for pairs made side by side) instead of once
    per pair; only the positive pairs' terms stay per pair. The same gradients, less work.
    """
    V, U = model.center_embed.weight, model.outside_embed.weight
    centres, run, count = runs  # [R] centre of each run, [B] run of each pair, [R] pairs per run
    B, weight = len(context), negative_weight(negatives, negatives_per_pair)
    v_run = V.index_select(0, centres)  # [R, d]
    v_c = v_run.index_select(0, run)  # [B, d], from the small [R, d] block
    u_o = U.index_select(0, context)  # [B, d]
    u_neg = U.index_select(0, negatives)  # [K, d]
    pos = (v_c * u_o).sum(dim=1)
    neg = v_run @ u_neg.T  # [R, K]: each run's scores, the same for all its pairs
    loss = None
    if with_loss:
        loss = -(F.logsigmoid(pos).sum() + weight * (F.logsigmoid(-neg).sum(dim=1) * count).sum()) / max(1, B)
    g_pos = torch.sigmoid(pos).sub_(1).mul_(scale)
    g_neg = torch.sigmoid(neg).mul_(count.unsqueeze(1) * (scale * weight))  # a run's pairs together
    grad_center = torch.zeros_like(v_run).index_add_(0, run, g_pos.unsqueeze(1) * u_o).addmm_(g_neg, u_neg)
    grad_negatives = g_neg.T @ v_run  # [K, d]
    return loss, [(V, centres, grad_center), (U, context, g_pos.unsqueeze(1) * v_c), (U, negatives, grad_negatives)]


def _sum_rows(rows: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique rows and the sum of their gradients (what coalescing a sparse gradient does)."""
    unique, inverse = torch.unique(rows, return_inverse=True)
    return unique, torch.zeros(len(unique), grads.shape[1], dtype=grads.dtype, device=grads.device).index_add_(0, inverse, grads)


@torch.no_grad()
def apply_sparse_adam(optimizer: torch.optim.Optimizer, updates: list[Update]) -> None:
    """torch.optim.SparseAdam's step for (param, rows, row gradients) triples, state kept in ``optimizer``."""
    group = optimizer.param_groups[0]
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    tables: dict[torch.Tensor, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for param, rows, grads in updates:  # one step per table: its blocks of rows together
        entry = tables.setdefault(param, ([], []))
        entry[0].append(rows)
        entry[1].append(grads)
    for param, (rows, grads) in tables.items():
        rows, grads = torch.cat(rows), torch.cat(grads)
        state = optimizer.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        rows, grad = _sum_rows(rows, grads)
        exp_avg = state["exp_avg"].index_select(0, rows).lerp_(grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        step_size = lr * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
        updated = param.index_select(0, rows).addcdiv_(exp_avg, exp_avg_sq.sqrt_().add_(eps), value=-step_size)
        param.index_copy_(0, rows, updated)


@torch.no_grad()
def apply_sgd(optimizer: torch.optim.Optimizer, updates: list[Update]) -> None:
    """Plain SGD (word2vec's update) for gradients already scaled by -lr (``gradient_scale``):
    each row moves by the sum of its rows (``scatter_add_``, several times faster than ``index_add_`` on CPU)."""
    for param, rows, steps in updates:
        param.scatter_add_(0, rows.unsqueeze(1).expand_as(steps), steps)


def gradient_scale(optimizer: torch.optim.Optimizer) -> float:
    """What ``sgns_row_gradients`` should multiply gradients by for this optimiser's fused update:
    -lr for SGD (the gradients become the step itself, saving a pass), 1 for SparseAdam."""
    return -optimizer.param_groups[0]["lr"] if isinstance(optimizer, torch.optim.SGD) else 1.0


FUSED_UPDATES = {torch.optim.SparseAdam: apply_sparse_adam, torch.optim.SGD: apply_sgd}
